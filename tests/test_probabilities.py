"""GSpar probabilities against independent solutions of the paper's problems."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

import hvdspar
from hvdspar.probabilities import probabilities_from_lambda, water_level

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")


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


# --- rho = 1: a budget of every coordinate keeps every coordinate -----------------------------


def rounding_trap(dtype):
    """The smallest magnitude m > 0.5 representable in ``dtype`` for which, in the compute
    dtype, fl(fl(1/m) * m) < 1: lambda = 1/min|g| then leaves p = min(lambda m, 1) < 1."""
    cdt = np.float64 if dtype == tf.float64 else np.float32
    grid = np.arange(0.5, 1.0, 2.0**-10 if dtype == tf.float16 else 1e-4)
    m = np.unique(tf.cast(tf.constant(grid), dtype).numpy().astype(cdt))
    m = m[m > 0.5]
    one = cdt(1)
    return float(m[(one / m) * m < one][0])


def rho_one_vector(kind, dtype, d=3000):
    """A test vector for rho = 1: zeros in it, and the rounding trap as its smallest non-zero magnitude."""
    g = vectors(6, d)[kind]
    g = np.clip(g, -6e4, 6e4)  # float16 stays finite
    g = np.where(np.abs(g) > 0, np.sign(g) * (np.abs(g) + 1.0), 0.0)  # |g| >= 1 where non-zero
    g[::97] = 0.0
    g[5] = -rounding_trap(dtype)
    return tf.constant(g, dtype)


@pytest.mark.parametrize("method", ["exact", "greedy"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32, tf.float64])
@pytest.mark.parametrize("kind", ["normal", "cauchy", "lognormal", "sparse"])
def test_rho_one_gives_p_one_on_every_nonzero_coordinate(kind, dtype, method):
    g = rho_one_vector(kind, dtype)
    nz = g.numpy() != 0
    assert nz[5] and not nz.all()
    p = hvdspar.probabilities(g, rho=1.0, method=method).numpy()
    assert p.dtype == (np.float64 if dtype == tf.float64 else np.float32)
    np.testing.assert_array_equal(p[nz], 1.0)
    np.testing.assert_array_equal(p[~nz], 0.0)  # g_i = 0: nothing to send, Q(g)_i = 0 = g_i
    assert p.sum() == np.count_nonzero(nz)
    # the water level agrees: finite, and lambda |g_i| >= 1 for every non-zero g_i
    lam = water_level(g, rho=1.0, method=method)
    assert np.isfinite(float(lam)) and float(lam) > 0
    np.testing.assert_array_equal(probabilities_from_lambda(g, lam).numpy()[nz], 1.0)
    # rho = 1 written as an int is the same budget
    np.testing.assert_array_equal(hvdspar.probabilities(g, rho=1, method=method).numpy(), p)


@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_rho_one_on_all_zero_and_single_coordinates(method):
    for g in ([0.0] * 5, [3.0], [0.0], [-2.0, 0.0, 1.0], [1e-30, -1e30]):
        p = hvdspar.probabilities(tf.constant(g, tf.float32), rho=1.0, method=method).numpy()
        np.testing.assert_array_equal(p, (np.array(g) != 0).astype(np.float32))
    assert float(water_level(tf.zeros([7]), rho=1.0, method=method)) == 0.0


def test_greedy_density_just_below_rho_one_stays_below_one():
    """Algorithm 3 with its 2 rescalings under-spends a high budget (it only approaches the
    water level); rho = 1 is the limit where every coordinate is kept, not a jump past it."""
    g = tf.constant(vectors(4, 100_000)["normal"], tf.float32)
    densities = {}
    for rho in (0.5, 0.9, 0.99, 0.999, 1.0):
        densities[rho] = float(tf.reduce_sum(hvdspar.probabilities(g, rho=rho, method="greedy"))) / 100_000
    assert densities[1.0] == 1.0
    values = list(densities.values())
    assert all(a < b for a, b in zip(values, values[1:])), densities  # increasing in rho
    assert all(densities[r] <= r * (1 + 1e-6) for r in densities), densities  # never above the budget


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.one_of(st.just(0.0), st.floats(1e-30, 1e3)), min_size=1, max_size=300),
    rho=st.floats(0.01, 0.99),
    iterations=st.integers(1, 4),
)
def test_water_level_bound_is_above_the_water_level_and_every_greedy_lambda(a, rho, iterations):
    """Lambda of ``water_level_bound`` (from ||a||_1 and ||a||^2 alone) is >= the exact water level
    lambda* and >= Algorithm 3's lambda after any number of rescalings, wherever it is finite (r <= 1);
    it is +inf exactly where r > 1 or a = 0, and sum_i min(Lambda a_i, 1) >= rho d (its definition)."""
    from hvdspar.probabilities import lambda_rho_exact, lambda_rho_greedy, water_level_bound

    a = np.asarray(a, np.float64)
    d, l1, l2 = a.size, a.sum(), (a * a).sum()
    bound, r = (float(t) for t in water_level_bound(l1, l2, rho * d))
    if l1 == 0 or rho * d * l2 > l1 * l1 * (1 + 1e-12):
        assert bound == np.inf
        return
    assert r == pytest.approx(rho * d * l2 / (l1 * l1), rel=1e-9)
    assert np.minimum(bound * a, 1).sum() >= rho * d * (1 - 1e-9)
    at = tf.constant(a)
    assert float(lambda_rho_exact(at, rho)) <= bound * (1 + 1e-9)
    assert float(lambda_rho_greedy(at, rho, iterations)) <= bound * (1 + 1e-9)


def test_water_level_bound_is_tight_for_spread_out_gradients():
    """For a Gaussian g, r = rho pi / 2 and Lambda / lambda_0 = 2 / (1 + sqrt(1 - r)): 1.004 at rho = 0.01,
    which is why the candidates of GSpar's one-pass sampler are barely more than the message."""
    from hvdspar.probabilities import water_level_bound

    a = np.abs(np.random.default_rng(0).normal(size=1_000_000))
    rho, d = 0.01, a.size
    bound, r = (float(t) for t in water_level_bound(a.sum(), (a * a).sum(), rho * d))
    assert r == pytest.approx(rho * np.pi / 2, rel=0.01)
    assert bound / (rho * d / a.sum()) == pytest.approx(2 / (1 + np.sqrt(1 - r)), rel=1e-9)
    assert bound / (rho * d / a.sum()) < 1.005
