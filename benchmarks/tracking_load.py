"""Many runs logging to one MLflow server at once: does every metric arrive, exactly once?

    python -m benchmarks.tracking_load --uri http://127.0.0.1:5000            # a server you run
    python -m benchmarks.tracking_load --backends postgresql sqlite           # starts both here

``--clients`` processes (default 16) each log one run through ``hvdspar.tracking.Tracker``, as
every rank 0 of a sweep does: ``--steps`` step metrics (``log_every`` 1, paced by ``--pace`` s),
an epoch every 100 steps, then close. The server is then read back through its REST API: for
every run and metric, the steps stored must be exactly the steps logged, each once. Prints, per
server: seconds from the first client's start to the last one's close (TensorFlow's import
included), a client's seconds from its first step to its run delivered (median, max), the failed
delivery attempts (each one retried by the spool), the server's 5xx answers, metrics missing and
metrics duplicated.

With ``--backends``, PostgreSQL (Debian's, in a temporary folder) and MLflow servers on loopback
are started here, each with 4 workers as docker/compose.yaml's; tests/test_tracking_server.py
runs this same load (tests/workers/postgres_server.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH_EVERY = 100
KEYS = ("step/loss", "step/client")  # step metrics each client logs (plus Tracker's traffic ones)


def client_main(argv):
    """One client: a Tracker logging ``steps`` steps; prints a JSON line of what it did."""
    p = argparse.ArgumentParser()
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--pace", type=float, default=0.0)
    args = p.parse_args(argv)
    from hvdspar.tracking import make_tracker

    start = time.monotonic()
    tracker = make_tracker({"model": "load", "log_every": 1, "run_name": f"client-{args.index}"})
    tracker.meter.set_variables([])
    for step in range(1, args.steps + 1):
        tracker.log_step(step, {"loss": 1.0 / step, "client": args.index})
        if step % EPOCH_EVERY == 0:
            tracker.log_epoch(step // EPOCH_EVERY, {"loss": 1.0 / step}, step=step)
        if args.pace:
            time.sleep(args.pace)
    tracker.close()
    print(json.dumps({"index": args.index, "run_id": tracker.run_id, "seconds": time.monotonic() - start,
                      "failures": tracker.logger.failures, "fallback": tracker.logger.fallback_uri}), flush=True)


def run_clients(uri, experiment, clients, steps, pace, workdir):
    """Start ``clients`` client processes at once against ``uri``; their JSON results and the seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HVDSPAR_EXPERIMENT": experiment,
           "HVDSPAR_TRACKING_FLUSH_SECS": "0.5", "HVDSPAR_TRACKING_CLOSE_WAIT": "120",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.tracking_load", "client", "--index", str(i),
                               "--steps", str(steps), "--pace", str(pace)],
                              cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=open(workdir / f"client{i}.log", "w"),
                              text=True)
             for i in range(clients)]
    results = []
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"client {i} failed ({proc.returncode}):\n{(workdir / f'client{i}.log').read_text()[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, time.monotonic() - start


def expected_steps(key, steps):
    if key.startswith("step/"):
        return list(range(1, steps + 1))
    return list(range(1, steps // EPOCH_EVERY + 1))


def check(server, results, steps, keys=KEYS + ("loss",)):
    """(missing, duplicated) metric values over every client's run, read back from ``server``."""
    missing = duplicated = 0
    for r in results:
        for key in keys:
            got = [s for s, _ in server.history(r["run_id"], key)]
            want = expected_steps(key, steps)
            missing += len(set(want) - set(got))
            duplicated += len(got) - len(set(got))
    return missing, duplicated


def server_errors(server):
    """5xx answers in the server's log (uvicorn's access lines, or tracebacks of a failed request)."""
    text = server.log()
    return sum(1 for line in text.splitlines() if '" 50' in line or "OperationalError" in line)


def measure(server, backend, clients, steps, pace, workdir):
    results, seconds = run_clients(server.url, f"load-{backend}", clients, steps, pace, workdir)
    missing, duplicated = check(server, results, steps)
    own = sorted(r["seconds"] for r in results)
    return {"backend": backend, "clients": clients, "steps": steps, "seconds": round(seconds, 1),
            "client_seconds_median": round(own[len(own) // 2], 1), "client_seconds_max": round(own[-1], 1),
            "client_failures": sum(r["failures"] for r in results), "server_errors": server_errors(server),
            "fallbacks": sum(1 for r in results if r["fallback"]), "missing": missing, "duplicated": duplicated,
            "results": results}


def start_servers(backends, root):
    """{backend: MlflowServer} on loopback; PostgreSQL started for 'postgresql'. Returns (servers, stop)."""
    sys.path.insert(0, str(ROOT))
    from tests.workers.postgres_server import PostgresServer, why_absent
    from tests.workers.tracking_mlflow_server import MlflowServer

    servers, stops = {}, []
    for backend in backends:
        if backend == "postgresql":
            reason = why_absent()
            if reason:
                raise SystemExit(f"tracking_load: {reason}")
            pg = PostgresServer().start()
            stops.append(pg.stop)
            srv = MlflowServer(Path(root) / backend, backend_store_uri=pg.uri("mlflow"), workers=4, env=pg.env)
        elif backend == "sqlite":
            srv = MlflowServer(Path(root) / backend, workers=4)
        else:
            raise SystemExit(f"tracking_load: unknown backend {backend!r} (postgresql or sqlite)")
        servers[backend] = srv.start()
        stops.append(srv.kill)

    def stop():
        for fn in reversed(stops):
            fn()

    return servers, stop


def table(rows):
    head = ("| server | clients x steps | seconds | a client's seconds (median / max) | failed deliveries (retried) "
            "| server 5xx | missing | duplicated |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['clients']} x {r['steps']} | {r['seconds']} | "
                     f"{r['client_seconds_median']} / {r['client_seconds_max']} | {r['client_failures']} | "
                     f"{r['server_errors']} | {r['missing']} | {r['duplicated']} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--uri", help="an MLflow server's URL to load")
    where.add_argument("--backends", nargs="+", choices=("postgresql", "sqlite"), help="start these servers here")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pace", type=float, default=0.02, help="seconds between a client's steps")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="hvdspar-tracking-load-"))
    rows = []
    if args.uri:
        sys.path.insert(0, str(ROOT))
        from tests.workers.tracking_mlflow_server import MlflowServer

        server = MlflowServer(root / "remote")
        server.url, server.log = args.uri.rstrip("/"), lambda: ""
        rows.append(measure(server, "given", args.clients, args.steps, args.pace, root / "clients"))
    else:
        servers, stop = start_servers(args.backends, root)
        try:
            for backend, server in servers.items():
                rows.append(measure(server, backend, args.clients, args.steps, args.pace, root / backend / "clients"))
        finally:
            stop()
    print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
