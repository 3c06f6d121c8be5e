"""EF-signSGD: scaled sign compression with error feedback (Karimireddy, Rebjock, Stich, Jaggi; ICML 2019).

    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1),
                                   compression=hvdspar.EFSignSGD())   # memory=True by default

Each rank sends C(e) = (||e||_1 / d) sign(e) for e = m + g and keeps
m <- e - C(e) (``hvdspar.error_feedback``). C is a contraction:
||C(e) - e||^2 = ||e||^2 - ||e||_1^2 / d <= (1 - 1/d) ||e||^2, so it is sent as
it is (no gamma). It is biased; the memory is what makes it converge
(Theorem II of the paper). ``memory=False`` gives plain scaled signSGD.
sign(0) is sent as +: one bit per element cannot say 0.

The paper feeds back the step (learning rate times gradient); here the
memory is on the gradient, which is the same for a constant learning rate
(and the same as for every other hvdspar compressor).

Wire format: hvdspar's one header (``hvdspar.wire``: scheme 4 | n_a = d |
n_b = 0 | scale = ||e||_1 / d), then d sign bits, 1 for negative, packed
least-significant bit first (``hvdspar.bits``): ceil(d / 8) bytes.
"""

import collections

import tensorflow as tf

from hvdspar import bits, wire
from hvdspar.codec import Codec, Encoded
from hvdspar.compressor import Compressor
from hvdspar.dtypes import compute_dtype

_no_autograph = tf.autograph.experimental.do_not_convert

SCHEME_SIGN = 4

SignMessage = collections.namedtuple("SignMessage", ["neg", "scale"])
SignMessage.__doc__ = """neg [d] bool (sign bits, True for negative) and scale = ||x||_1 / d (the header's dtype):
Q(x) = scale * (1 - 2 neg)."""


def body_nbytes(d):
    """Bytes of the sign bits: ceil(d / 8)."""
    return bits.ceil_div(d, 8)


def message_nbytes(d, value_dtype):
    """The whole message: header + ceil(d / 8)."""
    return wire.header_nbytes(d, value_dtype) + body_nbytes(d)


@_no_autograph
def sign_message(x, value_dtype):
    """The ``SignMessage`` of flat x: scale = ||x||_1 / d, rounded to the header's dtype."""
    x = tf.reshape(x, [-1])
    d = x.shape[0]
    wide = tf.float64 if x.dtype == tf.float64 else tf.float32
    l1 = tf.reduce_sum(tf.abs(tf.cast(x, wide)))
    scale = tf.cast(l1 / max(d, 1), wire.scale_dtype(value_dtype))
    return SignMessage(x < 0, scale)


def to_dense(msg, dtype):
    """Q(x) = scale * sign, in ``dtype``."""
    scale = tf.cast(msg.scale, dtype)
    return tf.where(msg.neg, -scale, scale)


class EFSignCodec(Codec):
    """The scaled sign, one bit per element plus the header's scale (a biased contraction)."""

    def draw(self, x, seed, dtype, shape, scan):
        return sign_message(x, dtype), None

    @_no_autograph
    def pack(self, msg, d, dtype, shape, with_q):
        cdt = compute_dtype(dtype)
        message = tf.concat([wire.header(SCHEME_SIGN, d, 0, msg.scale, d, dtype), bits.pack_bits(msg.neg)], 0)
        q = to_dense(msg, cdt) if with_q else tf.zeros([0], cdt)
        sq = tf.cast(d, tf.float64) * tf.square(tf.cast(msg.scale, tf.float64))
        return Encoded(message, q, tf.constant(d, tf.int64), sq)

    def expected_nbytes(self, d, dtype, shape=None):
        return message_nbytes(d, dtype)

    @_no_autograph
    def decode_sum(self, data, num_ranks, d, dtype, shape=None, factor=None):
        cdt = compute_dtype(dtype)

        def add(acc, head, body):
            neg = tf.cast(bits.unpack_bits(body, d), tf.bool)
            return acc + to_dense(SignMessage(neg, head.scale), cdt)

        return wire.fold(data, num_ranks, d, dtype, cdt, lambda head: body_nbytes(d), add, factor)


class EFSignSGD(Compressor):
    """EF-signSGD: (||e||_1 / d) sign(e) with error feedback; d / 8 bytes plus the header.

    Args:
      memory: error feedback (default True, the paper's method); False gives plain scaled signSGD.
      fallback, nonfinite, seed, bucket_mb: as for every hvdspar compressor (seed unused: the
        method is deterministic).
    """

    spec_name = "efsignsgd"

    def __init__(self, memory=True, fallback=True, nonfinite="propagate", seed=None, bucket_mb=None):
        super().__init__(EFSignCodec(), memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed,
                         bucket_mb=bucket_mb)
