"""Run a grid of trainings as child runs of one MLflow parent run, then compare them.

    python -m hvdspar.tracking.sweep --np 2 --compressors gspar,unisp,topk --rho 0.1,0.01 --seeds 0 \\
        -- --model logreg --data synthetic --epochs 2

Each (compressor, budget, seed) is one ``horovodrun -np N ... python -m hvdspar.training.train
--compressor SPEC --seed S <args after -->`` whose run is a child of the sweep's parent run
(``HVDSPAR_PARENT_RUN_ID``; the child's tracker sets the tag ``mlflow.parentRunId``). The budget
list (--rho) goes to whichever budget argument a compressor takes: rho (gspar, unisp), ratio
(topk, randomk) or budget (atomo); compressors without one (none, fp16, terngrad, qsgd) run once
per seed. At the end the parent gets ``summary.md``, ``summary.csv``, ``comparison.png`` (loss or
suboptimality against epochs and against bits communicated) and each child's output in ``logs/``.
"""

import argparse
import csv
import inspect
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hvdspar.tracking import context
from hvdspar.tracking.logger import EXPERIMENT_TAGS
from hvdspar.tracking.params import flatten, git_commit, versions
from hvdspar.tracking.progress import bar

BUDGET_ARGS = ("rho", "ratio", "budget")
SUMMARY_METRICS = (
    "loss", "accuracy", "test_accuracy", "suboptimality", "bytes_sent", "dense_bytes", "compression_ratio",
    "bits_communicated", "density", "variance_ratio",
)


def budget_arg(name):
    """The budget argument compressor ``name`` takes (rho, ratio, budget), or None."""
    from hvdspar import spec

    name = name.lower()
    if name not in spec.available():
        raise SystemExit(f"tracking.sweep: unknown compressor {name!r}; known: {', '.join(spec.available())}")
    cls = spec._REGISTRY.get(name)
    if cls is None:  # Horovod's none / fp16
        return None
    params = inspect.signature(cls.__init__).parameters
    return next((a for a in BUDGET_ARGS if a in params), None)


def grid(compressors, budgets, seeds):
    """[(label, spec, name, budget, seed)] in a stable order."""
    out = []
    for name in compressors:
        arg = budget_arg(name)
        for budget in budgets if arg and budgets else [None]:
            spec = f"{name}:{arg}={budget}" if budget is not None else name
            for seed in seeds:
                label = f"{name}({arg}={budget})" if budget is not None else name
                out.append((f"{label} seed={seed}", spec, name, budget, seed))
    return out


def _split_list(text, cast=str):
    return [cast(x.strip()) for x in text.split(",") if x.strip()] if text else []


def horovodrun():
    exe = Path(sys.executable).with_name("horovodrun")
    return str(exe) if exe.exists() else (shutil.which("horovodrun") or "horovodrun")


def child_command(args, spec, seed, train_args):
    target = ["-m", args.module] if not args.script else [args.script]
    cmd = [horovodrun(), "-np", str(args.np), "-H", f"localhost:{args.np}", "--gloo", sys.executable, *target]
    return cmd + [args.compressor_flag, spec, args.seed_flag, str(seed), *train_args]


def parse(argv):
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    else:
        train_args = []
    p = argparse.ArgumentParser(prog="python -m hvdspar.tracking.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=2, help="ranks per training (horovodrun -np)")
    p.add_argument("--compressors", required=True, help="comma-separated names: gspar,unisp,topk,none,...")
    p.add_argument("--rho", default="", help="comma-separated budgets (rho / ratio / budget)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: HVDSPAR_EXPERIMENT or hvdspar)")
    p.add_argument("--name", default=None, help="the parent run's name")
    p.add_argument("--module", default="hvdspar.training.train", help="training module run with python -m")
    p.add_argument("--script", default=None, help="a training script to run instead of --module")
    p.add_argument("--compressor-flag", default="--compressor")
    p.add_argument("--seed-flag", default="--seed")
    p.add_argument("--timeout", type=float, default=None, help="seconds per child")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed child")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    if args.np < 1:
        p.error("--np must be >= 1")
    return args, train_args


def _history(client, run_id, keys):
    out = {}
    for key in keys:
        try:
            out[key] = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        except Exception:  # noqa: BLE001 - a missing metric is an empty series
            out[key] = []
    return out


def summarize(client, experiment_id, parent_id, children, out_dir):
    """Write summary.md, summary.csv and comparison.png into out_dir; returns (rows, paths)."""
    from hvdspar.tracking.plots import comparison

    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=1000)
    by_name = {}
    for r in runs:  # the newest run of each name (search order: newest first)
        by_name.setdefault(r.info.run_name, r)
    rows, curves = [], []
    for child in children:
        run = by_name.get(child["label"])
        row = {"run": child["label"], "compressor": child["name"], "budget": child["budget"], "seed": child["seed"],
               "exit_code": child["returncode"], "status": run.info.status if run else "NO RUN",
               "wall_s": round(child["wall_s"], 1)}
        metrics = run.data.metrics if run else {}
        for key in SUMMARY_METRICS:
            row[key] = metrics.get(key)
        row["run_id"] = run.info.run_id if run else ""
        rows.append(row)
        if run:
            curves.append((child["label"], _history(client, run.info.run_id, (
                "loss", "suboptimality", "bits_communicated", "global_step", "step/loss", "step/bits_communicated"))))
    columns = list(rows[0]) if rows else []
    # drop metric columns no run has
    columns = [c for c in columns if c not in SUMMARY_METRICS or any(r[c] is not None for r in rows)]
    out_dir = Path(out_dir)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out_dir / "summary.md").write_text(markdown_table(rows, columns))
    paths = [out_dir / "summary.md", out_dir / "summary.csv"]
    if curves:
        paths.append(Path(comparison(curves, str(out_dir / "comparison.png"))))
    return rows, paths


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown_table(rows, columns):
    out = io.StringIO()
    out.write("| " + " | ".join(columns) + " |\n")
    out.write("|" + "|".join("---" for _ in columns) + "|\n")
    for r in rows:
        out.write("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |\n")
    return out.getvalue()


def main(argv=None):
    args, train_args = parse(sys.argv[1:] if argv is None else list(argv))
    compressors = _split_list(args.compressors)
    budgets = _split_list(args.rho, float)
    seeds = _split_list(args.seeds, int)
    if not compressors or not seeds:
        raise SystemExit("hvdspar.tracking.sweep: give at least one compressor and one seed")
    runs = grid(compressors, budgets, seeds)
    if args.dry_run:
        for label, spec, _, _, seed in runs:
            print(f"{label}: {' '.join(child_command(args, spec, seed, train_args))}")
        return 0

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    uri = context.tracking_uri()
    experiment = args.experiment or context.experiment_name()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
    name = args.name or f"sweep {','.join(compressors)} rho={args.rho or '-'} seeds={args.seeds} np{args.np}"
    parent = client.create_run(experiment_id, run_name=name, tags={"hvdspar.sweep": "true",
                                                                    "mlflow.source.git.commit": git_commit()})
    parent_id = parent.info.run_id
    params = {"sweep.compressors": ",".join(compressors), "sweep.rho": args.rho or "-", "sweep.seeds": args.seeds,
              "sweep.np": args.np, "sweep.children": len(runs), "sweep.train_args": " ".join(train_args),
              "sweep.target": args.script or args.module, "git_commit": git_commit(), "version": versions()}
    from mlflow.entities import Param

    client.log_batch(parent_id, params=[Param(k, v) for k, v in flatten(params).items()], synchronous=True)
    print(f"tracking.sweep: parent run {parent_id} ({name}) in experiment {experiment!r} at {uri}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="hvdspar-sweep-"))
    (work / "logs").mkdir()
    env_base = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HVDSPAR_EXPERIMENT": experiment,
                "HVDSPAR_PARENT_RUN_ID": parent_id}
    children, failed = [], 0
    progress = bar(len(runs), "tracking.sweep")
    for i, (label, spec, cname, budget, seed) in enumerate(runs, 1):
        cmd = child_command(args, spec, seed, train_args)
        log_path = work / "logs" / f"{i:02d}-{cname}-{budget}-seed{seed}.txt".replace("None", "na")
        print(f"[{i}/{len(runs)}] {label}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(cmd, env={**env_base, "HVDSPAR_RUN_NAME": label}, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = -9
                log.write(f"\ntracking.sweep: killed after {args.timeout} s\n")
        wall = time.monotonic() - t0
        children.append({"label": label, "spec": spec, "name": cname, "budget": budget, "seed": seed,
                         "returncode": rc, "wall_s": wall})
        if rc != 0:
            failed += 1
            tail = log_path.read_text()[-3000:]
            print(f"    FAILED (exit {rc}) after {wall:.0f} s; output tail:\n{tail}", flush=True)
            if args.fail_fast:
                break
        else:
            print(f"    done in {wall:.0f} s", flush=True)
        progress.update()
    progress.close()

    rows, paths = summarize(client, experiment_id, parent_id, children, work)
    for path in paths:
        client.log_artifact(parent_id, str(path))
    client.log_artifacts(parent_id, str(work / "logs"), "logs")
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric("children_failed", failed, ts, 0),
                                         Metric("children", len(children), ts, 0)], synchronous=True)
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    print((work / "summary.md").read_text())
    see = f"open {uri}" if uri.startswith("http") else f"run `mlflow ui --backend-store-uri {uri}`"
    print(f"tracking.sweep: {len(children) - failed}/{len(runs)} children succeeded; summary.md, summary.csv, "
          f"comparison.png and logs/ are artifacts of the parent run {parent_id}; to compare the runs, {see}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
