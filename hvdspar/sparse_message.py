"""The wire format of a sparsified gradient (Wangni et al. 2018, sec. 2.3).

A sparsified vector Q(g) of length d is the hybrid message

    Q_A = {(i, Q(g)_i) : i in S_k}    exact values where p_i = 1 (the top set),
    Q_B = {(i, sign(g_i)) : i kept, i not in S_k}   all of magnitude 1/lambda,
    scale = 1/lambda                  one float.

Equivalently a symbol vector q in {0, +1, -1, 2}^d plus the values of S_k and
the scale; its entropy bound is sum_l d_l log2(d / d_l) bits (``entropy_bits``).

Byte layout of one message: hvdspar's one header (``hvdspar.wire``:
scheme | n_A | n_B | scale = 1/lambda), then the body::

    scheme 0 (sparse): EF(idx_A) | EF(idx_B) | sign bits of B | values of A
    scheme 1 (dense) : 2-bit symbols q, 4 per byte   | values of A

Values of A travel in the gradient's own dtype. EF is the
Elias-Fano code of a sorted index set: n indices out of d cost
n * floor(log2(d/n)) low bits plus at most 3n high bits (unary gaps), within
about two bits per index of log2(binomial(d, n)). The encoder picks, per
message, whichever scheme is smaller; both sides compute every section size
from the header (``body_nbytes``), so messages of several ranks can simply be concatenated.
"""

import collections

import numpy as np
import tensorflow as tf

from hvdspar import bits, kernels, wire
from hvdspar.codec import Codec, Encoded
from hvdspar.dtypes import compute_dtype

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert

SCHEME_SPARSE = 0
SCHEME_DENSE = 1
SCHEME_NONFINITE = wire.SCHEME_NONFINITE

SparseMessage = collections.namedtuple("SparseMessage", ["idx_a", "val_a", "idx_b", "neg_b", "scale"])
SparseMessage.__doc__ = """A hybrid sparse message before byte coding.

idx_a: int64 [n_A], sorted; val_a: [n_A] values (exact Q(g)_i, the gradient's dtype);
idx_b: int64 [n_B], sorted; neg_b: bool [n_B] (True where g_i < 0);
scale: scalar 1/lambda, magnitude of every B entry (float32, or float64)."""


# --- Elias-Fano code of a sorted index set --------------------------------------------------


def ef_low_width(n, d):
    """Low-bit width l = floor(log2(d / n)) (0 when n = 0); tensors, int64."""
    n = tf.cast(n, tf.int64)
    q = tf.math.floordiv(tf.cast(d, tf.int64), tf.maximum(n, 1))
    return tf.where(n > 0, bits.floor_log2(tf.maximum(q, 1)), tf.zeros_like(n))


def ef_sizes(n, d):
    """(low bytes, high bits, high bytes) of the EF code of n indices in [0, d)."""
    n = tf.cast(n, tf.int64)
    l = ef_low_width(n, d)
    low_bytes = bits.ceil_div(n * l, 8)
    high_bits = tf.where(n > 0, tf.bitwise.right_shift(tf.cast(d - 1, tf.int64), l) + n, tf.zeros_like(n))
    return low_bytes, high_bits, bits.ceil_div(high_bits, 8)


def ef_nbytes(n, d):
    low_bytes, _, high_bytes = ef_sizes(n, d)
    return low_bytes + high_bytes


@_no_autograph
def ef_encode(idx, d):
    """Sorted int64 indices in [0, d) -> uint8 bytes (low bits, then unary high bits)."""
    idx = tf.cast(idx, tf.int64)
    n = tf.size(idx, out_type=tf.int64)
    l = ef_low_width(n, d)
    low = tf.bitwise.bitwise_and(idx, tf.bitwise.left_shift(tf.constant(1, tf.int64), l) - 1)
    high = tf.bitwise.right_shift(idx, l)
    _, high_bits, _ = ef_sizes(n, d)
    # the unary high bits: bit high_j + j set for the j-th index (strictly increasing positions)
    positions = high + tf.range(n, dtype=tf.int64)
    return tf.concat([bits.pack_uints(low, l), bits.pack_positions(positions, high_bits)], axis=0)


@_no_autograph
def ef_decode(data, n, d):
    """Inverse of ef_encode for n indices: bytes (exactly ef_nbytes long) -> int64 [n].

    The low bits and the unary high bits of a tensor of at least ``kernels.XLA_MIN_ELEMENTS`` elements
    are unpacked in XLA (``bits.unpack_uints``, ``bits.set_bit_positions``)."""
    n = tf.cast(n, tf.int64)
    l = ef_low_width(n, d)
    low_bytes, high_bits, _ = ef_sizes(n, d)
    low = bits.unpack_uints(data[:low_bytes], n, l, xla=kernels.large(d))
    positions = bits.set_bit_positions(data[low_bytes:], high_bits, xla=kernels.large(d))[:n]
    high = positions - tf.range(n, dtype=tf.int64)
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(high, l), low)


# --- Dense 2-bit symbols --------------------------------------------------------------------

_SYMBOL_SHIFTS = (0, 2, 4, 6)


def symbols_encode(msg, d):
    """q_i = 0 (dropped), 1 (+scale), 2 (-scale), 3 (exact value from A); 4 per byte."""
    sym = tf.zeros([d], bits.WORD)
    sym = tf.tensor_scatter_nd_update(sym, tf.expand_dims(msg.idx_b, 1), 1 + tf.cast(msg.neg_b, bits.WORD))
    sym = tf.tensor_scatter_nd_update(sym, tf.expand_dims(msg.idx_a, 1),
                                      tf.fill(tf.shape(msg.idx_a), tf.constant(3, bits.WORD)))
    sym = tf.concat([sym, tf.zeros([bits.ceil_div(d, 4) * 4 - d], bits.WORD)], 0)  # (Pad has no int64 GPU kernel)
    shifts = tf.constant(_SYMBOL_SHIFTS, bits.WORD)
    packed = tf.reduce_sum(tf.bitwise.left_shift(tf.reshape(sym, [-1, 4]), shifts), axis=1)
    return tf.cast(packed, tf.uint8)


def symbols_decode(data, d):
    """Bytes -> (idx_a, idx_b, neg_b)."""
    words = tf.cast(tf.reshape(data, [-1, 1]), bits.WORD)
    shifts = tf.constant(_SYMBOL_SHIFTS, bits.WORD)
    sym = tf.reshape(tf.bitwise.bitwise_and(tf.bitwise.right_shift(words, shifts), 3), [-1])[:d]
    idx_a = tf.reshape(tf.where(tf.equal(sym, 3)), [-1])
    idx_b = tf.reshape(tf.where(tf.logical_or(tf.equal(sym, 1), tf.equal(sym, 2))), [-1])
    neg_b = tf.equal(tf.gather(sym, idx_b), 2)
    return idx_a, idx_b, neg_b


def symbols_nbytes(d):
    return (d + 3) // 4


# --- Message sizes --------------------------------------------------------------------------


def body_nbytes(scheme, n_a, n_b, d, value_dtype):
    """Body size in bytes of a message (int64 tensor), from its header fields."""
    n_a = tf.cast(n_a, tf.int64)
    n_b = tf.cast(n_b, tf.int64)
    values = n_a * tf.as_dtype(value_dtype).size
    sparse = ef_nbytes(n_a, d) + ef_nbytes(n_b, d) + bits.ceil_div(n_b, 8) + values
    dense = tf.cast(symbols_nbytes(d), tf.int64) + values
    scheme = tf.cast(scheme, tf.int64)
    return tf.where(
        tf.equal(scheme, SCHEME_SPARSE), sparse, tf.where(tf.equal(scheme, SCHEME_DENSE), dense, tf.zeros_like(values))
    )


def ef_nbytes_planned(n, d):
    """Python twin of ``ef_nbytes`` (bytes of the EF code of n indices in [0, d))."""
    n = int(round(n))
    if n <= 0:
        return 0
    l = (d // n).bit_length() - 1 if d // n >= 1 else 0
    return -(-n * l // 8) + -(-(((d - 1) >> l) + n) // 8)


def expected_nbytes(n_a, n_b, d, value_dtype):
    """Python twin of the message size, for planning (dense fallback, benchmarks)."""

    n_a, n_b = int(round(n_a)), int(round(n_b))
    values = n_a * tf.as_dtype(value_dtype).size
    sparse = ef_nbytes_planned(n_a, d) + ef_nbytes_planned(n_b, d) + -(-n_b // 8) + values
    dense = symbols_nbytes(d) + values
    return wire.header_nbytes(d, value_dtype) + min(sparse, dense)


def entropy_bits(n_a, n_plus, n_minus, d, value_bits=32):
    """The entropy bound of sec. 2.3 plus the values: sum_l d_l log2(d/d_l) + (n_A + 1) b.

    d_l counts the symbols 0, +1, -1, 2 of q; b is the bits of one float (the
    exact values of S_k and the scale 1/lambda).
    """
    counts = np.array([d - n_a - n_plus - n_minus, n_plus, n_minus, n_a], dtype=np.float64)
    counts = counts[counts > 0]
    symbols = float(np.sum(counts * np.log2(d / counts)))
    return symbols + (n_a + 1) * value_bits


# --- Encode / decode ------------------------------------------------------------------------


@_no_autograph
def to_bytes(msg, d, value_dtype):
    """SparseMessage -> uint8 bytes, choosing the smaller of the sparse and dense schemes."""
    value_dtype = tf.as_dtype(value_dtype)
    n_a = tf.size(msg.idx_a, out_type=tf.int64)
    n_b = tf.size(msg.idx_b, out_type=tf.int64)
    sparse_size = body_nbytes(SCHEME_SPARSE, n_a, n_b, d, value_dtype)
    dense_size = body_nbytes(SCHEME_DENSE, n_a, n_b, d, value_dtype)
    use_sparse = sparse_size <= dense_size
    values = bits.to_bytes(tf.cast(msg.val_a, value_dtype))

    def sparse_body():
        return tf.concat(
            [ef_encode(msg.idx_a, d), ef_encode(msg.idx_b, d), bits.pack_bits(msg.neg_b), values], axis=0
        )

    def dense_body():
        return tf.concat([symbols_encode(msg, d), values], axis=0)

    body = tf.cond(use_sparse, sparse_body, dense_body)
    scheme = tf.where(use_sparse, SCHEME_SPARSE, SCHEME_DENSE)
    return tf.concat([wire.header(scheme, n_a, n_b, msg.scale, d, value_dtype), body], axis=0)


def body_size(d, value_dtype):
    """``body_nbytes`` of this format as ``wire.read_at`` / ``wire.fold`` take it (header -> bytes)."""
    return lambda head: body_nbytes(head.scheme, head.n_a, head.n_b, d, value_dtype)


@_no_autograph
def decode_body(head, body, d, value_dtype):
    """A message's ``wire.Header`` and body -> SparseMessage (scale in the header's dtype)."""
    value_dtype = tf.as_dtype(value_dtype)
    n_a, n_b = head.n_a, head.n_b
    itemsize = value_dtype.size

    def sparse():
        ef_a = ef_nbytes(n_a, d)
        ef_b = ef_nbytes(n_b, d)
        idx_a = ef_decode(body[:ef_a], n_a, d)
        idx_b = ef_decode(body[ef_a : ef_a + ef_b], n_b, d)
        sign_end = ef_a + ef_b + bits.ceil_div(n_b, 8)
        neg_b = tf.cast(bits.unpack_bits(body[ef_a + ef_b : sign_end], n_b), tf.bool)
        return idx_a, idx_b, neg_b, body[sign_end : sign_end + n_a * itemsize]

    def dense():
        start_values = symbols_nbytes(d)
        idx_a, idx_b, neg_b = symbols_decode(body[:start_values], d)
        return idx_a, idx_b, neg_b, body[start_values : start_values + n_a * itemsize]

    idx_a, idx_b, neg_b, value_bytes = tf.cond(tf.equal(head.scheme, SCHEME_DENSE), dense, sparse)
    val_a = bits.from_bytes(value_bytes, value_dtype, tf.size(idx_a, out_type=tf.int64))
    return SparseMessage(idx_a, val_a, idx_b, neg_b, head.scale)


@_no_autograph
def decode_at(data, offset, d, value_dtype):
    """Decode the message starting at ``offset`` of ``data``.

    Returns (SparseMessage, scheme, total bytes); a non-finite message decodes
    as empty, and the caller checks ``scheme``.
    """
    head, body, total = wire.read_at(data, offset, d, value_dtype, body_size(d, value_dtype))
    return decode_body(head, body, d, value_dtype), head.scheme, total


@_no_autograph
def from_bytes(data, d, value_dtype):
    """Inverse of ``encode`` for a single message."""
    msg, _, _ = decode_at(data, 0, d, value_dtype)
    return msg


@_no_autograph
def to_dense(msg, d, dtype, out_dtype=None):
    """The dense vector Q(g) (length d) that a message of gradient ``dtype`` stands for, with its
    values rounded to ``dtype`` as sent and decoded, in ``out_dtype`` (default ``dtype``; give the
    compute dtype for 16-bit gradients: the scatter has no float16/bfloat16 GPU kernel)."""
    dtype = tf.as_dtype(dtype)
    out_dtype = tf.as_dtype(out_dtype or dtype)
    scale = tf.cast(tf.cast(msg.scale, dtype), out_dtype)
    out = tf.zeros([d], out_dtype)
    out = tf.tensor_scatter_nd_update(out, tf.expand_dims(msg.idx_a, 1), tf.cast(tf.cast(msg.val_a, dtype), out_dtype))
    b_values = tf.where(msg.neg_b, -scale, scale)
    return tf.tensor_scatter_nd_update(out, tf.expand_dims(msg.idx_b, 1), b_values)


@_no_autograph
def sq_norm(msg, dtype):
    """||Q(g)||^2 of a message (float64): sum of the A values squared + n_B / lambda^2."""
    values = tf.cast(tf.cast(msg.val_a, dtype), tf.float64)
    scale = tf.cast(tf.cast(msg.scale, dtype), tf.float64)
    n_b = tf.cast(tf.size(msg.idx_b), tf.float64)
    return tf.reduce_sum(tf.square(values)) + n_b * tf.square(scale)


def entries(msg, value_dtype, accumulate_dtype):
    """Q of one message as (indices, values): A's exact values, then B's +-scale. A and B are
    disjoint, so every index appears once."""
    scale = tf.cast(tf.cast(msg.scale, value_dtype), accumulate_dtype)
    return (tf.concat([msg.idx_a, msg.idx_b], 0),
            tf.concat([tf.cast(msg.val_a, accumulate_dtype), tf.where(msg.neg_b, -scale, scale)], 0))


@_no_autograph
def sum_messages(data, num_messages, d, value_dtype, accumulate_dtype, factor=None):
    """Sum of the dense vectors of ``num_messages`` hybrid messages concatenated in ``data``,
    and whether all senders were finite (``wire.fold_entries``: the output written once; with
    ``factor``, factor x the sum, NaN where a sender was not finite)."""
    value_dtype = tf.as_dtype(value_dtype)
    return wire.fold_entries(data, num_messages, d, value_dtype, accumulate_dtype, body_size(d, value_dtype),
                             lambda head, body: entries(decode_body(head, body, d, value_dtype), value_dtype,
                                                        accumulate_dtype),
                             lambda head: head.n_a + head.n_b, factor)


def scaled(msg, gamma):
    """The message of gamma * Q."""
    return msg._replace(
        val_a=tf.cast(tf.cast(msg.val_a, tf.float64) * gamma, msg.val_a.dtype),
        scale=tf.cast(tf.cast(msg.scale, tf.float64) * gamma, msg.scale.dtype),
    )


def pack(msg, d, dtype, with_q):
    """A SparseMessage -> ``Encoded``: bytes, Q as sent (if ``with_q``), kept count, ||Q||^2."""
    msg = msg._replace(val_a=tf.cast(msg.val_a, dtype))
    kept = tf.size(msg.idx_a, out_type=tf.int64) + tf.size(msg.idx_b, out_type=tf.int64)
    cdt = compute_dtype(dtype)
    q = to_dense(msg, d, dtype, cdt) if with_q else tf.zeros([0], cdt)
    return Encoded(to_bytes(msg, d, dtype), q, kept, sq_norm(msg, dtype))


class SparseCodec(Codec):
    """A codec whose message is a ``SparseMessage``; subclasses give ``draw`` and ``expected_counts``."""

    def expected_counts(self, d):
        """Expected (n_A, n_B) of a message for a tensor of d elements."""
        raise NotImplementedError

    def expected_nbytes(self, d, dtype, shape=None):
        n_a, n_b = self.expected_counts(d)
        return expected_nbytes(n_a, n_b, d, dtype)

    def scaled(self, msg, gamma):
        return scaled(msg, gamma)

    def pack(self, msg, d, dtype, shape, with_q):
        return pack(msg, d, dtype, with_q)

    def decode_sum(self, data, num_ranks, d, dtype, shape=None, factor=None):
        return sum_messages(data, num_ranks, d, dtype, compute_dtype(dtype), factor)
