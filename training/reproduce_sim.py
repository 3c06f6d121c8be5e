"""M simulated workers in one process, with the compressor's own pieces.

The convex experiments of Wangni et al. (2018) (Figures 1-3, top-k) and the CNN
are run with the M = 4 workers *simulated* in one process: worker r computes
its minibatch gradient g_r, encodes it with the compressor's codec
(``compressor.feedback.encode``, what ``Compressor.compress`` calls under Horovod) with the seed
``[compressor.stream_seed(r, tensor_index), step]`` that rank r would use, the
M byte messages are concatenated in rank order (what the allgather returns)
and ``codec.decode_sum`` with Horovod's factor 1/M turns them into the average
(1/M) sum_r Q(g_r), as ``decompress`` does (for M = 4, a power of two, bit for bit
the sum divided by M); the update uses it (Algorithm 1). Error feedback
(``memory=true``) is the compressor's own (``hvdspar.error_feedback``):
e = g + m, send C(e), m <- e - C(e).

So a simulated run takes the same steps as ``horovodrun -np M`` with the same
compressor seed and fallback off; tests/workers/reproduce_hvd.py checks that
on 2 real ranks. Nothing here calls Horovod.
"""

import numpy as np
import tensorflow as tf

import hvdspar


def make_compressor(spec, seed):
    """The hvdspar compressor of ``spec`` with a fixed seed and the dense fallback off
    (so every step sends the compressed message); None for 'none'."""
    if spec in (None, "none"):
        return None
    joint = "," if ":" in spec else ":"  # a bare name ("terngrad") takes its arguments after a colon
    return hvdspar.from_spec(f"{spec}{joint}fallback=false,seed={int(seed)}")


class SimExchange:
    """Average of M workers' compressed gradients for a fixed list of tensor shapes.

    ``__call__(grads, step)`` with ``grads`` a list (one per tensor) of [M, *shape]
    float32 tensors returns (averages list, stats dict of numpy arrays: bytes [M],
    kept [M], sq_g [M], sq_q [M] summed over tensors). With memory on, the
    per-worker memories live in tf.Variables here.
    """

    def __init__(self, spec, num_workers, shapes, seed=0):
        self.spec = spec or "none"
        self.m = int(num_workers)
        self.shapes = [tuple(int(s) for s in shape) for shape in shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.comp = make_compressor(spec, seed)
        if self.comp is not None and self.comp.codec.sums_by_allreduce:
            raise ValueError(f"{spec}: the simulated workers exchange allgather messages; "
                             f"{type(self.comp).__name__} sums through allreduce and runs under horovodrun only")
        self.memory = bool(self.comp is not None and self.comp.memory)
        self.mem = [tf.Variable(tf.zeros([self.m, d], tf.float32), trainable=False) for d in self.sizes] if self.memory else []
        self._fn = tf.function(self._step, reduce_retracing=True)

    def _step(self, grads, step):
        comp, m = self.comp, self.m
        zero = tf.zeros([m], tf.float64)
        stats = {"bytes": zero, "kept": zero, "sq_g": zero, "sq_q": zero}
        averages = []
        for i, (g, shape, d) in enumerate(zip(grads, self.shapes, self.sizes)):
            flat = tf.reshape(tf.cast(g, tf.float32), [m, d])
            if comp is None:
                averages.append(tf.reshape(tf.reduce_mean(flat, 0), shape))
                sq = tf.reduce_sum(tf.square(tf.cast(flat, tf.float64)), 1)
                stats["bytes"] += 4.0 * d
                stats["kept"] += float(d)
                stats["sq_g"] += sq
                stats["sq_q"] += sq
                continue
            msgs, nbytes, kept, sq_g, sq_q, new_mem = [], [], [], [], [], []
            for r in range(m):
                x = flat[r]
                if self.memory:
                    x = comp.feedback.feed(x, self.mem[i][r], tf.float32)  # e = m + g
                seed = tf.stack([tf.constant(comp.stream_seed(r, i), tf.int64), step])
                enc = comp.feedback.encode(x, seed, tf.float32, tf.TensorShape(shape))
                msgs.append(enc.message)
                nbytes.append(tf.cast(tf.size(enc.message), tf.float64))
                kept.append(tf.cast(enc.kept, tf.float64))
                sq_g.append(enc.x_sq_norm)
                sq_q.append(tf.cast(enc.q_sq_norm, tf.float64))
                if self.memory:
                    new_mem.append(comp.feedback.residual(x, enc.q))  # m <- e - C(e)
            # the average as decompress computes it: Horovod's factor 1/M applied inside the decoding
            average, _ = comp.codec.decode_sum(tf.concat(msgs, 0), m, d, tf.float32,
                                               factor=tf.constant(1 / m, tf.float32))
            averages.append(tf.reshape(average, shape))
            if self.memory:
                self.mem[i].assign(tf.stack(new_mem))
            stats["bytes"] += tf.stack(nbytes)
            stats["kept"] += tf.stack(kept)
            stats["sq_g"] += tf.stack(sq_g)
            stats["sq_q"] += tf.stack(sq_q)
        return averages, stats

    def __call__(self, grads, step):
        grads = [tf.convert_to_tensor(g, tf.float32) for g in grads]
        return self._fn(grads, tf.constant(int(step), tf.int64))


# --------------------------------------------------------------------------------------------
# l2-regularised logistic regression (natural log, as training/fstar.py)
# --------------------------------------------------------------------------------------------


def batch_indices(n, num_workers, batch, seed, step):
    """[M, B] row indices of step ``step``: each data pass is one permutation of the N
    rows (from default_rng([seed, pass])), cut into consecutive blocks of M*B rows;
    worker r takes the r-th B rows of the block. A pure function of (seed, step), so a
    Horovod rank can draw the same rows."""
    per_step = num_workers * batch
    steps_per_pass = n // per_step
    p, j = divmod(int(step), steps_per_pass)
    perm = np.random.default_rng([int(seed), p]).permutation(n)
    return perm[j * per_step : (j + 1) * per_step].reshape(num_workers, batch)


def logreg_grad(x, y, w, lambda2, idx=None):
    """Gradient (float64) of 1/|S| sum_{n in S} log(1 + exp(-b_n a_n^T w)) + lambda2 ||w||^2."""
    if idx is not None:
        x, y = x[idx], y[idx]
    m = y * (x @ w)
    s = 0.5 * (1.0 - np.tanh(0.5 * m))  # sigmoid(-m)
    return -(x.T @ (y * s)) / x.shape[0] + 2.0 * lambda2 * w


def logreg_objective(x, y, w, lambda2):
    m = y * (x @ w)
    return float(np.mean(np.logaddexp(0.0, -m)) + lambda2 * (w @ w))


def run_convex(x, y, lambda2, spec, optimizer="sgd", lr=0.1, passes=10, num_workers=4, batch=8, seed=0,
               comp_seed=1234, evals_per_pass=4, fstar=0.0):
    """One curve: SGD or SVRG on logistic regression with M simulated workers.

    x, y float64 arrays. Returns a dict of numpy arrays: passes (data passes, i.e.
    gradient evaluations / N), subopt (f(w) - f*), bits (cumulative coded bits
    summed over workers), plus the measured variance ratio sum||Q||^2/sum||g||^2
    and density kept/(d * messages) of the whole run.
    SVRG: the reference point is refreshed every data pass of inner steps, with
    the exact full gradient there (counted as one pass, not compressed); each
    inner step costs two minibatch gradients per sample.
    """
    n, d = x.shape
    x32 = np.asarray(x, np.float64)
    steps_per_pass = n // (num_workers * batch)
    total_steps = int(round(passes * steps_per_pass))
    ex = SimExchange(spec, num_workers, [(d,)], seed=comp_seed)
    w = np.zeros(d)
    eval_every = max(1, steps_per_pass // evals_per_pass)
    out = {"passes": [0.0], "subopt": [logreg_objective(x32, y, w, lambda2) - fstar], "bits": [0.0]}
    tot = {"bytes": 0.0, "kept": 0.0, "sq_g": 0.0, "sq_q": 0.0, "messages": 0}
    grad_evals = 0.0  # in units of samples
    w_ref = mu = None
    for t in range(total_steps):
        if optimizer == "svrg" and t % steps_per_pass == 0:
            w_ref = w.copy()
            mu = logreg_grad(x32, y, w_ref, lambda2)
            grad_evals += n
        idx = batch_indices(n, num_workers, batch, seed, t)
        g = np.stack([logreg_grad(x32, y, w, lambda2, idx[r]) for r in range(num_workers)])
        grad_evals += num_workers * batch
        if optimizer == "svrg":
            g -= np.stack([logreg_grad(x32, y, w_ref, lambda2, idx[r]) for r in range(num_workers)])
            g += mu
            grad_evals += num_workers * batch
        (avg,), st = ex([g.astype(np.float32)], t)
        w = w - lr * avg.numpy().astype(np.float64)
        for k in ("bytes", "kept", "sq_g", "sq_q"):
            tot[k] += float(np.sum(st[k]))
        tot["messages"] += num_workers
        if (t + 1) % eval_every == 0 or t + 1 == total_steps:
            f = logreg_objective(x32, y, w, lambda2)
            out["passes"].append(grad_evals / n)
            out["subopt"].append(f - fstar if np.isfinite(f) else np.inf)
            out["bits"].append(8.0 * tot["bytes"])
            if not np.isfinite(f) or f - fstar > 1e6:
                break
    res = {k: np.asarray(v) for k, v in out.items()}
    res["variance"] = tot["sq_q"] / max(tot["sq_g"], 1e-300)
    res["density"] = tot["kept"] / max(tot["messages"] * d, 1)
    res["bits_per_element"] = 8.0 * tot["bytes"] / max(tot["messages"] * d, 1)
    res["steps"] = total_steps
    res["w"] = w
    return res
