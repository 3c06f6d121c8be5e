"""2-rank training with every compressor of the comparison set (run by tests/test_compressors_hvd.py).

One horovodrun launch: for each spec, a fresh Keras model (a Dense layer: 2-D
kernel, so ATOMO uses SVD atoms, plus a bias) trains a linear regression
with hvd.DistributedOptimizer(compression=from_spec(spec)). Each rank reports
the loss history, whether the weights are identical on all ranks, its traffic
and what really went into the allgather. Then, for compressors with memory,
compress() is driven directly to check the error-feedback identity across ranks.

Usage: train_compressor.py SPEC [SPEC ...]
"""

import sys

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd_tf
import horovod.tensorflow.keras as hvd
import hvdspar
from tests.workers.common import counting_exchange, report, same_on_all_ranks

hvd.init()
rank, size = hvd.rank(), hvd.size()
specs = sys.argv[1:]
SEED = 5  # the compressors' random streams (each rank and tensor draws its own from it)
tf.keras.utils.set_random_seed(SEED)

counter = counting_exchange()
gathered_bytes = counter.gathered


d_in, d_out, n = 32, 16, 256
w_true = np.random.default_rng(0).normal(size=(d_in, d_out)).astype("float32")
rng = np.random.default_rng(100 + rank)
x = rng.normal(size=(n, d_in)).astype("float32")
y = (x @ w_true + 0.1 * rng.normal(size=(n, d_out))).astype("float32")

results = {"specs": specs}
for spec in specs:
    tf.keras.utils.set_random_seed(rank)  # different (seeded) initial weights per rank: the broadcast must fix them
    comp = hvdspar.from_spec(spec, fallback=True, seed=SEED)  # by bytes: on this loopback "auto" would send dense
    comp.exchange = counter
    model = tf.keras.Sequential([tf.keras.layers.Dense(d_out, input_shape=(d_in,))])
    hvdspar.track(model, comp)
    model.compile(hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.05), compression=comp), "mse")
    gathered_bytes.assign(0)
    hist = model.fit(
        x, y, batch_size=32, epochs=5, verbose=0, shuffle=False,
        callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)],
    )
    results[spec] = {
        "loss": hist.history["loss"],
        "identical": same_on_all_ranks(model.get_weights()),
        "traffic": comp.traffic(),
        "gathered_bytes": int(gathered_bytes.numpy()),
        "spec": comp.spec(),
        "memory_nonzero": bool(comp.memory and any(float(tf.reduce_max(tf.abs(s.memory))) > 0 for s in comp.slots)),
    }

# Error feedback across ranks: each rank's Q_r = m_before + g_r - m_after, and the
# average every rank receives must be (Q_0 + Q_1) / 2.
for spec in ("topk:ratio=0.1", "atomo:budget=1.5,memory=true"):
    comp = hvdspar.from_spec(spec, fallback=True, seed=SEED)  # by bytes: on this loopback "auto" would send dense

    @tf.function
    def step(grads):  # Horovod's own path: compress -> allreduce of the placeholder -> decompress
        return [hvd_tf.allreduce(g, compression=comp) for g in grads]

    checks = []
    for t in range(3):
        g_rng = np.random.default_rng(10 * t + rank)
        grads = [tf.constant(g_rng.normal(size=s).astype("float32")) for s in ((d_in, d_out), (d_out,))]
        before = [s.memory.numpy().copy() for s in comp.slots] or [np.zeros(int(np.prod(g.shape)), "float32") for g in grads]
        avg = step(grads)
        after = [s.memory.numpy() for s in comp.slots]
        own = tf.concat([tf.constant(b + g.numpy().reshape(-1) - a) for b, g, a in zip(before, grads, after)], 0)
        everyone = hvd_tf.allgather(tf.reshape(own, [1, -1])).numpy()
        received = np.concatenate([a.numpy().reshape(-1) for a in avg])
        checks.append(float(np.max(np.abs(everyone.mean(axis=0) - received))))
        checks.append(float(np.max(np.abs(own.numpy()))))
    results[f"memory/{spec}"] = {"errors": checks[0::2], "own_max": checks[1::2]}

report(rank, **results)
