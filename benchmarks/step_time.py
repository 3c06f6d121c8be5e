"""Step time against no compression, interleaved: the overhead of a compressor on a fast link.

    python -m benchmarks.step_time                     # softmax and CNN, 2 and 4 ranks, unshaped loopback
    python -m benchmarks.step_time --networks 100mbit  # shaped (root; see benchmarks/netns.py)

Times to target from benchmarks.time_to_accuracy run one compressor after the
other, so a few percent of drift in the machine's speed reads as a few percent
of overhead. Here one horovodrun per (task, ranks, network) builds every
compressor's training step (benchmarks/workers/step_time_worker.py) and times
them in interleaved blocks; the figure is the median over blocks of
(step time / the first compressor's step time in the same block). With
``fallback="auto"`` sending every tensor dense, training is bit-identical to
``none``, so this ratio is also its ratio of times to any target. Prints a
markdown table, writes out/step_time.{md,json} and logs to MLflow (experiment
"hvdspar-benchmarks").
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import log_to_mlflow, markdown
from benchmarks.time_to_accuracy import NETWORKS, TASKS, run_launch

COMPRESSORS = ["none", "gspar:rho=0.01,fallback=auto", "gspar:rho=0.01"]  # timed (opt-in) and by bytes (default)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["softmax", "cnn-cifar10"])
    p.add_argument("--ranks", nargs="+", type=int, default=[2, 4])
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["loopback"])
    p.add_argument("--compressors", nargs="+", default=COMPRESSORS, help="the first is the baseline")
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--block-steps", type=int, default=30)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    if os.geteuid() != 0 and any(NETWORKS[n] for n in args.networks):
        sys.exit("step_time: shaping needs root (ip netns, tc); run as root or use --networks loopback")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            worker_args = ["--task", task, "--lr", str(TASKS[task]["lr"]), "--blocks", str(args.blocks),
                           "--block-steps", str(args.block_steps)]
            for ranks in args.ranks:
                for network in args.networks:
                    rows += run_launch(network, NETWORKS[network], ranks, args.compressors, worker_args, tmp,
                                       timeout=3600, worker="benchmarks.workers.step_time_worker")
    for r in rows:
        r["dense"] = f"{r['dense_tensors']}/{r['tensors']}"
        r["range"] = f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}"
    text = markdown(rows, [("task", "{}"), ("network", "{}"), ("ranks", "{}"), ("spec", "`{}`"),
                           ("ms_per_step", "{:.1f}"), ("ratio", "{:.3f}"), ("range", "{}"), ("dense", "{}")])
    text += (f"\n\nratio = median over {args.blocks} interleaved blocks of {args.block_steps} steps of "
             f"(step time / {args.compressors[0]}'s in the same block); range = over the blocks.\n")
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.md").write_text(text)
    (out / "step_time.json").write_text(json.dumps(rows, indent=1))
    log_to_mlflow("step_time", {k: str(v)[:500] for k, v in vars(args).items()}, rows,
                  ["task", "network", "ranks", "spec"], ["ms_per_step", "ratio", "ratio_min", "ratio_max"], table=text)
    return rows


if __name__ == "__main__":
    main()
