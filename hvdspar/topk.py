"""Top-k and random-k sparsification with error feedback (MemSGD; Stich, Cordonnier, Jaggi 2018).

    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1),
                                   compression=hvdspar.TopK(ratio=0.01))   # memory=True by default

Each rank keeps a memory m per tensor (``memory=True``, ``hvdspar.error_feedback``):
e = m + g; send C(e); m <- e - C(e). C is

- top-k: the k = max(1, round(ratio * d)) coordinates of largest |e_i|
  (``tf.math.top_k``), sent exactly;
- random-k: k coordinates drawn uniformly without replacement from the
  stateless seed, sent exactly (biased, as in MemSGD), or multiplied by d/k
  with ``rescale=True`` (then E[C(e)] = e: unbiased).

Both are biased without rescaling; the memory is what makes them converge
(Stich et al., Theorem 2.4). ``memory=False`` gives the plain versions. The
message is a ``sparse_message.SparseMessage`` with only the A part (Elias-Fano coded
indices + exact values), so its size is about k (log2(d/k) + 2) bits plus k
values.
"""

import tensorflow as tf

from hvdspar import kernels
from hvdspar.compressor import Compressor
from hvdspar.dtypes import compute_dtype
from hvdspar.sparse_message import SparseCodec, SparseMessage

# Plain TF ops: nothing for AutoGraph to convert (and traces get faster).
_no_autograph = tf.autograph.experimental.do_not_convert


def check_ratio(ratio):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"hvdspar: ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


def num_kept(d, ratio):
    """k = max(1, round(ratio * d)), at most d (0 for an empty tensor); an int32 tensor for a d known
    only at run time (rounded half to even in float64, as Python's round)."""
    static = tf.get_static_value(d)
    if static is not None:
        static = int(static)
        return 0 if static == 0 else int(min(static, max(1, round(ratio * static))))
    d = tf.cast(d, tf.float64)
    k = tf.minimum(d, tf.maximum(tf.constant(1.0, tf.float64), tf.round(ratio * d)))
    return tf.cast(tf.where(d > 0, k, tf.zeros_like(k)), tf.int32)


@_no_autograph
def _a_only(g, idx, values):
    """A SparseMessage holding (sorted idx, values) in Q_A and nothing in Q_B."""
    order = tf.argsort(idx)
    empty = tf.zeros([0], tf.int64)
    return SparseMessage(
        idx_a=tf.gather(idx, order),
        val_a=tf.gather(values, order),
        idx_b=empty,
        neg_b=tf.zeros([0], tf.bool),
        scale=tf.constant(0.0, compute_dtype(g.dtype)),
    )


@_no_autograph
def topk_message(g, k):
    """The k coordinates of largest |g_i| (ties: lowest index first), exact values."""
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    _, idx = tf.math.top_k(tf.abs(tf.cast(g, compute_dtype(g.dtype))), k=k, sorted=False)
    idx = tf.cast(idx, tf.int64)
    return _a_only(g, idx, tf.gather(g, idx))


@_no_autograph
def random_indices(d, k, seed):
    """k distinct indices, uniform over the k-subsets of [0, d), from a stateless seed."""
    keys = tf.random.stateless_uniform([d], seed=seed, dtype=tf.float32)
    _, idx = tf.math.top_k(keys, k=k, sorted=False)
    return tf.cast(idx, tf.int64)


@_no_autograph
def randomk_message(g, k, seed, rescale=False):
    """k uniform coordinates without replacement; values g_i, or g_i * d / k with rescale."""
    g = tf.reshape(tf.convert_to_tensor(g), [-1])
    d = kernels.length(g)
    idx = random_indices(d, k, seed)
    values = tf.gather(g, idx)
    if rescale:
        cdt = compute_dtype(g.dtype)
        ratio = tf.cast(d, tf.float64) / tf.cast(k, tf.float64)  # d / k in float64, as Python's
        values = tf.cast(tf.cast(values, cdt) * tf.cast(ratio, cdt), g.dtype)
    return _a_only(g, idx, values)


class TopKCodec(SparseCodec):
    """The k = max(1, round(ratio d)) coordinates of largest |x_i|, exact: a biased contraction."""

    sizes_at_run_time = True

    def __init__(self, ratio):
        self.ratio = check_ratio(ratio)

    def config(self):
        return {"ratio": self.ratio}

    def draw(self, x, seed, dtype, shape, scan):
        return topk_message(x, num_kept(kernels.length(x), self.ratio)), None

    def expected_counts(self, d):
        return num_kept(d, self.ratio), 0


class RandomKCodec(SparseCodec):
    """k uniform coordinates without replacement, exact (a biased contraction, MemSGD's rand-k) or,
    with ``rescale``, times d / k (unbiased: E||C(x)||^2 = (d/k) ||x||^2)."""

    sizes_at_run_time = True

    def __init__(self, ratio, rescale=False):
        self.ratio = check_ratio(ratio)
        if not isinstance(rescale, bool):
            raise ValueError(f"hvdspar: rescale must be True or False, got {rescale!r}")
        self.rescale = rescale

    def config(self):
        return {"ratio": self.ratio, "rescale": self.rescale}

    def draw(self, x, seed, dtype, shape, scan):
        d = kernels.length(x)
        k = num_kept(d, self.ratio)
        msg = randomk_message(x, k, seed, rescale=self.rescale)
        if not self.rescale:
            return msg, None
        x64 = tf.cast(x, tf.float64)
        # error feedback's gamma = k/d cancels the d/k: plain rand-k is sent
        return msg, lambda: tf.tensordot(x64, x64, 1) * (tf.cast(d, tf.float64) / tf.cast(k, tf.float64))

    def expected_counts(self, d):
        return num_kept(d, self.ratio), 0


class TopK(Compressor):
    """Top-k sparsification, with error feedback by default (MemSGD).

    Args:
      ratio: fraction of coordinates sent, in (0, 1]; k = max(1, round(ratio * d)) per tensor.
      memory: error feedback (default True); False gives plain, biased top-k.
      fallback: send a tensor dense when that moves fewer bytes or, with "auto",
        is faster on this network (see the base class).
      seed: unused by top-k itself (deterministic); kept for a uniform interface.
    """

    spec_name = "topk"

    def __init__(self, ratio, memory=True, fallback=True, nonfinite="propagate", seed=None,
                 bucket_mb=None):
        super().__init__(TopKCodec(ratio), memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed,
                         bucket_mb=bucket_mb)


class RandomK(Compressor):
    """Random-k sparsification (k uniform coordinates without replacement), with error feedback by default.

    Args:
      ratio: fraction of coordinates sent, in (0, 1]; k = max(1, round(ratio * d)) per tensor.
      rescale: multiply the kept values by d / k, which makes C unbiased (E[C(x)] = x,
        E||C(x)||^2 = (d/k) ||x||^2); default False (MemSGD's plain rand-k). With
        memory=True the error-feedback contraction factor k/d cancels it.
      memory: error feedback (default True); False gives the plain version.
      fallback, seed: as for every hvdspar compressor (each rank and tensor draws its own indices).
    """

    spec_name = "randomk"

    def __init__(self, ratio, rescale=False, memory=True, fallback=True, nonfinite="propagate", seed=None,
                 bucket_mb=None):
        super().__init__(RandomKCodec(ratio, rescale), memory=memory, fallback=fallback, nonfinite=nonfinite,
                         seed=seed, bucket_mb=bucket_mb)
