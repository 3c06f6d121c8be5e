"""2-rank checks that hvdspar behaves as Horovod's Compression.none does (run by tests/test_dropin.py).

Every figure is computed beside the same call with Compression.none.
"""

import logging

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar
from horovod.tensorflow.compression import Compression
from tests.workers.common import report, same_on_all_ranks

tf.keras.utils.set_random_seed(0)
# Two ranks allow only singleton sets beside the global one (a set of both duplicates it).
singles = [hvd.ProcessSet([0]), hvd.ProcessSet([1])]
hvd.init(process_sets=singles)
rank, size = hvd.rank(), hvd.size()
results = {}

# Every compressor, with and without error feedback; fallback off so that a small tensor is compressed.
SPECS = [
    "gspar:rho=0.3", "gspar:rho=0.3,memory=true", "unisp:rho=0.3", "unisp:rho=0.3,memory=true",
    "topk:ratio=0.3", "topk:ratio=0.3,memory=false", "randomk:ratio=0.3", "randomk:ratio=0.3,memory=false",
    "atomo:budget=2", "atomo:budget=2,memory=true", "qsgd:levels=4", "qsgd:levels=4,memory=true",
    "terngrad", "terngrad:memory=true", "powersgd:rank=2,start_iter=0", "powersgd:rank=2,start_iter=0,memory=false",
    "efsignsgd", "efsignsgd:memory=false",
]
# Settings at which a compressor sends its input exactly: the result must be Horovod's.
LOSSLESS = ["gspar:rho=1.0,method=exact", "gspar:rho=1.0", "unisp:rho=1.0", "topk:ratio=1.0,memory=false",
            "randomk:ratio=1.0,memory=false", "atomo:budget=20", "atomo:budget=600,atoms=entry",
            "powersgd:rank=20,start_iter=0,min_compression_rate=0.5,memory=false"]  # full rank: P P^T = I
CONFIGS = {  # name -> allreduce keyword arguments
    "average": dict(op=hvd.Average),
    "sum": dict(op=hvd.Sum),
    "average_scaled": dict(op=hvd.Average, prescale_factor=0.5, postscale_factor=3.0),
    "sum_scaled": dict(op=hvd.Sum, prescale_factor=0.25, postscale_factor=2.0),
}


def make(spec, **defaults):
    full = spec + ("," if ":" in spec else ":") + "fallback=false,seed=5"
    return hvdspar.from_spec(full, **defaults)


g = tf.random.stateless_normal([20, 30], seed=[rank, 7])

# 1. op / prescale / postscale. Two instances with one seed send the same message, so the ratio of
#    two configurations is exactly the ratio of Horovod's factors; none gives that ratio too.
none = {k: hvd.allreduce(g, compression=Compression.none, **kw) for k, kw in CONFIGS.items()}
ratios = {}
for spec in SPECS:
    out = {k: hvd.allreduce(g, compression=make(spec), **kw) for k, kw in CONFIGS.items()}
    ratios[spec] = {
        k: float(np.max(np.abs(out[k].numpy() - out["sum"].numpy() * (none[k].numpy() / none["sum"].numpy()))))
        / float(np.max(np.abs(out["sum"].numpy())))
        for k in CONFIGS
    }
    ratios[spec]["finite"] = all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in out.values())
    ratios[spec]["identical"] = same_on_all_ranks(list(out.values()))
results["ratios"] = ratios
results["lossless"] = {
    spec: {k: float(np.max(np.abs(hvd.allreduce(g, compression=make(spec), **kw).numpy() - none[k].numpy())))
           for k, kw in CONFIGS.items()}
    for spec in LOSSLESS
}
results["none_factor"] = float(none["average_scaled"].numpy()[0, 0] / none["sum"].numpy()[0, 0])

# 2. DistributedGradientTape: op=Sum and gradient_predivide_factor, against none, lossless.
def tape_grads(compression, **kw):
    w = tf.Variable(tf.ones([20, 30]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w * g * g)
    return hvd.DistributedGradientTape(tape, compression=compression, **kw).gradient(loss, [w])[0].numpy()


exact = "gspar:rho=1.0,method=exact"
results["tape"] = {}
for name, kw in {"average": {}, "sum": dict(op=hvd.Sum), "predivide": dict(gradient_predivide_factor=2.0)}.items():
    ref = tape_grads(Compression.none, **kw)
    results["tape"][name] = {spec: float(np.max(np.abs(tape_grads(make(spec), **kw) - ref)))
                             for spec in (exact, "topk:ratio=1.0,memory=false")}

# 3. Eager calls of one tensor: one state, error feedback on, no growth. Same g on both ranks,
#    so the average is what each rank sent.
c = hvdspar.TopK(ratio=0.05, memory=True, seed=3)
g_same = tf.random.stateless_normal([400], seed=[1, 1])
sent = np.zeros(400)
for _ in range(40):
    sent += hvd.allreduce(g_same, compression=c).numpy()
m = c.slots[0].memory.numpy()
results["eager"] = {
    "slots": len(c.slots),
    "identity_err": float(np.max(np.abs(sent + m - 40 * g_same.numpy()))),
    "memory_norm": float(np.linalg.norm(m)),
    "sent_norm": float(np.linalg.norm(sent)),
    "dense_norm": float(np.linalg.norm(40 * g_same.numpy())),
}
# Two tensors of one shape told apart by name=; the same name with another shape is refused.
c2 = hvdspar.TopK(ratio=0.05, memory=True, seed=3)
for _ in range(5):
    hvd.allreduce(g_same, compression=c2, name="a")
    hvd.allreduce(2 * g_same, compression=c2, name="b")
results["eager"]["named_slots"] = len(c2.slots)
try:
    hvd.allreduce(tf.zeros([3]), compression=c2, name="a")
    results["eager"]["renamed_error"] = ""
except ValueError as e:
    results["eager"]["renamed_error"] = str(e)

# 4. Retraces of a tf.function: state stays per tensor.
c3 = hvdspar.GSpar(rho=0.2, memory=True, fallback=False, seed=2)
ws = [tf.Variable(tf.zeros([50])), tf.Variable(tf.zeros([4, 5]))]


def traced(scale):
    grads = [tf.ones_like(w) * scale for w in ws]
    return [hvd.allreduce(t, compression=c3) for t in grads]


for i in range(6):
    tf.function(traced)(float(i))  # a new tf.function each time: a retrace every call
step_fn = tf.function(traced, reduce_retracing=False)
for i in range(4):
    step_fn(float(i))  # a Python float: one trace per value
results["retrace"] = {"slots": len(c3.slots), "calls": [int(s.calls.numpy()) for s in c3.slots]}

# 5. Process sets: each rank reduces over its own set {rank}, beside none on the same set.
mine = singles[rank]
ps = {}
for spec in (exact, "gspar:rho=0.3", "topk:ratio=0.3", "powersgd:rank=2,start_iter=0"):  # powersgd: its allreduces
    ref = {k: hvd.allreduce(g, compression=Compression.none, process_set=mine, **kw).numpy()
           for k, kw in CONFIGS.items()}
    got = {k: hvd.allreduce(g, compression=make(spec), process_set=mine, **kw).numpy() for k, kw in CONFIGS.items()}
    if spec == exact:
        ps[spec] = {k: float(np.max(np.abs(got[k] - ref[k]))) for k in CONFIGS}
    else:  # compressed: Horovod's factors on that set, applied to the same Q(g)
        ps[spec] = {k: float(np.max(np.abs(got[k] - got["sum"] * (ref[k] / ref["sum"])))) for k in CONFIGS}
results["process_set"] = ps

# 6. Adasum and reducescatter are refused before any collective, on every rank.
refused = {}
for name, call in {
    "adasum": lambda: hvd.allreduce(g, op=hvd.Adasum, compression=make("gspar:rho=0.3")),
    "reducescatter": lambda: hvd.reducescatter(g, compression=make("gspar:rho=0.3")),
}.items():
    try:
        call()
        refused[name] = ""
    except NotImplementedError as e:
        refused[name] = str(e)
results["refused"] = refused

# 7. Non-finite gradients: propagated (default) like none, or a clear error (nonfinite="raise").
bad = g.numpy().copy()
if rank == 1:
    bad[3, 4] = np.inf
bad = tf.constant(bad)
nonfinite = {"none_all_finite": bool(np.isfinite(hvd.allreduce(bad, compression=Compression.none).numpy()).all())}
for spec in SPECS:
    c4 = make(spec)
    hvd.allreduce(g, compression=c4)  # one finite step
    before = ([s.memory.numpy().copy() for s in c4.slots if s.memory is not None],
              [int(s.calls.numpy()) for s in c4.slots], c4.traffic()["sq_norm"])
    out = hvd.allreduce(bad, compression=c4).numpy()
    after = ([s.memory.numpy() for s in c4.slots if s.memory is not None],
             [int(s.calls.numpy()) for s in c4.slots], c4.traffic()["sq_norm"])
    again = hvd.allreduce(g, compression=c4).numpy()  # and the next finite step is finite again
    nonfinite[spec] = {
        "all_nonfinite_here": not bool(np.isfinite(out).any()),
        "memory_kept": all(np.array_equal(a, b) for a, b in zip(before[0], after[0])),
        "calls_kept": before[1] == after[1],
        "norms_kept": before[2] == after[2],
        "next_finite": bool(np.isfinite(again).all()),
    }
try:
    hvd.allreduce(bad, compression=make("gspar:rho=0.3", nonfinite="raise"))
    nonfinite["raise"] = ""
except tf.errors.InvalidArgumentError as e:
    nonfinite["raise"] = str(e)[:2000]
results["nonfinite"] = nonfinite

# 8. The default compresses by bytes (deterministic), and rank 0 logs the plan once.
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("hvdspar").addHandler(handler)
logging.getLogger("hvdspar").setLevel(logging.INFO)
default = hvdspar.GSpar(rho=0.01, seed=1)
model_vars = [tf.Variable(tf.zeros([4000, 1])), tf.Variable(tf.zeros([1]))]
features = tf.random.stateless_normal([4000, 1], seed=[rank, 3])


@tf.function
def train_step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model_vars[0] * features) + tf.reduce_sum(model_vars[1])
    grads = hvd.DistributedGradientTape(tape, compression=default).gradient(loss, model_vars)
    for v, grad in zip(model_vars, grads):
        v.assign_sub(0.1 * grad)


for _ in range(3):
    train_step()
results["default"] = {
    "fallbacks": {name: hvdspar.from_spec(name).fallback for name in
                  ("gspar:rho=0.01", "unisp:rho=0.01", "topk:ratio=0.01", "randomk:ratio=0.01", "atomo", "qsgd",
                   "terngrad")},
    "dense_tensors": default.traffic()["dense_tensors"],
    "ratio": default.traffic()["ratio"],
    "log": records,
}

report(rank, **results)
