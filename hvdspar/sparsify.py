"""Unbiased random sparsification Q(g)_i = Z_i g_i / p_i, Z_i ~ Bernoulli(p_i) (sec. 2).

Pure TensorFlow, usable without Horovod. Randomness is stateless: the same
(seed pair) gives the same Q(g), which is what makes runs repeatable and lets
every rank draw independently (each rank folds its rank into the seed).
"""

import tensorflow as tf

from hvdspar.probabilities import compute_dtype, default_method, water_level
from hvdspar.coding import SparseMessage

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def bernoulli(p, seed):
    """Z_i ~ Bernoulli(p_i), independent, from a stateless seed (shape [2] int)."""
    u = tf.random.stateless_uniform(tf.shape(p), seed=seed, dtype=p.dtype)
    return u < p


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
    lam = water_level(g, rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    a = tf.abs(tf.cast(g, cdt))
    scaled = lam * a  # p_i before clipping at 1
    keep = bernoulli(tf.minimum(scaled, 1), seed)
    idx = tf.where(keep)[:, 0]
    top = tf.gather(scaled, idx) >= 1
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
    idx = tf.where(bernoulli(p, seed))[:, 0]
    values = tf.cast(tf.gather(g, idx), cdt) / tf.cast(rho, cdt)
    empty = tf.zeros([0], tf.int64)
    return SparseMessage(idx, tf.cast(values, g.dtype), empty, tf.zeros([0], tf.bool), tf.constant(0.0, cdt))
