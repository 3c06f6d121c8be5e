"""The dtype hvdspar computes in: a gradient's own for float64, float32 for every narrower float.

A float16 or bfloat16 gradient is sampled, scaled, summed and remembered (error feedback) in
float32 and sent in its own dtype; ``compute_dtype`` is that rule, in one place. A sum over the
ranks is checked for NaN and Inf in a dtype wide enough not to overflow (``reduced_is_finite``).
"""

import tensorflow as tf


def compute_dtype(dtype):
    """float64 stays float64; every narrower float is computed in float32."""
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"hvdspar: gradients must be floating point, got {dtype.name}")
    return tf.float64 if dtype == tf.float64 else tf.float32


def reduced_is_finite(reduced):
    """Whether a tensor summed over the ranks is finite: any rank's NaN or Inf makes the sum
    non-finite, so one reduction tells every rank alike (summed in float32 or float64, so that a
    finite float16 sum does not overflow to Inf)."""
    wide = reduced if reduced.dtype == tf.float64 else tf.cast(reduced, tf.float32)
    return tf.math.is_finite(tf.reduce_sum(wide))
