"""Two simulated nodes of two ranks (horovodrun -np 4 -H localhost:2,127.0.0.1:2): the hierarchical
exchange (hvdspar.hierarchy) against Horovod's none and against hvdspar's flat exchange."""

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import horovod.tensorflow.keras as hvd_keras

import hvdspar
from hvdspar import communicators
from tests.workers.common import report, same_on_all_ranks

hvd.init(process_sets=hvdspar.node_process_sets())
rank, size = hvd.rank(), hvd.size()
D, STEPS, RHO, BIG = 2000, 300, 0.1, 100_000
out = {"local_size": hvd.local_size(), "cross_size": hvd.cross_size()}

# --- unbiased against none: E[sum of the four ranks' results] = sum_r g_r, over many steps ---------
g = tf.constant(np.random.default_rng(rank).standard_t(3, size=D).astype(np.float32))
comp = hvdspar.GSpar(rho=RHO, seed=7)


@tf.function
def step(c):
    return hvd.allreduce(g, op=hvd.Sum, compression=c, name="g")


dense = hvd.allreduce(g, op=hvd.Sum, name="dense").numpy().astype(np.float64)
results = np.stack([step(comp).numpy() for _ in range(STEPS)]).astype(np.float64)
out["hierarchical"] = isinstance(comp._nodes, communicators.Hierarchical)
# z-scores of each coordinate's mean over the steps against Horovod's none (where it varies)
mean, spread = results.mean(0), results.std(0, ddof=1)
varies = spread > 1e-6 * np.abs(dense).max()
z = (mean[varies] - dense[varies]) / (spread[varies] / np.sqrt(STEPS))
out["z_mean"], out["z_over_4"], out["z_count"] = float(z.mean()), float(np.mean(np.abs(z) > 4)), int(z.size)
out["fixed_max_error"] = float(np.max(np.abs(mean[~varies] - dense[~varies]), initial=0.0))
out["results_equal"] = same_on_all_ranks([step(comp)])

# --- bytes per step across the nodes, hierarchical and flat, on a gradient of 100k elements -------
big = tf.constant(np.random.default_rng(rank).standard_t(3, size=BIG).astype(np.float32))
hier = hvdspar.GSpar(rho=RHO, seed=9)
tf.function(lambda: hvd.allreduce(big, op=hvd.Sum, compression=hier, name="big"))()
t = hier.traffic()
out["bytes_per_step"], out["density"] = t["last_step_bytes_sent"], t["density"]
out["within_node_per_step"] = t["last_step_within_node_bytes"]
# the flat exchange would send this rank's message of the whole gradient, and its placeholder
whole = hier.feedback.encode(big, tf.constant([9, 0], tf.int64), tf.float32)
out["flat_bytes_per_step"] = int(tf.size(whole.message)) + 4
out["flat_density"] = int(whole.kept) / BIG

# --- Horovod's semantics: op=Average with scale factors, and a NaN on one rank -------------------
scaled = tf.function(lambda: hvd.allreduce(g, op=hvd.Average, prescale_factor=0.5, postscale_factor=3.0,
                                           compression=hvdspar.GSpar(rho=1.0, seed=2), name="scaled"))()
out["average_scaled_error"] = float(np.max(np.abs(scaled.numpy() - 1.5 * dense / size)))
nan_comp = hvdspar.GSpar(rho=RHO, memory=True, seed=4)
bad = tf.where(tf.equal(tf.range(D), 5), float("nan"), g) if rank == 3 else g
nan_result = tf.function(lambda: hvd.allreduce(bad, compression=nan_comp, name="nan"))()
out["nan_everywhere"] = bool(np.all(np.isnan(nan_result.numpy())))
out["nan_memory_untouched"] = bool(np.all(nan_comp.slots[0].memory.numpy() == 0))

# --- the memory identity at every step: sum_r m_r' + result = sum_r (m_r + g_r) ---------------------
mem = hvdspar.GSpar(rho=RHO, memory=True, seed=3)
worst = 0.0
for s in range(5):
    gs = tf.constant(np.random.default_rng(100 * s + rank).normal(size=D).astype(np.float32))
    before = mem.slots[0].memory.numpy().copy() if mem.slots else np.zeros(D, np.float32)
    result = tf.function(lambda: hvd.allreduce(gs, op=hvd.Sum, compression=mem, name="m"))().numpy()
    after = mem.slots[0].memory.numpy()
    lhs = hvd.allreduce(tf.constant(after - before - gs.numpy()), op=hvd.Sum, name=f"identity{s}").numpy()
    worst = max(worst, float(np.max(np.abs(lhs + result))) / float(np.max(np.abs(result))))
out["memory_identity_worst"] = worst

# --- the same for float16 gradients (memory in float32; the result as Horovod returns it, float16) --
mem16 = hvdspar.GSpar(rho=RHO, memory=True, seed=6)
worst16 = 0.0
for s in range(3):
    gs = tf.constant(np.random.default_rng(200 * s + rank).normal(size=D).astype(np.float16))
    before = mem16.slots[0].memory.numpy().copy() if mem16.slots else np.zeros(D, np.float32)
    result = tf.function(lambda: hvd.allreduce(gs, op=hvd.Sum, compression=mem16, name="m16"))()
    after = mem16.slots[0].memory.numpy()
    lhs = hvd.allreduce(tf.constant(after - before - gs.numpy().astype(np.float32)), op=hvd.Sum,
                        name=f"identity16_{s}").numpy()
    result = result.numpy().astype(np.float32)
    worst16 = max(worst16, float(np.max(np.abs(lhs + result))) / float(np.max(np.abs(result))))
out["memory_identity_worst_float16"] = worst16

# --- a Keras model: weights identical on every rank, one bucket through the hierarchy --------------
tf.keras.utils.set_random_seed(1)
model = tf.keras.Sequential([tf.keras.layers.Dense(16, activation="relu", input_shape=(20,)),
                             tf.keras.layers.Dense(4)])
keras_comp = hvdspar.GSpar(rho=0.2, memory=True, seed=5)
opt = hvd_keras.DistributedOptimizer(tf.keras.optimizers.SGD(0.05), compression=keras_comp)
model.compile(opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(10 + rank)
x = rng.normal(size=(256, 20)).astype(np.float32)
y = rng.integers(0, 4, size=256)
history = model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                    callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0)])
out["keras_weights_equal"] = same_on_all_ranks(model.weights)
out["keras_loss"] = [float(v) for v in history.history["loss"]]
out["keras_messages"] = len(keras_comp.slots)
out["keras_hierarchical"] = isinstance(keras_comp._nodes, communicators.Hierarchical)
report(rank, **out)
