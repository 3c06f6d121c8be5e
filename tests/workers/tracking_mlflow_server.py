"""A real ``mlflow server`` on loopback for the tracking tests, and a tiny REST client for it.

    server = MlflowServer(tmp_path).start()      # sqlite store and artifacts under tmp_path
    MlflowServer(tmp_path, backend_store_uri=pg.uri("mlflow"), workers=4, env=pg.env)   # on PostgreSQL
    server.api("runs/search", {"experiment_ids": ["1"]})
    server.kill(); server.start()                # same port, same store
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root, port=None, backend_store_uri=None, workers=1, env=None):
        self.root = Path(root)
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.workers = workers
        self.env = dict(env or {})
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self, timeout=180):
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "w")
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **self.env}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", str(self.root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout} s:\n{self.log()[-3000:]}")

    def log(self):
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))

    def kill(self):
        """SIGKILL the server and everything it started (its own process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def api(self, endpoint, payload=None, **query):
        """GET (payload None) or POST the REST API at /api/2.0/mlflow/<endpoint>; returns the JSON."""
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def get(self, route, **query):
        """Raw GET of a server route (e.g. get-artifact), as bytes."""
        url = f"{self.url}/{route}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    # --- helpers over the REST API ----------------------------------------------------------

    def runs(self, experiment_name, filter_string=""):
        exp = self.api("experiments/get-by-name", experiment_name=experiment_name)["experiment"]
        body = {"experiment_ids": [exp["experiment_id"]], "max_results": 100}
        if filter_string:
            body["filter"] = filter_string
        return self.api("runs/search", body).get("runs", [])

    def history(self, run_id, key):
        out = self.api("metrics/get-history", run_id=run_id, metric_key=key, max_results=10000)
        return sorted((int(m.get("step", 0)), m["value"]) for m in out.get("metrics", []))

    def artifacts(self, run_id, path=""):
        out = self.api("artifacts/list", run_id=run_id, path=path) if path else self.api("artifacts/list", run_id=run_id)
        return {f["path"] for f in out.get("files", [])}


def params(run):
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run):
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def tags(run):
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}
