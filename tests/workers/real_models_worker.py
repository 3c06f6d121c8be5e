"""2 ranks: Keras models of realistic shape with only compression= changed (run by tests/test_real_models.py).

A small Transformer encoder (Embedding, MultiHeadAttention, LayerNormalization, Dense: over a hundred
gradient tensors) trained by fit with hvd.DistributedOptimizer, and a text classifier (Embedding +
Dense) with and without sparse_as_dense, beside Horovod's none.
"""

import numpy as np
import tensorflow as tf
import horovod.tensorflow.keras as hvd

import hvdspar
from hvdspar import state
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank = hvd.rank()
VOCAB, SEQ, D = 200, 8, 16


def encoder(blocks=7):
    tokens = tf.keras.Input((SEQ,), dtype=tf.int32)
    x = tf.keras.layers.Embedding(VOCAB, D)(tokens)
    for _ in range(blocks):
        attended = tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
        x = tf.keras.layers.LayerNormalization()(x + attended)
        h = tf.keras.layers.Dense(2 * D, activation="relu")(x)
        x = tf.keras.layers.LayerNormalization()(x + tf.keras.layers.Dense(D)(h))
    out = tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling1D()(x))
    return tf.keras.Model(tokens, out)


def text_classifier():
    tokens = tf.keras.Input((SEQ,), dtype=tf.int32)
    x = tf.keras.layers.Embedding(1000, 32)(tokens)
    return tf.keras.Model(tokens, tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling1D()(x)))


def data(n=64, vocab=VOCAB):
    rng = np.random.RandomState(rank)
    return rng.randint(0, vocab, (n, SEQ)).astype(np.int32), rng.randint(0, 2, n).astype(np.int32)


def fit(make, compression, steps=4, vocab=VOCAB, **kw):
    tf.keras.utils.set_random_seed(0)
    model = make()
    init = np.random.RandomState(1)
    model.set_weights([init.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.05), compression=compression, **kw)
    model.compile(optimizer=opt, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data(vocab=vocab)
    hist = model.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=steps, verbose=0,
                     callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    return model, hist.history["loss"]


# the Transformer encoder: only compression= set
comp = hvdspar.GSpar(rho=0.1, seed=1, memory=True)
model, loss = fit(encoder, comp)
t = comp.traffic()
transformer = {
    "tensors": len(model.trainable_variables),
    "messages": sum(1 for s in comp.slots if s.memory is not None),  # compressed messages (buckets)
    "embedding_counted": sum(1 for s in comp.slots if s.memory is None),  # Horovod's own IndexedSlices path
    "identical": same_on_all_ranks(model.trainable_variables),
    "finite": bool(np.all(np.isfinite(loss))),
    "steps": t["steps"], "ratio": t["ratio"], "dense_bytes": t["last_step_dense_bytes"],
    "model_bytes": int(sum(np.prod(v.shape) * 4 for v in model.trainable_variables)),
}

# the text classifier: Horovod's none, GSpar with sparse_as_dense (compressed), GSpar without (slices)
embedding = {}
for label, compression, kw in (("none_dense", hvd.Compression.none, {"sparse_as_dense": True}),
                               ("gspar_dense", hvdspar.GSpar(rho=0.05, seed=2), {"sparse_as_dense": True}),
                               ("gspar_slices", hvdspar.GSpar(rho=0.05, seed=2), {})):
    model, loss = fit(text_classifier, compression, vocab=1000, **kw)
    entry = {"identical": same_on_all_ranks(model.trainable_variables), "finite": bool(np.all(np.isfinite(loss)))}
    if label != "none_dense":
        tr = compression.traffic()
        entry.update(bytes=tr["last_step_bytes_sent"], dense=tr["last_step_dense_bytes"], slots=len(compression.slots))
    embedding[label] = entry
embedding["none_dense"]["bytes"] = int(sum(np.prod(v.shape) * 4 for v in model.trainable_variables))
# Horovod's none without sparse_as_dense allgathers the embedding's rows: counted from one step's gradients
x, y = data(vocab=1000)
with tf.GradientTape() as tape:
    logits = model(x[:16], training=True)
    batch_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:16], logits)
grads = tape.gradient(batch_loss, model.trainable_variables)
embedding["none_slices"] = {
    "bytes": state.horovod_step_bytes(model.trainable_variables, hvd.Compression.none, grads)[0],
    "bytes_without_gradients": state.horovod_step_bytes(model.trainable_variables, hvd.Compression.none)[0],
    "identical": True, "finite": True}

report(rank, transformer=transformer, embedding=embedding)
