"""Q(g) is unbiased with second moment sum g_i^2 / p_i (statistical tests, fixed seeds)."""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar
from hvdspar import kernels, sparse_message
from hvdspar.sparsify import gspar_message, uniform_message

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")

SAMPLES = 4000


def draw(fn, g, samples=SAMPLES):
    """samples x d matrix of dense Q(g), one stateless seed per draw."""
    d = int(tf.size(g))

    @tf.function
    def one(i):
        msg = fn(g, tf.stack([tf.constant(7, tf.int64), tf.cast(i, tf.int64)]))
        return sparse_message.to_dense(msg, d, tf.float64)

    return np.stack([one(tf.constant(i)).numpy() for i in range(samples)])


def assert_unbiased(q, g, p):
    """|mean - g| within 5 standard errors per coordinate, var_i = g_i^2 (1/p_i - 1)."""
    n = q.shape[0]
    mean = q.mean(axis=0)
    var = np.where(p > 0, g**2 * (1 / np.maximum(p, 1e-300) - 1), 0.0)
    z = np.abs(mean - g) / np.sqrt(var / n + 1e-300)
    exact = var == 0
    assert np.all(q[:, exact] == g[exact]), "coordinates with p = 1 (or g = 0) must be sent exactly"
    assert z[~exact].max() < 5.0, z.max()


def assert_second_moment(q, g, p):
    """E||Q||^2 = sum g_i^2 / p_i, within 5 standard errors of the sample mean."""
    sq = (q**2).sum(axis=1)
    nz = p > 0
    target = np.sum(g[nz] ** 2 / p[nz])
    assert abs(sq.mean() - target) < 5 * sq.std() / np.sqrt(len(sq)) + 1e-12, (sq.mean(), target)


@pytest.mark.parametrize(
    "budget", [dict(rho=0.2, method="greedy"), dict(rho=0.2, method="exact"), dict(epsilon=1.0)]
)
def test_gspar_is_unbiased_with_the_predicted_second_moment(budget):
    rng = np.random.default_rng(0)
    g = rng.standard_cauchy(40)
    g[3] = 0.0
    gt = tf.constant(g, tf.float64)
    q = draw(lambda x, s: gspar_message(x, s, **budget)[0], gt)
    p = hvdspar.probabilities(gt, **budget).numpy()
    assert (p == 1).any() and ((p > 0) & (p < 1)).any()  # both parts of the hybrid message occur
    assert_unbiased(q, g, p)
    assert_second_moment(q, g, p)


def test_unisp_is_unbiased_and_has_larger_variance_than_gspar():
    rng = np.random.default_rng(1)
    g = rng.lognormal(0, 1.5, 40) * rng.choice([-1, 1], 40)
    gt = tf.constant(g, tf.float64)
    rho = 0.2
    q_uni = draw(lambda x, s: uniform_message(x, s, rho), gt)
    assert_unbiased(q_uni, g, np.full(40, rho))
    assert_second_moment(q_uni, g, np.full(40, rho))
    p = hvdspar.probabilities(gt, rho=rho, method="exact").numpy()
    # at equal expected density GSpar's variance is the minimum (and strictly below uniform here)
    assert np.sum(g**2 / p) < np.sum(g**2) / rho


def test_kept_coordinates_outside_the_top_set_carry_sign_over_lambda():
    g = tf.constant(np.random.default_rng(2).standard_cauchy(1000), tf.float32)
    msg, lam = gspar_message(g, tf.constant([1, 2], tf.int64), rho=0.05)
    gb = tf.gather(g, msg.idx_b).numpy()
    p_b = np.minimum(float(lam) * np.abs(gb), 1)
    np.testing.assert_allclose(gb / p_b, np.sign(gb) / float(lam), rtol=1e-5)
    np.testing.assert_array_equal(msg.neg_b.numpy(), gb < 0)
    assert float(msg.scale) == pytest.approx(1 / float(lam))
    ga = tf.gather(g, msg.idx_a).numpy()
    assert np.all(float(lam) * np.abs(ga) >= 1)
    np.testing.assert_array_equal(msg.val_a.numpy(), ga)


def test_same_seed_same_message_and_different_seeds_differ():
    g = tf.random.stateless_normal([5000], seed=[3, 4])
    a, _ = gspar_message(g, tf.constant([1, 1], tf.int64), rho=0.01)
    b, _ = gspar_message(g, tf.constant([1, 1], tf.int64), rho=0.01)
    c, _ = gspar_message(g, tf.constant([1, 2], tf.int64), rho=0.01)
    np.testing.assert_array_equal(a.idx_b.numpy(), b.idx_b.numpy())
    assert not np.array_equal(a.idx_b.numpy(), c.idx_b.numpy())


def test_lemma3_expected_density_for_approximately_sparse_gradients():
    """(rho, s)-approximately sparse g and epsilon = rho: E||Q(g)||_0 <= (1 + rho) s."""
    rng = np.random.default_rng(5)
    d, s, rho = 20_000, 200, 0.1
    g = rng.normal(size=d) * 1e-3
    support = rng.choice(d, s, replace=False)
    g[support] = rng.uniform(1, 2, s) * rng.choice([-1, 1], s)
    tail = np.setdiff1d(np.arange(d), support)
    g[tail] *= rho * np.abs(g[support]).sum() / np.abs(g[tail]).sum()  # ||g_Sc||_1 = rho ||g_S||_1
    p = hvdspar.probabilities(tf.constant(g), epsilon=rho).numpy()
    assert p.sum() <= (1 + rho) * s


CHUNK = 1 << 18  # sizes of several chunks (``hvdspar.kernels.chunk_elements``)


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
def test_chunked_greedy_sampler_equals_the_one_pass_definition():
    """Large tensors are sampled chunk by chunk (XLA, concurrently); the result must be
    Algorithm 3's lambda and exactly the set {i : u_i < lambda |g_i|} of the plain path."""
    import importlib

    from hvdspar import rng, sparsify

    probabilities = importlib.import_module("hvdspar.probabilities")
    d = 2 * CHUNK + 12_345  # two full chunks of 2^18 and a remainder
    g = tf.constant(np.random.default_rng(7).standard_t(2, size=d), tf.float32)
    seed = tf.constant([3, 4], tf.int64)
    lam, idx, top = sparsify._greedy_keep_chunked(g, seed, 0.01, 2)
    a = tf.abs(g)
    assert float(lam) == pytest.approx(float(probabilities.lambda_rho_greedy(a, 0.01, 2)), rel=1e-5)
    plain = tf.where(rng.uniform(d, seed) < lam * a)[:, 0]
    np.testing.assert_array_equal(idx.numpy(), plain.numpy())
    msg, lam_msg = gspar_message(g, seed, rho=0.01)
    assert float(lam_msg) == float(lam)
    both = np.sort(np.concatenate([msg.idx_a.numpy(), msg.idx_b.numpy()]))
    np.testing.assert_array_equal(both, plain.numpy())
    np.testing.assert_array_equal(float(lam) * np.abs(g.numpy()[msg.idx_a.numpy()]) >= 1, True)


@pytest.mark.parametrize("method", ["exact", "greedy"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32, tf.float64])
@pytest.mark.parametrize("d", [3000, 1 << 16])  # 2^16: the chunked XLA path of the greedy method
def test_rho_one_message_is_g_itself(d, dtype, method):
    """rho = 1 keeps every coordinate with its exact value: Q(g) = g, every non-zero g_i in Q_A,
    nothing in Q_B (no sign/lambda approximations), for any seed, also through the byte coding."""
    from test_probabilities import rho_one_vector

    g = rho_one_vector("cauchy", dtype, d)
    gn = g.numpy()
    nz = np.flatnonzero(gn)
    for s in range(3):
        msg, lam = gspar_message(g, tf.constant([s, 9], tf.int64), rho=1.0, method=method)
        np.testing.assert_array_equal(msg.idx_a.numpy(), nz)
        np.testing.assert_array_equal(msg.val_a.numpy(), gn[nz])
        assert msg.val_a.dtype == dtype
        assert int(tf.size(msg.idx_b)) == 0 and int(tf.size(msg.neg_b)) == 0
        assert np.isfinite(float(lam)) and float(lam) > 0 and np.isfinite(float(msg.scale))
        back = sparse_message.from_bytes(sparse_message.to_bytes(msg, d, dtype), d, dtype)
        for m in (msg, back):
            np.testing.assert_array_equal(sparse_message.to_dense(m, d, dtype).numpy(), gn)


def test_rho_one_message_of_zeros_and_tiny_values():
    for g in ([0.0] * 5, [0.0], [3.0], [-2.0, 0.0, 1.0], [1e-30, -1e30, 0.0]):
        for method in ("exact", "greedy"):
            gt = tf.constant(g, tf.float32)
            msg, lam = gspar_message(gt, tf.constant([1, 1], tf.int64), rho=1.0, method=method)
            np.testing.assert_array_equal(sparse_message.to_dense(msg, len(g), tf.float32).numpy(), np.float32(g))
            assert int(tf.size(msg.idx_b)) == 0 and int(tf.size(msg.idx_a)) == np.count_nonzero(g)
            assert np.isfinite(float(lam)) and np.isfinite(float(msg.scale))


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
def test_chunked_greedy_lambda_at_rho_one_keeps_everything():
    """The chunked XLA sampler, called directly at rho = 1, agrees with lambda_rho_greedy and
    keeps every non-zero coordinate (lambda |g_i| >= 1 for all of them)."""
    import importlib

    from hvdspar import sparsify

    probabilities = importlib.import_module("hvdspar.probabilities")
    d = CHUNK + 4321
    g = np.random.default_rng(8).standard_t(2, size=d).astype(np.float32)
    g[::50] = 0.0
    gt = tf.constant(g)
    lam, idx, top = sparsify._greedy_keep_chunked(gt, tf.constant([1, 2], tf.int64), 1.0, 2)
    assert float(lam) == float(probabilities.lambda_rho_greedy(tf.abs(gt), 1.0, 2))
    np.testing.assert_array_equal(idx.numpy(), np.flatnonzero(g))


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
def test_chunk_functions_compile_for_at_most_five_shapes():
    """Chunks are powers of two from 2^16 to 2^20 elements (about 4 a pass), the last zero-padded to a
    power of two: XLA compiles each chunk function at most five times per dtype, whatever the tensor
    sizes (a ResNet-50 has dozens), and the padding changes nothing (the kept set is the plain path's)."""
    from hvdspar import rng, sparsify

    assert [kernels.padded_chunk(n) for n in (1, 65_536, 65_537, 131_073, 262_144)] == [
        65_536, 65_536, 131_072, 262_144, 262_144]
    assert [kernels.chunk_elements(d) for d in (65_536, 600_000, 1_000_000, 10_000_000, 100_000_000)] == [
        1 << 16, 1 << 18, 1 << 18, 1 << 20, 1 << 20]
    for d in (65_536, 600_013, 10_000_000):
        parts, offsets = kernels.chunks(tf.zeros([d]))
        assert offsets == [i * kernels.chunk_elements(d) for i in range(len(parts))]
        assert {p.shape[0] for p in parts} <= {1 << k for k in range(16, 21)}
        assert sum(parts[0].shape[0] for _ in parts[:-1]) + d - offsets[-1] == d
    fns = (kernels._chunk_keep, sparsify._chunk_tail)
    before = [f.experimental_get_tracing_count() for f in fns]
    seed = tf.constant([5, 6], tf.int64)
    for d in (70_001, 90_017, 150_001, 200_003, 300_007, 450_011, 600_013):
        g = tf.constant(np.random.default_rng(d).normal(size=d), tf.float32)
        lam, idx, top = sparsify._greedy_keep_chunked(g, seed, 0.05, 2)
        plain = tf.where(rng.uniform(d, seed) < lam * tf.abs(g))[:, 0]
        np.testing.assert_array_equal(idx.numpy(), plain.numpy())
    assert all(f.experimental_get_tracing_count() - b <= 5 for f, b in zip(fns, before))


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
@pytest.mark.parametrize("iterations", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["normal", "student_t", "outliers"])
def test_chunked_sampler_is_the_one_pass_definition_for_any_iterations_and_tails(kind, iterations):
    """Algorithm 3's lambda after 0-3 rescalings, chunk by chunk, and exactly {i : u_i < lambda |g_i|},
    for light and heavy tails and for ten coordinates a million times the rest (the first rescaling
    then raises lambda about 40-fold)."""
    import importlib

    from hvdspar import rng, sparsify

    probabilities = importlib.import_module("hvdspar.probabilities")
    d = CHUNK + 40_000
    gen = np.random.default_rng(11)
    g = gen.standard_t(2, size=d) if kind == "student_t" else gen.normal(size=d)
    if kind == "outliers":
        g[gen.choice(d, 10, replace=False)] = 1e6
    g = tf.constant(g, tf.float32)
    a = tf.abs(g)
    seed = tf.constant([5, iterations], tf.int64)
    lam, idx, top = sparsify._greedy_keep_chunked(g, seed, 0.01, iterations)
    assert float(lam) == pytest.approx(float(probabilities.lambda_rho_greedy(a, 0.01, iterations)), rel=1e-5)
    plain = tf.where(rng.uniform(d, seed) < lam * a)[:, 0]
    np.testing.assert_array_equal(idx.numpy(), plain.numpy())


def _ratio(g, rho):
    from hvdspar.probabilities import water_level_bound

    a = np.abs(g.numpy().astype(np.float64))
    return float(water_level_bound(a.sum(), (a * a).sum(), rho * a.size)[1])


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("kind", ["normal", "student_t", "sparse_laplace"])
@pytest.mark.parametrize("path", ["candidates", "passes", "guard"])
def test_the_one_pass_sampler_by_candidates_equals_the_sampler_by_passes(kind, iterations, path, monkeypatch):
    """GSpar's chunked sampler draws candidates u_i < Lambda |g_i| under the water-level bound in one
    pass and runs Algorithm 3 on them; with the candidate path off (MAX_BOUND_RATIO < 0), or with a
    Lambda deliberately too low (BOUND_MARGIN = 1/2: the lambda <= Lambda check must send it to the
    passes), it takes a pass per rescaling instead. All three give Algorithm 3's lambda and exactly
    {i : u_i < lambda |g_i|}."""
    import importlib

    from hvdspar import rng, sparsify

    probabilities = importlib.import_module("hvdspar.probabilities")
    d = CHUNK + 40_000
    gen = np.random.default_rng(13)
    if kind == "normal":
        g = gen.normal(size=d)
    elif kind == "student_t":
        g = gen.standard_t(2, size=d)
    else:  # two thirds zeros (ReLU-like), Laplace elsewhere
        g = gen.laplace(size=d) * (gen.random(d) < 1 / 3)
    g = tf.constant(g, tf.float32)
    rho = 0.01
    assert _ratio(g, rho) <= sparsify.MAX_BOUND_RATIO  # spread out: the candidate path applies
    if path == "passes":
        monkeypatch.setattr(sparsify, "MAX_BOUND_RATIO", -1.0)
    elif path == "guard":
        monkeypatch.setattr(sparsify, "BOUND_MARGIN", 0.5)
    seed = tf.constant([9, iterations], tf.int64)
    a = tf.abs(g)
    lam, idx, top = sparsify._greedy_keep_chunked(g, seed, rho, iterations)
    assert float(lam) == pytest.approx(float(probabilities.lambda_rho_greedy(a, rho, iterations)), rel=1e-5)
    plain = tf.where(rng.uniform(d, seed) < lam * a)[:, 0]
    np.testing.assert_array_equal(idx.numpy(), plain.numpy())
    np.testing.assert_array_equal(top.numpy(), (lam * tf.gather(a, plain) >= 1).numpy())  # p_i = 1 there
    if kind == "student_t":  # heavy tails: a top set and sampled coordinates both
        assert 0 < int(tf.reduce_sum(tf.cast(top, tf.int32))) < idx.shape[0]


@pytest.mark.usefixtures("kernels")  # hvdspar.native's kernels and the XLA path alike
def test_concentrated_gradients_take_the_passes():
    """A gradient whose mass sits in a few coordinates has r > MAX_BOUND_RATIO (the bound would let
    the candidates grow toward all of g): the sampler takes a pass per rescaling, with the same result."""
    from hvdspar import rng, sparsify

    d = CHUNK + 40_000
    gen = np.random.default_rng(17)
    g = gen.normal(size=d)
    g[gen.choice(d, 50, replace=False)] = 1e4
    g = tf.constant(g, tf.float32)
    assert _ratio(g, 0.01) > sparsify.MAX_BOUND_RATIO
    seed = tf.constant([3, 1], tf.int64)
    lam, idx, top = sparsify._greedy_keep_chunked(g, seed, 0.01, 2)
    plain = tf.where(rng.uniform(d, seed) < lam * tf.abs(g))[:, 0]
    np.testing.assert_array_equal(idx.numpy(), plain.numpy())
    assert idx.shape[0] == pytest.approx(0.01 * d, rel=0.1)


def test_uniform_at_redraws_the_stream_by_index():
    """rng.uniform_at(i) is u_i of rng.uniform, for any indices in any order (past 2^32 too)."""
    from hvdspar import rng

    seed = tf.constant([21, 5], tf.int64)
    u = rng.uniform(100_000, seed).numpy()
    i = np.random.default_rng(0).choice(100_000, 5000, replace=False)
    np.testing.assert_array_equal(rng.uniform_at(tf.constant(i, tf.int64), seed).numpy(), u[i])
    for far in (2**32 + 7, 2**33 + 1):
        assert rng.uniform_at(tf.constant([far], tf.int64), seed).numpy()[0] == rng.uniform(1, seed, offset=far).numpy()[0]
