"""A real-size model under 2 ranks: Keras ResNet-50 with none, fp16, GSpar per tensor, GSpar bucketed.

    python -m benchmarks.real_model                                   # ResNet50, both networks, all modes
    python -m benchmarks.real_model --networks loopback --modes none gspar-bucketed

Each (network, mode) is one ``horovodrun -np 2`` of
benchmarks/workers/real_model_worker.py (Horovod's Keras synthetic benchmark in
shape; only ``compression=`` and, for the bucketed mode, ``groups=1`` change),
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
from benchmarks.workers.real_model_worker import MODES

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"loopback": None, "100mbit": "100mbit"}


def run_one(network, mode, args, tmp):
    out = Path(tmp) / f"{network}-{mode}.json"
    exe = Path(sys.executable).with_name("horovodrun")
    cmd = [str(exe), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
           "benchmarks.workers.real_model_worker", "--mode", mode, "--model", args.model, "--batch",
           str(args.batch), "--steps", str(args.steps), "--rho", str(args.rho), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    rate = NETWORKS[network]
    start = time.time()
    row = {"network": network, "mode": mode, "model": args.model}
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
    base = {r["network"]: r for r in rows if r["mode"] == "none" and "error" not in r}
    out = []
    for r in rows:
        b = base.get(r["network"])
        ok = "error" not in r
        out.append({
            "network": r["network"], "mode": r["mode"],
            "messages": f"{r['messages']}/{r['tensors']}" if ok else "-",
            "first": f"{r['first_step_s']:.1f}" if ok else "-",
            "ips": f"{r['images_per_s']:.2f}" if ok else "-",
            "x_ips": f"{r['images_per_s'] / b['images_per_s']:.2f}" if ok and b else "-",
            "peak": f"{max(r['peak_mb']) / 1024:.2f}" if ok else "-",
            "x_peak": f"{max(r['peak_mb']) / max(b['peak_mb']):.2f}" if ok and b else "-",
            "wall": f"{r['wall_s']:.0f}",
            "x_wall": f"{r['wall_s'] / b['wall_s']:.2f}" if ok and b else "-",
            "ratio": f"{r['ratio']:.4f}" if ok and r.get("ratio") is not None else "-",
            "built": f"{max(r['rss_built_mb']) / 1024:.2f}" if ok and r.get("rss_built_mb") else "-",
            "first_rss": f"{max(r['rss_after_first_step_mb']) / 1024:.2f}" if ok and r.get("rss_after_first_step_mb")
            else "-",
            "graph": "{} + {} fns / {}".format(*r["graph"]) if ok and r.get("graph") else "-",
            "error": r.get("error", ""),
        })
    cols = [("network", "{}"), ("mode", "{}"), ("messages", "{}"), ("first", "{}"), ("ips", "{}"),
            ("x_ips", "{}"), ("peak", "{}"), ("x_peak", "{}"), ("wall", "{}"), ("x_wall", "{}"),
            ("ratio", "{}"), ("built", "{}"), ("first_rss", "{}"), ("graph", "{}"), ("error", "{}")]
    return markdown(out, cols) + (
        "\n\nmessages = compressed messages per step / gradient tensors; first = seconds to the end of the first "
        "step (tracing included); ips = images/s (both ranks) over the timed steps; peak = max over ranks of "
        "the peak resident memory (GB); wall = seconds of the whole horovodrun (start-up, model build, first "
        "step, timed steps); x_* = against none on the same network; ratio = bytes sent / dense bytes; "
        "built / first_rss = max over ranks of the resident memory (GB) once the model is built and after the "
        "first step (the difference: tracing, graph optimisation, the step's buffers); graph = nodes of the "
        "traced step + library functions / their nodes.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ResNet50")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rho", type=float, default=0.01)
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
    key = lambda r: (r["network"], r["mode"], r["model"])  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for network in args.networks:
            for mode in args.modes:
                if not args.force and any(key(r) == (network, mode, args.model) and "error" not in r for r in rows):
                    continue
                row = run_one(network, mode, args, tmp)
                print(f"[real_model] {json.dumps(row)}", flush=True)
                rows = [r for r in rows if key(r) != key(row)] + [row]
                store.write_text(json.dumps(rows, indent=1))  # resumable: each row as it comes
    text = table(sorted(rows, key=lambda r: (list(NETWORKS).index(r["network"]), MODES.index(r["mode"]))))
    print("\n" + text)
    (out / "real_model.md").write_text(text + "\n")
    if not args.no_mlflow:
        log_to_mlflow("real_model", vars(args), [r for r in rows if "error" not in r], ["network", "mode"],
                      ["first_step_s", "images_per_s", "step_s", "wall_s"], table=text)
    return rows


if __name__ == "__main__":
    main()
