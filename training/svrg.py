"""Distributed SVRG with a compressed variance-reduced gradient (the paper's Figure 2).

Each outer iteration ("epoch") s, with snapshot w~ = w_s:

  mu = grad f(w~) = 1/N sum_n grad f_n(w~) + 2 lambda2 w~
       every rank sums the per-sample gradients over its shard; one hvd.allreduce
       (Sum, dense, uncompressed) and a division by N give the exact full gradient.
  then m inner steps (default: one pass over the rank's shard), each on a
  minibatch B of the rank's shard:
       v_r = grad f_B(w) - grad f_B(w~) + mu            (rank r's variance-reduced gradient)
       w  <- w - eta * (1/M) sum_r Q(v_r)              (Q: the compressor, e.g. GSpar)

The exchange of v goes through ``hvd.DistributedGradientTape(tape,
compression=compressor)``: the tape records the surrogate loss
f_B(w) + <stop_gradient(mu - grad f_B(w~)), w>, whose gradient is exactly v,
so Horovod (and hvdspar's compress/decompress) see v as "the gradient".
The last inner iterate becomes the next snapshot (SVRG option I as used in
practice). Data passes: 1 per full gradient + the inner minibatch samples / N.
"""

import numpy as np
import tensorflow as tf


class SVRG:
    def __init__(self, model, loss_fn, compressor, learning_rate, hvd_tf, n_total, full_batch=4096):
        self.model = model
        self.loss_fn = loss_fn
        self.compressor = compressor
        self.hvd = hvd_tf
        self.n_total = n_total
        self.full_batch = full_batch
        self.snapshot = tf.keras.models.clone_model(model)
        self.snapshot.set_weights(model.get_weights())
        self.optimizer = tf.keras.optimizers.SGD(learning_rate, jit_compile=False)
        self.optimizer.build(model.trainable_variables)
        self.mu = [tf.Variable(tf.zeros_like(v), trainable=False, name=f"mu_{i}") for i, v in enumerate(model.trainable_variables)]
        self._step = tf.function(self._inner_step)
        self._sum_grad = tf.function(self._shard_gradient_sum)

    @staticmethod
    def _reg(model):
        return tf.add_n(model.losses) if model.losses else tf.constant(0.0)

    def _shard_gradient_sum(self, x, y):
        with tf.GradientTape() as tape:
            total = self.loss_fn(y, self.snapshot(x, training=True)) * tf.cast(tf.shape(x)[0], tf.float32)
        return tape.gradient(total, self.snapshot.trainable_variables)

    def full_gradient(self, x_shard, y_shard):
        """Take the snapshot w~ = w and set mu = grad f(w~) over all ranks' data."""
        self.snapshot.set_weights(self.model.get_weights())
        sums = [np.zeros(v.shape, np.float64) for v in self.snapshot.trainable_variables]
        for i in range(0, x_shard.shape[0], self.full_batch):
            grads = self._sum_grad(tf.constant(x_shard[i : i + self.full_batch]), tf.constant(y_shard[i : i + self.full_batch]))
            for s, g in zip(sums, grads):
                s += g.numpy()
        if self.hvd.size() > 1:
            sums = [self.hvd.allreduce(tf.constant(s), op=self.hvd.Sum, name=f"svrg_full_{i}").numpy() for i, s in enumerate(sums)]
        with tf.GradientTape() as tape:
            reg = self._reg(self.snapshot)
        reg_grads = tape.gradient(reg, self.snapshot.trainable_variables) if self.snapshot.losses else [None] * len(sums)
        for m, s, r in zip(self.mu, sums, reg_grads):
            g = s / self.n_total
            if r is not None:
                g = g + r.numpy()
            m.assign(g.astype(m.dtype.as_numpy_dtype))

    def _inner_step(self, x, y):
        with tf.GradientTape() as snap_tape:
            snap_loss = self.loss_fn(y, self.snapshot(x, training=True)) + self._reg(self.snapshot)
        snap_grads = snap_tape.gradient(snap_loss, self.snapshot.trainable_variables)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, self.model(x, training=True)) + self._reg(self.model)
            correction = tf.add_n([tf.reduce_sum(tf.stop_gradient(m - gs) * v) for m, gs, v in zip(self.mu, snap_grads, variables)])
            surrogate = loss + correction
        tape = self.hvd.DistributedGradientTape(tape, compression=self.compressor)
        grads = tape.gradient(surrogate, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def step(self, x, y):
        """One inner step on this rank's minibatch (every rank must call it); returns the minibatch loss."""
        return self._step(tf.constant(x), tf.constant(y))

    @property
    def iterations(self):
        return self.optimizer.iterations
