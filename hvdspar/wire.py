"""The one wire header every hvdspar message starts with, and the fold over a gathered buffer.

Byte layout (integers little-endian)::

    scheme (1 byte) | n_a (w bytes) | n_b (w bytes) | scale (s bytes) | body

w = 4 bytes when d < 2^32 (else 8), s = 4 (a float32 scale; 8 for float64
gradients). The scheme says which method's body follows and how to read it,
and is unique across methods:

    0, 1   GSpar / UniSp / top-k / random-k / ATOMO entry-wise   (``hvdspar.sparse_message``: sparse, 2-bit symbols)
    2, 3   QSGD / TernGrad                                       (``hvdspar.quantize``: sparse, dense levels)
    16     ATOMO spectral atoms                                  (``hvdspar.atomo``)
    255    no body: the sender's gradient held NaN or Inf

A method's body size is a function of the header fields, d and the tensor's
shape, so the messages of all ranks can simply be concatenated (what Horovod's
allgather returns) and read back one after the other (``fold``).
"""

import tensorflow as tf

from hvdspar import bits, kernels

_no_autograph = tf.autograph.experimental.do_not_convert

SCHEME_NONFINITE = 255


def count_width(d):
    """Bytes of a count n <= d in the header (d known only at run time: a small message of
    ``Compressor.encoder``'s shared function, under 2^32)."""
    d = tf.get_static_value(d)
    return 4 if d is None or d < 2**32 else 8


def scale_dtype(value_dtype):
    """The header's scale: float64 for float64 gradients, else float32."""
    return tf.float64 if tf.as_dtype(value_dtype) == tf.float64 else tf.float32


def header_nbytes(d, value_dtype):
    return 1 + 2 * count_width(d) + scale_dtype(value_dtype).size


def header(scheme, n_a, n_b, scale, d, value_dtype):
    """The header's bytes (uint8 [header_nbytes])."""
    w = count_width(d)
    return tf.concat(
        [
            tf.reshape(tf.cast(scheme, tf.uint8), [1]),
            bits.uint_to_bytes(tf.cast(n_a, tf.int64), w),
            bits.uint_to_bytes(tf.cast(n_b, tf.int64), w),
            bits.to_bytes(tf.cast(scale, scale_dtype(value_dtype))),
        ],
        axis=0,
    )


@_no_autograph
def nonfinite(d, value_dtype):
    """The header-only message a rank sends when its gradient holds NaN or Inf (any method)."""
    zero = tf.constant(0, tf.int64)
    return header(SCHEME_NONFINITE, zero, zero, 0.0, d, value_dtype)


class Header:
    """The fields of one message's header: scheme, n_a, n_b (int64 scalars), scale (scale dtype)."""

    def __init__(self, scheme, n_a, n_b, scale):
        self.scheme, self.n_a, self.n_b, self.scale = scheme, n_a, n_b, scale


def read_header(data, offset, d, value_dtype):
    """The ``Header`` of the message at byte ``offset`` of ``data``."""
    w = count_width(d)
    sdt = scale_dtype(value_dtype)
    offset = tf.cast(offset, tf.int64)
    n = header_nbytes(d, value_dtype)
    # a strided slice (a GPU kernel for uint8 with int64 bounds; tf.slice has none), static size restored
    head = tf.reshape(data[offset:offset + n], [n])
    scheme = tf.cast(head[0], tf.int64)
    n_a = bits.bytes_to_uint(head[1 : 1 + w])
    n_b = bits.bytes_to_uint(head[1 + w : 1 + 2 * w])
    scale = tf.reshape(tf.bitcast(tf.reshape(head[1 + 2 * w :], [1, sdt.size]), sdt), [])
    return Header(scheme, n_a, n_b, scale)


@_no_autograph
def read_at(data, offset, d, value_dtype, body_nbytes):
    """(Header, body bytes, total bytes) of the message at ``offset``.

    ``body_nbytes(header) -> int64`` is the method's body size (0 for a non-finite message)."""
    head = read_header(data, offset, d, value_dtype)
    size = _body_size(head, body_nbytes)
    start = tf.cast(offset, tf.int64) + header_nbytes(d, value_dtype)
    body = data[start:start + size]
    return head, body, header_nbytes(d, value_dtype) + size


def _body_size(head, body_nbytes):
    """A message's body bytes: ``body_nbytes(head)``, 0 for a non-finite message (int64)."""
    return tf.where(tf.equal(head.scheme, SCHEME_NONFINITE), tf.constant(0, tf.int64),
                    tf.cast(body_nbytes(head), tf.int64))


@_no_autograph
def fold(data, num_messages, d, value_dtype, accumulate_dtype, body_nbytes, add, factor=None):
    """The sum [d] of the ``num_messages`` messages concatenated in ``data``, and whether all were finite.

    With ``factor`` (a scalar of ``accumulate_dtype``: Horovod's, ``hvdspar.exchange``) the first
    result is what ``decompress`` returns instead: factor x the sum, NaN everywhere when a message
    was not finite (``scaled``).

    ``body_nbytes(header)`` sizes a body; ``add(acc, header, body) -> acc`` adds one message's
    Q to the running sum (never called for a non-finite message, which adds nothing and clears
    the flag). Messages are added in rank order, so every rank computes bit-identical sums;
    the loop is a tf.while_loop, one graph whatever the number of ranks.
    """

    def body(i, offset, acc, all_finite):
        head, payload, total = read_at(data, offset, d, value_dtype, body_nbytes)
        finite = tf.not_equal(head.scheme, SCHEME_NONFINITE)
        acc = tf.cond(finite, lambda: add(acc, head, payload), lambda: acc)
        return i + 1, offset + total, acc, tf.logical_and(all_finite, finite)

    _, _, acc, all_finite = tf.while_loop(
        lambda i, *_: i < num_messages,
        body,
        (tf.constant(0), tf.constant(0, tf.int64), tf.zeros([d], accumulate_dtype), tf.constant(True)),
        parallel_iterations=1,
    )
    return scaled(acc, factor, all_finite), all_finite


def scaled(total, factor, all_finite):
    """factor x total where every sender was finite, else NaN everywhere (as Horovod's own sum of a
    NaN: a ``LossScaleOptimizer`` then skips the step on every rank); total itself when factor is None.
    One multiply of the dense sum: NaN x anything is NaN."""
    if factor is None:
        return total
    return total * (tf.cast(factor, total.dtype) + nan_unless(all_finite, total.dtype))


def nan_unless_finite(total, all_finite):
    """total where every sender was finite, else NaN everywhere (one select over the sum)."""
    return tf.where(all_finite, total, tf.constant(float("nan"), total.dtype))


def nan_unless(all_finite, dtype):
    """0 where every sender was finite, else NaN (a scalar of ``dtype``): added to a factor, it makes
    the product with a sum NaN everywhere (``scaled``)."""
    nan = tf.constant(float("nan"), dtype)
    return tf.where(all_finite, tf.zeros_like(nan), nan)


@_no_autograph
def fold_entries(data, num_messages, d, value_dtype, accumulate_dtype, body_nbytes, entries, count, factor=None):
    """``fold`` for a method whose message is a list of entries (index, value of Q), unique within a
    message: ``entries(header, body) -> (idx int64 [n], val [n] accumulate_dtype)``, with
    ``count(header) -> n`` read from the header alone.

    A first loop reads only the headers, for the longest list n_max; a second decodes every
    message into one row of the [M, P] table of entries (P: n_max rounded up to a power of two,
    so that a few compilations serve every step; rows padded with (0, 0.0)); ``kernels.scatter_rows``
    (XLA, or hvdspar.native's kernel where built: the same bits) sums the table row by
    row and writes the output once. Same result, bit for bit, as ``fold`` with one scatter-add
    per message. Tensors under ``kernels.XLA_MIN_ELEMENTS`` take ``fold`` (a
    compilation per size would cost more than it saves).

    With ``factor`` (as ``fold``'s) the table's values are multiplied by it before the sum, so the
    dense output is still written once: sum_r factor v_r, which is factor x sum_r v_r up to
    rounding (bit for bit when factor is a power of two, as 1/M for 2 or 4 ranks); NaN everywhere
    when a message was not finite."""
    accumulate_dtype = tf.as_dtype(accumulate_dtype)
    if not kernels.large(d):
        def add(acc, head, body):
            idx, val = entries(head, body)
            return tf.tensor_scatter_nd_add(acc, tf.expand_dims(idx, 1), val)

        return fold(data, num_messages, d, value_dtype, accumulate_dtype, body_nbytes, add, factor)

    def longest(i, offset, n_max):
        head = read_header(data, offset, d, value_dtype)
        n = tf.where(tf.equal(head.scheme, SCHEME_NONFINITE), tf.constant(0, tf.int64), tf.cast(count(head), tf.int64))
        return i + 1, offset + header_nbytes(d, value_dtype) + _body_size(head, body_nbytes), tf.maximum(n_max, n)

    _, _, n_max = tf.while_loop(lambda i, *_: i < num_messages, longest,
                                (tf.constant(0), tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
    width = bits.next_power_of_two(n_max)

    def padded(idx, val):
        return bits.zero_padded(idx, width), bits.zero_padded(val, width)

    def body(i, offset, idx_rows, val_rows, all_finite):
        head, payload, total = read_at(data, offset, d, value_dtype, body_nbytes)
        finite = tf.not_equal(head.scheme, SCHEME_NONFINITE)
        idx, val = tf.cond(finite, lambda: padded(*entries(head, payload)),
                           lambda: padded(tf.zeros([0], tf.int64), tf.zeros([0], accumulate_dtype)))
        return i + 1, offset + total, idx_rows.write(i, idx), val_rows.write(i, val), tf.logical_and(all_finite, finite)

    def rows(dtype):
        return tf.TensorArray(dtype, size=num_messages, element_shape=[None])

    _, _, idx_rows, val_rows, all_finite = tf.while_loop(
        lambda i, *_: i < num_messages,
        body,
        (tf.constant(0), tf.constant(0, tf.int64), rows(tf.int64), rows(accumulate_dtype), tf.constant(True)),
        parallel_iterations=1,
    )
    def scatter(idx, val):  # the table's rows summed into [d], written once (``hvdspar.kernels``)
        return kernels.scatter_rows(idx, val, d)

    if factor is None:
        return scatter(idx_rows.stack(), val_rows.stack()), all_finite

    def finite_sum():
        return scatter(idx_rows.stack(), val_rows.stack() * tf.cast(factor, accumulate_dtype))

    return tf.cond(all_finite, finite_sum, lambda: tf.fill([d], tf.constant(float("nan"), accumulate_dtype))), all_finite
