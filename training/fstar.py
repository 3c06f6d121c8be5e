"""f* = min_w f(w) for the convex models, to high precision, cached on disk.

Objectives (float64, on exactly the float32 data the model trains on):

  logreg  f(w) = 1/N sum log(1 + exp(-b_n a_n^T w)) + lambda2 ||w||^2   (natural log)
  svm     f(w) = 1/N sum max(0, 1 - b_n a_n^T w) + lambda2 ||w||^2

logreg is smooth and 2*lambda2-strongly convex: scipy L-BFGS-B (gtol 1e-12),
then Newton steps with the exact Hessian (d <= 6000) until the gradient norm
stops falling. Certificate: f(w) - f* <= ||grad f(w)||^2 / (4 lambda2).

svm: the hinge is not smooth; we use its dual and a smoothed-then-refined
primal, and certify the answer with the duality gap. With alpha in the box
0 <= alpha_n <= 1/N and w(alpha) = sum_n alpha_n b_n a_n / (2 lambda2),

    D(alpha) = sum_n alpha_n - ||sum_n alpha_n b_n a_n||^2 / (4 lambda2) <= f*,

so f(w) - D(alpha) bounds f(w) - f* for any pair. Two paths:

  primal (d < N, e.g. a9a, w8a): minimise the Moreau envelope of the hinge
    (quadratic within mu of the kink; h - mu/2 <= h_mu <= h) by Newton for
    mu = 1e-1, 1e-2, ..., warm-started. alpha_n = clip((1 - m_n)/mu, 0, 1)/N
    is dual feasible. Then an exact active-set correction: the points in the
    band 1 - mu < m < 1 are the support vectors on the margin; move their
    alphas by the minimum-norm delta that sets their margins to exactly 1
    (thin SVD of their rows), clip to the box. Stop at a relative gap < 1e-11.
  dual (N <= 5000 and N < d, e.g. the synthetic set): L-BFGS-B on the dual
    box QP, then the same correction on the coordinates strictly inside the box.

f* is reported as the best primal value, so it overestimates the true minimum
by at most the certificate; on a9a, w8a and the synthetic set (lambda2 = 1/N
and 1/(10N)) the certificates are below 1e-14. (Plain dual L-BFGS-B on all of
a9a reached a gap of only 7e-3 in 190 s, hence the primal path.)

``cached_fstar`` keys results by sha256(model, lambda2, data, solver version)
and keeps them as JSON (plus w* as .npy) under ~/.cache/hvdspar/fstar.
"""

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse as sp

SOLVER_VERSION = 3


def _as64(x):
    return x.astype(np.float64).tocsr() if sp.issparse(x) else np.asarray(x, dtype=np.float64)


def margins(x, y, w):
    """b_n a_n^T w, float64."""
    return np.asarray(y, np.float64) * np.asarray(x @ w, np.float64).reshape(-1)


def objective(model, x, y, w, lambda2):
    """f(w) of ``model`` ('logreg' or 'svm') in float64."""
    w = np.asarray(w, np.float64).reshape(-1)
    m = margins(x, y, w)
    data = np.mean(np.logaddexp(0.0, -m)) if model == "logreg" else np.mean(np.maximum(0.0, 1.0 - m))
    return float(data + lambda2 * (w @ w))


def accuracy(x, y, w):
    """Fraction of rows with sign(a^T w) == b (a^T w >= 0 counts as +1)."""
    z = np.asarray(x @ np.asarray(w, np.float64).reshape(-1)).reshape(-1)
    return float(np.mean(np.where(z >= 0, 1.0, -1.0) == np.asarray(y)))


# --------------------------------------------------------------------------------------------
# logistic regression
# --------------------------------------------------------------------------------------------


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _logreg_fg(w, x, y, lambda2):
    m = y * (x @ w)
    f = np.mean(np.logaddexp(0.0, -m)) + lambda2 * (w @ w)
    s = _sigmoid(-m)  # d/dm log(1 + e^-m) = -sigmoid(-m)
    g = -(x.T @ (y * s)) / x.shape[0] + 2.0 * lambda2 * w
    return f, np.asarray(g).reshape(-1)


def solve_logreg(x, y, lambda2, max_newton=30):
    x, y = _as64(x), np.asarray(y, np.float64)
    n, d = x.shape
    w0 = np.zeros(d)
    res = scipy.optimize.minimize(
        _logreg_fg, w0, args=(x, y, lambda2), jac=True, method="L-BFGS-B",
        options={"maxiter": 20000, "maxcor": 30, "gtol": 1e-12, "ftol": 1e-16},
    )
    w = res.x
    f, g = _logreg_fg(w, x, y, lambda2)
    iters = 0
    if d <= 6000:
        for iters in range(1, max_newton + 1):
            m = y * (x @ w)
            s = _sigmoid(m) * _sigmoid(-m)
            xs = x.multiply(s[:, None]).tocsr() if sp.issparse(x) else x * s[:, None]
            h = np.asarray((x.T @ xs).todense() if sp.issparse(xs) else x.T @ xs) / n + 2.0 * lambda2 * np.eye(d)
            step = np.linalg.solve(h, g)
            t, improved = 1.0, False
            while t > 1e-8:
                f_new, g_new = _logreg_fg(w - t * step, x, y, lambda2)
                if f_new <= f and np.linalg.norm(g_new) < np.linalg.norm(g):
                    w, f, g, improved = w - t * step, f_new, g_new, True
                    break
                t *= 0.5
            if not improved or np.linalg.norm(g) < 1e-15:
                break
    gnorm = float(np.linalg.norm(g))
    bound = gnorm**2 / (4.0 * lambda2) if lambda2 > 0 else float("inf")
    return {
        "fstar": float(objective("logreg", x, y, w, lambda2)),
        "w": w,
        "certificate": bound,
        "certificate_kind": "||grad||^2/(4 lambda2) >= f(w*) - f*",
        "grad_norm": gnorm,
        "method": f"L-BFGS-B ({res.nit} it) + Newton ({iters} it)",
    }


# --------------------------------------------------------------------------------------------
# linear SVM (hinge): smoothing continuation, then the exact active-set KKT solve
# --------------------------------------------------------------------------------------------


def _smoothed_hinge_fg(w, x, y, lambda2, mu):
    """f_mu(w) = 1/N sum h_mu(m_n) + lambda2 ||w||^2 with the Moreau envelope
    h_mu(m) = 0 (m >= 1), (1-m)^2/(2 mu) (1-mu < m < 1), 1 - m - mu/2 (m <= 1-mu),
    so h - mu/2 <= h_mu <= h."""
    m = y * (x @ w)
    r = 1.0 - m
    h = np.where(r <= 0, 0.0, np.where(r < mu, r * r / (2 * mu), r - 0.5 * mu))
    dh = -np.clip(r / mu, 0.0, 1.0)  # dh/dm
    f = h.mean() + lambda2 * (w @ w)
    g = np.asarray(x.T @ (y * dh)).reshape(-1) / x.shape[0] + 2.0 * lambda2 * w
    return f, g


def svm_dual_value(alpha, z, lambda2):
    """D(alpha) = sum alpha - ||Z^T alpha||^2 / (4 lambda2), for 0 <= alpha <= 1/N (a lower bound on f*)."""
    v = np.asarray(z.T @ alpha).reshape(-1)
    return float(alpha.sum() - (v @ v) / (4.0 * lambda2))


def _svm_dual_fg(alpha, z, lambda2):
    """-D(alpha) and its gradient (margins - 1)."""
    v = np.asarray(z.T @ alpha).reshape(-1)
    return (v @ v) / (4.0 * lambda2) - alpha.sum(), np.asarray(z @ v).reshape(-1) / (2.0 * lambda2) - 1.0


def _correct(alpha, free, z, zd, lambda2, n):
    """Move the free alphas by the minimum-norm delta that puts their margins at
    exactly 1 (Z_F Z^T (alpha + delta) / (2 lambda2) = 1), via a thin SVD of Z_F
    (cost |F| d^2), and clip to the box [0, 1/N]."""
    alpha = alpha.copy()
    if free.any():
        m = np.asarray(z @ (np.asarray(z.T @ alpha).reshape(-1) / (2.0 * lambda2))).reshape(-1)
        u, sv, _ = np.linalg.svd(zd[free], full_matrices=False)
        keep = sv > sv.max() * 1e-12
        u, sv = u[:, keep], sv[keep]
        alpha[free] += u @ ((u.T @ (2.0 * lambda2 * (1.0 - m[free]))) / sv**2)
        np.clip(alpha, 0.0, 1.0 / n, out=alpha)
    return alpha


def _smoothed_newton(w, x, z, y, lambda2, mu, max_it=200):
    """Minimise the smoothed objective (piecewise quadratic) by Newton with backtracking."""
    n = x.shape[0]
    f, g = _smoothed_hinge_fg(w, x, y, lambda2, mu)
    for _ in range(max_it):
        m = np.asarray(z @ w).reshape(-1)
        zb = z[(m < 1.0) & (m > 1.0 - mu)]
        h = (np.asarray((zb.T @ zb).todense()) if sp.issparse(zb) else zb.T @ zb) / (n * mu)
        h[np.diag_indices_from(h)] += 2.0 * lambda2
        step = scipy.linalg.solve(h, g, assume_a="pos")
        t, slope = 1.0, g @ step
        while True:
            f_new, g_new = _smoothed_hinge_fg(w - t * step, x, y, lambda2, mu)
            if f_new <= f - 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if f_new > f:
            break
        w, f_old, f, g = w - t * step, f, f_new, g_new
        if np.linalg.norm(g) < 1e-14 or (t == 1.0 and f_old - f <= 1e-16 * max(1.0, abs(f))):
            break
    return w


def solve_svm(x, y, lambda2, target=1e-11, dual_max_n=5000):
    """f* of the linear SVM with a duality-gap certificate (see the module docstring)."""
    if lambda2 <= 0:
        raise ValueError("svm: f* needs lambda2 > 0")
    x, y = _as64(x), np.asarray(y, np.float64)
    n, d = x.shape
    c = 1.0 / n
    z = x.multiply(y[:, None]).tocsr() if sp.issparse(x) else x * y[:, None]
    zd = z.toarray() if sp.issparse(z) else z
    best = None  # (gap, primal, dual, w, alpha, label)

    def consider(alpha, label):
        nonlocal best
        w = np.asarray(z.T @ alpha).reshape(-1) / (2.0 * lambda2)
        primal, dual = objective("svm", x, y, w, lambda2), svm_dual_value(alpha, z, lambda2)
        if best is None or primal - dual < best[0]:
            best = (primal - dual, primal, dual, w, alpha, label)
        return best[0] <= target * max(1.0, abs(best[1]))

    def dual_path():
        # Few rows: L-BFGS-B on the dual (n box-constrained variables), then active-set corrections.
        res = scipy.optimize.minimize(
            _svm_dual_fg, np.full(n, 0.5 * c), args=(z, lambda2), jac=True, method="L-BFGS-B",
            bounds=[(0.0, c)] * n, options={"maxiter": 20000, "maxcor": 50, "gtol": 1e-14, "ftol": 1e-18},
        )
        alpha = np.clip(res.x, 0.0, c)
        done = consider(alpha, f"dual L-BFGS-B ({res.nit} it)")
        for r in range(1, 6):
            if done:
                break
            alpha = best[4]
            m = np.asarray(z @ best[3]).reshape(-1)
            at_c = (alpha >= c * (1 - 1e-7)) & (m < 1 - 1e-9)
            at_0 = (alpha <= c * 1e-7) & (m > 1 + 1e-9)
            before = best[0]
            done = consider(_correct(alpha, ~(at_c | at_0), z, zd, lambda2, n), f"dual L-BFGS-B ({res.nit} it) + {r} active-set correction(s)")
            if best[0] >= before:
                break
        return done

    def primal_path():
        w = np.zeros(d)
        for mu in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
            if d <= 3000:
                w = _smoothed_newton(w, x, z, y, lambda2, mu)
            else:
                w = scipy.optimize.minimize(
                    _smoothed_hinge_fg, w, args=(x, y, lambda2, mu), jac=True, method="L-BFGS-B",
                    options={"maxiter": 5000, "maxcor": 30, "gtol": 1e-12, "ftol": 1e-16},
                ).x
            m = np.asarray(z @ w).reshape(-1)
            alpha = np.clip((1.0 - m) / mu, 0.0, 1.0) * c  # dual feasible
            if consider(alpha, f"smoothed hinge mu={mu:g}"):
                return True
            if consider(_correct(alpha, (m < 1.0) & (m > 1.0 - mu), z, zd, lambda2, n), f"smoothed hinge mu={mu:g} + active-set correction"):
                return True
        return False

    # Few rows and more columns than rows (the synthetic set): the dual is small. Otherwise
    # (a9a, w8a: d << N) the primal in d dimensions is faster. The other path is the fallback.
    paths = [dual_path, primal_path] if n <= dual_max_n and n < d else [primal_path, dual_path]
    for path in paths:
        if path is dual_path and n > dual_max_n:
            continue
        if path():
            break
    return _svm_result(best)


def _svm_result(best):
    gap, primal, dual, w, _, label = best
    return {
        "fstar": float(primal),
        "w": w,
        "certificate": float(max(gap, 0.0)),
        "certificate_kind": "duality gap f(w) - D(alpha) >= f(w) - f*",
        "dual": float(dual),
        "method": label,
    }


def solve(model, x, y, lambda2):
    t = time.time()
    out = solve_logreg(x, y, lambda2) if model == "logreg" else solve_svm(x, y, lambda2)
    out["seconds"] = time.time() - t
    return out


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def cache_key(model, x, y, lambda2):
    from hvdspar.training.data import fingerprint

    head = f"{model}|{float(lambda2)!r}|v{SOLVER_VERSION}|"
    return head.replace("|", "-")[:40].strip("-") + "-" + fingerprint(np.frombuffer(head.encode(), np.uint8), x, y)[:24]


def cached_fstar(model, x, y, lambda2, cache_dir=None, log=None):
    """f* and its solution info, from <cache_dir>/fstar/<key>.json or solved now and stored there."""
    from hvdspar.training.data import default_cache_dir

    folder = Path(cache_dir or default_cache_dir()) / "fstar"
    key = cache_key(model, x, y, lambda2)
    path = folder / f"{key}.json"
    if path.exists():
        info = json.loads(path.read_text())
        info["cached"] = str(path)
        return info
    if log:
        log(f"computing f* for {model} (lambda2={lambda2:.4g}, {x.shape[0]} x {x.shape[1]}) ...")
    out = solve(model, x, y, lambda2)
    w = out.pop("w")
    info = {"model": model, "lambda2": float(lambda2), "n": int(x.shape[0]), "d": int(x.shape[1]), **out}
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{key}.w.npy", w)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh, indent=1)
    os.replace(tmp, path)
    info["cached"] = None
    if log:
        log(f"f* solved in {info['seconds']:.1f} s")
    return info
