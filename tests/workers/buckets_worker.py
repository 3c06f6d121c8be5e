"""Buckets under 2 real ranks (run by tests/test_buckets.py).

Each section compares hvdspar's bucketed path (a Horovod group as one message)
with Horovod's Compression.none and with hvdspar's per-tensor path
(``bucket_mb=0``), on the same tensors:

  lossless   GSpar rho=1 exact through hvd.grouped_allreduce, Average / Sum / pre 0.5 post 3:
             equal to none; one slot (one message) for the group
  cap        bucket_mb caps the buckets: the slots' sizes follow buckets.partition
  unbiased   GSpar rho=0.2 over 300 steps of fixed tensors: the mean of the bucketed results
             and of the per-tensor ones against none's average (and the per-step spread)
  memory     TopK ratio=0.1 with error feedback, 20 steps: sum_t result_t (op=Sum) equals
             sum_t sum_r g_r,t - sum_r m_r,T (the identity of error feedback, per bucket)
  keras      a 4-tensor MLP trained 30 steps with DistributedOptimizer(groups=1) and
             DistributedGradientTape(groups=1): weights identical on the ranks, loss falls,
             one slot; the lossless setting ends on none's weights
  checkpoint the bucket's memory survives tf.train.Checkpoint save / restore

argv: none
"""

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import horovod.tensorflow.keras as hvd_keras
import hvdspar
from hvdspar import buckets
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank, size = hvd.rank(), hvd.size()
tf.keras.utils.set_random_seed(7)
out = {}

SHAPES = [(30, 20), (20,), (20, 10), (10,), (7, 3, 2)]


def tensors(step=0):
    rng = np.random.default_rng([rank, step])
    return [tf.constant(rng.normal(size=s).astype(np.float32)) for s in SHAPES]


def grouped(comp, ts, **kw):
    return tf.function(lambda *ts: hvd.grouped_allreduce(list(ts), compression=comp, **kw))(*ts)


# --- lossless ---------------------------------------------------------------------------------
ts = tensors()
lossless = {}
for label, kw in {"average": {}, "sum": {"op": hvd.Sum}, "scaled": {"prescale_factor": 0.5, "postscale_factor": 3.0}}.items():
    ref = grouped(hvd.Compression.none, ts, **kw)
    comp = hvdspar.GSpar(rho=1.0, method="exact", fallback=False, seed=1)
    got = grouped(comp, ts, **kw)
    lossless[label] = {
        "max_err": max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(got, ref)),
        "slots": len(comp.slots),
        "slot_shape": comp.slots[0].shape.as_list(),
    }
out["lossless"] = lossless

# --- cap --------------------------------------------------------------------------------------
cap_mb = 900 / 2**20  # 900 bytes: (30,20)=2400 B alone, then 80+800+40 B... cut by the cap
comp = hvdspar.GSpar(rho=1.0, method="exact", fallback=False, seed=1, bucket_mb=cap_mb)
got = grouped(comp, ts)
ref = grouped(hvd.Compression.none, ts)
parts = buckets.partition([int(np.prod(s)) * 4 for s in SHAPES], [tf.float32] * len(SHAPES), 900)
out["cap"] = {
    "slot_sizes": [s.shape.num_elements() for s in comp.slots],
    "partition_sizes": [sum(int(np.prod(SHAPES[i])) for i in p) for p in parts],
    "max_err": max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(got, ref)),
}
comp0 = hvdspar.GSpar(rho=1.0, method="exact", fallback=False, seed=1, bucket_mb=0)
grouped(comp0, ts)
out["cap"]["per_tensor_slots"] = len(comp0.slots)

# --- unbiased ---------------------------------------------------------------------------------
STEPS = 300
exact = [t.numpy().astype(np.float64) for t in grouped(hvd.Compression.none, ts)]
unbiased = {}
for label, bucket_mb in (("bucketed", None), ("per_tensor", 0)):
    comp = hvdspar.GSpar(rho=0.2, fallback=False, seed=3, bucket_mb=bucket_mb)
    fn = tf.function(lambda *ts: hvd.grouped_allreduce(list(ts), compression=comp))
    acc = [np.zeros_like(e) for e in exact]
    sq = [np.zeros_like(e) for e in exact]
    for _ in range(STEPS):
        res = fn(*ts)
        for i, r in enumerate(res):
            v = r.numpy().astype(np.float64)
            acc[i] += v
            sq[i] += v * v
    mean = np.concatenate([(a / STEPS).ravel() for a in acc])
    var = np.concatenate([(s / STEPS).ravel() for s in sq]) - mean**2
    ex = np.concatenate([e.ravel() for e in exact])
    # z-scores of the mean against the exact average, per coordinate (spread from the samples)
    se = np.sqrt(np.maximum(var, 1e-30) / STEPS)
    z = np.where(var > 1e-20, (mean - ex) / se, 0.0)
    unbiased[label] = {
        "slots": len(comp.slots),
        "rel_err_of_mean": float(np.linalg.norm(mean - ex) / np.linalg.norm(ex)),
        "mean_abs_z": float(np.mean(np.abs(z))),
        "frac_z_over_4": float(np.mean(np.abs(z) > 4)),
        "density": comp.traffic()["density"],
    }
out["unbiased"] = unbiased

# --- memory identity --------------------------------------------------------------------------
comp = hvdspar.TopK(ratio=0.1, memory=True, fallback=False)
fn = tf.function(lambda *ts: hvd.grouped_allreduce(list(ts), compression=comp, op=hvd.Sum))
sum_results = [np.zeros(s, np.float64) for s in SHAPES]
sum_grads = [np.zeros(s, np.float64) for s in SHAPES]
for step in range(20):
    g = tensors(step + 1)
    res = fn(*g)
    for i in range(len(SHAPES)):
        sum_results[i] += res[i].numpy()
        sum_grads[i] += g[i].numpy()
flat_results = np.concatenate([r.ravel() for r in sum_results])
flat_grads = hvd.allreduce(tf.constant(np.concatenate([g.ravel() for g in sum_grads])), op=hvd.Sum).numpy()
memory = hvd.allreduce(comp.slots[0].memory, op=hvd.Sum).numpy().astype(np.float64)
out["memory"] = {
    "slots": len(comp.slots),
    "identity_err": float(np.max(np.abs(flat_results - (flat_grads - memory)))),
    "scale": float(np.max(np.abs(flat_grads))),
    "memory_norm": float(np.linalg.norm(memory)),
}

# --- checkpoint -------------------------------------------------------------------------------
ckpt_dir = f"/tmp/hvdspar-buckets-ckpt-{rank}"
tf.train.Checkpoint(compressor=comp).write(ckpt_dir)
fresh = hvdspar.TopK(ratio=0.1, memory=True, fallback=False)
tf.function(lambda *ts: hvd.grouped_allreduce(list(ts), compression=fresh, op=hvd.Sum))(*tensors(99))
before = fresh.slots[0].memory.numpy().copy()
tf.train.Checkpoint(compressor=fresh).read(ckpt_dir).assert_consumed()
out["checkpoint"] = {
    "restored_err": float(np.max(np.abs(fresh.slots[0].memory.numpy() - comp.slots[0].memory.numpy()))),
    "changed": bool(np.any(before != fresh.slots[0].memory.numpy())),
}

# --- keras --------------------------------------------------------------------------------------
rng = np.random.default_rng(0)
X = rng.normal(size=(256, 12)).astype(np.float32)
Y = (X @ rng.normal(size=(12, 1)) > 0).astype(np.float32)
xs, ys = X[rank::size], Y[rank::size]


def mlp():
    tf.keras.utils.set_random_seed(11)
    return tf.keras.Sequential([tf.keras.Input((12,)), tf.keras.layers.Dense(16, activation="tanh"),
                                tf.keras.layers.Dense(1, activation="sigmoid")])


def fit(spec):
    model = mlp()
    comp = hvdspar.from_spec(spec) if spec != "none" else hvd.Compression.none
    opt = hvd_keras.DistributedOptimizer(tf.keras.optimizers.SGD(0.5), compression=comp, groups=1)
    model.compile(opt, "binary_crossentropy")
    hist = model.fit(xs, ys, batch_size=32, epochs=4, shuffle=False, verbose=0)
    w = model.get_weights()
    return {"loss": hist.history["loss"], "identical": same_on_all_ranks(w),
            "slots": len(getattr(comp, "slots", [])), "weights": [x.ravel().tolist() for x in w]}


def tape(spec, steps=16):
    model = mlp()
    comp = hvdspar.from_spec(spec) if spec != "none" else hvd.Compression.none
    opt = tf.keras.optimizers.SGD(0.5)
    loss_fn = tf.keras.losses.BinaryCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as t:
            loss = loss_fn(y, model(x))
        t = hvd.DistributedGradientTape(t, compression=comp, groups=1)
        grads = t.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = [float(step(xs[i % 4 * 32:(i % 4 + 1) * 32], ys[i % 4 * 32:(i % 4 + 1) * 32])) for i in range(steps)]
    w = model.get_weights()
    return {"loss": losses, "identical": same_on_all_ranks(w), "slots": len(getattr(comp, "slots", [])),
            "weights": [x.ravel().tolist() for x in w]}


LOSSLESS = "gspar:rho=1.0,method=exact,fallback=false,seed=1"
LOSSY = "gspar:rho=0.3,memory=true,fallback=false,seed=2"
out["keras"] = {spec: fit(spec) for spec in ("none", LOSSLESS, LOSSY)}
out["tape"] = {spec: tape(spec) for spec in ("none", LOSSLESS, LOSSY)}

report(rank, **out)
