"""One training run's tracking: params at the start, step and epoch metrics, plots and config at the end.

    tracker = make_tracker(params, compressor, checkpoint_dir, variables=model.trainable_variables)
    for step in range(1, steps + 1):          # on EVERY rank (traffic is summed over ranks)
        ...train one step...
        tracker.log_step(step, {"loss": loss})   # logs when step % log_every == 0
    tracker.log_epoch(epoch, {"loss": ..., "suboptimality": ...})   # epochs done, 1 after the first
    tracker.close()

All ranks call every method; only rank 0 talks to MLflow. ``log_step`` (on its logging steps)
and ``log_epoch`` are collectives: one ``hvd.allreduce`` of the traffic counters.

A run that ends without ``close`` is closed at exit, everything delivered: FAILED after an
exception, KILLED after Ctrl-C or SIGTERM (what ``horovodrun`` sends its ranks when it is
interrupted, and schedulers when a job is cancelled). SIGTERM is turned into ``SystemExit`` for
that, unless the program set its own handler.
"""

import atexit
import json
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path

from hvdspar.tracking import context
from hvdspar.tracking.meter import TrafficMeter
from hvdspar.tracking.params import flatten, jsonable, run_config

RUN_ID_FILE = "mlflow_run_id"
SPOOL_DIR = "mlflow-spool"
# step metrics from the traffic totals (epoch metrics get all of them)
STEP_TRAFFIC = ("bytes_sent", "dense_bytes", "compression_ratio", "bits_communicated", "density", "variance_ratio")


def numeric(metrics):
    """{key: float} of the entries that are numbers (Keras logs may hold tensors or numpy scalars)."""
    out = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _user():
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def short_spec(config):
    """'gspar(rho=0.01)' from a run config: the compressor's name, budget and memory, not every setting."""
    name = str(config.get("compressor", "none")).split(":")[0]
    keep = [f"{k}={config[f'compressor.{k}']}" for k in ("rho", "epsilon", "ratio", "k")
            if config.get(f"compressor.{k}") is not None]
    if config.get("compressor.memory") is True:
        keep.append("memory")
    return f"{name}({','.join(keep)})" if keep else name


_interrupted = []  # the signal that stopped this process, if any (Ctrl-C or SIGTERM)


def _note_interrupts():
    """Remember Ctrl-C and SIGTERM for the run's end status; SIGTERM exits through Python (so atexit
    closes the run) instead of killing the process with its metrics pending. Only default handlers
    are replaced, from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_int(signum, frame):
        _interrupted.append(signum)
        raise KeyboardInterrupt

    def on_term(signum, frame):
        _interrupted.append(signum)
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_int)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)


def read_run_id(checkpoint_dir):
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / RUN_ID_FILE
    if path.exists():
        text = path.read_text().strip()
        return text or None
    return None


def write_run_id(checkpoint_dir, run_id):
    if checkpoint_dir and run_id:
        path = Path(checkpoint_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / RUN_ID_FILE).write_text(run_id + "\n")


def trainable_variables(model):
    """The model's trainable variables, or [] while a Keras model without an Input has not been built."""
    if model is None:
        return []
    try:
        return list(model.trainable_variables)
    except ValueError:  # "Weights for model ... have not yet been created"
        return []


class Tracker:
    """See the module docstring. ``params`` may carry log_every, tracking (off or a URI), experiment, run_name."""

    def __init__(self, params=None, compressor=None, checkpoint_dir=None, variables=None, run_id=None):
        self.params = dict(params or {})
        self.compressor = compressor
        self.checkpoint_dir = str(checkpoint_dir) if checkpoint_dir else None
        self.rank, self.size, hvd = context.horovod_world()
        self.enabled = context.enabled(self.params)
        self.every = context.log_every(self.params)
        self.meter = TrafficMeter(compressor, self.size, hvd, variables)
        self.logger = None
        self.config = None
        self.steps = 0
        self.closed = False
        self._epoch_started = None
        self._described = False
        if self.enabled and self.rank == 0:
            self._open(run_id)

    # --- setup ------------------------------------------------------------------------------

    def _open(self, run_id=None):
        from hvdspar.tracking.logger import RunLogger

        run_id = run_id or read_run_id(self.checkpoint_dir)
        if self.checkpoint_dir:
            spool, keep = Path(self.checkpoint_dir) / SPOOL_DIR, True
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            spool, keep = Path.cwd() / "mlruns-spool" / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}", False
        parent = os.environ.get("HVDSPAR_PARENT_RUN_ID") or self.params.get("parent_run_id")
        extra = {"tracking_uri": context.tracking_uri(self.params), "log_every": self.every}
        if parent:
            extra["parent_run_id"] = parent
        self.config = run_config({k: v for k, v in self.params.items() if k != "tracking"}, self.compressor,
                                 self.size, extra)
        tags = {
            "hvdspar.compressor": self.config["compressor"],
            "mlflow.source.git.commit": self.config["git_commit"],
            "mlflow.source.name": " ".join(sys.argv[:1]) or "python",
            "mlflow.source.type": "LOCAL",
            "mlflow.user": _user(),
        }
        if parent:
            tags["mlflow.parentRunId"] = parent
        self.logger = RunLogger(
            spool,
            context.tracking_uri(self.params),
            experiment=context.experiment_name(self.params),
            run_name=self._run_name(),
            tags=tags,
            run_id=run_id,
            on_run_id=lambda rid: write_run_id(self.checkpoint_dir, rid),
            keep_spool=keep,
            flush_seconds=context.flush_seconds(),
            close_wait=context.close_wait_seconds(),
        )
        self.logger.log_params(flatten(self.config))
        self._write_config()
        self.logger.flush(force=True)  # create the run now, so it shows in the UI while training
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref()._at_exit())
        _note_interrupts()

    def _run_name(self):
        name = os.environ.get("HVDSPAR_RUN_NAME") or self.params.get("run_name")
        if name:
            return str(name)
        parts = [str(self.params[k]) for k in ("model", "data") if self.params.get(k)]
        parts.append(short_spec(self.config))
        parts.append(f"np{self.size}")
        return "-".join(parts)

    def _write_config(self):
        directory = self.logger.artifact_dir("")
        config = jsonable(self.config)
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        self.logger.log_artifact(directory / "config.json")
        try:
            import yaml

            (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
            self.logger.log_artifact(directory / "config.yaml")
        except ImportError:  # pragma: no cover - pyyaml is a dependency
            pass

    def describe(self, model=None, optimizer=None, variables=None):
        """Fill in what the params may lack from the Keras model/optimizer (model name, optimizer,
        learning rate, trainable parameters), and the variables for none/fp16 byte counting."""
        if variables is None:
            variables = trainable_variables(model)
        variables = list(variables)
        if variables:
            self.meter.set_variables(variables)
        optimizer = optimizer or getattr(model, "optimizer", None)
        if self.logger is None or self._described:
            return
        self._described = bool(variables) or model is None  # an unbuilt model: again once it is built
        found = {}
        if model is not None and "model" not in self.params:
            found["model"] = getattr(model, "name", type(model).__name__)
        if variables:
            found["trainable_parameters"] = sum(int(v.shape.num_elements()) for v in variables)
        if optimizer is not None:
            inner = getattr(optimizer, "_optimizer", None) or optimizer  # Horovod's wrapper keeps the original
            if not any(k in self.params for k in ("optimizer", "opt")):
                found["optimizer"] = type(inner).__name__
            if not any(k in self.params for k in ("learning_rate", "lr")):
                try:
                    lr = inner.learning_rate
                    found["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
                except (AttributeError, TypeError, ValueError):
                    pass
        found = {k: v for k, v in found.items() if k not in self.config}
        if found:
            self.config.update(found)
            self.logger.log_params(flatten(found))
            self._write_config()

    # --- metrics ----------------------------------------------------------------------------

    def _traffic(self, steps):
        """Traffic totals over ranks (collective), or {} if bytes cannot be counted."""
        if not self.meter.own_counters and self.meter._step_bytes is None:
            if not getattr(self, "_warned_vars", False):
                self._warned_vars = True
                if self.rank == 0:
                    from hvdspar.tracking.logger import say

                    say(f"no trainable variables given for {self.meter.spec!r}: bytes are not counted "
                        "(pass variables=model.trainable_variables to make_tracker)")
            return {}
        return self.meter.totals(steps)

    def _fallback(self):
        """The dense fallback's decisions, alike on every rank: ``dense_tensors`` / ``tensors`` of
        the last step and, once fallback="auto" has measured it, the link it decided on
        (``link_latency_s``, ``link_bandwidth_MBps``). {} for compressors without them."""
        try:
            t = self.compressor.traffic()
        except AttributeError:  # Horovod's none/fp16
            return {}
        out = {k: float(t[k]) for k in ("dense_tensors", "tensors") if k in t}
        if getattr(self.compressor, "fallback", None) == "auto":
            from hvdspar import link

            net = link.measured()
            if net is not None:
                out.update(link_latency_s=net.latency_s, link_bandwidth_MBps=net.bandwidth_Bps / 1e6)
        return out

    def log_step(self, step, metrics=None):
        """After optimizer step ``step`` (1, 2, ...); logs when step % log_every == 0. All ranks."""
        self.steps = int(step)
        if not self.enabled or not self.every or self.steps % self.every:
            return
        traffic = self._traffic(self.steps)
        if self.logger is None:
            return
        values = {f"step/{k}": v for k, v in numeric(metrics).items()}
        values.update({f"step/{k}": traffic[k] for k in STEP_TRAFFIC if k in traffic})
        self.logger.log_metrics(values, self.steps)
        self.logger.maybe_flush()

    def epoch_begin(self):
        self._epoch_started = time.monotonic()

    def log_epoch(self, epoch, metrics=None, step=None):
        """After ``epoch`` epochs (1 after the first). Traffic totals replace same-named entries. All ranks."""
        if step is not None:
            self.steps = int(step)
        if not self.enabled:
            return
        traffic = self._traffic(self.steps)
        if self.logger is None:
            return
        values = numeric(metrics)
        values.update(traffic)
        values.update(self._fallback())
        values["global_step"] = self.steps
        if self._epoch_started is not None:
            values["epoch_time_s"] = time.monotonic() - self._epoch_started
            self._epoch_started = None
        self.logger.log_metrics(values, int(epoch))
        self.logger.flush()

    # --- end --------------------------------------------------------------------------------

    @property
    def run_id(self):
        return self.logger.run_id if self.logger else None

    def close(self, status="FINISHED"):
        """Plots and config as artifacts, the run ended, everything delivered (or kept; see logger)."""
        if self.closed:
            return
        self.closed = True
        if self.logger is None:
            return
        try:
            from hvdspar.tracking.plots import run_plots

            history = self.logger.history()
            if history:
                for path in run_plots(history, self.logger.artifact_dir("plots"), title=self.logger.spool.meta.get("run_name")):
                    self.logger.log_artifact(path, "plots")
        except Exception as exc:  # a plot must never cost the run its metrics
            from hvdspar.tracking.logger import say

            say(f"plots failed: {exc!r}")
        self.logger.close(status)

    def _at_exit(self):
        if not self.closed:
            self.close(status="KILLED" if _interrupted else "FAILED")
