"""Counter-based uniform random numbers: u_i = hash(i, seed), cheap and stateless.

Sampling Z_i ~ Bernoulli(p_i) needs one uniform per coordinate, and TF's
Philox generator cost about seven reductions' worth of time per element on
CPU. Here u_i is two rounds of MurmurHash3's 32-bit finalizer applied to
(i, key(seed)): a handful of integer ops that XLA fuses with the rest of the
sampling pass. Quality is ample for sampling (uniform to 2^-24, independent
enough across coordinates and seeds; checked statistically in the tests),
not for cryptography. Indices are int64, so tensors over 2^32 elements get
distinct streams per 2^32 block.
"""

import tensorflow as tf

_M32 = 0xFFFFFFFF


def _u32(value):
    return tf.constant(value, tf.uint32)


def _fmix32(x):
    """MurmurHash3's 32-bit finalizer on uint32 lanes (multiplication wraps modulo 2^32)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(0x85EBCA6B)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(13)))
    x = x * _u32(0xC2B2AE35)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def _low32(v):
    """The low 32 bits of int64 v, as uint32."""
    return tf.cast(tf.bitwise.bitwise_and(v, _M32), tf.uint32)


def _key(seed):
    """The stream's 32-bit key: fmix(fmix(seed_0) * 0x9E3779B9 + seed_1)."""
    seed = tf.cast(seed, tf.int64)
    return _fmix32(_fmix32(_low32(seed[0])) * _u32(0x9E3779B9) + _low32(seed[1]))


@tf.autograph.experimental.do_not_convert
def uniform_at(i, seed, dtype=tf.float32):
    """u_i for the given int64 indices i (any shape, any order): the values ``uniform`` draws there.

    With i = 2^32 hi + lo and key = fmix(fmix(seed_0) * 0x9E3779B9 + seed_1),

        u_i = fmix(fmix(lo ^ key) + hi + key) / 2^32   (all modulo 2^32; the top 24 bits kept).

    The lanes are uint32: half the width of int64 lanes, so a vector instruction hashes twice
    as many coordinates.
    """
    key = _key(seed)
    i = tf.cast(i, tf.int64)
    x = _fmix32(tf.bitwise.bitwise_xor(_low32(i), key))
    x = _fmix32(x + tf.cast(tf.bitwise.right_shift(i, 32), tf.uint32) + key)
    return tf.cast(tf.bitwise.right_shift(x, _u32(8)), dtype) * (1.0 / 16777216.0)


@tf.autograph.experimental.do_not_convert
def uniform(n, seed, dtype=tf.float32, offset=0):
    """Uniforms u_offset, ..., u_{offset+n-1} in [0, 1) (multiples of 2^-24) from a seed of shape [2] (int64).

    u_i depends only on (i, seed) (``uniform_at``), so a tensor can be sampled in chunks
    (``offset`` = the chunk's first index) with the same result as in one go, and a few
    coordinates can be drawn again by index.
    """
    return uniform_at(tf.range(tf.cast(n, tf.int64), dtype=tf.int64) + tf.cast(offset, tf.int64), seed, dtype)
