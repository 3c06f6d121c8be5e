"""Graph building per tensor: the seconds and ops a model's gradients add when traced through a
compressor, one process (a world of one rank: the encoders and decoders are built as under
horovodrun, without Horovod's own ops).

    python -m benchmarks.trace_cost                       # ResNet50 and MobileNetV2, per tensor
    python -m benchmarks.trace_cost --models ResNet50 --specs none "gspar:rho=0.01,bucket_mb=0" "gspar:rho=0.01"

For each model (Keras applications, weights=None) a tf.function takes one tensor of each trainable
variable's shape and returns ``decompress(*compress(g))`` of each; its concrete function is built
(tracing only, nothing runs) with each compressor spec, in a fresh compressor. Prints seconds and
graph ops per tensor beside ``none`` (Horovod's Compression.none: compress is the identity), and how
many encoders and decoders the compressor traced (``Compressor.encoder``).
"""

import argparse
import time

import tensorflow as tf

import hvdspar
from benchmarks.common import markdown


def trace(spec, shapes):
    """(seconds to build the concrete function, its graph's ops, traced functions, tensors)."""
    import horovod.tensorflow as hvd

    comp = hvd.Compression.none if spec == "none" else hvdspar.from_spec(spec, seed=1)
    signature = [tf.TensorSpec(s, tf.float32) for s in shapes]

    @tf.function(input_signature=signature, autograph=False)
    def step(*grads):
        return [comp.decompress(*comp.compress(g)) for g in grads]

    start = time.perf_counter()
    concrete = step.get_concrete_function()
    seconds = time.perf_counter() - start
    ops = len(concrete.graph.get_operations()) + sum(
        len(f.graph.get_operations()) for f in getattr(comp, "_traced_fns", {}).values()
        for f in f._list_all_concrete_functions())
    return seconds, ops, len(getattr(comp, "_traced_fns", {})), len(shapes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2"])
    p.add_argument("--specs", nargs="+", default=["none", "gspar:rho=0.01,bucket_mb=0"])
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        shapes = [v.shape for v in getattr(tf.keras.applications, name)(weights=None).trainable_variables]
        sizes = {s.num_elements() for s in shapes}
        base = None
        for spec in args.specs:
            seconds, ops, traced, n = trace(spec, shapes)
            if spec == "none":
                base = (seconds, ops)
            extra_s, extra_ops = (seconds - base[0], ops - base[1]) if base else (seconds, ops)
            rows.append({"model": name, "spec": spec, "tensors": n, "shapes": len({tuple(s) for s in shapes}),
                         "sizes": len(sizes), "seconds": seconds, "s_per_tensor": extra_s / n,
                         "ops_per_tensor": extra_ops / n, "traced": traced})
            print(f"{name} {spec}: {seconds:.1f} s, {ops} ops, {traced} traced functions", flush=True)
    print(markdown(rows, [("model", "{}"), ("spec", "{}"), ("tensors", "{}"), ("shapes", "{}"), ("sizes", "{}"),
                          ("seconds", "{:.1f}"), ("s_per_tensor", "{:.3f}"), ("ops_per_tensor", "{:.0f}"),
                          ("traced", "{}")]))
    return rows


if __name__ == "__main__":
    main()
