"""2-rank Keras patterns with hvdspar beside Compression.none (run by tests/test_dropin.py).

1. Mixed precision as ``compile()`` builds it, at a loss scale that overflows on purpose:
   LossScaleOptimizer(hvd.DistributedOptimizer(SGD, compression=C), initial_scale=2**40).
2. ``steps_per_execution > 1``.
3. ``backward_passes_per_step > 1``, with and without ``average_aggregated_gradients``.
Everything is seeded: weights (set_random_seed), data (per-rank generators), order (shuffle=False).
"""

import sys
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow.keras as hvd
import hvdspar
from horovod.tensorflow.compression import Compression
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank = hvd.rank()
part = sys.argv[1] if len(sys.argv) > 1 else "all"

SPECS = [
    "gspar:rho=0.3", "gspar:rho=0.3,memory=true", "unisp:rho=0.3", "unisp:rho=0.3,memory=true",
    "topk:ratio=0.3", "topk:ratio=0.3,memory=false", "randomk:ratio=0.3", "randomk:ratio=0.3,memory=false",
    "atomo:budget=2", "atomo:budget=2,memory=true", "qsgd:levels=4", "qsgd:levels=4,memory=true",
    "terngrad", "terngrad:memory=true",
]
EXACT = "gspar:rho=1.0,method=exact"

rng = np.random.default_rng(100 + rank)
w_true = np.random.default_rng(0).normal(size=(20, 1))
x = rng.normal(size=(1024, 20)).astype("float32")
y = (x @ w_true > 0).astype("float32")


def compression(spec):
    if spec == "none":
        return Compression.none
    return hvdspar.from_spec(spec + ("," if ":" in spec else ":") + "fallback=false,seed=5")


def model_fn():
    """Logistic regression: two gradient tensors (tracing costs seconds per compressed tensor).
    Under mixed_float16 the Dense layer computes in float16, so a loss scale of 2**40 overflows
    in its backward pass exactly as in a big model."""
    tf.keras.utils.set_random_seed(1)
    return tf.keras.Sequential([
        tf.keras.layers.Dense(1, input_shape=(20,)),
        tf.keras.layers.Activation("sigmoid", dtype="float32"),
    ])


def finite(values):
    return all(bool(np.isfinite(np.asarray(v)).all()) for v in values)


def memories_finite(comp):
    return all(s.memory is None or bool(np.isfinite(s.memory.numpy()).all()) for s in getattr(comp, "slots", []))


results = {}
clock = time.perf_counter()


def progress(what):
    global clock
    if rank == 0:
        print(f"keras_patterns: {what} {time.perf_counter() - clock:.1f} s", file=sys.stderr, flush=True)
    clock = time.perf_counter()


if part in ("all", "mixed"):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    mixed = {}
    for spec in ["none"] + SPECS:
        comp = compression(spec)
        model = model_fn()
        opt = tf.keras.mixed_precision.LossScaleOptimizer(
            hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.5), compression=comp), initial_scale=2**40)
        model.compile(opt, "binary_crossentropy")
        loss0 = float(model.evaluate(x, y, batch_size=256, verbose=0))
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
        weights = model.get_weights()
        mixed[spec] = {
            "scale_start": 2.0**40,
            "scale_end": float(opt.loss_scale),
            "loss_start": loss0,
            "loss_end": float(model.evaluate(x, y, batch_size=256, verbose=0)),
            "finite": finite(weights) and memories_finite(comp),
            "identical": same_on_all_ranks(weights),
            "steps": int(opt.iterations.numpy()),
        }
        progress(f"mixed {spec}")
    tf.keras.mixed_precision.set_global_policy("float32")
    results["mixed"] = mixed


def fit(spec, epochs=2, **opt_kw):
    comp = compression(spec)
    model = model_fn()
    spe = opt_kw.pop("steps_per_execution", 1)
    model.compile(hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.2), compression=comp, **opt_kw),
                  "binary_crossentropy", steps_per_execution=spe)
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    traffic = comp.traffic() if hasattr(comp, "traffic") else None
    return model.get_weights(), traffic, len(getattr(comp, "slots", []))


def pattern(**opt_kw):
    ref, _, _ = fit("none", **dict(opt_kw))
    out = {}
    for spec in (EXACT, "gspar:rho=0.3,memory=true"):
        weights, traffic, slots = fit(spec, **dict(opt_kw))
        out[spec] = {
            "max_diff_to_none": float(max(np.max(np.abs(a - b)) for a, b in zip(weights, ref))),
            "slots": slots,
            "steps": traffic["steps"],
            "identical": same_on_all_ranks(weights),
            "finite": finite(weights),
        }
        progress(f"{opt_kw} {spec}")
    return out


if part in ("all", "patterns"):
    results["steps_per_execution"] = pattern(steps_per_execution=4)
    results["bpps_average"] = pattern(backward_passes_per_step=2, average_aggregated_gradients=True)
    results["bpps_sum"] = pattern(backward_passes_per_step=2, average_aggregated_gradients=False)

report(rank, **results)
