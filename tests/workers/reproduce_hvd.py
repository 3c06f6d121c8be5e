"""Real-Horovod twin of training/reproduce_sim.py (run by tests/test_reproduce.py).

Each rank draws its minibatch rows with ``batch_indices`` (as simulated worker r
does), computes the same float64 logistic-regression gradient, and sends it
through ``hvd.allreduce(g, compression=comp)`` (allgather of the coded
messages, Horovod's reduction of the placeholder); the SGD update is the same. Reports the final weights, which the
test compares with ``run_convex`` simulating the same number of workers.

argv: spec steps lr
"""

import sys

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
from tests.workers.common import report
from hvdspar.training.data import load_synthetic
from hvdspar.training.reproduce_sim import batch_indices, logreg_grad, make_compressor

hvd.init()
rank, size = hvd.rank(), hvd.size()
spec, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
N, D, C2, SEED, BATCH = 1024, 2048, 1.0 / 64, 0, 8
lam = 1.0 / N
ds = load_synthetic(N, D, 0.9, C2, SEED)
x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
tf.keras.utils.set_random_seed(SEED)  # nothing below draws from the global generators; seeded all the same
comp = make_compressor(spec, SEED + 1234)


@tf.function
def average(g):
    # Horovod's own path: compress, allreduce of the placeholder (it carries the 1/M), decompress.
    return hvd.allreduce(g, op=hvd.Average, compression=comp)


w = np.zeros(D)
for t in range(steps):
    idx = batch_indices(N, size, BATCH, SEED, t)[rank]
    g = logreg_grad(x, y, w, lam, idx).astype(np.float32)
    w = w - lr * average(tf.constant(g)).numpy().astype(np.float64)

report(rank, w=w.tolist(), traffic={k: float(v) for k, v in comp.traffic().items() if np.isscalar(v)})
