"""One horovodrun launch of the real-model benchmark (benchmarks/real_model.py).

    horovodrun -np 2 -H localhost:2 --gloo python -m benchmarks.workers.real_model_worker \
        --mode gspar-bucketed --out result.json

Horovod's own ``examples/tensorflow2/tensorflow2_keras_synthetic_benchmark.py``
in shape: a Keras application model (``weights=None``) on synthetic images,
``hvd.DistributedOptimizer(SGD(0.01), compression=C)``, ``train_on_batch``.
Modes: none / fp16 (Horovod's own), gspar (GSpar rho, per tensor: Horovod's
default, every gradient its own allreduce) and gspar-bucketed (the same with
``groups=1``: the whole model one message). Reports, from rank 0: seconds to
the end of the first step (tracing included, from just before it), images per
second over the timed steps (all ranks' images), and each rank's peak resident
memory (ru_maxrss). What the memory goes to: the resident memory once the
model is built (weights, data, TensorFlow itself) and after the first step
(plus the traced and optimised step graph), and the size of that graph: the
nodes of the step function and of its function library (every tf.cond branch
and traced encoder/decoder is a library function).
"""

import argparse
import json
import resource
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd_tf
import horovod.tensorflow.keras as hvd
import hvdspar

MODES = ("none", "fp16", "gspar", "gspar-bucketed")


def rss_mb():
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def graph_size(fn):
    """(nodes of the traced step, library functions, their nodes) of a Keras train function."""
    try:
        concrete = fn._list_all_concrete_functions_for_serialization()  # TF 2.15: the traces made so far
        graph_def = concrete[0].graph.as_graph_def()
    except Exception:  # noqa: BLE001 - a private API: report nothing rather than fail the benchmark
        return None
    library = graph_def.library.function
    return [len(graph_def.node), len(library), sum(len(f.node_def) for f in library)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--model", default="ResNet50", help="a tf.keras.applications model (default ResNet50)")
    p.add_argument("--batch", type=int, default=4, help="images per rank per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    tf.keras.utils.set_random_seed(0)
    model = getattr(tf.keras.applications, args.model)(weights=None)
    n_tensors = len(model.trainable_variables)
    groups = None
    if args.mode in ("none", "fp16"):
        compression = getattr(hvd.Compression, args.mode)
    else:
        compression = hvdspar.GSpar(rho=args.rho, fallback=True, seed=1)
        groups = 1 if args.mode == "gspar-bucketed" else None
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.01), compression=compression, groups=groups)
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(), optimizer=opt)
    data = tf.random.uniform([args.batch, args.image_size, args.image_size, 3])
    target = tf.random.uniform([args.batch, 1], minval=0, maxval=999, dtype=tf.int64)
    hvd_tf.broadcast_variables(model.variables, root_rank=0)

    hvd_tf.allreduce(tf.constant(0.0))  # start together
    rss_built = rss_mb()
    t0 = time.perf_counter()
    first_loss = float(model.train_on_batch(data, target))
    first_step_s = time.perf_counter() - t0
    rss_first = rss_mb()
    model.train_on_batch(data, target)  # a second untimed step (Keras may finish building here)
    hvd_tf.allreduce(tf.constant(0.0))
    t1 = time.perf_counter()
    for _ in range(args.steps):
        loss = float(model.train_on_batch(data, target))
    hvd_tf.allreduce(tf.constant(0.0))
    timed_s = time.perf_counter() - t1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peaks = hvd_tf.allgather(tf.constant([peak_mb])).numpy().tolist()
    traffic = compression.traffic() if isinstance(compression, hvdspar.Compressor) else {}
    result = {
        "mode": args.mode, "model": args.model, "ranks": size, "batch": args.batch, "steps": args.steps,
        "tensors": n_tensors, "messages": len(getattr(compression, "slots", [])) or n_tensors,
        "first_step_s": first_step_s, "images_per_s": args.batch * size * args.steps / timed_s,
        "step_s": timed_s / args.steps, "peak_mb": peaks, "first_loss": first_loss, "loss": loss,
        "finite": bool(np.isfinite(loss)),
        "ratio": traffic.get("ratio"), "dense_tensors": traffic.get("dense_tensors"),
        "rss_built_mb": hvd_tf.allgather(tf.constant([rss_built])).numpy().tolist(),
        "rss_after_first_step_mb": hvd_tf.allgather(tf.constant([rss_first])).numpy().tolist(),
        "graph": graph_size(model.train_function),
    }
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
        print("[real_model] " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
