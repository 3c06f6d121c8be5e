"""2 ranks: fallback="auto" measures the network and the compute once, on rank 0's
figures, and takes the same per-tensor decisions everywhere (run by tests/test_fallback.py)."""

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar
from hvdspar import link
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank = hvd.rank()
tf.keras.utils.set_random_seed(0)  # and again in train(): every case starts alike
f, k = 4096, 8  # kernel 32768 weights (sparse pays on a slow link), bias 8 (always dense by bytes)


def train(compressor, steps=20):
    tf.keras.utils.set_random_seed(0)
    w = tf.Variable(tf.zeros([f, k]))
    b = tf.Variable(tf.zeros([k]))
    opt = tf.keras.optimizers.SGD(0.1)
    rng = np.random.default_rng(rank)
    x = tf.constant(rng.normal(size=(64, f)).astype("float32"))
    y = tf.constant(rng.integers(0, k, 64).astype("int32"))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x @ w + b))
        tape = hvd.DistributedGradientTape(tape, compression=compressor)
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss

    losses = [float(step()) for _ in range(steps)]
    t = compressor.traffic()
    return {"dense_tensors": t["dense_tensors"], "ratio": t["ratio"], "loss": losses,
            "identical": same_on_all_ranks([w, b])}


# 1. measured: whatever the loopback says, every rank holds rank 0's figures and decides alike
measured = train(hvdspar.GSpar(rho=0.01, fallback="auto", seed=3, bucket_mb=0))
net = link.network()
figures = [net.latency_s, net.bandwidth_Bps]
compute = hvdspar.GSpar(rho=0.01, fallback="auto", seed=3, bucket_mb=0)
compute_line = link.measure_compute(compute, tf.float32, hvd.size())

# 2. a slow link (1 MB/s, 1 ms): the kernel goes sparse, the bias dense (bytes rule)
link._network = link.Network(1e-3, 1e6)
slow = train(hvdspar.GSpar(rho=0.01, fallback="auto", seed=3, bucket_mb=0))

# 3. a free link: everything goes dense
link._network = link.Network(0.0, 1e15)
fast = train(hvdspar.GSpar(rho=0.01, fallback="auto", seed=3, bucket_mb=0))

report(rank, measured=measured, slow=slow, fast=fast,
       figures=figures, figures_same=same_on_all_ranks([tf.constant(figures, tf.float64)]),
       compute=list(compute_line),
       compute_same=same_on_all_ranks([tf.constant(list(compute_line), tf.float64)]))
