"""Bit packing helpers in pure TensorFlow (vectorised, no Python loops over data).

Bits are packed least-significant-bit first: bit j of the stream is bit (j % 8)
of byte j // 8. Byte streams are uint8 tensors.
"""

import tensorflow as tf

#: the integer dtype of the bit arithmetic on message-sized tensors: int64, which TensorFlow keeps in
#: device memory on a GPU (int32 tensors of most ops it keeps in host memory: a copy each way)
WORD = tf.int64

_BYTE_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7)  # (Python values: a tensor made at import belongs to that graph)


def ceil_div(a, b):
    return (a + b - 1) // b


def zero_padded(x, length):
    """1-D x followed by zeros of its dtype up to ``length`` elements (a concat: ``Pad`` has no int64 GPU kernel)."""
    n = tf.size(x, out_type=tf.int64)
    return tf.concat([x, tf.zeros(tf.reshape(tf.cast(length, tf.int64) - n, [1]), x.dtype)], 0)


def pack_bits(bits):
    """1-D tensor of 0/1 (any integer or bool dtype) -> uint8 bytes, ceil(len/8) long."""
    bits = tf.cast(tf.reshape(bits, [-1]), WORD)
    n = tf.size(bits, out_type=tf.int64)
    words = tf.reshape(zero_padded(bits, ceil_div(n, 8) * 8), [-1, 8])
    return tf.cast(tf.reduce_sum(tf.bitwise.left_shift(words, tf.constant(_BYTE_SHIFTS, WORD)), axis=1), tf.uint8)


def unpack_bits(data, nbits):
    """uint8 bytes -> the first ``nbits`` bits as a 0/1 tensor (``WORD``)."""
    data = tf.cast(tf.reshape(data, [-1, 1]), WORD)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(data, tf.constant(_BYTE_SHIFTS, WORD)), 1)
    return tf.reshape(bits, [-1])[:nbits]


def pack_positions(positions, nbits):
    """Sorted distinct int64 positions in [0, nbits) -> the uint8 stream of ``nbits`` bits set exactly there.

    Byte p // 8 gets 2^(p % 8) for every p, summed per byte by ``SegmentSum`` over the sorted byte
    numbers: a byte's bits are disjoint, so their sum is their bitwise or, exact in float64 whatever
    the order of addition. float64 because ``SegmentSum`` has a GPU kernel for it and none for
    integers; a zero appended at the last byte makes its output max(nbytes, 1) long. No tensor of
    one element per bit (the earlier ``ScatterNd`` of ones into int64 bits, then ``pack_bits``)."""
    positions = tf.cast(positions, tf.int64)
    nbytes = ceil_div(tf.cast(nbits, tf.int64), 8)
    ones = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.bitwise.bitwise_and(positions, 7))
    fields = tf.concat([tf.cast(ones, tf.float64), tf.zeros([1], tf.float64)], 0)
    rows = tf.concat([tf.bitwise.right_shift(positions, 3), tf.reshape(tf.maximum(nbytes, 1) - 1, [1])], 0)
    return tf.cast(tf.math.segment_sum(fields, rows)[:nbytes], tf.uint8)


_LOW32 = 0xFFFFFFFF


def pack_uints(values, width):
    """Non-negative int64 values, ``width`` bits each (0 <= width <= 63; a Python int or a tensor) -> bytes.

    Value j is bits [j w, j w + w) of the stream. In groups of 32 values, whose w * 32 bits are
    exactly w 32-bit little-endian words (bit k of word m is bit 32 m + k of the group's stream),
    value j starts at bit r = j w mod 32 of word q = j w // 32 and, being at most 63 bits long,
    ends in word q + 2 at the latest. Its three pieces v << r, v >> (32 - r), v >> (64 - r), each
    cut to 32 bits, are routed to words q, q + 1, q + 2 by a [32, w] 0/1 matrix: one float64
    matmul per piece sums them, exactly (a word's pieces are disjoint bit fields, so their sum is
    their bitwise or, below 2^32; every partial sum is an integer below 2^53, in any order).
    A width known when the graph is built drops the pieces that are always zero (the third when
    w <= 32, the second too when w divides 32). A few word operations per value, not one int64
    element per bit."""
    static = tf.get_static_value(width)  # None when the width is only known at run time
    v = tf.cast(tf.reshape(values, [-1]), tf.int64)
    width = tf.cast(width, tf.int64)
    n = tf.size(v, out_type=tf.int64)
    groups = ceil_div(n, 32)
    # padded in int64, then as uint64 for logical shifts (a uint64 zeros has no GPU kernel)
    v = tf.bitcast(tf.reshape(zero_padded(v, groups * 32), [-1, 32]), tf.uint64)
    start = tf.range(32, dtype=tf.int64) * width
    q = tf.bitwise.right_shift(start, 5)
    r = tf.cast(tf.bitwise.bitwise_and(start, 31), tf.uint64)
    # the pieces that can be non-zero: the third only past 32 bits, the second unless w divides 32
    count = 3 if static is None or static > 32 else 2 if static > 0 and 32 % int(static) else 1
    pieces = [tf.bitwise.left_shift(v, r)]
    if count > 1:
        pieces.append(tf.bitwise.right_shift(v, 32 - r))
    if count > 2:  # v >> (64 - r) as two shifts, so that r = 0 gives 0 (TF leaves a shift by 64 undefined)
        pieces.append(tf.bitwise.right_shift(tf.bitwise.right_shift(v, 63 - r), tf.constant(1, tf.uint64)))
    words = tf.add_n([
        tf.matmul(tf.cast(tf.bitwise.bitwise_and(p, tf.constant(_LOW32, tf.uint64)), tf.float64),
                  tf.one_hot(q + k, tf.cast(width, tf.int32), dtype=tf.float64))  # [32, w]: value j -> word q_j + k
        for k, p in enumerate(pieces)
    ])  # [groups, w]
    stream = tf.reshape(tf.bitcast(tf.cast(tf.cast(words, tf.int64), tf.uint32), tf.uint8), [-1])
    return stream[:ceil_div(n * width, 8)]


def _values_of_words(words, width, count):
    """Values j < ``count`` of ``width`` bits from 64-bit little-endian words (int64 [W], W >= the words
    they cover + 2): value j is bits [j w, j w + w) of the stream, read from words q and q + 1. The
    shifts run on uint64 (logical), the gathers on int64."""
    start = tf.range(count, dtype=tf.int64) * width
    q = tf.bitwise.right_shift(start, 6)
    r = tf.bitwise.bitwise_and(start, 63)
    low_word = tf.bitcast(tf.gather(words, q), tf.uint64)
    high_word = tf.bitcast(tf.gather(words, q + 1), tf.uint64)
    # bits r.. of word q, then word q + 1 above them: high_word << (64 - r), as two shifts so that
    # r = 0 gives 0 (one shift by 64 would be clamped to 63)
    above = tf.bitwise.left_shift(tf.bitwise.left_shift(high_word, tf.cast(63 - r, tf.uint64)),
                                  tf.constant(1, tf.uint64))
    value = tf.bitwise.bitwise_or(tf.bitwise.right_shift(low_word, tf.cast(r, tf.uint64)), above)
    mask = tf.bitwise.left_shift(tf.constant(1, tf.int64), width) - 1
    return tf.bitwise.bitwise_and(tf.bitcast(value, tf.int64), mask)


@tf.function(jit_compile=True, autograph=False)
def _values_of_words_xla(words, width):
    """``_values_of_words`` for ``len(words) - 2`` values in one XLA computation (a width <= 63 bits
    puts P values in at most P words, and two zero words follow)."""
    return _values_of_words(words, width, tf.size(words, out_type=tf.int64) - 2)


#: below this many values ``unpack_uints(..., xla=True)`` pads to it: one compiled shape for small counts
_MIN_PADDED_VALUES = 1 << 10


def unpack_uints(data, count, width, xla=False):
    """Inverse of pack_uints: ``count`` int64 values of ``width`` bits (0 <= width <= 63).

    Value j is bits [j w, j w + w) of the stream, read from the two 64-bit words that hold it
    (the bytes taken as the machine's little-endian words: bit k of word q is bit 64 q + k of
    the stream), so that a value costs a few word operations, not w single bits. ``xla``: in one
    XLA computation over the count padded to a power of two (at least ``_MIN_PADDED_VALUES``, so
    that a few compiled shapes serve every count)."""
    count = tf.cast(count, tf.int64)
    width = tf.cast(width, tf.int64)
    data = tf.reshape(data, [-1])
    nbytes = tf.size(data, out_type=tf.int64)
    if xla:
        nwords = next_power_of_two(count, _MIN_PADDED_VALUES) + 2
    else:
        nwords = ceil_div(nbytes, 8) + 2  # whole words, then two zero words: word q + 1 always exists
    words = tf.bitcast(tf.reshape(zero_padded(data, 8 * nwords), [-1, 8]), tf.int64)
    if xla:
        return _values_of_words_xla(words, width)[:count]
    return _values_of_words(words, width, count)


#: below this many bytes ``set_bit_positions`` pads to it: one compiled shape for every small stream
_MIN_PADDED_BYTES = 1 << 10


@tf.function(jit_compile=True, autograph=False)
def _set_bits(data, nbits):
    """bool [8 len(data)]: bit j of the stream is set and j < nbits; one XLA loop on uint8 lanes."""
    shifts = tf.constant(_BYTE_SHIFTS, tf.uint8)
    b = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.reshape(data, [-1, 1]), shifts),
                               tf.constant(1, tf.uint8))
    b = tf.reshape(b, [-1])
    return tf.logical_and(b > 0, tf.range(tf.size(b, out_type=tf.int64), dtype=tf.int64) < nbits)


def set_bit_positions(data, nbits, xla=False):
    """The positions of the set bits among the first ``nbits`` bits of the stream, ascending (int64).

    ``xla``: unpack the bits in one XLA computation into a boolean mask (a stream padded with zero
    bytes to a power of two, at least ``_MIN_PADDED_BYTES``, so that a few compiled shapes serve
    every size), then ``tf.where``. Else plain TF ops, for small streams."""
    nbits = tf.cast(nbits, tf.int64)
    if not xla:
        return tf.reshape(tf.where(unpack_bits(data, nbits) > 0), [-1])
    nbytes = ceil_div(nbits, 8)
    padded = zero_padded(tf.reshape(data, [-1])[:nbytes], next_power_of_two(nbytes, _MIN_PADDED_BYTES))
    return tf.reshape(tf.where(_set_bits(padded, nbits)), [-1])


def floor_log2(x):
    """floor(log2(x)) for int64 x >= 1 (element-wise), exact integer arithmetic."""
    x = tf.cast(x, tf.int64)
    powers = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(1, 63, dtype=tf.int64))
    return tf.reduce_sum(tf.cast(tf.expand_dims(x, -1) >= powers, tf.int64), axis=-1)


def next_power_of_two(n, minimum=1):
    """The smallest power of two >= max(n, minimum) (int64; ``minimum`` a power of two)."""
    return tf.maximum(
        tf.bitwise.left_shift(tf.constant(1, tf.int64), floor_log2(tf.maximum(2 * tf.cast(n, tf.int64) - 1, 1))),
        tf.constant(minimum, tf.int64))


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
