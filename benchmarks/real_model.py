"""Real-size models under 2 ranks with only the compression line changed: Horovod's Keras and
custom-loop synthetic benchmarks in shape, with none, fp16 and GSpar (as it is, with groups=1, per tensor).

    python -m benchmarks.real_model                         # ResNet50, Keras loop, both networks, all modes
    python -m benchmarks.real_model --models ResNet50 MobileNetV2 --loops keras custom --networks loopback

Each (network, loop, model, mode) is one ``horovodrun -np 2`` of
benchmarks/workers/real_model_worker.py (see there for the loops and modes),
on the unshaped loopback and on a loopback shaped to 100 Mbit/s (the network
namespace of benchmarks/netns.py; needs root). Reported: seconds to the end of
the first step (tracing included), images per second after it, peak resident
memory per rank, wall seconds of the whole launch, and the ratios to none.

Resumable: every finished (network, mode) is written to ``<out>/real_model.json``
at once; a later call skips those already there (``--force`` re-measures).
A mode that fails or runs past ``--timeout`` is recorded with its error.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import netns
from benchmarks.common import log_to_mlflow, markdown
from benchmarks.workers.real_model_worker import LOOPS, MODES
from hvdspar.tracking.progress import bar

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"loopback": None, "100mbit": "100mbit"}


def run_one(network, loop, model, mode, cap, args, tmp):
    out = Path(tmp) / f"{network}-{loop}-{model}-{mode}-{cap}.json"
    exe = Path(sys.executable).with_name("horovodrun")
    cmd = [str(exe), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
           "benchmarks.workers.real_model_worker", "--mode", mode, "--loop", loop, "--model", model, "--batch",
           str(args.batch), "--steps", str(args.steps), "--rho", str(args.rho), "--out", str(out)]
    if cap is not None:
        cmd += ["--bucket-mb", str(cap)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    rate = NETWORKS[network]
    start = time.time()
    row = {"network": network, "loop": loop, "mode": mode, "model": model, "bucket_mb": cap}
    with (netns.namespace(f"hvdspar-rm-{os.getpid()}", rate) if rate else contextlib.nullcontext([])) as prefix:
        try:
            proc = subprocess.run(prefix + cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode == 0 and out.exists():
                row.update(json.loads(out.read_text()))
            else:
                tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "W tensorflow" not in ln][-8:]
                row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)[-600:]
        except subprocess.TimeoutExpired:
            row["error"] = f"timeout after {args.timeout:.0f} s"
    row["wall_s"] = time.time() - start
    return row


def table(rows):
    base = {group(r): r for r in rows if r["mode"] == "none" and "error" not in r}
    out = []
    for r in rows:
        b = base.get(group(r))
        ok = "error" not in r
        out.append({
            "network": r["network"], "loop": r.get("loop", "keras"), "model": r["model"],
            "mode": r["mode"] + (f" cap {r['bucket_mb']:g} MB" if r.get("bucket_mb") is not None else ""),
            "messages": f"{r['messages']}/{r['tensors']}" if ok else "-",
            "first": f"{r['first_step_s']:.1f}" if ok else "-",
            "ips": f"{r['images_per_s']:.2f}" if ok else "-",
            "x_ips": f"{r['images_per_s'] / b['images_per_s']:.2f}" if ok and b else "-",
            "peak": f"{max(r['peak_mb']) / 1024:.2f}" if ok else "-",
            "x_peak": f"{max(r['peak_mb']) / max(b['peak_mb']):.2f}" if ok and b else "-",
            "wall": f"{r['wall_s']:.0f}",
            "x_wall": f"{r['wall_s'] / b['wall_s']:.2f}" if ok and b else "-",
            "ratio": f"{r['ratio']:.4f}" if ok and r.get("ratio") is not None else "-",
            "var": f"{r['variance_ratio']:.1f}" if ok and r.get("variance_ratio") is not None else "-",
            "built": f"{max(r['rss_built_mb']) / 1024:.2f}" if ok and r.get("rss_built_mb") else "-",
            "first_rss": f"{max(r['rss_after_first_step_mb']) / 1024:.2f}" if ok and r.get("rss_after_first_step_mb")
            else "-",
            "graph": "{} + {} fns / {}".format(*r["graph"]) if ok and r.get("graph") else "-",
            "same": ("yes" if r.get("weights_equal_on_ranks") else "NO") if ok and "weights_equal_on_ranks" in r
            else "-",
            "error": r.get("error", ""),
        })
    cols = [("network", "{}"), ("loop", "{}"), ("model", "{}"), ("mode", "{}"), ("messages", "{}"), ("first", "{}"), ("ips", "{}"),
            ("x_ips", "{}"), ("peak", "{}"), ("x_peak", "{}"), ("wall", "{}"), ("x_wall", "{}"),
            ("ratio", "{}"), ("var", "{}"), ("built", "{}"), ("first_rss", "{}"), ("graph", "{}"), ("same", "{}"), ("error", "{}")]
    return markdown(out, cols) + (
        "\n\nmessages = compressed messages per step / gradient tensors; first = seconds to the end of the first "
        "step (tracing included); ips = images/s (both ranks) over the timed steps; peak = max over ranks of "
        "the peak resident memory (GB); wall = seconds of the whole horovodrun (start-up, model build, first "
        "step, timed steps); x_* = against none on the same network; ratio = bytes sent / dense bytes; var = "
        "E||Q(g)||^2/||g||^2 over the steps (1 = none's variance; the steps to accuracy grow with it); "
        "built / first_rss = max over ranks of the resident memory (GB) once the model is built and after the "
        "first step (the difference: tracing, graph optimisation, the step's buffers); graph = nodes of the "
        "traced step + library functions / their nodes; same = the weights equal on both ranks at the end.")


def group(r):
    """The rows a mode is compared within: one network, loop and model."""
    return r["network"], r.get("loop", "keras"), r["model"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ResNet50"], help="tf.keras.applications models")
    p.add_argument("--loops", nargs="+", choices=LOOPS, default=["keras"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--bucket-mb", type=float, nargs="+", default=[None],
                   help="GSpar's bucket caps to measure (MB); the modes none/fp16 run once")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per horovodrun")
    p.add_argument("--out", default="out")
    p.add_argument("--force", action="store_true", help="re-measure rows already in <out>/real_model.json")
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0 and any(NETWORKS[n] for n in args.networks):
        sys.exit("real_model: shaping needs root (ip netns, tc); run as root or use --networks loopback")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "real_model.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    key = lambda r: (r["network"], r.get("loop", "keras"), r["model"], r["mode"], r.get("bucket_mb"))  # noqa: E731
    todo = [(n, lp, m, mode, cap) for n in args.networks for lp in args.loops for m in args.models
            for mode in args.modes for cap in (args.bucket_mb if mode in ("gspar", "gspar-bucketed") else [None])]
    finished = [] if args.force else [job for job in todo if any(key(r) == job and "error" not in r for r in rows)]
    progress = bar(len(todo), "real_model", done=len(finished))
    with tempfile.TemporaryDirectory() as tmp:
        for done, job in enumerate(todo):
            if job in finished:
                print(f"[real_model] {done + 1}/{len(todo)} {job}: already in {store}", flush=True)
                continue
            row = run_one(*job, args, tmp)
            print(f"[real_model] {done + 1}/{len(todo)} {json.dumps(row)}", flush=True)
            rows = [r for r in rows if key(r) != key(row)] + [row]
            store.write_text(json.dumps(rows, indent=1))  # resumable: each row as it comes
            progress.update()
    progress.close()
    text = table(sorted(rows, key=lambda r: (list(NETWORKS).index(r["network"]), r.get("loop", "keras"),
                                             r["model"], MODES.index(r["mode"]), r.get("bucket_mb") or 0)))
    print("\n" + text)
    (out / "real_model.md").write_text(text + "\n")
    if not args.no_mlflow:
        log_to_mlflow("real_model", vars(args), [r for r in rows if "error" not in r],
                      ["network", "loop", "model", "mode"],
                      ["first_step_s", "images_per_s", "step_s", "wall_s"], table=text)
    return rows


if __name__ == "__main__":
    main()
