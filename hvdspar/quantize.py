"""Unbiased stochastic quantisers: QSGD (Alistarh et al. 2017) and TernGrad (Wen et al. 2017).

Both send Q(x)_i = scale * sign(x_i) * l_i / s with an integer level
l_i in {0, ..., s} drawn so that E[Q(x)] = x:

- QSGD, s levels: scale = ||x||_2, r_i = s |x_i| / scale, l_i = floor(r_i) + Bernoulli(r_i - floor(r_i)).
  E||Q(x)||^2 = sum_i scale^2 / s^2 (floor(r_i)^2 + (2 floor(r_i) + 1) frac(r_i)) <= min(d/s^2, sqrt(d)/s) ||x||^2 + ||x||^2.
- TernGrad: s = 1, scale = max_i |x_i|, l_i ~ Bernoulli(|x_i| / scale).
  (TernGrad's optional gradient clipping and shared scalers are not applied.)

Wire format (``QuantMessage`` -> bytes): hvdspar's one header (``hvdspar.wire``:
scheme | n_a = number of non-zero levels | n_b = 0 | scale), then the body::

    scheme 2 (sparse): EF(indices of l_i > 0) | n sign bits | n values l_i - 1, ceil(log2 s) bits each
    scheme 3 (dense) : d sign bits | d levels l_i, ceil(log2(s + 1)) bits each

The encoder picks the smaller scheme per message, so TernGrad never
costs more than 2 bits per element (+ 13 header bytes) and QSGD with few levels
-- whose levels are mostly 0 -- gets an Elias-Fano coded sparse message, in
the spirit of QSGD's Elias coding of the non-zero positions.
"""

import collections
import math

import tensorflow as tf

from hvdspar import bits, sparse_message, wire
from hvdspar.codec import Codec, Encoded
from hvdspar.compressor import Compressor
from hvdspar.dtypes import compute_dtype

# Plain TF ops with explicit tf.cond/tf.case: nothing for AutoGraph to convert (and traces get faster).
_no_autograph = tf.autograph.experimental.do_not_convert

SCHEME_SPARSE = 2
SCHEME_DENSE = 3
SCHEME_NONFINITE = wire.SCHEME_NONFINITE

QuantMessage = collections.namedtuple("QuantMessage", ["level", "neg", "scale"])
QuantMessage.__doc__ = """A quantised vector before byte coding.

level: int64 [d] in {0, ..., s}; neg: bool [d] (True where x_i < 0);
scale: scalar (||x||_2 for QSGD, max|x| for TernGrad), float32 or float64.
Q(x)_i = scale * (level_i / s) * (-1 if neg_i else 1)."""


def level_width(levels):
    """Bits of one level 0..s in the dense scheme: ceil(log2(s + 1))."""
    return int(levels).bit_length()


def nonzero_width(levels):
    """Bits of one level 1..s (stored as level - 1) in the sparse scheme: ceil(log2 s)."""
    return int(levels - 1).bit_length()


def body_nbytes(scheme, n, d, levels):
    """Body bytes of a message from its header fields (int64 tensor)."""
    n = tf.cast(n, tf.int64)
    sparse = sparse_message.ef_nbytes(n, d) + bits.ceil_div(n, 8) + bits.ceil_div(n * nonzero_width(levels), 8)
    dense = tf.constant(bits.ceil_div(d, 8) + bits.ceil_div(d * level_width(levels), 8), tf.int64)
    scheme = tf.cast(scheme, tf.int64)
    return tf.where(
        tf.equal(scheme, SCHEME_SPARSE), sparse, tf.where(tf.equal(scheme, SCHEME_DENSE), dense, tf.zeros_like(n))
    )


def max_nbytes(d, levels, value_dtype):
    """Python: the largest message for d elements (the dense scheme)."""
    return wire.header_nbytes(d, value_dtype) + bits.ceil_div(d, 8) + bits.ceil_div(d * level_width(levels), 8)


@_no_autograph
def dequantize(scale, level, neg, levels, dtype):
    """scale * (level / s) * sign, in ``dtype``; the one formula senders and receivers share."""
    magnitude = tf.cast(scale, dtype) * (tf.cast(level, dtype) / tf.cast(levels, dtype))
    return tf.where(neg, -magnitude, magnitude)


@_no_autograph
def _stochastic_round(r, seed):
    """floor(r) + Bernoulli(r - floor(r)), int64; E = r."""
    low = tf.floor(r)
    u = tf.random.stateless_uniform(tf.shape(r), seed=seed, dtype=r.dtype)
    return tf.cast(low, tf.int64) + tf.cast(u < r - low, tf.int64)


@_no_autograph
def qsgd_quantize(x, levels, seed):
    """QSGD with s = ``levels``: QuantMessage with scale ||x||_2 (unbiased)."""
    x = tf.reshape(tf.convert_to_tensor(x), [-1])
    cdt = compute_dtype(x.dtype)
    xc = tf.cast(x, cdt)
    sdt = wire.scale_dtype(x.dtype)
    norm = tf.cast(tf.cast(tf.norm(xc), sdt), cdt)  # the scale exactly as it travels
    r = tf.math.divide_no_nan(tf.abs(xc) * tf.cast(levels, cdt), norm)
    level = tf.minimum(_stochastic_round(r, seed), levels)
    return QuantMessage(level, xc < 0, tf.cast(norm, sdt))


@_no_autograph
def terngrad_quantize(x, seed):
    """TernGrad: QuantMessage with s = 1, scale max|x|, level_i ~ Bernoulli(|x_i| / scale)."""
    x = tf.reshape(tf.convert_to_tensor(x), [-1])
    cdt = compute_dtype(x.dtype)
    xc = tf.cast(x, cdt)
    sdt = wire.scale_dtype(x.dtype)
    scale = tf.cast(tf.cast(tf.reduce_max(tf.abs(xc)), sdt), cdt)
    r = tf.math.divide_no_nan(tf.abs(xc), scale)
    level = tf.minimum(_stochastic_round(r, seed), 1)
    return QuantMessage(level, xc < 0, tf.cast(scale, sdt))


@_no_autograph
def expected_sq_norm(x, scale, levels):
    """E||Q(x)||^2 (float64) of the quantiser with this scale and s = ``levels``.

    With r_i = s |x_i| / scale, l_i = floor(r_i), f_i = r_i - l_i:
    E[level_i^2] = l_i^2 + (2 l_i + 1) f_i, so E||Q||^2 = (scale/s)^2 sum_i (l_i^2 + (2 l_i + 1) f_i).
    (TernGrad: s = 1, r_i <= 1, which gives scale * ||x||_1.)
    """
    x = tf.cast(x, tf.float64)
    scale = tf.cast(scale, tf.float64)
    s = tf.constant(float(levels), tf.float64)
    r = tf.math.divide_no_nan(tf.abs(x) * s, scale)
    low = tf.minimum(tf.floor(r), s)
    frac = r - low
    return tf.square(scale / s) * tf.reduce_sum(low * low + (2 * low + 1) * frac)


@_no_autograph
def encode(msg, d, levels, value_dtype):
    """QuantMessage -> uint8 bytes, the smaller of the sparse and dense schemes."""
    level = tf.cast(msg.level, tf.int64)
    nonzero = level > 0
    n = tf.reduce_sum(tf.cast(nonzero, tf.int64))
    use_sparse = body_nbytes(SCHEME_SPARSE, n, d, levels) <= body_nbytes(SCHEME_DENSE, n, d, levels)

    def sparse_body():
        idx = tf.reshape(tf.where(nonzero), [-1])
        return tf.concat(
            [
                sparse_message.ef_encode(idx, d),
                bits.pack_bits(tf.gather(msg.neg, idx)),
                bits.pack_uints(tf.gather(level, idx) - 1, nonzero_width(levels)),
            ],
            axis=0,
        )

    def dense_body():
        return tf.concat([bits.pack_bits(msg.neg), bits.pack_uints(level, level_width(levels))], axis=0)

    body = tf.cond(use_sparse, sparse_body, dense_body)
    scheme = tf.where(use_sparse, SCHEME_SPARSE, SCHEME_DENSE)
    return tf.concat([wire.header(scheme, n, 0, msg.scale, d, value_dtype), body], axis=0)


def body_size(d, levels):
    """This format's body size as ``wire.read_at`` / ``wire.fold`` take it (header -> bytes)."""
    return lambda head: body_nbytes(head.scheme, head.n_a, d, levels)


@_no_autograph
def decode_body(head, body, d, levels):
    """(idx, level, neg) of the non-zero levels of a message's body."""
    n = head.n_a

    def sparse():
        ef = sparse_message.ef_nbytes(n, d)
        idx = sparse_message.ef_decode(body[:ef], n, d)
        sign_end = ef + bits.ceil_div(n, 8)
        neg = tf.cast(bits.unpack_bits(body[ef:sign_end], n), tf.bool)
        level = bits.unpack_uints(body[sign_end:], n, nonzero_width(levels)) + 1
        return idx, level, neg

    def dense():
        neg = tf.cast(bits.unpack_bits(body[: bits.ceil_div(d, 8)], d), tf.bool)
        level = bits.unpack_uints(body[bits.ceil_div(d, 8) :], d, level_width(levels))
        idx = tf.reshape(tf.where(level > 0), [-1])
        return idx, tf.gather(level, idx), tf.gather(neg, idx)

    def empty():
        z = tf.zeros([0], tf.int64)
        return z, z, tf.zeros([0], tf.bool)

    return tf.case(
        [(tf.equal(head.scheme, SCHEME_SPARSE), sparse), (tf.equal(head.scheme, SCHEME_DENSE), dense)], default=empty
    )


@_no_autograph
def decode_at(data, offset, d, levels, value_dtype):
    """The message at ``offset``: ((idx, level, neg) of its non-zero levels, scale), scheme, total bytes."""
    head, body, total = wire.read_at(data, offset, d, value_dtype, body_size(d, levels))
    idx, level, neg = decode_body(head, body, d, levels)
    return (idx, level, neg, head.scale), head.scheme, total


@_no_autograph
def decode(data, d, levels, value_dtype):
    """One message -> QuantMessage (dense levels), the inverse of ``encode``."""
    (idx, level, neg, scale), _, _ = decode_at(data, 0, d, levels, value_dtype)
    index = tf.expand_dims(idx, 1)
    return QuantMessage(
        tf.scatter_nd(index, level, [d]), tf.scatter_nd(index, tf.cast(neg, tf.int64), [d]) > 0, scale
    )


@_no_autograph
def to_dense(msg, levels, dtype):
    return dequantize(msg.scale, msg.level, msg.neg, levels, dtype)


@_no_autograph
def sum_messages(data, num_messages, d, levels, value_dtype, accumulate_dtype, factor=None):
    """Sum of the Q of ``num_messages`` concatenated messages, in rank order; (sum [d], all_finite)
    (with ``factor``: ``wire.fold``'s)."""

    def add(acc, head, body):
        idx, level, neg = decode_body(head, body, d, levels)
        values = dequantize(head.scale, level, neg, levels, accumulate_dtype)
        return tf.tensor_scatter_nd_add(acc, tf.expand_dims(idx, 1), values)

    return wire.fold(data, num_messages, d, value_dtype, accumulate_dtype, body_size(d, levels), add, factor)


class QuantCodec(Codec):
    """A codec whose message is a ``QuantMessage``; subclasses give ``levels`` and ``quantize``.

    With error feedback gamma Q(x) is the message with its scale times gamma, from
    E||Q(x)||^2 of the quantiser (``expected_sq_norm``).
    """

    levels = 1

    def quantize(self, x, seed):
        raise NotImplementedError

    def expected_nbytes(self, d, dtype, shape=None):
        # The level distribution is data-dependent: plan for the largest (dense) message.
        return max_nbytes(d, self.levels, dtype)

    def draw(self, x, seed, dtype, shape, scan):
        msg = self.quantize(x, seed)
        return msg, lambda: expected_sq_norm(x, msg.scale, self.levels)

    def scaled(self, msg, gamma):
        return msg._replace(scale=tf.cast(tf.cast(msg.scale, tf.float64) * gamma, msg.scale.dtype))

    @_no_autograph
    def pack(self, msg, d, dtype, shape, with_q):
        cdt = compute_dtype(dtype)
        q = to_dense(msg, self.levels, cdt)
        kept = tf.reduce_sum(tf.cast(msg.level > 0, tf.int64))
        sq = tf.reduce_sum(tf.square(tf.cast(q, tf.float64)))
        return Encoded(encode(msg, d, self.levels, dtype), q if with_q else tf.zeros([0], cdt), kept, sq)

    @_no_autograph
    def decode_sum(self, data, num_ranks, d, dtype, shape=None, factor=None):
        return sum_messages(data, num_ranks, d, self.levels, dtype, compute_dtype(dtype), factor)


class QSGDCodec(QuantCodec):
    """QSGD's message with s = ``levels`` quantisation levels."""

    def __init__(self, levels=4):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels < 2**31:
            raise ValueError(f"hvdspar: levels must be an integer >= 1, got {levels!r}")
        self.levels = levels

    def config(self):
        return {"levels": self.levels}

    def quantize(self, x, seed):
        return qsgd_quantize(x, self.levels, seed)

    def expected_nbytes(self, d, dtype, shape=None):
        # Alistarh et al. (Lemma 3.1): E[#non-zero levels] <= s (s + sqrt(d)). Plan the
        # message with that many, capped by the dense scheme (the worst case).
        s = self.levels
        n = min(d, s * (s + math.sqrt(d)))
        sparse = (
            wire.header_nbytes(d, dtype) + sparse_message.ef_nbytes_planned(n, d) + -(-int(n) // 8)
            + -(-int(n) * nonzero_width(s) // 8)
        )
        return min(sparse, max_nbytes(d, s, dtype))


class TernGradCodec(QuantCodec):
    """TernGrad's message: s = 1, scale max|x|."""

    levels = 1

    def quantize(self, x, seed):
        return terngrad_quantize(x, seed)


class QSGD(Compressor):
    """QSGD (Alistarh et al. 2017) with ``levels`` = s quantisation levels; unbiased.

    Args:
      levels: s >= 1; each element costs about ceil(log2(s + 1)) + 1 bits in the
        dense scheme, or Elias-Fano index + sign + ceil(log2 s) bits per non-zero level.
      memory: error feedback; then it sends C(e) = gamma Q(e) for e = m + g,
        gamma = ||e||^2 / E||Q(e)||^2 (``hvdspar.error_feedback``), and keeps m = e - C(e).
      fallback, seed: as for every hvdspar compressor.
    """

    spec_name = "qsgd"

    def __init__(self, levels=4, memory=False, fallback=True, nonfinite="propagate", seed=None,
                 bucket_mb=None):
        super().__init__(QSGDCodec(levels), memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed,
                         bucket_mb=bucket_mb)


class TernGrad(Compressor):
    """TernGrad (Wen et al. 2017): Q(x)_i = max|x| sign(x_i) b_i, b_i ~ Bernoulli(|x_i| / max|x|); unbiased.

    At most 2 bits per element (+ 13 header bytes). Args: memory (error feedback, as QSGD's),
    fallback, seed.
    """

    spec_name = "terngrad"

    def __init__(self, memory=False, fallback=True, nonfinite="propagate", seed=None,
                 bucket_mb=None):
        super().__init__(TernGradCodec(), memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed,
                         bucket_mb=bucket_mb)
