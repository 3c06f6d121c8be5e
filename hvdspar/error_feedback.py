"""Error feedback around any codec: e = m + g, send C(e), keep m <- e - C(e).

The memory m (one per message, ``hvdspar.state``) carries what a step did not
send into the next. It stays bounded only if C is a contraction,
E||C(e) - e||^2 < ||e||^2. Top-k and plain random-k are; an unbiased Q is not
once its relative variance E||Q(e)||^2 / ||e||^2 - 1 reaches 1 (GSpar below
p_i = 1/2, QSGD, TernGrad, ATOMO): the residual e - Q(e) then has a second
moment above ||e||^2 and the memory grows geometrically. So an unbiased
method sends C(e) = gamma Q(e), with the one rule

    gamma = ||e||^2 / E||Q(e)||^2                                  (``contraction``)

the best scalar shrinkage: E||gamma Q(e) - e||^2 = (1 - gamma) ||e||^2. Each
codec gives its own E||Q(e)||^2 (GSpar: sum e_i^2 / p_i; QSGD: from its levels;
ATOMO: sum sigma_i^2 / p_i) and scales its own message; for UniSp (p_i = rho)
gamma = rho and gamma Q(e) = Z * e, MemSGD's rand-k.
"""

import tensorflow as tf

from hvdspar.dtypes import compute_dtype


def second_moment(weights, p):
    """E||Q||^2 = sum_{p_i > 0} w_i^2 / p_i (float64) of a method that keeps weight w_i (a coordinate,
    an atom's sigma_i) with probability p_i and sends it as w_i / p_i: GSpar, ATOMO."""
    w2 = tf.square(tf.cast(weights, tf.float64))
    p = tf.cast(p, tf.float64)
    return tf.reduce_sum(tf.where(p > 0, tf.math.divide_no_nan(w2, p), tf.zeros_like(w2)))


def contraction(sq_norm, second_moment):
    """gamma = ||x||^2 / E||Q(x)||^2 (float64 scalar; 0 for x = 0), from ||x||^2 (``hvdspar.scan``)."""
    return tf.math.divide_no_nan(tf.cast(sq_norm, tf.float64), tf.cast(second_moment, tf.float64))


class NoMemory:
    """``memory=False``: e = g, send Q(g), keep nothing (the same methods as ``ErrorFeedback``)."""

    def __init__(self, codec):
        self.codec = codec

    def feed(self, g, memory, dtype):
        return g

    def encode(self, x, seed, dtype, shape=None):
        return self.codec.encode(x, seed, dtype, shape)

    def residual(self, e, q):
        return tf.zeros([0], e.dtype)

    def keep(self, slot, when, new_memory):
        pass


class ErrorFeedback(NoMemory):
    """``memory=True``: e = m + g (``feed``), send C(e) (``encode``: the codec's contraction),
    m <- e - C(e) (``residual``, with q = C(e) as the receivers decode it), kept only
    ``when`` the step counts (``keep``: every rank finite)."""

    def feed(self, g, memory, dtype):
        return tf.cast(g, compute_dtype(dtype)) + memory

    def encode(self, x, seed, dtype, shape=None):
        return self.codec.encode(x, seed, dtype, shape, contract=True)

    def residual(self, e, q):
        return e - tf.cast(q, e.dtype)

    def keep(self, slot, when, new_memory):
        """m <- ``new_memory()`` where ``when`` (a bool tensor)."""
        tf.cond(when, lambda: slot.memory.assign(new_memory()).op, tf.no_op)
