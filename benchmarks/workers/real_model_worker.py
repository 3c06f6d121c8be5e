"""One horovodrun launch of the real-model benchmark (benchmarks/real_model.py).

    horovodrun -np 2 -H localhost:2 --gloo python -m benchmarks.workers.real_model_worker \
        --mode gspar-bucketed --out result.json

Horovod's own synthetic benchmarks in shape, a Keras application model
(``weights=None``) on synthetic images, only the compression line changed:
``--loop keras`` is ``examples/tensorflow2/tensorflow2_keras_synthetic_benchmark.py``
(``hvd.DistributedOptimizer(SGD(0.01), compression=C)``, ``train_on_batch``);
``--loop custom`` is ``tensorflow2_synthetic_benchmark.py`` (a ``tf.function``
step that builds its compressor and ``hvd.DistributedGradientTape`` inside
itself, traced for ``first_batch`` True and False). Modes: none / fp16
(Horovod's own), gspar (``GSpar(rho)`` and nothing else: one message per
bucket), gspar-bucketed (the same with Horovod's ``groups=1``) and
gspar-per-tensor (``bucket_mb=0``: every gradient its own message).
Reports, from rank 0: seconds to the end of the first step (tracing
included, from just before it), images per second over the timed steps (all
ranks' images), and each rank's peak resident memory (ru_maxrss). What the
memory goes to: the resident memory once the model is built (weights, data,
TensorFlow itself) and after the first step
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

MODES = ("none", "fp16", "gspar", "gspar-bucketed", "gspar-per-tensor")
LOOPS = ("keras", "custom")


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
    p.add_argument("--loop", choices=LOOPS, default="keras", help="Horovod's Keras or custom-loop benchmark")
    p.add_argument("--model", default="ResNet50", help="a tf.keras.applications model (default ResNet50)")
    p.add_argument("--batch", type=int, default=4, help="images per rank per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--bucket-mb", type=float, default=None, help="GSpar's bucket cap (MB; default: none)")
    p.add_argument("--image-size", type=int, default=224, help="pixels a side (the model is built for it)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    tf.keras.utils.set_random_seed(0)
    model = getattr(tf.keras.applications, args.model)(weights=None, input_shape=(args.image_size, args.image_size, 3))
    n_tensors = len(model.trainable_variables)
    data = tf.random.uniform([args.batch, args.image_size, args.image_size, 3])
    target = tf.random.uniform([args.batch, 1], minval=0, maxval=999, dtype=tf.int64)
    if args.loop == "keras":
        step, graph_of, compressor = keras_loop(model, args, data, target)
    else:
        step, graph_of, compressor = custom_loop(model, args, data, target)

    hvd_tf.allreduce(tf.constant(0.0))  # start together
    rss_built = rss_mb()
    t0 = time.perf_counter()
    first_loss = float(step(True))
    first_step_s = time.perf_counter() - t0
    rss_first = rss_mb()
    step(False)  # a second untimed step (Keras may finish building here; the custom loop traces again)
    hvd_tf.allreduce(tf.constant(0.0))
    t1 = time.perf_counter()
    for _ in range(args.steps):
        loss = float(step(False))
    hvd_tf.allreduce(tf.constant(0.0))
    timed_s = time.perf_counter() - t1
    compression = compressor()
    digest = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64) * (i + 1)) for i, v in enumerate(model.trainable_variables)])
    digests = hvd_tf.allgather(tf.reshape(digest, [1])).numpy().tolist()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peaks = hvd_tf.allgather(tf.constant([peak_mb])).numpy().tolist()
    traffic = compression.traffic() if isinstance(compression, hvdspar.Compressor) else {}
    result = {
        "mode": args.mode, "loop": args.loop, "model": args.model, "ranks": size, "batch": args.batch, "steps": args.steps,
        "tensors": n_tensors, "messages": len(getattr(compression, "slots", [])) or n_tensors,
        "first_step_s": first_step_s, "images_per_s": args.batch * size * args.steps / timed_s,
        "step_s": timed_s / args.steps, "peak_mb": peaks, "first_loss": first_loss, "loss": loss,
        "finite": bool(np.isfinite(loss)), "weights_equal_on_ranks": len(set(digests)) == 1,
        "ratio": traffic.get("ratio"), "dense_tensors": traffic.get("dense_tensors"),
        "variance_ratio": traffic.get("variance_ratio"), "bucket_mb": args.bucket_mb,
        "rss_built_mb": hvd_tf.allgather(tf.constant([rss_built])).numpy().tolist(),
        "rss_after_first_step_mb": hvd_tf.allgather(tf.constant([rss_first])).numpy().tolist(),
        "graph": graph_of(),
    }
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
        print("[real_model] " + json.dumps(result), flush=True)


def compression_line(mode, rho, bucket_mb=None):
    """(compression, groups) of a mode: what the user's script would write."""
    if mode in ("none", "fp16"):
        return getattr(hvd.Compression, mode), None
    if mode == "gspar-per-tensor":
        return hvdspar.GSpar(rho=rho, fallback=True, seed=1, bucket_mb=0), None
    return hvdspar.GSpar(rho=rho, fallback=True, seed=1, bucket_mb=bucket_mb), (1 if mode == "gspar-bucketed" else None)


def keras_loop(model, args, data, target):
    compression, groups = compression_line(args.mode, args.rho, args.bucket_mb)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.01), compression=compression, groups=groups)
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(), optimizer=opt)
    hvd_tf.broadcast_variables(model.variables, root_rank=0)
    return (lambda first: model.train_on_batch(data, target)), (lambda: graph_size(model.train_function)), (
        lambda: compression)


def custom_loop(model, args, data, target):
    """Horovod's tensorflow2_synthetic_benchmark.py: the compressor is built inside the step."""
    opt = tf.optimizers.SGD(0.01)
    before = len(hvdspar.in_step_compressors())

    @tf.function
    def benchmark_step(first_batch):
        compression, groups = compression_line(args.mode, args.rho, args.bucket_mb)  # the example's compression line
        with tf.GradientTape() as tape:
            probs = model(data, training=True)
            loss = tf.reduce_mean(tf.losses.sparse_categorical_crossentropy(target, probs))
        tape = hvd_tf.DistributedGradientTape(tape, compression=compression, groups=groups)
        gradients = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(gradients, model.trainable_variables))
        if first_batch:
            hvd_tf.broadcast_variables(model.variables, root_rank=0)
            hvd_tf.broadcast_variables(opt.variables(), root_rank=0)
        return loss

    def compressor():
        made = hvdspar.in_step_compressors()[before:]
        return made[0] if made else hvd.Compression.none

    def graph():
        try:
            graph_def = benchmark_step.get_concrete_function(False).graph.as_graph_def()
        except Exception:  # noqa: BLE001 - report nothing rather than fail the benchmark
            return None
        library = graph_def.library.function
        return [len(graph_def.node), len(library), sum(len(f.node_def) for f in library)]

    return benchmark_step, graph, compressor


if __name__ == "__main__":
    main()
