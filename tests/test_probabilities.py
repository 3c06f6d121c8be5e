"""GSpar probabilities against independent solutions of the paper's problems."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

import hvdspar
from hvdspar.probabilities import water_level


def vectors(seed, d):
    rng = np.random.default_rng(seed)
    return {
        "normal": rng.normal(size=d),
        "cauchy": rng.standard_cauchy(size=d),  # heavy-tailed
        "lognormal": rng.lognormal(0.0, 2.5, size=d) * rng.choice([-1, 1], size=d),
        "sparse": rng.normal(size=d) * (rng.random(d) < 0.05),
    }


def solve_variance_budget(g, eps):
    """Problem (3) by root finding on lambda (independent of Algorithm 2's sorting)."""
    a = np.abs(g)
    a = a[a > 0]
    target = (1 + eps) * np.sum(a**2)
    h = lambda lam: np.sum(a**2 / np.minimum(lam * a, 1.0)) - target  # decreasing in lam
    lo, hi = 1e-12, 1.0 / a.min() * (1 + 1e-12)
    if h(hi) > 0:  # only with eps = 0 at the boundary: p = 1 everywhere
        return hi
    lam = optimize.brentq(h, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=500)
    return lam


def solve_sparsity_budget(g, rho):
    """sum_i min(lambda |g_i|, 1) = rho d by root finding."""
    a = np.abs(g)
    budget = rho * g.size
    if np.count_nonzero(a) <= budget:
        return None  # every non-zero coordinate kept
    h = lambda lam: np.sum(np.minimum(lam * a, 1.0)) - budget
    return optimize.brentq(h, 0.0, 1.0 / a[a > 0].min(), xtol=1e-300, rtol=1e-15, maxiter=500)


@pytest.mark.parametrize("kind", ["normal", "cauchy", "lognormal", "sparse"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0, 10.0])
def test_algorithm2_matches_root_finding(kind, eps):
    g = vectors(1, 2000)[kind]
    p = hvdspar.probabilities(tf.constant(g, tf.float64), epsilon=eps).numpy()
    lam = solve_variance_budget(g, eps)
    expected = np.minimum(lam * np.abs(g), 1.0)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-12)
    # the variance budget is met with equality (complementary slackness) unless p = 1 everywhere
    nz = g != 0
    variance = np.sum(g[nz] ** 2 / p[nz])
    assert variance <= (1 + eps) * np.sum(g**2) * (1 + 1e-7)
    if np.any(p[nz] < 1):
        assert variance == pytest.approx((1 + eps) * np.sum(g**2), rel=1e-6)


@pytest.mark.parametrize("kind", ["normal", "cauchy", "lognormal", "sparse"])
@pytest.mark.parametrize("rho", [0.001, 0.01, 0.1, 0.5, 1.0])
def test_exact_sparsity_budget_matches_root_finding(kind, rho):
    g = vectors(2, 3000)[kind]
    p = hvdspar.probabilities(tf.constant(g, tf.float64), rho=rho, method="exact").numpy()
    lam = solve_sparsity_budget(g, rho)
    expected = (g != 0).astype(float) if lam is None else np.minimum(lam * np.abs(g), 1.0)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-12)
    assert p.sum() == pytest.approx(min(rho * g.size, np.count_nonzero(g)), rel=1e-6)


def test_exact_solutions_are_optimal_against_a_generic_solver():
    """SLSQP on the raw problem (no water-filling assumed) reaches the same p."""
    rng = np.random.default_rng(3)
    g = rng.standard_cauchy(12)
    rho = 0.4
    d = g.size
    res = optimize.minimize(
        lambda p: np.sum(g**2 / p),
        x0=np.full(d, rho),
        jac=lambda p: -(g**2) / p**2,
        bounds=[(1e-9, 1.0)] * d,
        constraints=[{"type": "eq", "fun": lambda p: np.sum(p) - rho * d, "jac": lambda p: np.ones(d)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    ours = hvdspar.probabilities(tf.constant(g), rho=rho, method="exact").numpy()
    assert np.sum(g**2 / ours) <= res.fun * (1 + 1e-8)
    np.testing.assert_allclose(ours, res.x, atol=2e-4)


@pytest.mark.parametrize("kind", ["normal", "cauchy", "lognormal"])
@pytest.mark.parametrize("rho", [0.001, 0.01, 0.1])
def test_greedy_reaches_the_density_budget(kind, rho):
    g = vectors(4, 100_000)[kind]
    p = hvdspar.probabilities(tf.constant(g, tf.float32), rho=rho, method="greedy", iterations=2).numpy()
    density = p.sum() / g.size
    assert abs(density / rho - 1) < 0.05, density
    # same water-filling form as the optimum: p = min(lambda |g|, 1)
    lam = float(water_level(tf.constant(g, tf.float32), rho=rho, method="greedy"))
    np.testing.assert_allclose(p, np.minimum(lam * np.abs(g), 1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "budget", [dict(rho=0.1), dict(rho=1.0), dict(epsilon=0.0), dict(epsilon=1.0), dict(rho=0.5, method="greedy")]
)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_edge_cases_have_no_nan(budget, dtype):
    for g in ([0.0] * 5, [3.0], [0.0], [-2.0, 0.0, 1.0]):
        p = hvdspar.probabilities(tf.constant(g, dtype), **budget).numpy()
        assert p.shape == (len(g),)
        assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
        assert np.all(p[np.array(g) == 0] == 0)
    # all-zero: nothing to send
    assert hvdspar.probabilities(tf.zeros([4, 3], dtype), **budget).numpy().sum() == 0


def test_rho_one_and_epsilon_zero_keep_everything():
    g = tf.constant(vectors(5, 500)["cauchy"])
    for budget in (dict(rho=1.0, method="exact"), dict(epsilon=0.0)):
        assert np.all(hvdspar.probabilities(g, **budget).numpy() == 1.0)
    # d = 1: p = rho
    assert hvdspar.probabilities(tf.constant([5.0]), rho=0.3).numpy() == pytest.approx([0.3])


def test_shape_is_kept():
    g = tf.random.stateless_normal([3, 4, 5], seed=[1, 2])
    assert hvdspar.probabilities(g, rho=0.2).shape == (3, 4, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rho=0.0), "rho must be"),
        (dict(rho=1.5), "rho must be"),
        (dict(rho=-0.1), "rho must be"),
        (dict(epsilon=-1.0), "epsilon must be"),
        (dict(rho=0.1, epsilon=0.1), "exactly one budget"),
        (dict(), "exactly one budget"),
        (dict(rho=0.1, method="magic"), "unknown method"),
        (dict(epsilon=0.1, method="greedy"), "takes a sparsity budget"),
        (dict(rho=0.1, iterations=0), "iterations"),
    ],
)
def test_bad_budgets_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hvdspar.probabilities(tf.ones([3]), **kwargs)
    with pytest.raises(ValueError, match=message):
        hvdspar.GSpar(**kwargs)
