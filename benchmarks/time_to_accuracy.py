"""Time to accuracy: wall-clock seconds to a target loss, per compressor, network and ranks.

    python -m benchmarks.time_to_accuracy            # softmax task, every network, 4 and 2 ranks (needs root)
    python -m benchmarks.time_to_accuracy --tasks cnn-cifar10 logreg-a9a --ranks 4 --append
    python -m benchmarks.time_to_accuracy --quick    # 2 and 4 ranks at 100 Mbit/s and unshaped only, shorter runs

For every network (unshaped loopback, loopback shaped to 1 Gbit/s, to 100
Mbit/s: a network namespace whose ``lo`` has a tc tbf qdisc, see
benchmarks/netns.py and docs/design.md) and every rank count (2, 4; -np
4 on a 2-core machine oversubscribes the CPU, which slows the compute part of
every compressor alike), one ``horovodrun`` runs benchmarks/workers/tta_worker.py,
which trains one task (--tasks: a wide softmax regression, 16384 features x 32
classes = 2 MiB of fp32 gradient per step; l2-logistic regression on the
paper's synthetic data and on a9a; the paper's CNN on CIFAR-10; see the
worker's docstring) with each compressor in turn and measures, inside the
worker, the training seconds until the loss first drops to the task's target
(and the test accuracy reaches its target), and the final test accuracy.
``--append`` merges the new rows into out/time_to_accuracy.json, so several
sweeps build one table. Prints a markdown table and logs every figure to
MLflow (experiment "hvdspar-benchmarks"; MLFLOW_TRACKING_URI or
sqlite:///mlflow.db in the working directory). Namespaces are removed at the
end, also on errors or Ctrl-C.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import netns
from benchmarks.common import log_to_mlflow, stamp
from hvdspar.tracking.progress import bar

ROOT = Path(__file__).resolve().parent.parent
#: every compressor with its default fallback (by bytes: the method itself), and GSpar with the
#: opt-in timed fallback (fallback=auto: dense where the measured link says compressing does not pay)
COMPRESSORS = ["none", "fp16", "gspar:rho=0.01", "gspar:rho=0.01,fallback=auto", "unisp:rho=0.01",
               "topk:ratio=0.01,memory=true", "qsgd:levels=4"]
#: per task: learning rate, target loss, target accuracy (see benchmarks/workers/tta_worker.py)
TASKS = {
    "softmax": {"lr": 0.3, "target_loss": 1.5, "target_acc": 0.6},
    "logreg-synthetic": {"lr": 0.5, "target_loss": 0.05, "target_acc": 0.62},
    "logreg-a9a": {"lr": 0.5, "target_loss": 0.36, "target_acc": 0.83},
    "cnn-cifar10": {"lr": 5e-4, "target_loss": 1.5, "target_acc": 0.45},
}
NETWORKS = {"100mbit": "100mbit", "loopback": None, "1gbit": "1gbit"}


def horovodrun():
    exe = Path(sys.executable).with_name("horovodrun")
    return str(exe) if exe.exists() else shutil.which("horovodrun")


def run_launch(network, rate, ranks, compressors, worker_args, out_dir, timeout,
               worker="benchmarks.workers.tta_worker"):
    """One horovodrun of ``worker`` on this machine (inside a fresh namespace) -> the worker's result dicts."""
    out = Path(out_dir) / f"tta-{network}-{ranks}-{time.time_ns()}.json"
    start = time.time()
    # shaped: a fresh namespace (root); unshaped: the host's own loopback (no root needed)
    with (netns.namespace(f"hvdspar-tta-{os.getpid()}", rate) if rate else contextlib.nullcontext([])) as prefix:
        rows = run_worker(prefix, ["-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"], worker,
                          compressors, worker_args, out, timeout, network)
    for r in rows:
        r["network"] = network
    print(f"  ({network}, {ranks} ranks: {time.time() - start:.0f} s including start-up)", flush=True)
    return rows


def run_worker(prefix, launch_args, worker, compressors, worker_args, out, timeout, label, env=None):
    """``prefix + horovodrun launch_args python -m worker --compressors ... --out out worker_args``,
    its "[tta]" lines printed as they come, stopped after ``timeout`` s -> the rows of ``out``."""
    cmd = [horovodrun(), *launch_args, sys.executable, "-m", worker, "--compressors", *compressors,
           "--out", str(out), *worker_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    lines = []
    proc = subprocess.Popen(prefix + cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # also a launch that hangs without a word
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "[tta]" in line:
                print(f"  {label:>8} {line.split('[tta]', 1)[1].strip()}", flush=True)
    finally:
        watchdog.cancel()
        proc.wait()
    if proc.returncode != 0 or not out.exists():
        why = f"killed after {timeout:.0f} s" if watchdog.finished.is_set() and proc.returncode < 0 else proc.returncode
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"horovodrun failed ({why}) on {label}:\n{tail}")
    return json.loads(out.read_text())["results"]


def add_relative(rows):
    """Speed-up of time-to-target against none and fp16 of the same network and ranks."""
    base = {(r["task"], r["network"], r["ranks"], r["spec"]): r for r in rows}
    for r in rows:
        for ref in ("none", "fp16"):
            b = base.get((r["task"], r["network"], r["ranks"], ref))
            ok = b and b["time_to_target_s"] and r["time_to_target_s"]
            r[f"speedup_vs_{ref}"] = b["time_to_target_s"] / r["time_to_target_s"] if ok else None


def fmt(v, f):
    return "n/a" if v is None else format(v, f)


def table(rows):
    head = ("| task | network | ranks | compressor | s to target loss | s to target acc | steps | ms/step | "
            "bytes/step | dense tensors | final loss | final acc % | x vs none | x vs fp16 |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['network']} | {r['ranks']} | {r['spec']} | {fmt(r['time_to_target_s'], '.2f')} | "
            f"{fmt(r.get('time_to_acc_s'), '.2f')} | {fmt(r['steps_to_target'], 'd')} | "
            f"{r['seconds_per_step'] * 1000:.1f} | {r['bytes_per_step']:.0f} | "
            f"{r['dense_tensors']}/{r.get('tensors', '?')} | {r['final_loss']:.3f} | {100 * r['final_acc']:.1f} | "
            f"{fmt(r['speedup_vs_none'], '.2f')} | {fmt(r['speedup_vs_fp16'], '.2f')} |"
        )
    return "\n".join(lines)


#: logged per cell as <task>.<network>.np<ranks>.<spec>.<metric>
METRICS = ("time_to_target_s", "time_to_acc_s", "dense_tensors", "steps_to_target", "final_loss", "final_acc",
           "seconds_per_step", "bytes_per_step", "speedup_vs_none", "speedup_vs_fp16")


def log_mlflow(rows, params, text):
    log_to_mlflow("time_to_accuracy", {k: str(v)[:500] for k, v in params.items()},
                  [{**r, "np": f"np{r['ranks']}"} for r in rows], ["task", "network", "np", "spec"], METRICS,
                  table=text, artifacts={"time_to_accuracy.json": json.dumps(rows, indent=1)})


def merge(old, new):
    """Rows of ``old`` not re-measured in ``new``, then ``new`` (keyed by task, network, ranks, spec)."""
    key = lambda r: (r.get("task", "softmax"), r["network"], r["ranks"], r["spec"])  # noqa: E731
    seen = {key(r) for r in new}
    return [r for r in old if key(r) not in seen] + new


NOTE = """
time = mean over ranks of the training seconds (evaluation excluded) until the target loss
(softmax: test loss; logreg: the training objective f(w) incl. the l2 term; CNN: test loss, BatchNorm
on batch statistics) and the target test accuracy; n/a = not reached within the run's cap. Each run
stops at the target loss, so "final" is the model at that point. x vs none/fp16 = their time to
the target loss / this time. dense tensors = tensors the fallback sent dense / all. Targets
(loss, accuracy) and learning rates: {targets}. -np 4 on a 2-core machine oversubscribes the CPU.
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="unshaped and 100 Mbit/s only, at most 15 s of training per run")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["softmax"])
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=None)
    p.add_argument("--ranks", nargs="+", type=int, default=[4, 2])
    p.add_argument("--compressors", nargs="+", default=COMPRESSORS)
    p.add_argument("--target-loss", type=float, default=None, help="override the task's target loss")
    p.add_argument("--lr", type=float, default=None, help="override the task's learning rate")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="training seconds per run before giving up on the target (default 150, --quick 15)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per horovodrun")
    p.add_argument("--out", default="out", help="folder for the markdown table and JSON")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of out/time_to_accuracy.json that this sweep does not re-measure")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="also draw the figures of every row (after --append: old and new) into DIR, e.g. docs")
    args = p.parse_args(argv)
    networks = args.networks or (["loopback", "100mbit"] if args.quick else list(NETWORKS))
    max_s = args.max_seconds or (15.0 if args.quick else 150.0)
    if os.geteuid() != 0 and any(NETWORKS[n] for n in networks):
        sys.exit("time_to_accuracy: shaping needs root (ip netns, tc); run as root or use --networks loopback")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "time_to_accuracy.json").read_text()) if args.append and (out / "time_to_accuracy.json").exists() else []

    rows = []
    start = time.time()
    progress = bar(len(args.tasks) * len(args.ranks) * len(networks), "time_to_accuracy", unit="launch")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for task in args.tasks:
                cfg = {**TASKS[task], **{k: v for k, v in (("lr", args.lr), ("target_loss", args.target_loss)) if v}}
                worker_args = ["--task", task, "--target-loss", str(cfg["target_loss"]), "--target-acc",
                               str(cfg["target_acc"]), "--lr", str(cfg["lr"]), "--max-seconds", str(max_s)]
                for ranks in args.ranks:
                    for network in networks:
                        new = run_launch(network, NETWORKS[network], ranks, args.compressors, worker_args, tmp,
                                         args.timeout)
                        rows += [{**r, "target_loss": cfg["target_loss"], "stamp": stamp()} for r in new]
                        (out / "time_to_accuracy.partial.json").write_text(json.dumps(merge(previous, rows), indent=1))
                        progress.update()
        finally:
            progress.close()
            netns.delete(f"hvdspar-tta-{os.getpid()}")
    rows = merge(previous, rows)
    for r in rows:
        r.setdefault("task", "softmax")
    add_relative(rows)
    text = table(rows)
    note = NOTE.format(targets=json.dumps(TASKS)) + f"This sweep took {time.time() - start:.0f} s."
    print("\n" + text + note)
    (out / "time_to_accuracy.md").write_text(text + "\n" + note + "\n")
    (out / "time_to_accuracy.json").write_text(json.dumps(rows, indent=1))
    if args.figures:
        from benchmarks.figures import tta_figures

        for path in tta_figures(rows, args.figures):
            print(f"wrote {path}")
    if not args.no_mlflow:
        log_mlflow(rows, {**vars(args), "networks": networks, "max_seconds": max_s}, text + note)
    return rows


if __name__ == "__main__":
    main()
