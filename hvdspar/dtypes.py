"""The dtype hvdspar computes in: a gradient's own for float64, float32 for every narrower float.

A float16 or bfloat16 gradient is sampled, scaled, summed and remembered (error feedback) in
float32 and sent in its own dtype; ``compute_dtype`` is that rule, in one place.
"""

import tensorflow as tf


def compute_dtype(dtype):
    """float64 stays float64; every narrower float is computed in float32."""
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"hvdspar: gradients must be floating point, got {dtype.name}")
    return tf.float64 if dtype == tf.float64 else tf.float32
