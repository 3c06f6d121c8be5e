"""2 ranks: GSpar with a high rho sends every tensor dense (run by tests/test_fallback.py)."""

import hashlib

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd_tf
import horovod.tensorflow.keras as hvd
import hvdspar
from hvdspar import fallback
from tests.workers.common import counting_exchange, report

hvd.init()
rank, size = hvd.rank(), hvd.size()
tf.keras.utils.set_random_seed(0)  # Python, NumPy and TF (initial weights) alike on every rank

counter = counting_exchange()
gathered_bytes = counter.gathered

# With 2 ranks the rule M m >= 2 D means m >= D: a GSpar message (about 2 bits a
# kept element plus a 13-byte header for fp32) reaches the dense size only for
# tensors of at most 3 float32 elements. So the model is a 3-feature logistic
# regression: kernel (3, 1) and bias (1,), both predicted (and sent) dense.
d, k = 3, 1
comp = hvdspar.GSpar(rho=0.9, seed=5, bucket_mb=0)  # per tensor: each of these tiny tensors goes dense
comp.exchange = counter
shapes = [(d, k), (k,)]
expected_dense = [
    bool(fallback.prefer_dense(comp.codec.expected_nbytes(int(np.prod(s)), tf.float32), 4 * int(np.prod(s)), size))
    for s in shapes
]

rng = np.random.default_rng(10 + rank)
x = rng.normal(size=(256, d)).astype("float32")
y = (x @ np.array([1.0, -2.0, 0.5]) > 0).astype("float32")
model = tf.keras.Sequential([tf.keras.layers.Dense(k, input_shape=(d,))])
model.compile(
    hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1), compression=comp),
    tf.keras.losses.BinaryCrossentropy(from_logits=True),
)
hist = model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False,
                 callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])

flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in model.get_weights()], 0)
everyone = hvd_tf.allgather(tf.reshape(flat, [1, -1]))
report(
    rank,
    traffic=comp.traffic(),
    expected_dense=expected_dense,
    gathered_bytes=int(gathered_bytes.numpy()),
    dense_bytes_per_step=4 * (d * k + k),
    steps=3 * 256 // 32,
    identical=bool(tf.reduce_all(everyone == everyone[0])),
    loss=hist.history["loss"],
    weights_digest=hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
)
