"""One horovodrun launch of the step-time benchmark (benchmarks/step_time.py).

    horovodrun -np M -H localhost:M --gloo python -m benchmarks.workers.step_time_worker \
        --compressors none gspar:rho=0.01,fallback=auto --out result.json

The same task and training step as benchmarks/workers/tta_worker.py (its
options apply), but instead of training each compressor to a target in turn,
all compressors' steps are built first and then timed in interleaved blocks:
block b runs --block-steps steps of every compressor, in an order rotated
by b, so a drift of the machine's speed (other jobs, CPU frequency) falls on
all of them alike. Each block's time is the mean over ranks; per block the
ratio to the first compressor (the baseline) is taken, and the median and
range of those ratios over --blocks blocks are reported. Where two
compressors train identically (``fallback="auto"`` sending every tensor
dense is bit-identical to ``none``), the ratio of step times is the ratio of
times to any target.
"""

import json
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar
from benchmarks.workers.tta_worker import Task, load_data, make_step, parser


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--blocks", type=int, default=7, help="interleaved blocks per compressor")
    p.add_argument("--block-steps", type=int, default=30, help="steps per block")
    args = p.parse_args(argv)
    if args.blocks < 1 or args.block_steps < 1:
        p.error("--blocks and --block-steps must be positive")
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    tf.keras.utils.set_random_seed(args.seed)
    task = Task(args, load_data(args, rank, size))
    rng = np.random.default_rng(args.seed + 1000 * rank)
    compressors = {spec: hvdspar.from_spec(spec, seed=args.seed) for spec in args.compressors}
    steps = {spec: make_step(task, c) for spec, c in compressors.items()}

    def batch():
        idx = rng.integers(0, len(task.xs), size=args.batch_size)
        return task.xs[idx], task.ys[idx]

    for spec in args.compressors:  # trace, fallback="auto"'s measurements, first-step costs
        for _ in range(3):
            steps[spec](*batch()).numpy()

    def mean_over_ranks(seconds):
        return float(hvd.allreduce(tf.constant([seconds], tf.float64), op=hvd.Sum, name="step_time")[0]) / size

    times = {spec: [] for spec in args.compressors}
    n = len(args.compressors)
    for b in range(args.blocks):
        order = [args.compressors[(b + i) % n] for i in range(n)]
        for spec in order:
            hvd.allreduce(tf.zeros([1]), name="step_time_sync")  # start together
            t0 = time.perf_counter()
            for _ in range(args.block_steps):
                steps[spec](*batch()).numpy()
            times[spec].append(mean_over_ranks(time.perf_counter() - t0) / args.block_steps)

    base = args.compressors[0]
    results = []
    for spec in args.compressors:
        ratios = [t / tb for t, tb in zip(times[spec], times[base])]
        c = compressors[spec]
        t = c.traffic() if hasattr(c, "traffic") else None
        results.append({
            "spec": spec, "task": args.task, "ranks": size,
            "ms_per_step": 1000 * float(np.median(times[spec])),
            "ratio": float(np.median(ratios)), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "block_ms": [1000 * x for x in times[spec]],
            "dense_tensors": t["dense_tensors"] if t else len(task.variables),
            "tensors": len(task.variables),
        })
        if rank == 0:
            r = results[-1]
            print(f"[tta] step time {spec}: {r['ms_per_step']:.1f} ms/step, x{r['ratio']:.3f} of {base} "
                  f"(blocks {r['ratio_min']:.3f}-{r['ratio_max']:.3f})", flush=True)
    if rank == 0:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh)


if __name__ == "__main__":
    main()
