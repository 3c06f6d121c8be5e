"""A buffering MLflow logger that loses nothing when the tracking server is away.

Every param, tag, metric batch, artifact and the final status is first appended to a local
spool (``<dir>/spool.jsonl``, one JSON record a line, plus ``meta.json``), then delivered to
MLflow with ``MlflowClient.log_batch`` by a background thread, every few seconds
(``HVDSPAR_TRACKING_FLUSH_SECS``) and at each epoch end, so training never waits on MLflow
(not even on importing it or creating the run).
``meta.json`` remembers, per tracking URI, the run id and how many records that store has;
delivery resumes there.

- Server down at start: the run is created at the first delivery that gets through (its start
  time is the spool's). MLflow's HTTP timeout and retries are lowered in this process
  (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 10 s, ``..._MAX_RETRIES`` 0, unless you set them) and after a
  failure the next try waits 2, 4, ... up to 30 s, so the end of training is not held up either.
- Server gone mid-run: one warning, records pile up in the spool, delivered when it is back.
- Still unreachable when the run closes (after ``HVDSPAR_TRACKING_CLOSE_WAIT`` s, default 15): the
  whole run is written to a local store beside the spool (``sqlite:///<dir>/mlflow.db``, artifacts in
  ``<dir>/mlartifacts``), and a message says where, and how to deliver the spool to the server
  later: ``python -m hvdspar.tracking.replay <dir>``.
- Errors the server will never accept (e.g. a param changed on resume) are not retried forever:
  the batch is resent item by item, rejected items go to ``<dir>/rejected.jsonl`` with a warning.
"""

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
# errors that retrying cannot fix; anything else (connection refused, timeouts, 5xx) is transient
PERMANENT = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"}


# tells MLflow 3's UI this is model training (runs, metrics, charts), not a GenAI experiment (traces)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def say(message):
    print(f"hvdspar.tracking: {message}", file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


def quiet_http():
    """Short HTTP timeouts for MLflow in this process (unless the user chose otherwise)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def error_code(exc):
    return getattr(exc, "error_code", None)


def is_permanent(exc):
    return error_code(exc) in PERMANENT


class Spool:
    """The append-only record file and its meta.json."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "spool.jsonl"
        self.meta_path = self.dir / "meta.json"
        self.records = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: the rest is intact
                    continue
        self.meta = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
        self.meta.setdefault("sinks", {})
        self.meta.setdefault("created_ms", now_ms())
        self._file = None

    def append(self, record):
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        self.records.append(record)

    def save_meta(self):
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.meta_path)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class Sink:
    """Delivers a spool's records to one tracking store, from where it last stopped."""

    def __init__(self, spool, uri, artifact_location=None):
        self.spool = spool
        self.uri = uri
        self.artifact_location = artifact_location
        self.state = spool.meta["sinks"].setdefault(uri, {"run_id": None, "delivered": 0})
        self._client = None
        self._known_params = None  # the run's params, fetched once per process

    @property
    def run_id(self):
        return self.state.get("run_id")

    @property
    def pending(self):
        return len(self.spool.records) - self.state["delivered"]

    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _save(self):
        self.spool.save_meta()

    def ensure_run(self):
        """Create the run, or check that the run to continue exists. Raises on failure."""
        client = self.client()
        meta = self.spool.meta
        if self.run_id and self._known_params is None:
            from mlflow.exceptions import MlflowException

            try:
                run = client.get_run(self.run_id)
            except MlflowException as exc:
                if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                say(f"run {self.run_id} is not in {self.uri}; starting a new run there")
                self.state.update(run_id=None, delivered=0)
            else:
                self._known_params = dict(run.data.params)
                if run.info.status != "RUNNING":
                    client.update_run(self.run_id, status="RUNNING")
                return self.run_id
        if self.run_id:
            return self.run_id
        name = meta.get("experiment", "hvdspar")
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            from mlflow.exceptions import MlflowException

            try:
                experiment_id = client.create_experiment(name, artifact_location=self.artifact_location,
                                                         tags=EXPERIMENT_TAGS)
            except MlflowException as exc:  # another process created it meanwhile
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(
            experiment_id, start_time=meta["created_ms"], tags=dict(meta.get("tags", {})), run_name=meta.get("run_name")
        )
        self.state.update(run_id=run.info.run_id, delivered=0, experiment_id=experiment_id)
        self._known_params = {}
        self._save()
        return self.run_id

    def deliver(self):
        """Send every pending record. Raises on a transient failure (what was sent stays sent)."""
        records = self.spool.records
        if self.state["delivered"] >= len(records):
            return
        run_id = self.ensure_run()
        client = self.client()
        i = self.state["delivered"]
        while i < len(records):
            rec = records[i]
            kind = rec["t"]
            if kind in ("metrics", "params", "tags"):
                j, metrics, params, tags = i, [], [], []
                while j < len(records) and records[j]["t"] in ("metrics", "params", "tags"):
                    r = records[j]
                    full = len(metrics) + len(r.get("m", ())) > MAX_METRICS
                    full = full or len(params) + len(tags) + len(r.get("p", ())) > MAX_PARAMS
                    if j > i and full:
                        break
                    if r["t"] == "metrics":
                        metrics += [(k, v, r["s"], r["ts"]) for k, v in r["m"].items()]
                    elif r["t"] == "params":
                        params += list(r["p"].items())
                    else:
                        tags += list(r["p"].items())
                    j += 1
                self._log_batch(run_id, metrics, params, tags)
                i = j
            elif kind == "artifact":
                path = self.spool.dir / rec["f"]
                if path.exists():
                    client.log_artifact(run_id, str(path), rec.get("a") or None)
                i += 1
            elif kind == "status":
                client.set_terminated(run_id, rec["v"], end_time=rec["ts"])
                i += 1
            else:  # unknown record: skip
                i += 1
            self.state["delivered"] = i
            self._save()

    def _log_batch(self, run_id, metrics, params, tags):
        from mlflow.entities import Metric, Param, RunTag

        known = self._known_params if self._known_params is not None else {}
        send_params = []
        for key, value in params:
            if key in known:
                if known[key] != value:  # a resumed run with a changed setting: params are immutable
                    tags.append((f"hvdspar.resumed_param.{key}", value))
                continue
            send_params.append((key, value))
        m = [Metric(k, _metric_value(v), ts, s) for k, v, s, ts in metrics]
        p = [Param(k, v) for k, v in send_params]
        t = [RunTag(k, v) for k, v in tags]
        try:
            self._send(run_id, m, p, t)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            self._send_one_by_one(run_id, m, p, t, exc)
        for key, value in send_params:
            known[key] = value

    def _send(self, run_id, metrics, params, tags):
        client = self.client()
        for s in range(0, len(metrics), MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[s : s + MAX_METRICS], synchronous=True)
        for s in range(0, max(len(params), len(tags)), MAX_PARAMS):
            client.log_batch(run_id, params=params[s : s + MAX_PARAMS], tags=tags[s : s + MAX_TAGS], synchronous=True)

    def _send_one_by_one(self, run_id, metrics, params, tags, first_error):
        rejected = []
        for kind, items in (("metric", metrics), ("param", params), ("tag", tags)):
            for item in items:
                one = {kind: [item]}
                try:
                    self._send(run_id, one.get("metric", []), one.get("param", []), one.get("tag", []))
                except Exception as exc:
                    if not is_permanent(exc):
                        raise
                    rejected.append({"kind": kind, "key": item.key, "value": str(item.value), "error": str(exc)[:500]})
        if rejected:
            with open(self.spool.dir / "rejected.jsonl", "a") as f:
                for r in rejected:
                    f.write(json.dumps(r) + "\n")
            say(
                f"{self.uri} rejected {len(rejected)} item(s) of run {run_id} "
                f"(first: {rejected[0]['kind']} {rejected[0]['key']!r}: {rejected[0]['error'][:200]}); "
                f"they are listed in {self.spool.dir / 'rejected.jsonl'}"
            )


def _metric_value(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


class RunLogger:
    """Logs one MLflow run through a spool; see the module docstring.

    Args:
      spool_dir: where the spool lives (kept across a resume when inside the checkpoint dir).
      tracking_uri: the MLflow store.
      experiment, run_name, tags: for the run's creation (tags: e.g. mlflow.parentRunId).
      run_id: continue this run (a resumed training).
      on_run_id: called with the run id once the run exists (to store it for a resume).
      keep_spool: False removes the spool once everything is delivered.
    """

    def __init__(self, spool_dir, tracking_uri, experiment="hvdspar", run_name=None, tags=None, run_id=None,
                 on_run_id=None, keep_spool=True, flush_seconds=5.0, close_wait=15.0):
        quiet_http()
        self.spool = Spool(spool_dir)
        meta = self.spool.meta
        meta.setdefault("experiment", experiment)
        meta.setdefault("run_name", run_name)
        meta.setdefault("tags", dict(tags or {}))
        meta.setdefault("primary", tracking_uri)
        if tracking_uri != meta["primary"]:
            meta["primary"] = tracking_uri
        self.sink = Sink(self.spool, tracking_uri)
        if run_id and not self.sink.run_id:
            self.sink.state.update(run_id=run_id)
        self.spool.save_meta()
        self.on_run_id = on_run_id
        self.keep_spool = keep_spool
        self.flush_seconds = flush_seconds
        self.close_wait = close_wait
        self._retry_at = 0.0
        self._delay = 2.0
        self._down_since = None
        self._reported_run = None
        self.failures = 0  # delivery attempts that failed (and were retried)
        self.closed = False
        self.fallback_uri = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="hvdspar-mlflow", daemon=True)
        self._thread.start()

    @property
    def run_id(self):
        return self.sink.run_id

    @property
    def tracking_uri(self):
        return self.sink.uri

    # --- logging (local, cheap) -----------------------------------------------------------

    def log_params(self, params):
        if params:
            self.spool.append({"t": "params", "p": {str(k): str(v) for k, v in params.items()}})

    def set_tags(self, tags):
        if tags:
            self.spool.append({"t": "tags", "p": {str(k): str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics, step, timestamp=None):
        values = {}
        for k, v in metrics.items():
            try:
                values[str(k)] = float(v)
            except (TypeError, ValueError):
                continue
        if values:
            self.spool.append({"t": "metrics", "s": int(step), "ts": timestamp or now_ms(), "m": values})

    def log_artifact(self, local_path, artifact_path=None):
        """Copy the file into the spool and queue its upload (the copy survives an outage)."""
        local_path = Path(local_path)
        rel = Path("files") / (artifact_path or "") / local_path.name
        dest = self.spool.dir / rel
        if local_path.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, dest)
        self.spool.append({"t": "artifact", "f": str(rel), "a": artifact_path})

    def artifact_dir(self, artifact_path=""):
        """A directory in the spool to write an artifact into directly (no copy needed)."""
        d = self.spool.dir / "files" / artifact_path
        d.mkdir(parents=True, exist_ok=True)
        return d

    def history(self):
        """{key: [(step, value), ...]} of every metric logged to this spool (all sessions)."""
        out = {}
        for r in self.spool.records:
            if r["t"] == "metrics":
                for k, v in r["m"].items():
                    out.setdefault(k, []).append((r["s"], v))
        return out

    # --- delivery ---------------------------------------------------------------------------

    def maybe_flush(self):
        """Nothing to do: the delivery thread wakes every ``flush_seconds`` (kept for callers' clarity)."""

    def flush(self, force=False):
        """Ask the delivery thread to deliver now (does not wait). ``force``: ignore the retry backoff."""
        if force:
            self._retry_at = 0.0
        self._wake.set()

    def wait(self, timeout):
        """Deliver in this thread until nothing is pending or ``timeout`` s passed; True if all delivered."""
        deadline = time.monotonic() + timeout
        while True:
            self._retry_at = 0.0
            if self._deliver():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._delay / 2, left))

    def _loop(self):
        while not self._stop:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if not self._stop:
                self._deliver()

    def _deliver(self):
        """One delivery attempt (respecting the backoff); True when nothing is left. Never raises."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                return False
            if self.sink.pending <= 0:
                return True
            try:
                self.sink.deliver()
            except Exception as exc:  # the store is unreachable or refused: keep everything, retry later
                self.failures += 1
                self._retry_at = time.monotonic() + self._delay
                self._delay = min(self._delay * 2, 30.0)
                if self._down_since is None:
                    self._down_since = time.time()
                    say(
                        f"cannot reach the MLflow tracking store {self.sink.uri} ({_short(exc)}); training goes on, "
                        f"metrics are kept in {self.spool.dir} and will be delivered when it is back"
                    )
                return False
            if self._down_since is not None:
                say(f"MLflow tracking store {self.sink.uri} is back; delivered the metrics kept meanwhile")
                self._down_since = None
            self._delay = 2.0
            self._retry_at = 0.0
            if self.run_id and self.run_id != self._reported_run:
                self._reported_run = self.run_id
                if self.on_run_id:
                    self.on_run_id(self.run_id)
            return self.sink.pending <= 0

    def close(self, status="FINISHED"):
        """Mark the run ended and deliver everything, else keep it locally and say where."""
        if self.closed:
            return
        self.closed = True
        self.spool.append({"t": "status", "v": status, "ts": now_ms()})
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self.close_wait + 10)
        self.wait(self.close_wait)
        self.spool.close()
        if self.sink.pending > 0:
            self._fallback()
            return
        if not self.keep_spool:
            shutil.rmtree(self.spool.dir, ignore_errors=True)
            try:
                self.spool.dir.parent.rmdir()  # ./mlruns-spool when it is empty
            except OSError:
                pass

    def _fallback(self):
        local = "sqlite:///" + str((self.spool.dir / "mlflow.db").resolve())
        sink = Sink(self.spool, local, artifact_location=str((self.spool.dir / "mlartifacts").resolve()))
        try:
            sink.deliver()
            self.fallback_uri = local
            where = f"a local copy is in {local} (run {sink.run_id}; see it with `mlflow ui --backend-store-uri {local}`)"
        except Exception as exc:
            where = f"writing a local copy failed too ({_short(exc)})"
        say(
            f"the MLflow tracking store {self.sink.uri} stayed unreachable: {self.sink.pending} record(s) of this run "
            f"were not delivered. Nothing is lost: the spool {self.spool.dir} holds them (deliver them later with "
            f"`python -m hvdspar.tracking.replay {self.spool.dir}`); {where}"
        )


def _short(exc):
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."


def replay(spool_dir, tracking_uri=None):
    """Deliver what a spool holds and its store lacks (``python -m hvdspar.tracking.replay``). Returns the run id."""
    quiet_http()
    spool = Spool(spool_dir)
    if not spool.records:
        raise SystemExit(f"hvdspar.tracking: no spool in {spool_dir}")
    uri = tracking_uri or spool.meta.get("primary")
    sink = Sink(spool, uri)
    sink.deliver()
    return sink.run_id
