"""Shared helpers for the benchmarks: timing, markdown tables, MLflow logging."""

import os
import time

import numpy as np


def best_time(fn, repeat=5, warmup=2):
    """Median wall time of fn() over ``repeat`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def markdown(rows, columns):
    """rows: list of dicts -> a markdown table with ``columns`` (name, format)."""
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt.format(r[name]) for name, fmt in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def log_to_mlflow(run_name, params, rows, key_fields, metric_fields, table=None):
    """One MLflow run per benchmark invocation; metrics named by key fields.

    Uses the default local store (sqlite:///mlflow.db in the working directory)
    unless MLFLOW_TRACKING_URI is set. Set HVDSPAR_NO_MLFLOW=1 to skip.
    """
    if os.environ.get("HVDSPAR_NO_MLFLOW"):
        return None
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri("sqlite:///mlflow.db")
    mlflow.set_experiment("hvdspar-benchmarks")
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        metrics = {}
        for r in rows:
            prefix = ".".join(str(r[k]).replace(":", "_").replace("=", "_").replace(",", "_") for k in key_fields)
            for m in metric_fields:
                metrics[f"{prefix}.{m}"] = float(r[m])
        mlflow.log_metrics(metrics)
        if table:
            mlflow.log_text(table, f"{run_name}.md")
        return run.info.run_id
