"""Shared helpers for the benchmarks: timing, markdown tables, MLflow logging."""

import contextlib
import os

from hvdspar.link import median_seconds, ready


def best_time(fn, repeat=5, warmup=2):
    """Median wall time of fn() over ``repeat`` calls after ``warmup`` calls (seconds), each call
    waiting for its result (``ready``)."""
    return median_seconds(lambda: ready(fn()), repeat, warmup)


def markdown(rows, columns):
    """rows: list of dicts -> a markdown table with ``columns`` (name, format)."""
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt.format(r[name]) for name, fmt in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def metric_key(text, keep="._-"):
    """``text`` as a legal MLflow metric name: characters outside alphanumerics and ``keep`` become '_'."""
    return "".join(c if c.isalnum() or c in keep else "_" for c in str(text))


@contextlib.contextmanager
def mlflow_run(run_name):
    """An MLflow run in the experiment "hvdspar-benchmarks", or None when HVDSPAR_NO_MLFLOW is set.

    Uses the default local store (sqlite:///mlflow.db in the working directory)
    unless MLFLOW_TRACKING_URI is set. Yields the mlflow module (or None).
    """
    if os.environ.get("HVDSPAR_NO_MLFLOW"):
        yield None
        return
    import mlflow

    # explicit every time: a URI set earlier in this process would otherwise win over the environment's
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    mlflow.set_experiment("hvdspar-benchmarks")
    with mlflow.start_run(run_name=run_name):
        yield mlflow


def log_to_mlflow(run_name, params, rows, key_fields, metric_fields, table=None, artifacts=None):
    """One MLflow run per benchmark invocation (see ``mlflow_run``).

    Each row gives the metrics ``<key fields>.<metric>`` (e.g. ``softmax.gspar_rho_0.01.final.diff``);
    a metric that is None (a target not reached) is left out rather than logged as a number.
    ``table`` is logged as ``<run_name>.md``, ``artifacts`` ({file name: text}) as text files.
    """
    with mlflow_run(run_name) as mlflow:
        if mlflow is None:
            return
        mlflow.log_params(params)
        metrics = {}
        for r in rows:
            prefix = ".".join(metric_key(r[k]) for k in key_fields)
            for m in metric_fields:
                if r.get(m) is not None:
                    metrics[f"{prefix}.{m}"] = float(r[m])
        mlflow.log_metrics(metrics)
        if table:
            mlflow.log_text(table, f"{run_name}.md")
        for name, text in (artifacts or {}).items():
            mlflow.log_text(text, name)


def stamp():
    """'commit abc1234, 2-core AMD EPYC': what every table and figure is labelled with."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip() or "unknown"
        # "+dirty" when the measured code differs from the commit (docs and tests do not count)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "hvdspar", "training",
                                "tracking", "benchmarks"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "unknown", ""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"commit {sha}{'+dirty' if dirty else ''}, {os.cpu_count()}-core {cpu}"
