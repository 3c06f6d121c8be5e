"""The first pass over a message's input x: is it finite, ||x||^2, and ||x||_1.

Every codec's ``encode`` first asks whether x is finite (a non-finite x sends the
header-only message, ``hvdspar.wire.nonfinite``); the variance figures and error
feedback's gamma = ||x||^2 / E||Q(x)||^2 need

    ||x||^2 = sum_i x_i^2                 (float64)

and GSpar's Algorithm 3 starts from

    lambda_0 = rho d / ||x||_1,   ||x||_1 = sum_i |x_i|   (the compute dtype),

and bounds the water level with ||x||_1 and ||x||^2 (``hvdspar.probabilities.water_level_bound``).

``scan(x)`` computes the three in one read of x. For x of at least
``kernels.XLA_MIN_ELEMENTS`` elements it is one small XLA computation per chunk
(``kernels.chunks``), each one loop over its chunk, the chunk results combined in
a fixed order, so the same x gives the same figures on any machine (and with or
without ``hvdspar.native``: ``hvdspar.kernels``). For x narrower than float64 the
squares are summed in float32 per row of 1024 and the rows in float64
(``_chunk_scan_rows``: relative error about 1e-8); a NaN or an Inf makes those sums
non-finite, and then, or where float32 squares overflow or flush to zero, the pass
is run again in float64 (``_chunk_scan``), which decides. Smaller x take the plain
TF ops; there ``l1`` is None (GSpar's plain path computes its own).
"""

import collections

import tensorflow as tf

from hvdspar.kernels import XLA_MIN_ELEMENTS, chunks
from hvdspar.dtypes import compute_dtype

class Scan(collections.namedtuple("Scan", ["finite", "sq_norm", "l1"])):
    """What the first pass learned about x: all finite (bool), ||x||^2 (float64), ||x||_1 (compute
    dtype; None for x under ``XLA_MIN_ELEMENTS``). For a non-finite x the norms are not finite."""


@tf.function(jit_compile=True, autograph=False)
def _chunk_scan(x):
    """(all finite, sum x_i^2 in float64, sum |x_i| in the compute dtype) of one chunk, one read.

    For x narrower than float64 the float64 sum of squares is itself the finite test: it cannot
    overflow (a chunk of 2^20 squares of at most float32's max, 3.4e38, sums to under 2e83), and a
    NaN or an Inf makes it NaN or Inf. Two reductions instead of three: XLA emits a multi-output
    reduction on the CPU as one loop, and every output makes it slower. float64 x tests explicitly.
    """
    a = tf.abs(tf.cast(x, compute_dtype(x.dtype)))
    x64 = tf.cast(x, tf.float64)
    sq = tf.reduce_sum(x64 * x64)
    if x.dtype == tf.float64:
        return tf.reduce_all(tf.math.is_finite(x)), sq, tf.reduce_sum(a)
    return tf.math.is_finite(sq), sq, tf.reduce_sum(a)


#: the float32 partial sums of ``_chunk_scan_rows``: rows of this many squares (chunks are multiples)
ROW_ELEMENTS = 1 << 10
# The float32 rows are trusted when ||x||^2 >= d * 2^-100: the squares that float32 flushes to zero
# (x_i^2 < 2^-126) then weigh at most 2^-26 of it.
_MIN_TRUSTED_SQ_PER_ELEMENT = 2.0**-100


@tf.function(jit_compile=True, autograph=False)
def _chunk_scan_rows(x):
    """(sum x_i^2, sum |x_i|) of one chunk of a float32/16 x, one read: the squares summed in float32 per
    row of ``ROW_ELEMENTS`` and the rows in float64 (relative error about 1e-8 on t-distributed x,
    at most 1024 x 2^-24 by construction), |x| in float32. Half the time of ``_chunk_scan``'s float64
    sum on a 2-core CPU; ``scan`` checks its result and falls back to ``_chunk_scan`` where float32
    squares overflow (|x_i| >= 1.8e19), flush to zero (a tiny x), or see a NaN or an Inf."""
    a = tf.abs(tf.cast(x, tf.float32))
    rows = tf.reduce_sum(tf.reshape(a * a, [-1, ROW_ELEMENTS]), axis=1)
    return tf.reduce_sum(tf.cast(rows, tf.float64)), tf.reduce_sum(a)


def _combined(parts):
    """One ``Scan`` from the chunks' (finite, sq, l1), combined in a fixed order."""
    if len(parts) == 1:
        return Scan(*parts[0])
    return Scan(tf.reduce_all(tf.stack([f for f, _, _ in parts])), tf.add_n([s for _, s, _ in parts]),
                tf.add_n([a for _, _, a in parts]))


@tf.autograph.experimental.do_not_convert
def scan(x):
    """``Scan`` of flat x (any float dtype, static size)."""
    x = tf.reshape(x, [-1])
    d = x.shape.num_elements()
    if d is None or d < XLA_MIN_ELEMENTS:
        x64 = tf.cast(x, tf.float64)
        return Scan(tf.reduce_all(tf.math.is_finite(x)), tf.tensordot(x64, x64, 1), None)
    parts = chunks(x)[0]
    if x.dtype == tf.float64:
        return _combined([_chunk_scan(p) for p in parts])
    rows = [_chunk_scan_rows(p) for p in parts]
    sq = tf.add_n([s for s, _ in rows])
    l1 = tf.add_n([a for _, a in rows])
    # finite sums of a finite x, and no mass lost to flushed squares (or x = 0, which loses none)
    trusted = tf.logical_and(tf.logical_and(tf.math.is_finite(sq), tf.math.is_finite(l1)),
                             tf.logical_or(sq >= d * _MIN_TRUSTED_SQ_PER_ELEMENT, tf.equal(l1, 0)))
    return Scan(*tf.cond(trusted, lambda: (tf.constant(True), sq, l1),
                         lambda: tuple(_combined([_chunk_scan(p) for p in parts]))))
