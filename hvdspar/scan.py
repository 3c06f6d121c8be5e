"""The first pass over a message's input x: is it finite, ||x||^2, and ||x||_1.

Every codec's ``encode`` first asks whether x is finite (a non-finite x sends the
header-only message, ``hvdspar.wire.nonfinite``); the variance figures and error
feedback's gamma = ||x||^2 / E||Q(x)||^2 need

    ||x||^2 = sum_i x_i^2                 (float64)

and GSpar's Algorithm 3 starts from

    lambda_0 = rho d / ||x||_1,   ||x||_1 = sum_i |x_i|   (the compute dtype).

``scan(x)`` computes the three in one read of x. For x of at least
``XLA_MIN_ELEMENTS`` elements it is one small XLA computation per chunk of
``CHUNK_ELEMENTS`` (the chunks of one pass run concurrently, so a pass uses
every core), each one loop over its chunk (for x narrower than float64 the
finite test is read off the float64 sum of squares, see ``_chunk_scan``); chunk
results are combined in a fixed order, so the same x gives the same figures on
any machine. Three
separate TF ops (``is_finite`` and ``tensordot`` over the whole of x) read a 10M
gradient three times and materialise a boolean copy of it. Smaller x take the
plain TF ops, where compiling per shape would cost more than it saves; there
``l1`` is None (GSpar's plain path computes its own).

The chunks (``chunks``) are GSpar's too (``hvdspar.sparsify``): the last one is
padded with zeros to a power of two of at least ``XLA_MIN_ELEMENTS``, so XLA
compiles each chunk function for at most three shapes per dtype. A zero adds
nothing to any of the sums and is finite.
"""

import collections

import tensorflow as tf

from hvdspar.probabilities import compute_dtype
from hvdspar.wire import XLA_MIN_ELEMENTS

CHUNK_ELEMENTS = 1 << 18


class Scan(collections.namedtuple("Scan", ["finite", "sq_norm", "l1"])):
    """What the first pass learned about x: all finite (bool), ||x||^2 (float64), ||x||_1 (compute
    dtype; None for x under ``XLA_MIN_ELEMENTS``). For a non-finite x the norms are not finite."""


def padded_chunk(n):
    """The length a chunk of ``n`` elements is padded to: the next power of two, at least
    XLA_MIN_ELEMENTS (at most CHUNK_ELEMENTS, since no chunk is longer)."""
    size = XLA_MIN_ELEMENTS
    while size < n:
        size *= 2
    return size


def chunks(x):
    """Flat x (static size) -> its chunks of CHUNK_ELEMENTS, the last zero-padded to ``padded_chunk`` of its length."""
    d = x.shape.num_elements()
    sizes = [CHUNK_ELEMENTS] * (d // CHUNK_ELEMENTS) + ([d % CHUNK_ELEMENTS] if d % CHUNK_ELEMENTS else [])
    parts = tf.split(x, sizes) if len(sizes) > 1 else [x]
    pad = padded_chunk(sizes[-1]) - sizes[-1]
    if pad:
        parts[-1] = tf.pad(parts[-1], [[0, pad]])
    return parts


@tf.function(jit_compile=True, autograph=False)
def _chunk_scan(x):
    """(all finite, sum x_i^2 in float64, sum |x_i| in the compute dtype) of one chunk, one read.

    For x narrower than float64 the float64 sum of squares is itself the finite test: it cannot
    overflow (a chunk of 2^18 squares of at most float32's max, 3.4e38, sums to under 1e83), and a
    NaN or an Inf makes it NaN or Inf. Two reductions instead of three: XLA emits a multi-output
    reduction on the CPU as one loop, and every output makes it slower. float64 x tests explicitly.
    """
    a = tf.abs(tf.cast(x, compute_dtype(x.dtype)))
    x64 = tf.cast(x, tf.float64)
    sq = tf.reduce_sum(x64 * x64)
    if x.dtype == tf.float64:
        return tf.reduce_all(tf.math.is_finite(x)), sq, tf.reduce_sum(a)
    return tf.math.is_finite(sq), sq, tf.reduce_sum(a)


@tf.autograph.experimental.do_not_convert
def scan(x):
    """``Scan`` of flat x (any float dtype, static size)."""
    x = tf.reshape(x, [-1])
    d = x.shape.num_elements()
    if d is None or d < XLA_MIN_ELEMENTS:
        x64 = tf.cast(x, tf.float64)
        return Scan(tf.reduce_all(tf.math.is_finite(x)), tf.tensordot(x64, x64, 1), None)
    parts = [_chunk_scan(p) for p in chunks(x)]
    if len(parts) == 1:
        return Scan(*parts[0])
    return Scan(tf.reduce_all(tf.stack([f for f, _, _ in parts])), tf.add_n([s for _, s, _ in parts]),
                tf.add_n([a for _, _, a in parts]))
