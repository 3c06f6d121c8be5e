"""GSpar and UniSp: unbiased random sparsifiers sending the hybrid message of sec. 2.3.

Their codecs (``GSparCodec``, ``UniSpCodec``: pure TensorFlow) and the Horovod compressors
that run them (``GSpar``, ``UniSp``).

    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1),
                                   compression=hvdspar.GSpar(rho=0.01))
"""

import tensorflow as tf

from hvdspar import error_feedback
from hvdspar.compressor import Compressor
from hvdspar.probabilities import check_budget, default_method
from hvdspar.sparse_message import SparseCodec
from hvdspar.sparsify import gspar_message, uniform_message


def second_moment(x, lam):
    """E||Q(x)||^2 = sum_i x_i^2 / p_i with p_i = min(lam |x_i|, 1) (float64; zeros add nothing).

    For error feedback (``hvdspar.error_feedback``): with it, gamma Q(x) scales the whole
    message (top-set values and 1/lambda alike), so the coding is kept.
    """
    x = tf.cast(x, tf.float64)
    return error_feedback.second_moment(x, tf.minimum(tf.cast(lam, tf.float64) * tf.abs(x), 1))


class GSparCodec(SparseCodec):
    """GSpar's message: p_i = min(lambda |x_i|, 1), Q(x)_i = Z_i x_i / p_i, coded as in sec. 2.3.

    E[Q(x)] = x and E||Q(x)||^2 = sum_i x_i^2 / p_i. Arguments as ``GSpar``'s.
    """

    sizes_at_run_time = True

    def __init__(self, rho=None, epsilon=None, method=None, iterations=2):
        method = method or default_method(rho, epsilon)
        check_budget(rho=rho, epsilon=epsilon, method=method, iterations=iterations)
        self.rho = None if rho is None else float(rho)
        self.epsilon = None if epsilon is None else float(epsilon)
        self.method = method
        self.iterations = iterations

    def config(self):
        budget = {"rho": self.rho} if self.rho is not None else {"epsilon": self.epsilon}
        return {**budget, "method": self.method, "iterations": self.iterations}

    def draw(self, x, seed, dtype, shape, scan):
        msg, lam = gspar_message(x, seed, rho=self.rho, epsilon=self.epsilon, method=self.method,
                                 iterations=self.iterations, moments=scan)
        return msg, lambda: second_moment(x, lam)

    def expected_counts(self, d):
        # With an epsilon budget the density is data-dependent: plan for a dense message.
        return 0, (self.rho * d if self.rho is not None else d)


class UniSpCodec(SparseCodec):
    """Uniform sampling: p_i = rho, Q(x)_i = Z_i x_i / rho; E||Q(x)||^2 = ||x||^2 / rho."""

    sizes_at_run_time = True

    def __init__(self, rho):
        check_budget(rho=rho)
        self.rho = float(rho)

    def config(self):
        return {"rho": self.rho}

    def draw(self, x, seed, dtype, shape, scan):
        return uniform_message(x, seed, self.rho), lambda: scan.sq_norm / self.rho

    def expected_counts(self, d):
        return self.rho * d, 0


class GSpar(Compressor):
    """Gradient sparsification (Wangni, Wang, Liu, Zhang; NeurIPS 2018).

    Keeps g_i with probability p_i = min(lambda |g_i|, 1) and sends
    Q(g)_i = g_i / p_i: exact values on the top set S_k (p_i = 1), and
    sign(g_i) / lambda elsewhere, coded as in sec. 2.3 (``hvdspar.sparse_message``).
    E[Q(g)] = g and E||Q(g)||^2 = sum_i g_i^2 / p_i.

    Args:
      rho: sparsity budget in (0, 1]: expected density sum(p)/d = rho.
      epsilon: variance budget >= 0: sum(g^2/p) <= (1+epsilon) sum(g^2) (Algorithm 2).
        Give exactly one of rho and epsilon.
      method: "greedy" (Algorithm 3, O(d), the paper's choice; default for rho) or
        "exact" (water-filling by sorting; the only method for epsilon).
      iterations: rescalings of Algorithm 3 (the paper uses 2).
      memory: error feedback, not in the paper: send C(e) = gamma Q(e) for e = m + g and keep
        m = e - C(e), with gamma = ||e||^2 / sum e_i^2/p_i so that C is a contraction
        (``hvdspar.error_feedback``); plain Q(e) would make the memory diverge.
      fallback: True (default): send a tensor dense when the allgather would move
        at least as many bytes as a ring allreduce (decided per tensor from its size
        and the ranks: the same decisions on every machine); "auto": also when the
        dense allreduce is faster on this network (measured at the first step, see
        ``hvdspar.link``); False: always sparse.
      nonfinite: "propagate" (default): a NaN/Inf gradient on any rank gives a
        non-finite result on every rank, as with Horovod's none (a LossScaleOptimizer
        skips the step); "raise": stop with a clear error.
      seed: base of the random streams (each rank and tensor draws its own).
    """

    spec_name = "gspar"

    def __init__(self, rho=None, epsilon=None, method=None, iterations=2, memory=False, fallback=True,
                 nonfinite="propagate", seed=None, bucket_mb=None):
        super().__init__(GSparCodec(rho, epsilon, method, iterations), memory=memory, fallback=fallback,
                         nonfinite=nonfinite, seed=seed, bucket_mb=bucket_mb)


class UniSp(Compressor):
    """Uniform sampling, the paper's baseline: p_i = rho, Q(g)_i = Z_i g_i / rho (unbiased).

    With ``memory=True`` it sends rho Q(e) = Z * e (``hvdspar.error_feedback``).
    """

    spec_name = "unisp"

    def __init__(self, rho, memory=False, fallback=True, nonfinite="propagate", seed=None,
                 bucket_mb=None):
        super().__init__(UniSpCodec(rho), memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed,
                         bucket_mb=bucket_mb)
