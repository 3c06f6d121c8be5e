"""Unbiased random sparsification Q(g)_i = Z_i g_i / p_i, Z_i ~ Bernoulli(p_i) (sec. 2).

Pure TensorFlow, usable without Horovod. Randomness is stateless: the same
(seed pair) gives the same Q(g), which is what makes runs repeatable and lets
every rank draw independently (each rank folds its rank into the seed).

The dense part of GSpar (lambda, then u_i < min(lambda |g_i|, 1)) is, for
the greedy method on tensors of at least ``XLA_MIN_ELEMENTS``, one
XLA-compiled function, so its
element-wise work fuses into a few passes over g; only the variable-length
gather of the kept coordinates runs outside it. Smaller tensors skip XLA:
compiling per shape would cost more than it saves.
"""

import functools

import tensorflow as tf

from hvdspar.probabilities import compute_dtype, default_method, water_level
from hvdspar import rng
from hvdspar.coding import SparseMessage

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def bernoulli(p, seed):
    """Z_i ~ Bernoulli(p_i), independent, from a stateless seed (shape [2] int)."""
    u = tf.reshape(rng.uniform(tf.size(p), seed, p.dtype), tf.shape(p))
    return u < p


XLA_MIN_ELEMENTS = 1 << 16


def _keep(a, seed, rho, epsilon, method, iterations):
    """(lambda, keep mask, top-set mask) for magnitudes a."""
    lam = water_level(a, rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    scaled = lam * a  # p_i before clipping at 1
    kept = rng.uniform(tf.size(a), seed, a.dtype) < scaled
    return lam, kept, scaled >= 1


@functools.lru_cache(maxsize=None)
def _keep_xla(rho, epsilon, method, iterations):
    """_keep for one budget, XLA-compiled (once per shape)."""
    return tf.function(
        functools.partial(_keep, rho=rho, epsilon=epsilon, method=method, iterations=iterations),
        jit_compile=True,
        autograph=False,
    )


@_no_autograph
def gspar_message(g, seed, rho=None, epsilon=None, method=None, iterations=2):
    """GSpar: sample Q(g) with p_i = min(lambda |g_i|, 1) and return it as a SparseMessage.

    Coordinates with p_i = 1 (the top set S_k) go to Q_A with their exact
    value g_i; every other kept coordinate has g_i / p_i = sign(g_i) / lambda
    and goes to Q_B as a sign, with the one scale 1/lambda.

    Args:
      g: gradient tensor (any shape; flattened in C order).
      seed: stateless seed, int32/int64 tensor of shape [2].
    Returns:
      (SparseMessage, lambda).
    """
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    cdt = compute_dtype(g.dtype)
    method = method or default_method(rho, epsilon)
    a = tf.abs(tf.cast(g, cdt))
    seed = tf.cast(seed, tf.int64)
    # Greedy only: XLA lowers the exact methods' cumsum to an O(d^2) reduce-window on CPU.
    big = a.shape.num_elements() is not None and a.shape.num_elements() >= XLA_MIN_ELEMENTS
    if method == "greedy" and big:
        lam, keep, saturated = _keep_xla(rho, epsilon, method, iterations)(a, seed)
    else:
        lam, keep, saturated = _keep(a, seed, rho, epsilon, method, iterations)
    idx = tf.where(keep)[:, 0]
    top = tf.gather(saturated, idx)
    idx_a = tf.boolean_mask(idx, top)
    idx_b = tf.boolean_mask(idx, tf.logical_not(top))
    msg = SparseMessage(
        idx_a=idx_a,
        val_a=tf.gather(g, idx_a),
        idx_b=idx_b,
        neg_b=tf.gather(g, idx_b) < 0,
        scale=tf.math.reciprocal_no_nan(lam),
    )
    return msg, lam


@_no_autograph
def uniform_message(g, seed, rho):
    """UniSp (the paper's baseline): p_i = rho for all i, Q(g)_i = Z_i g_i / rho.

    Values differ from coordinate to coordinate, so every kept one goes to Q_A
    (index + value); with rho = 1 nothing is dropped.
    """
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    cdt = compute_dtype(g.dtype)
    p = tf.fill(tf.shape(g), tf.cast(rho, cdt))
    idx = tf.where(bernoulli(p, tf.cast(seed, tf.int64)))[:, 0]
    values = tf.cast(tf.gather(g, idx), cdt) / tf.cast(rho, cdt)
    empty = tf.zeros([0], tf.int64)
    return SparseMessage(idx, tf.cast(values, g.dtype), empty, tf.zeros([0], tf.bool), tf.constant(0.0, cdt))
