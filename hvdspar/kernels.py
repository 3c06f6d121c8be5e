"""The one seam between hvdspar's XLA passes and the compiled kernels (``hvdspar.native``).

    keep(g, lam, seed)        the sorted i with u_i < lam |g_i|        (GSpar's sampling pass)
    scatter_rows(idx, val, d) the [M, P] table of entries summed into [d], row after row (decode)

Each runs ``hvdspar.native``'s kernel where it is built and usable, else XLA, and the two give the
same bits (tests/test_native.py), so the model trained never depends on whether g++ was present.
The first pass over x (``hvdspar.scan``: ||x||_1 and ||x||^2, which fix lambda) is XLA everywhere:
a compiled sum in other lanes would differ in the last bits, and so could move lambda.

Large tensors (at least ``XLA_MIN_ELEMENTS``) go through XLA in ``chunks``: powers of two from
2^16 to 2^20 elements, about ``CHUNKS_PER_PASS`` per pass, the last padded with zeros (which add
nothing to any sum and are never kept), so that each chunk function compiles for at most five
shapes per dtype; the chunks of a pass run concurrently and combine in a fixed order. Smaller
tensors take plain TF ops, where a compilation per shape would cost more than it saves.
"""

import tensorflow as tf

from hvdspar import native, rng
from hvdspar.dtypes import compute_dtype

XLA_MIN_ELEMENTS = 1 << 16
MAX_CHUNK_ELEMENTS = 1 << 20
CHUNKS_PER_PASS = 4


def length(x):
    """The number of elements of x: a Python int where its shape says it, else an int64 tensor (a
    function traced once for every small size, ``Compressor.encoder``)."""
    n = x.shape.num_elements()
    return n if n is not None else tf.size(x, out_type=tf.int64)


def large(d):
    """Whether a message of d elements takes the XLA chunks (d >= XLA_MIN_ELEMENTS). A d known only
    at run time is a small one: ``Compressor.encoder`` shares one function among the small sizes."""
    d = tf.get_static_value(d)
    return d is not None and d >= XLA_MIN_ELEMENTS


def padded_chunk(n):
    """The length a chunk of ``n`` elements is padded to: the next power of two, at least XLA_MIN_ELEMENTS."""
    size = XLA_MIN_ELEMENTS
    while size < n:
        size *= 2
    return size


def chunk_elements(d):
    """Elements per chunk of a flat x of d elements: d / CHUNKS_PER_PASS rounded up to a power of
    two, within [XLA_MIN_ELEMENTS, MAX_CHUNK_ELEMENTS]."""
    return min(padded_chunk(-(-d // CHUNKS_PER_PASS)), MAX_CHUNK_ELEMENTS)


def chunks(x):
    """Flat x (static size) -> (its chunks of ``chunk_elements``, the last zero-padded to ``padded_chunk``
    of its length; the chunks' offsets in x)."""
    d = x.shape.num_elements()
    size = chunk_elements(d)
    sizes = [size] * (d // size) + ([d % size] if d % size else [])
    parts = tf.split(x, sizes) if len(sizes) > 1 else [x]
    pad = padded_chunk(sizes[-1]) - sizes[-1]
    if pad:
        parts[-1] = tf.pad(parts[-1], [[0, pad]])
    return parts, [i * size for i in range(len(parts))]


def keep(g, lam, seed, chunked=None):
    """The sorted int64 indices i of flat g (at least ``XLA_MIN_ELEMENTS``) with u_i < lam |g_i|,
    u_i = ``rng.uniform_at(i, seed)``; ``chunked``: g's ``chunks`` if already made."""
    if native.usable(g):
        return native.keep(g, lam, seed)
    parts, offsets = chunked or chunks(g)
    offsets = [tf.constant(o, tf.int64) for o in offsets]
    kept = [tf.where(_chunk_keep(p, lam, seed, o))[:, 0] + o for p, o in zip(parts, offsets)]
    return tf.concat(kept, axis=0) if len(kept) > 1 else kept[0]


@tf.function(jit_compile=True, autograph=False)
def _chunk_keep(g, lam, seed, offset):
    """Z_i = [u_i < lambda |g_i|] for one chunk starting at element ``offset``."""
    a = tf.abs(tf.cast(g, compute_dtype(g.dtype)))
    return rng.uniform(tf.size(a), seed, a.dtype, offset) < lam * a


def scatter_rows(idx, val, d):
    """sum_r of the rows of the [M, P] table of entries (idx int64, val float) into zeros [d], row after
    row (in rank order: the same bits on every rank). A row's indices are unique; padding is (0, 0.0)."""
    if native.scatter_usable(val.dtype):
        return native.scatter_rows(idx, val, d)
    return _scatter_rows_fn(d)(idx, val)


_scatter_rows_fns = {}


def _scatter_rows_fn(d):
    """The XLA computation of ``scatter_rows`` for outputs of d elements (compiled per dtype, M, P)."""
    if d not in _scatter_rows_fns:

        @tf.function(jit_compile=True, autograph=False)
        def scatter(idx, val):
            def add_row(r, acc):  # a row's indices are unique: no two updates of one element
                return r + 1, tf.tensor_scatter_nd_add(acc, tf.expand_dims(idx[r], 1), val[r])

            _, acc = tf.while_loop(lambda r, _: r < tf.shape(idx)[0], add_row,
                                   (tf.constant(0), tf.zeros([d], val.dtype)))
            return acc

        _scatter_rows_fns[d] = scatter
    return _scatter_rows_fns[d]
