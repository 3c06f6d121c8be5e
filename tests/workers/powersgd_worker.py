"""2 ranks: PowerSGD against a numpy reference, and PowerSGD / EF-signSGD training a convex model
beside Compression.none (run by tests/test_powersgd_hvd.py)."""

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd_tf
import horovod.tensorflow.keras as hvd
import hvdspar
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank, size = hvd.rank(), hvd.size()
tf.keras.utils.set_random_seed(0)
results = {}


def gram_schmidt(p):
    q, r = np.linalg.qr(p)
    return q * np.sign(np.diag(r))


# 1. hvd.allreduce(g, compression=PowerSGD) in a tf.function, 5 steps, against the same iteration in
#    numpy on every rank's gradients (allgathered), with error feedback and warm start.
ROWS, COLS, RANK, STEPS = 24, 10, 2, 5
comp = hvdspar.PowerSGD(rank=RANK, start_iter=1, seed=7)


@tf.function
def reduce(g):
    return hvd_tf.allreduce(g, compression=comp)


rng = np.random.default_rng(100 + rank)
mem = q = out = None
errors, byte_steps = [], []
for t in range(STEPS):
    g = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    out = reduce(tf.constant(g)).numpy().astype(np.float64)
    every = hvd_tf.allgather(tf.constant(g[None].astype(np.float64))).numpy()  # [size, rows, cols]
    mats = every + (mem if mem is not None else 0.0)
    if t == 0:  # the warm-up step (start_iter=1): dense and exact, Q left as initialised
        ref = mats.mean(0)
        q = comp.slots[0].codec_state["q"].numpy().astype(np.float64)
    else:
        p = gram_schmidt(sum(m @ q for m in mats))
        s = sum(m.T @ p for m in mats)
        ref = p @ s.T / size
        q = s / size
    mem = mats - ref if t else mats - mats  # the warm-up sends x exactly: nothing left over
    errors.append(float(np.max(np.abs(out - ref)) / np.max(np.abs(ref))))
    byte_steps.append(comp.traffic()["last_step_bytes_sent"])
results["reference"] = {
    "errors": errors,
    "bytes": byte_steps,
    "identical": same_on_all_ranks([tf.constant(out)]),
    "memory_error": float(np.max(np.abs(comp.slots[0].memory.numpy().reshape(ROWS, COLS) - mem[rank]))),
}


# 2. A convex problem (multinomial logistic regression, Keras, DistributedOptimizer): none, PowerSGD
#    with error feedback, EF-signSGD; the same data and initial weights.
D, K, N = 40, 6, 512
w_true = np.random.default_rng(0).normal(size=(D, K))
data_rng = np.random.default_rng(10 + rank)
x = data_rng.normal(size=(N, D)).astype("float32")
y = np.argmax(x @ w_true + data_rng.gumbel(size=(N, K)), 1)
for name, make in [("none", lambda: hvd.Compression.none),
                   ("powersgd", lambda: hvdspar.PowerSGD(rank=1, start_iter=2, seed=3)),
                   ("efsignsgd", lambda: hvdspar.EFSignSGD(seed=3))]:
    tf.keras.utils.set_random_seed(1)
    compression = make()
    model = tf.keras.Sequential([tf.keras.layers.Dense(K, input_shape=(D,))])
    model.compile(hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.2), compression=compression),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=32, epochs=12, verbose=0, shuffle=False,
                     callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    entry = {"loss": hist.history["loss"], "identical": same_on_all_ranks(model.get_weights())}
    if isinstance(compression, hvdspar.Compressor):
        entry["traffic"] = compression.traffic()
        entry["memory_nonzero"] = any(float(tf.reduce_max(tf.abs(s.memory))) > 0 for s in compression.slots)
    results[name] = entry

report(rank, **results)
