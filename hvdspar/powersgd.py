"""PowerSGD: rank-r power iteration, exchanged with Horovod's allreduce (Vogels, Karimireddy, Jaggi; NeurIPS 2019).

    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1),
                                   compression=hvdspar.PowerSGD(rank=1))   # memory=True by default

Each gradient of rank >= 2 is viewed as a matrix M (rows = product of all
dimensions but the last, cols = the last: a conv kernel [h, w, in, out] is
(h w in) x out). With error feedback M = g + m. One step, on every rank::

    P = M Q                      Q [cols, r]: last step's (warm start) or fresh, the same on every rank
    P = orthogonalise(sum_r P)   Horovod allreduce (op=Sum), then Gram-Schmidt
    Q = M^T P;  S = sum_r Q      Horovod allreduce (op=Sum)
    sum_r approx(M_r) = P S^T    what decompress scales by Horovod's factor
    m <- M - P S^T / R           error feedback: this rank's M minus the average's approximation
    Q <- S / R                   the warm start of the next step

P and Q are dense and the same shape on every rank, so they travel through
Horovod's own allreduce: (rows + cols) r numbers instead of rows x cols.
Biased; the memory is what makes it converge. Gradients that are vectors, or
whose compression rate rows cols / ((rows + cols) r) is below
``min_compression_rate``, go dense, and so does every gradient for the first
``start_iter`` steps (the warm-up of PyTorch's ``PowerSGDState``).

Defaults follow PyTorch's ``PowerSGDState`` where they make sense here:
rank 1, min_compression_rate 2, error feedback and warm start on,
orthogonalisation epsilon 0 (a zero column stays zero instead of becoming
NaN). One exception: start_iter defaults to 10, not PyTorch's 1000, since
the training scripts here run a few hundred steps; set it to about 10% of a
real run's steps, as PyTorch's documentation advises.

State per gradient (``hvdspar.state.SlotState.codec_state``): Q and the step
counter, beside the error-feedback memory; all of it checkpoints with the
compressor.
"""

import tensorflow as tf

from hvdspar.codec import Codec, Reduced, matrix_layout
from hvdspar.compressor import Compressor
from hvdspar.dtypes import compute_dtype, reduced_is_finite

_no_autograph = tf.autograph.experimental.do_not_convert


def compression_rate(rows, cols, rank):
    """rows cols / ((rows + cols) rank): dense numbers over the numbers PowerSGD sends."""
    return rows * cols / ((rows + cols) * rank)


@_no_autograph
def orthogonalise(p, epsilon=0.0):
    """Gram-Schmidt on the columns of p [n, r]: an n x r matrix with orthonormal columns (a zero
    column stays zero; ``epsilon`` is added to every norm, as PyTorch's ``orthogonalization_epsilon``)."""
    cols = []
    for i in range(p.shape[1]):
        c = p[:, i]
        for prev in cols:
            c = c - tf.tensordot(prev, c, 1) * prev
        norm = tf.norm(c) + tf.cast(epsilon, c.dtype)
        cols.append(tf.math.divide_no_nan(c, norm))
    return tf.stack(cols, axis=1)


class PowerSGDCodec(Codec):
    """PowerSGD's exchange: two Horovod allreduces per matrix (``sums_by_allreduce``).

    Not an allgather codec: ``reduce_sum`` runs the power iteration with the sum-allreduce
    it is given, and ``plan`` says which gradients it sends dense.
    """

    sums_by_allreduce = True
    buckets = False  # the matrix view needs each tensor's own shape

    def __init__(self, rank=1, start_iter=10, min_compression_rate=2.0, warm_start=True,
                 orthogonalization_epsilon=0.0):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"hvdspar: rank must be an integer >= 1, got {rank!r}")
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 0:
            raise ValueError(f"hvdspar: start_iter must be an integer >= 0, got {start_iter!r}")
        if (isinstance(min_compression_rate, bool) or not isinstance(min_compression_rate, (int, float))
                or not 0 < min_compression_rate < float("inf")):
            raise ValueError(f"hvdspar: min_compression_rate must be a positive number, got {min_compression_rate!r}")
        if not isinstance(warm_start, bool):
            raise ValueError(f"hvdspar: warm_start must be True or False, got {warm_start!r}")
        if (isinstance(orthogonalization_epsilon, bool) or not isinstance(orthogonalization_epsilon, (int, float))
                or not 0 <= orthogonalization_epsilon < float("inf")):
            raise ValueError("hvdspar: orthogonalization_epsilon must be a number >= 0, got "
                             f"{orthogonalization_epsilon!r}")
        self.rank = rank
        self.start_iter = start_iter
        self.min_compression_rate = float(min_compression_rate)
        self.warm_start = warm_start
        self.orthogonalization_epsilon = float(orthogonalization_epsilon)

    def config(self):
        return {"rank": self.rank, "start_iter": self.start_iter, "min_compression_rate": self.min_compression_rate,
                "warm_start": self.warm_start, "orthogonalization_epsilon": self.orthogonalization_epsilon}

    def layout(self, shape):
        """(rows, cols, r) of a gradient of ``shape`` (r = min(rank, rows, cols))."""
        rows, cols = matrix_layout(shape)
        return rows, cols, min(self.rank, rows, cols)

    def plan(self, d, shape):
        """Why a gradient of ``shape`` goes dense (a ``fallback.Plan`` reason), or None: compressed."""
        if shape is None or len(tf.TensorShape(shape)) < 2:
            return "a vector"
        rows, cols, r = self.layout(shape)
        if compression_rate(rows, cols, r) < self.min_compression_rate:
            return "below min_compression_rate"
        return None

    def expected_nbytes(self, d, dtype, shape=None):
        if self.plan(d, shape) is not None:
            return d * tf.as_dtype(dtype).size
        rows, cols, r = self.layout(shape)
        return (rows + cols) * r * compute_dtype(dtype).size

    def initial_state(self, shape, dtype, seed):
        """The per-gradient state of a matrix: Q [cols, r] (standard normal from ``seed``, alike on every
        rank), step; none for a vector (sent dense)."""
        if len(tf.TensorShape(shape)) < 2:
            return {}
        rows, cols, r = self.layout(shape)
        cdt = compute_dtype(dtype)
        return {"q": tf.random.stateless_normal([cols, r], seed=[seed, 0], dtype=cdt),
                "step": tf.constant(0, tf.int64)}

    @_no_autograph
    def reduce_sum(self, x, state, allreduce_sum, dtype, shape, num_ranks, seed):
        """One step on this rank's flat x (gradient plus memory, compute dtype).

        ``allreduce_sum(t, tag)`` sums a dense tensor over the ranks; ``state`` holds ``q`` and
        ``step`` (tf.Variables); ``num_ranks`` an int32 tensor; ``seed`` the base of fresh Q
        draws (without warm start), alike on every rank. Returns a ``codec.Reduced``: the sum of
        the ranks' approximations [d]; its C(x), for the memory, is the average's approximation.
        Warm-up (step < start_iter): x itself, summed dense (in the gradient's dtype).
        """
        rows, cols, r = self.layout(shape)
        d = rows * cols
        cdt = x.dtype
        m = tf.cast(num_ranks, cdt)

        def warm_up():
            sent = tf.cast(x, dtype)
            total = tf.cast(allreduce_sum(sent, "warmup"), cdt)
            own = tf.cast(sent, cdt)
            return (total, own, tf.constant(d * dtype.size, tf.int64), tf.constant(d, tf.int64),
                    tf.reduce_sum(tf.square(tf.cast(own, tf.float64))), tf.identity(state["q"]), tf.constant(True))

        def power():
            mat = tf.reshape(x, [rows, cols])
            if self.warm_start:
                q = state["q"].read_value()
            else:
                q = tf.random.stateless_normal([cols, r], seed=tf.stack([seed, state["step"].read_value()]), dtype=cdt)
            p = orthogonalise(allreduce_sum(tf.matmul(mat, q), "p"), self.orthogonalization_epsilon)
            q_own = tf.matmul(mat, p, transpose_a=True)  # [cols, r]
            q_sum = allreduce_sum(q_own, "q")
            total = tf.reshape(tf.matmul(p, q_sum, transpose_b=True), [-1])
            sent = (rows + cols) * r
            own_sq = tf.reduce_sum(tf.square(tf.cast(q_own, tf.float64)))  # ||P P^T M||^2, P orthonormal
            return (total, total / m, tf.constant(sent * cdt.size, tf.int64), tf.constant(sent, tf.int64), own_sq,
                    q_sum / m, tf.constant(False))

        if self.start_iter > 0:
            out = tf.cond(state["step"] < self.start_iter, warm_up, power)
        else:
            out = power()
        total, contribution, nbytes, kept, own_sq, q_new, dense = out
        finite = reduced_is_finite(total)  # the same sum on every rank: all agree
        return Reduced(total, finite, contribution, nbytes, kept, own_sq, {"q": q_new, "step": state["step"] + 1},
                       dense)


class PowerSGD(Compressor):
    """PowerSGD (Vogels et al. 2019): rank-r power iteration with error feedback and warm start.

    Args:
      rank: r, the approximation's rank (PyTorch's ``matrix_approximation_rank``; default 1).
      start_iter: steps sent dense before compressing (``start_powerSGD_iter``; default 10).
      min_compression_rate: gradients that PowerSGD would shrink less than this go dense (default 2).
      memory: error feedback (``use_error_feedback``; default True).
      warm_start: start each step's power iteration from the last step's Q (default True).
      orthogonalization_epsilon: added to each norm in Gram-Schmidt (default 0).
      fallback: True (default) or False: PowerSGD's dense rule is its own (vectors and
        min_compression_rate), the same on every rank and machine; "auto" is refused.
      nonfinite, seed: as for every hvdspar compressor (seed: the initial Q, alike on every rank).
    """

    spec_name = "powersgd"

    def __init__(self, rank=1, start_iter=10, min_compression_rate=2.0, memory=True, warm_start=True,
                 orthogonalization_epsilon=0.0, fallback=True, nonfinite="propagate", seed=None):
        if fallback == "auto":
            raise ValueError("hvdspar: PowerSGD sends through Horovod's allreduce and decides dense or compressed "
                             "by min_compression_rate; fallback='auto' (a timed allgather rule) does not apply")
        codec = PowerSGDCodec(rank, start_iter, min_compression_rate, warm_start, orthogonalization_epsilon)
        super().__init__(codec, memory=memory, fallback=fallback, nonfinite=nonfinite, seed=seed)
