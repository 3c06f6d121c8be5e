"""Unbiased random sparsification Q(g)_i = Z_i g_i / p_i, Z_i ~ Bernoulli(p_i) (sec. 2).

Pure TensorFlow, usable without Horovod. Randomness is stateless: the same
(seed pair) gives the same Q(g), which is what makes runs repeatable and lets
every rank draw independently (each rank folds its rank into the seed).

The dense part of GSpar (lambda, then u_i < min(lambda |g_i|, 1)) is, for
the greedy method on tensors of at least ``XLA_MIN_ELEMENTS``, small
XLA-compiled functions applied chunk by chunk: each fuses its element-wise
work into one pass over its chunk, and the chunks of a pass run concurrently.
It takes 2 passes over g for most gradients: ``hvdspar.scan``'s (||g||_1 and
||g||^2, which a codec's encode has already run to check that g is finite, and
hands in as ``moments``), then one sampling pass that draws the candidates
u_i < Lambda |g_i| under an upper bound Lambda of the water level
(``probabilities.water_level_bound``); Algorithm 3's rescalings and the final
draw then run on the candidates alone. Where the bound is loose (a gradient
whose mass sits in a few coordinates) it takes 4: the first, one per
rescaling, the sampling. Only the variable-length gather of the kept
coordinates runs outside XLA. The sampling pass is ``hvdspar.kernels.keep``
(``hvdspar.native``'s kernel where built: the same kept indices). Smaller
tensors skip XLA: compiling per shape would cost more than it saves.
"""

import tensorflow as tf

from hvdspar.dtypes import compute_dtype
from hvdspar.probabilities import (check_budget, default_method, full_budget, full_lambda, water_level,
                                   water_level_bound)
from hvdspar import kernels, rng
from hvdspar.bits import next_power_of_two, zero_padded
from hvdspar.sparse_message import SparseMessage
from hvdspar.kernels import XLA_MIN_ELEMENTS, chunks
from hvdspar.scan import scan

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def bernoulli(p, seed):
    """Z_i ~ Bernoulli(p_i), independent, from a stateless seed (shape [2] int)."""
    u = tf.reshape(rng.uniform(tf.size(p), seed, p.dtype), tf.shape(p))
    return u < p


def _keep(a, seed, rho, epsilon, method, iterations):
    """(lambda, keep mask, top-set mask) for magnitudes a, in plain TF ops."""
    lam = water_level(a, rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    scaled = lam * a  # p_i before clipping at 1
    kept = rng.uniform(tf.size(a), seed, a.dtype) < scaled
    return lam, kept, scaled >= 1


# The greedy method on large tensors, in chunks (``hvdspar.kernels.chunks``). Each function below
# is one XLA computation over one chunk of g (|g| is fused in, never materialised); XLA
# runs a computation on one CPU thread, and TF's executor runs the independent chunk
# calls of a graph concurrently, so a pass uses every core. Chunk results are combined
# in a fixed order: the same g and seed give the same message on any machine.


def _abs(g):
    return tf.abs(tf.cast(g, compute_dtype(g.dtype)))


@tf.function(jit_compile=True, autograph=False)
def _chunk_tail(g, lam):
    """(#{i : lambda |g_i| >= 1}, sum of lambda |g_i| over the rest) for one chunk (zeros add 0).

    The count is summed in the compute dtype, exact (a chunk has at most 2^20 < 2^24 elements),
    so that both reductions have one element type: XLA vectorises that loop better."""
    scaled = lam * _abs(g)
    saturated = scaled >= 1
    n_saturated = tf.reduce_sum(tf.cast(saturated, scaled.dtype))
    return n_saturated, tf.reduce_sum(tf.where(saturated, tf.zeros_like(scaled), scaled))


@tf.function(jit_compile=True, autograph=False)
def _chunk_min_nonzero(g):
    """min_{g_i != 0} |g_i| over one chunk (the dtype's max when there is none)."""
    a = _abs(g)
    return tf.reduce_min(tf.where(a > 0, a, tf.fill(tf.shape(a), tf.constant(a.dtype.max, a.dtype))))


def _rescale(lam, budget, stats):
    """One rescaling of Algorithm 3 from the chunks' ``_chunk_tail`` figures: lambda <- c lambda if c > 1,
    c = (rho d - |S|) / sum_{i not in S} lambda |g_i|. Chunks combine in a fixed order."""
    n_saturated = tf.cast(tf.add_n([tf.cast(s[0], tf.int64) for s in stats]), lam.dtype)
    active_sum = tf.add_n([s[1] for s in stats])
    c = tf.math.divide_no_nan(budget - n_saturated, active_sum)
    return tf.where(c > 1, lam * c, lam)


# The candidate path is taken when r = rho d ||g||^2 / ||g||_1^2 is at most this
# (``probabilities.water_level_bound``): then Lambda <= 1.34 lambda_0, so the candidates number
# at most about 1.34 rho d in expectation (sum_i min(Lambda |g_i|, 1) <= Lambda ||g||_1).
MAX_BOUND_RATIO = 0.75
# Lambda is raised by this factor before it draws the candidates, so that no rounding in the
# float32 sums behind lambda can lift lambda above it (the path checks lambda <= Lambda anyway).
BOUND_MARGIN = 1 + 2**-6


def _rescale_on(lam, budget, l1, a):
    """One rescaling of Algorithm 3 from the candidates' magnitudes a, which hold every coordinate
    with lambda |g_i| >= 1: |S| = #{lambda a >= 1} (the sampler's own test, same float ops) and
    sum_{i not in S} lambda |g_i| = lambda (||g||_1 - sum_S a) (float64)."""
    saturated = lam * a >= 1
    n_saturated = tf.reduce_sum(tf.cast(saturated, tf.float64))
    top_l1 = tf.reduce_sum(tf.where(saturated, tf.cast(a, tf.float64), tf.zeros_like(a, tf.float64)))
    active_sum = tf.cast(lam, tf.float64) * (tf.cast(l1, tf.float64) - top_l1)
    c = tf.cast(tf.math.divide_no_nan(tf.cast(budget, tf.float64) - n_saturated, active_sum), lam.dtype)
    return tf.where(c > 1, lam * c, lam)


def _greedy_keep_chunked(g, seed, rho, iterations, moments=None):
    """(lambda, sorted kept indices, p_i = 1 at them) of GSpar-greedy for a large flat g, chunk by chunk.

    ``moments``: g's ``hvdspar.scan.Scan`` (||g||_1 and ||g||^2) if already computed. Algorithm 3
    (``probabilities.lambda_rho_greedy``) starts from lambda_0 = rho d / ||g||_1, then rescales
    ``iterations`` times; then Z_i = [u_i < lambda |g_i|]. Two ways to the same lambda and Z:

    - by candidates, one pass: ``probabilities.water_level_bound`` gives Lambda >= every lambda
      Algorithm 3 visits from ||g||_1 and ||g||^2. One sampling pass (``kernels.keep`` at Lambda)
      draws the candidates K = {i : u_i < Lambda |g_i|}, which hold every coordinate any of those
      lambdas saturates (Lambda |g_i| >= 1 > u_i) or keeps. The rescalings and the final
      Z_i = [u_i < lambda |g_i|] then run on K alone (u_i drawn again by index,
      ``rng.uniform_at``). Taken when r <= ``MAX_BOUND_RATIO`` (so |K| stays near rho d) and
      lambda <= Lambda held;
    - by passes, otherwise: each rescaling one pass (``_chunk_tail``), then the sampling pass at lambda.

    The chunks are ``kernels.chunks``' (zero padding adds nothing to a pass and is never kept).
    """
    d = g.shape.num_elements()
    cdt = compute_dtype(g.dtype)

    def pieces():  # g's XLA chunks and their offsets, made in the branch that needs them
        return chunks(g)

    def sample(lam, chunked=None):
        return kernels.keep(g, lam, seed, chunked)

    if full_budget(rho):  # as lambda_rho_greedy: p = 1 for every non-zero coordinate
        m = tf.reduce_min(tf.stack([_chunk_min_nonzero(p) for p in pieces()[0]]))
        lam = full_lambda(tf.reshape(m, [1]))
        idx = sample(lam)
        return lam, idx, _top(g, lam, idx)
    if moments is None:
        moments = scan(g)
    budget = tf.constant(rho * d, cdt)
    lam_0 = tf.math.divide_no_nan(budget, tf.cast(moments.l1, cdt))
    bound, ratio = water_level_bound(moments.l1, moments.sq_norm, rho * d)

    def by_candidates():
        upper = tf.cast(bound * BOUND_MARGIN, cdt)
        candidates = sample(upper)
        # padded to a power of two (at least 2^10) with index 0, masked out: a few compiled shapes
        n = tf.size(candidates, out_type=tf.int64)
        padded = zero_padded(candidates, next_power_of_two(n, 1 << 10))
        lam, keep, top = _candidates_keep(g, padded, n, lam_0, budget, moments.l1, seed, iterations)
        return lam, tf.boolean_mask(padded, keep), tf.boolean_mask(top, keep), lam <= upper

    def by_passes():
        lam = lam_0
        chunked = pieces()
        for _ in range(iterations):
            lam = _rescale(lam, budget, [_chunk_tail(p, lam) for p in chunked[0]])
        idx = sample(lam, chunked)
        return lam, idx, _top(g, lam, idx)

    def not_tried():
        return lam_0, tf.zeros([0], tf.int64), tf.zeros([0], tf.bool), tf.constant(False)

    lam, kept, top, done = tf.cond(ratio <= MAX_BOUND_RATIO, by_candidates, not_tried)
    return tf.cond(done, lambda: (lam, kept, top), by_passes)


def _top(g, lam, idx):
    """p_i = 1 at the kept indices idx: the sampler's own test lambda |g_i| >= 1 (same float ops)."""
    return lam * _abs(tf.gather(g, idx)) >= 1


@tf.function(jit_compile=True, autograph=False)
def _candidates_keep(g, candidates, count, lam_0, budget, l1, seed, iterations):
    """Algorithm 3 on the candidates (the first ``count`` of ``candidates``, the rest padding), in one XLA
    computation: (lambda, Z_i = [u_i < lambda |g_i|], p_i = 1 i.e. lambda |g_i| >= 1) over ``candidates``.
    The padding gets |g_i| = 0: never saturated, never kept. Compiled per padded length and ``iterations``."""
    valid = tf.range(tf.size(candidates, out_type=tf.int64)) < count
    a = _abs(tf.gather(g, candidates))
    a = tf.where(valid, a, tf.zeros_like(a))
    lam = lam_0
    for _ in range(iterations):
        lam = _rescale_on(lam, budget, l1, a)
    scaled = lam * a
    return lam, rng.uniform_at(candidates, seed, a.dtype) < scaled, scaled >= 1


@_no_autograph
def gspar_message(g, seed, rho=None, epsilon=None, method=None, iterations=2, moments=None):
    """GSpar: sample Q(g) with p_i = min(lambda |g_i|, 1) and return it as a SparseMessage.

    Coordinates with p_i = 1 (the top set S_k) go to Q_A with their exact
    value g_i; every other kept coordinate has g_i / p_i = sign(g_i) / lambda
    and goes to Q_B as a sign, with the one scale 1/lambda.

    Args:
      g: gradient tensor (any shape; flattened in C order).
      seed: stateless seed, int32/int64 tensor of shape [2].
      moments: g's ``hvdspar.scan.Scan`` (||g||_1, ||g||^2) if already computed, for the greedy method on large g.
    Returns:
      (SparseMessage, lambda).
    """
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    method = method or default_method(rho, epsilon)
    seed = tf.cast(seed, tf.int64)
    if full_budget(rho) and epsilon is None:
        # rho = 1: p_i = 1 for every g_i != 0 (either method), so Q(g) = g exactly and
        # every non-zero coordinate goes to Q_A with its value; no random draw. Tested as
        # g_i != 0, not lambda |g_i| >= 1, so that no rounding can drop a coordinate.
        check_budget(rho=rho, epsilon=epsilon, method=method, iterations=iterations)
        a = _abs(g)
        idx_a = tf.where(a > 0)[:, 0]
        lam = full_lambda(a)
        msg = SparseMessage(
            idx_a=idx_a,
            val_a=tf.gather(g, idx_a),
            idx_b=tf.zeros([0], tf.int64),
            neg_b=tf.zeros([0], tf.bool),
            scale=tf.math.reciprocal_no_nan(lam),
        )
        return msg, lam
    # Greedy only: XLA lowers the exact methods' cumsum to an O(d^2) reduce-window on CPU.
    big = g.shape.num_elements() is not None and g.shape.num_elements() >= XLA_MIN_ELEMENTS
    if method == "greedy" and big:
        check_budget(rho=rho, epsilon=epsilon, method=method, iterations=iterations)
        lam, idx, top = _greedy_keep_chunked(g, seed, rho, iterations, moments)
    else:
        a = _abs(g)
        lam, keep, saturated = _keep(a, seed, rho, epsilon, method, iterations)
        idx = tf.where(keep)[:, 0]
        top = tf.gather(saturated, idx)
    idx_a = tf.boolean_mask(idx, top)
    idx_b = tf.boolean_mask(idx, tf.logical_not(top))
    msg = SparseMessage(
        idx_a=idx_a,
        val_a=tf.gather(g, idx_a),
        idx_b=idx_b,
        neg_b=tf.gather(g, idx_b) < 0,
        scale=tf.math.reciprocal_no_nan(lam),
    )
    return msg, lam


@_no_autograph
def uniform_message(g, seed, rho):
    """UniSp (the paper's baseline): p_i = rho for all i, Q(g)_i = Z_i g_i / rho.

    Values differ from coordinate to coordinate, so every kept one goes to Q_A
    (index + value); with rho = 1 nothing is dropped.
    """
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    cdt = compute_dtype(g.dtype)
    p = tf.fill(tf.shape(g), tf.cast(rho, cdt))
    idx = tf.where(bernoulli(p, tf.cast(seed, tf.int64)))[:, 0]
    values = tf.cast(tf.gather(g, idx), cdt) / tf.cast(rho, cdt)
    empty = tf.zeros([0], tf.int64)
    return SparseMessage(idx, tf.cast(values, g.dtype), empty, tf.zeros([0], tf.bool), tf.constant(0.0, cdt))
