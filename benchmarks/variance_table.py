"""Variance and bytes of every compressor at the same budget, on real gradients.

    .venv/bin/python -m benchmarks.variance_table [--draws 20] [--fast]

Gradients (minibatch gradients, several minibatches per point):

- logreg: l2-regularised logistic regression on the paper's synthetic data
  (N=1024, d=2048, C1=0.9, C2=1/16; ``hvdspar.training.data.synthetic``, or the local
  twin below if that module is missing), minibatch 8, at w = 0 and after 100
  SGD steps;
- cnn: the paper's CNN (3 conv 3x3 + BN, 2 max-pool, dense 256; 24 channels)
  on 512 CIFAR-10 images of the exact subset, minibatch 32, at initialisation
  and after 50 Adam steps. Every tensor (conv kernels, BN, dense) is
  compressed separately, as Horovod does.

Budget: rho = 0.01 (GSpar, UniSp), ratio = 0.01 (TopK, RandomK); ATOMO gets,
per tensor, the budget whose expected bytes equal GSpar's measured bytes on
that tensor (spectral atoms for matrices/kernels, entry-wise atoms for vectors,
where it coincides with GSpar's exact water-filling); QSGD with s = 1 level
(its cheapest setting); TernGrad; EF-signSGD's scaled sign (||g||_1 / d sign(g),
without its memory); PowerSGD at rank 1 and 4, one power step from a random Q
(no warm start, no memory: what one step of it sends; its P and Q are the
bytes; vectors go dense); fp32 and fp16 for reference.

Columns: E||Q(g)||^2 / ||g||^2 (over draws, summed over tensors; for an
unbiased Q it is 1 + the relative variance), E||Q(g) - g||^2 / ||g||^2 (the
error also for the biased TopK / plain RandomK), and message bytes per gradient
element (headers included, the Horovod placeholder (4 bytes) not).
Each Q comes from the compressor's own ``encode`` (the exact bytes that would
travel; tests check that receivers decode exactly Q).
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import hvdspar
from hvdspar import atomo, codec
from hvdspar.probabilities import atom_probabilities

CIFAR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10" / "cifar10_exact_subset.npz"
RHO = 0.01


# --- gradients ------------------------------------------------------------------------------


def synthetic(n=1024, d=2048, c1=0.9, c2=1.0 / 16, seed=0):
    """(a, b) of the paper's synthetic data (sec. 4); training.data.synthetic when available."""
    try:
        from hvdspar.training.data import synthetic as shared

        s = shared(n, d, c1, c2, seed)
        return s.a, s.b
    except ImportError:  # the local twin, same draws
        rng = np.random.default_rng(seed)
        a_bar = rng.standard_normal((n, d))
        bvec = rng.uniform(0.0, 1.0, size=d)
        bvec = np.where(bvec <= c2, c1 * bvec, bvec)
        w_bar = rng.standard_normal(d)
        return a_bar * bvec, np.where(a_bar @ w_bar >= 0, 1.0, -1.0)


def logreg_gradients(batches, batch=8, steps=100, lr=0.5, seed=0):
    """{point: [[g] per minibatch]} for f(w) = mean log2(1 + exp(-b a^T w)) + lam ||w||^2."""
    a, b = synthetic()
    n, d = a.shape
    lam = 1.0 / (10 * n)
    rng = np.random.default_rng(seed)

    def grad(w, idx):
        z = -b[idx] * (a[idx] @ w)
        s = 1.0 / (1.0 + np.exp(-z))  # sigma(-b a^T w)
        return (a[idx].T @ (-b[idx] * s)) / (len(idx) * math.log(2)) + 2 * lam * w

    w = np.zeros(d)
    out = {"w=0": [[grad(w, rng.choice(n, batch, replace=False)).astype(np.float32)] for _ in range(batches)]}
    for _ in range(steps):
        w -= lr * grad(w, rng.choice(n, batch, replace=False))
    out[f"{steps} SGD steps"] = [[grad(w, rng.choice(n, batch, replace=False)).astype(np.float32)] for _ in range(batches)]
    return out


def cnn_gradients(batches, batch=32, steps=50, images=512, seed=0):
    """{point: [[g per trainable tensor] per minibatch]} of the paper's CNN on CIFAR-10 images."""
    from hvdspar.training.models import cnn

    data = np.load(CIFAR)
    x, y = data["x_train"][:images], data["y_train"][:images].astype(np.int32)
    tf.keras.utils.set_random_seed(seed)
    model = cnn(channels=24, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = tf.keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(seed)

    @tf.function
    def grads(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        return tape.gradient(loss, model.trainable_variables)

    def sample():
        idx = rng.choice(images, batch, replace=False)
        return [g.numpy() for g in grads(x[idx], y[idx])]

    out = {"init": [sample() for _ in range(batches)]}
    for _ in range(steps):
        idx = rng.choice(images, batch, replace=False)
        opt.apply_gradients(zip(grads(x[idx], y[idx]), model.trainable_variables))
    out[f"{steps} Adam steps"] = [sample() for _ in range(batches)]
    return out


# --- measuring ------------------------------------------------------------------------------


def measure(make, grads, draws, seed=0):
    """E||Q||^2 / ||g||^2, E||Q - g||^2 / ||g||^2 and bytes per element over minibatches and draws.

    Sums run over every tensor and minibatch (||g||^2 pooled); ``ratio_se`` is
    the standard error of the ratio over the draws. ``make(index, g)`` gives
    the compressor for tensor ``index``; Q is decoded from the message bytes.
    """
    sq_q, sq_err, nbytes = np.zeros(draws), np.zeros(draws), np.zeros(draws)
    sq_g, elements = 0.0, 0
    for mb, tensors in enumerate(grads):
        for t, g in enumerate(tensors):
            comp = make(t, g)
            flat = g.reshape(-1).astype(np.float64)
            x = tf.constant(g.reshape(-1))
            kwargs = {"shape": g.shape} if isinstance(comp, hvdspar.Atomo) else {}
            for r in range(draws):
                seed_r = tf.constant([seed * 1000 + mb, r * 1000 + t], tf.int64)
                if comp.codec.sums_by_allreduce:
                    q, q_sq, size = reduced_draw(comp.codec, x, g.shape, seed_r)
                else:
                    enc = comp.feedback.encode(x, seed_r, tf.float32, **kwargs)
                    q, _ = comp.codec.decode_sum(enc.message, 1, g.size, tf.float32, **kwargs)  # what a receiver gets
                    q_sq, size = float(enc.q_sq_norm), int(enc.message.shape[0])
                sq_q[r] += q_sq
                sq_err[r] += float(np.sum((q.numpy().astype(np.float64) - flat) ** 2))
                nbytes[r] += size
            sq_g += float(np.sum(flat**2))
            elements += g.size
    ratio = sq_q / sq_g
    return {
        "ratio": float(ratio.mean()),
        "ratio_se": float(ratio.std(ddof=1) / np.sqrt(draws)) if draws > 1 else 0.0,
        "error": float(sq_err.mean() / sq_g),
        "bytes_per_element": float(nbytes.mean() / elements),
    }


def reduced_draw(codec, x, shape, seed):
    """(Q, ||Q||^2, bytes) of one step of an allreduce codec (PowerSGD) on one rank, from a fresh
    random start (``seed``): its P and Q are the message; a vector or a tensor below its
    min_compression_rate goes dense."""
    if codec.plan(x.shape[0], shape) is not None:
        return x, float(np.sum(x.numpy().astype(np.float64) ** 2)), 4 * x.shape[0]
    q0 = codec.initial_state(shape, tf.float32, int(seed[0]) * 7919 + int(seed[1]))["q"]
    state = {"q": tf.Variable(q0), "step": tf.Variable(tf.constant(codec.start_iter, tf.int64))}
    red = codec.reduce_sum(x, state, lambda t, tag: t, tf.float32, shape, tf.constant(1), 0)
    return red.total, float(np.sum(red.total.numpy().astype(np.float64) ** 2)), int(red.nbytes)


def atomo_budget(g, target_bytes):
    """The expected atom count whose expected bytes equal ``target_bytes`` on tensor g."""
    if atomo.uses_svd(g.shape):
        rows, cols = codec.matrix_layout(g.shape)
        per_atom = atomo.spectral_nbytes(1, rows, cols, tf.float32) - atomo.spectral_nbytes(0, rows, cols, tf.float32)
        budget = (target_bytes - atomo.spectral_nbytes(0, rows, cols, tf.float32)) / per_atom
        return max(budget, 1e-3)
    return max(RHO * g.size, 1e-3)  # entry-wise atoms: GSpar's exact water-filling at rho


def dense(nbytes_per_element, ratio=1.0):
    return {"ratio": ratio, "ratio_se": 0.0, "error": 0.0, "bytes_per_element": nbytes_per_element}


def compressors():
    """(name, unbiased, make(index, g)) at the common budget; ATOMO is matched to GSpar's bytes later.

    GSpar's exact water-filling is the ATOMO row on vectors (entry-wise atoms), so it gets no row of its own.
    """
    def fixed(factory):
        cache = {}

        def make(t, g):
            if t not in cache:
                cache[t] = factory()
            return cache[t]

        return make

    # All without error feedback: the table is about one compression of one gradient.
    return [
        ("gspar rho=0.01 (Alg. 3)", "yes", fixed(lambda: hvdspar.GSpar(rho=RHO))),
        ("unisp rho=0.01", "yes", fixed(lambda: hvdspar.UniSp(rho=RHO))),
        ("topk ratio=0.01", "no", fixed(lambda: hvdspar.TopK(ratio=RHO, memory=False))),
        ("randomk ratio=0.01", "no", fixed(lambda: hvdspar.RandomK(ratio=RHO, memory=False))),
        ("randomk ratio=0.01 rescaled", "yes", fixed(lambda: hvdspar.RandomK(ratio=RHO, rescale=True, memory=False))),
        ("qsgd levels=1", "yes", fixed(lambda: hvdspar.QSGD(levels=1))),
        ("qsgd levels=4", "yes", fixed(lambda: hvdspar.QSGD(levels=4))),
        ("terngrad", "yes", fixed(lambda: hvdspar.TernGrad())),
        ("efsignsgd (scaled sign)", "no", fixed(lambda: hvdspar.EFSignSGD(memory=False))),
        ("powersgd rank=1 (one step, fresh Q)", "no", fixed(lambda: hvdspar.PowerSGD(rank=1, memory=False))),
        ("powersgd rank=4 (one step, fresh Q)", "no", fixed(lambda: hvdspar.PowerSGD(rank=4, memory=False))),
    ]


def table_for(points, draws, log):
    """{compressor: {point: measure}} for one gradient source."""
    results = {}
    for name, unbiased, make in compressors():
        start = time.time()
        results[name] = {"unbiased": unbiased}
        for point, grads in points.items():
            results[name][point] = measure(make, grads, draws)
        log(f"  {name}: {time.time() - start:.1f} s")

    # ATOMO with per-tensor budgets matching GSpar (Alg. 3)'s mean message bytes on that tensor.
    start = time.time()
    results["atomo, bytes of gspar"] = {"unbiased": "yes"}
    for point, grads in points.items():
        gs = hvdspar.GSpar(rho=RHO)
        targets = []
        for t in range(len(grads[0])):
            sizes = []
            for mb, tensors in enumerate(grads):
                x = tf.constant(tensors[t].reshape(-1))
                for r in range(draws):
                    sizes.append(int(gs.feedback.encode(x, tf.constant([mb, r], tf.int64), tf.float32).message.shape[0]))
            targets.append(float(np.mean(sizes)))

        def make(t, g, targets=targets):
            return hvdspar.Atomo(budget=atomo_budget(g, targets[t]))

        results["atomo, bytes of gspar"][point] = measure(make, grads, draws)
        results["atomo, bytes of gspar"][point]["exact_ratio"] = atomo_exact_ratio(grads, targets)
    log(f"  atomo: {time.time() - start:.1f} s")
    for name, nbytes in (("none (fp32)", 4.0), ("fp16", 2.0)):
        results[name] = {"unbiased": "yes", **{point: dense(nbytes) for point in points}}
    return results


def atomo_exact_ratio(grads, targets):
    """E||Q||^2 / ||g||^2 of the bytes-matched ATOMO from its probabilities (sum w^2 / p), no sampling.

    ATOMO's ||Q||^2 is heavy-tailed at budgets below one atom (a rarely kept
    atom weighs sigma^2 / p^2), so a few draws estimate its mean poorly.
    """
    second = total = 0.0
    for tensors in grads:
        for t, g in enumerate(tensors):
            budget = atomo_budget(g, targets[t])
            if atomo.uses_svd(g.shape):
                w = np.linalg.svd(g.reshape(codec.matrix_layout(g.shape)).astype(np.float64), compute_uv=False)
            else:
                w = np.abs(g.reshape(-1).astype(np.float64))
            p = atom_probabilities(tf.constant(w), budget).numpy()
            second += float(np.sum(w[p > 0] ** 2 / p[p > 0]))
            total += float(np.sum(w**2))
    return second / total


def atomo_spectrum_note(points):
    """How concentrated the spectra are: sum sigma^2/p at budget 1 vs the matrix's ||g||^2."""
    lines = []
    for point, grads in points.items():
        for g in grads[0]:
            if atomo.uses_svd(g.shape):
                rows, cols = codec.matrix_layout(g.shape)
                sigma = np.linalg.svd(g.reshape(rows, cols).astype(np.float64), compute_uv=False)
                top = sigma[0] ** 2 / np.sum(sigma**2)
                lines.append(f"{point} {list(g.shape)}: top singular value holds {top:.0%} of ||g||^2")
    return lines


def render(sources):
    points = [(src, p) for src, res in sources.items() for p in next(iter(res.values())) if p != "unbiased"]
    names = list(next(iter(sources.values())).keys())
    head = ["compressor", "unbiased"]
    head += [f"{src} {p}: E‖Q‖²/‖g‖²" for src, p in points]
    head += [f"{src} {p}: E‖Q−g‖²/‖g‖²" for src, p in points if "init" not in p and "w=0" not in p]
    head += [f"{src}: bytes/element" for src in sources]
    rows = []
    for name in names:
        first = next(iter(sources.values()))[name]
        row = [name, first["unbiased"]]
        row += [f"{sources[src][name][p]['ratio']:.3g}" for src, p in points]
        row += [f"{sources[src][name][p]['error']:.3g}" for src, p in points if "init" not in p and "w=0" not in p]
        for src, res in sources.items():
            vals = [v["bytes_per_element"] for k, v in res[name].items() if k != "unbiased"]
            row.append(f"{np.mean(vals):.4f}")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    worst = max(
        (v["ratio_se"] / v["ratio"], f"{name}, {src} {p}")
        for src, res in sources.items()
        for name, per in res.items()
        for p, v in per.items()
        if p != "unbiased"
    )
    lines += ["", f"Largest standard error of E‖Q‖²/‖g‖² over the draws: {worst[0]:.1%} of the value ({worst[1]})."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20, help="draws of Q per gradient (default 20)")
    parser.add_argument("--batches", type=int, default=4, help="minibatch gradients per point (default 4)")
    parser.add_argument("--fast", action="store_true", help="logreg only")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    sources = {}
    log("logreg (synthetic, N=1024, d=2048, C1=0.9, C2=1/16, minibatch 8) ...")
    sources["logreg"] = table_for(logreg_gradients(args.batches), args.draws, log)
    if not args.fast:
        log("cnn (CIFAR-10 subset, 24 channels, minibatch 32) ...")
        points = cnn_gradients(args.batches)
        sources["cnn"] = table_for(points, max(2, args.draws // 4), log)
        notes = atomo_spectrum_note(points)
    print()
    print(f"Budget rho = ratio = {RHO}; {args.draws} draws x {args.batches} minibatches per point (CNN: draws / 4).")
    print()
    print(render(sources))
    print()
    for src, res in sources.items():
        exact = ", ".join(f"{p}: {v['exact_ratio']:.3g}" for p, v in res["atomo, bytes of gspar"].items() if p != "unbiased")
        print(f"- ATOMO (bytes of gspar), exact E‖Q‖²/‖g‖² from its probabilities, {src}: {exact}")
    if not args.fast:
        for n in notes:
            print("-", n)
    return sources


if __name__ == "__main__":
    main()
