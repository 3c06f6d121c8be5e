"""Bit packing helpers in pure TensorFlow (vectorised, no Python loops over data).

Bits are packed least-significant-bit first: bit j of the stream is bit (j % 8)
of byte j // 8. Byte streams are uint8 tensors.
"""

import tensorflow as tf

#: the integer dtype of the bit arithmetic on message-sized tensors: int64, which TensorFlow keeps in
#: device memory on a GPU (int32 tensors of most ops it keeps in host memory: a copy each way)
WORD = tf.int64

_BYTE_SHIFTS = tf.constant([0, 1, 2, 3, 4, 5, 6, 7], WORD)


def ceil_div(a, b):
    return (a + b - 1) // b


def pack_bits(bits):
    """1-D tensor of 0/1 (any integer or bool dtype) -> uint8 bytes, ceil(len/8) long."""
    bits = tf.cast(tf.reshape(bits, [-1]), WORD)
    n = tf.size(bits, out_type=tf.int64)
    bits = tf.concat([bits, tf.zeros(tf.reshape(ceil_div(n, 8) * 8 - n, [1]), WORD)], 0)  # (Pad: no int64 GPU kernel)
    words = tf.reshape(bits, [-1, 8])
    return tf.cast(tf.reduce_sum(tf.bitwise.left_shift(words, _BYTE_SHIFTS), axis=1), tf.uint8)


def unpack_bits(data, nbits):
    """uint8 bytes -> the first ``nbits`` bits as a 0/1 tensor (``WORD``)."""
    data = tf.cast(tf.reshape(data, [-1, 1]), WORD)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(data, _BYTE_SHIFTS), 1)
    return tf.reshape(bits, [-1])[:nbits]


def pack_uints(values, width):
    """Non-negative int64 values, ``width`` bits each (width may be a tensor) -> bytes."""
    width = tf.cast(width, tf.int64)
    shifts = tf.range(width, dtype=tf.int64)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.reshape(values, [-1, 1]), shifts), 1)
    return pack_bits(tf.reshape(bits, [-1]))


def unpack_uints(data, count, width):
    """Inverse of pack_uints: ``count`` int64 values of ``width`` bits."""
    count = tf.cast(count, tf.int64)
    width = tf.cast(width, tf.int64)
    bits = tf.cast(unpack_bits(data, count * width), tf.int64)
    bits = tf.reshape(bits, tf.stack([count, width]))
    shifts = tf.range(width, dtype=tf.int64)
    return tf.reduce_sum(tf.bitwise.left_shift(bits, shifts), axis=1)


def floor_log2(x):
    """floor(log2(x)) for int64 x >= 1 (element-wise), exact integer arithmetic."""
    x = tf.cast(x, tf.int64)
    powers = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(1, 63, dtype=tf.int64))
    return tf.reduce_sum(tf.cast(tf.expand_dims(x, -1) >= powers, tf.int64), axis=-1)


def uint_to_bytes(x, nbytes):
    """A non-negative int64 scalar -> ``nbytes`` little-endian bytes (uint8)."""
    shifts = tf.range(nbytes, dtype=tf.int64) * 8
    return tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.cast(x, tf.int64), shifts), 255), tf.uint8)


def bytes_to_uint(data):
    """Little-endian uint8 bytes -> int64 scalar."""
    nbytes = data.shape[0]
    shifts = tf.range(nbytes, dtype=tf.int64) * 8
    return tf.reduce_sum(tf.bitwise.left_shift(tf.cast(data, tf.int64), shifts))


def to_bytes(values):
    """Any numeric tensor -> its raw bytes (native byte order), 1-D uint8."""
    values = tf.reshape(values, [-1])
    if values.dtype == tf.uint8:
        return values
    return tf.reshape(tf.bitcast(values, tf.uint8), [-1])


def from_bytes(data, dtype, count):
    """Raw bytes -> ``count`` values of ``dtype`` (inverse of to_bytes)."""
    dtype = tf.as_dtype(dtype)
    if dtype == tf.uint8:
        return data[:count]
    return tf.bitcast(tf.reshape(data, tf.stack([tf.cast(count, tf.int64), dtype.size])), dtype)
