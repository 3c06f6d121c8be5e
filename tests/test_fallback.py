"""The automatic dense fallback: fallback.prefer_dense and the per-tensor decision.

The base class (hvdspar/compressor.py) sends a tensor dense through Horovod's
own allreduce when an allgather of the expected message (M - 1) m would move
at least as many bytes as a ring allreduce 2 (M - 1) / M D, i.e. when M m >= 2 D
(fallback=True, "by bytes"); the default, fallback="auto", applies that rule
first and then the time model of hvdspar.link. The unit tests run the compressor
in an in-process world (``exchange.InProcess``) and fix the measured link, so
they run without Horovod; the 2-rank tests are real horovodruns.
"""

import pytest
import tensorflow as tf

import hvdspar
from hvdspar import communicators, exchange, fallback


# --- fallback.prefer_dense ------------------------------------------------------------------


@pytest.mark.parametrize("ranks", [2, 3, 4, 8, 64, 1024])
def test_switch_point_is_m_times_ranks_equal_twice_dense(ranks):
    dense = 1_000_000
    edge = 2 * dense / ranks  # M m = 2 D
    assert not fallback.prefer_dense(edge * 0.999, dense, ranks)
    assert fallback.prefer_dense(edge, dense, ranks)  # a tie goes dense (no gain from sparse)
    assert fallback.prefer_dense(edge * 1.001, dense, ranks)


def test_bytes_moved_formulas():
    assert fallback.allgather_bytes_moved(100, 4) == 300
    assert fallback.allreduce_bytes_moved(1000, 4) == 1500
    assert fallback.allreduce_bytes_moved(1000, 2) == 1000
    assert fallback.allgather_bytes_moved(100, 1) == 0


def test_one_rank_never_prefers_dense():
    assert not fallback.prefer_dense(10**9, 1, 1)
    assert not fallback.prefer_dense(10**9, 1, 0)


def test_message_as_big_as_the_tensor_goes_dense_from_two_ranks():
    # M m >= 2 D already at M = 2 when m >= D
    assert fallback.prefer_dense(4000, 4000, 2)
    assert not fallback.prefer_dense(3999, 4000, 2)


# --- the decision inside Compressor.compress ------------------------------------------------


def in_world(comp, size):
    """``comp`` as rank 0 of an in-process world of ``size`` ranks whose messages all equal ours."""
    comp.exchange = exchange.InProcess(size)
    return comp


def _kind(ctx):
    """How a message travelled: "dense" (Horovod's allreduce) or "sparse" (compressed)."""
    return "dense" if isinstance(ctx.sent.communicator, communicators.Dense) else "sparse"


def _compress(comp, shape, seed=0):
    g = tf.random.stateless_normal(shape, seed=[seed, 1])
    out, ctx = comp.compress(g)
    return g, out, ctx


def test_high_rho_small_tensor_many_ranks_goes_dense():
    comp = in_world(hvdspar.GSpar(rho=0.5, seed=1), 32)
    d = 100
    m = comp.codec.expected_nbytes(d, tf.float32)
    assert fallback.prefer_dense(m, 4 * d, 32)
    assert not fallback.prefer_dense(m, 4 * d, 2)  # the same tensor goes sparse on 2 ranks
    g, out, ctx = _compress(comp, [10, 10])
    assert _kind(ctx) == "dense"
    assert comp.exchange.gathers == 0
    # dense path: the tensor itself goes to Horovod's allreduce, untouched
    assert out.shape == g.shape and bool(tf.reduce_all(out == g))
    t = comp.traffic()
    assert t["dense_tensors"] == 1 and t["bytes_sent"] == t["dense_bytes"] == 4 * d
    assert bool(tf.reduce_all(comp.decompress(out, ctx) == g))


def test_low_rho_big_tensor_two_ranks_goes_sparse():
    comp = in_world(hvdspar.GSpar(rho=0.01, fallback=True, seed=1), 2)
    d = 100_000
    assert not fallback.prefer_dense(comp.codec.expected_nbytes(d, tf.float32), 4 * d, 2)
    _, out, ctx = _compress(comp, [d])
    assert _kind(ctx) == "sparse"
    assert comp.exchange.gathers == 1
    assert out.shape == [1] and out.dtype == exchange.PLACEHOLDER_DTYPE
    t = comp.traffic()
    assert t["dense_tensors"] == 0
    assert t["bytes_sent"] < t["dense_bytes"] / 50


def test_fallback_false_forces_sparse():
    comp = in_world(hvdspar.GSpar(rho=0.5, fallback=False, seed=1), 32)
    _, out, ctx = _compress(comp, [10, 10])
    assert _kind(ctx) == "sparse"
    assert comp.exchange.gathers == 1
    assert comp.traffic()["dense_tensors"] == 0


def test_decision_is_per_tensor():
    # 32 ranks, rho = 0.05: the big kernel travels sparse, the 10-element bias dense.
    comp = in_world(hvdspar.GSpar(rho=0.05, fallback=True, seed=1), 32)
    kinds = [_kind(_compress(comp, s, seed=i)[2]) for i, s in enumerate(([20_000, 10], [10]))]
    assert kinds == ["sparse", "dense"]
    assert comp.traffic()["dense_tensors"] == 1


@pytest.mark.parametrize("spec", ["gspar:rho=0.01", "unisp:rho=0.01", "topk:ratio=0.01", "qsgd:levels=4"])
def test_switch_follows_the_rule_for_every_compressor(spec):
    """For each rank count the decision equals M * expected_nbytes >= 2 D."""
    d = 50_000
    for ranks in (2, 8, 64, 512):
        comp = in_world(hvdspar.from_spec(spec, fallback=True), ranks)
        m = comp.codec.expected_nbytes(d, tf.float32)
        _, _, ctx = _compress(comp, [d])
        assert (_kind(ctx) == "dense") == (ranks * m >= 2 * 4 * d), (spec, ranks, m)


# --- a real 2-rank run ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_high_rho_sends_dense_and_trains_identically(horovodrun):
    # On 2 ranks "dense" needs m >= D, which a GSpar message reaches only for tiny
    # tensors (<= 3 fp32 elements); the worker's model is made of such tensors.
    results, output = horovodrun("fallback_worker", np=2)
    assert all(r is not None for r in results), output[-4000:]
    for r in results:
        t = r["traffic"]
        assert r["expected_dense"] == [True, True], r  # both tensors predicted dense by the cost model
        assert t["dense_tensors"] == t["tensors"] == 2, t
        assert r["gathered_bytes"] == 0  # nothing went through the allgather
        assert t["bytes_sent"] == t["dense_bytes"] == r["dense_bytes_per_step"] * t["steps"], t
        assert t["steps"] == r["steps"]
        assert r["identical"]
        assert r["loss"][-1] < r["loss"][0]
    assert results[0]["weights_digest"] == results[1]["weights_digest"]


# --- fallback="auto": the time model of hvdspar.link ----------------------------------------


def test_time_model_formulas():
    from hvdspar import link

    net = link.Network(latency_s=1e-3, bandwidth_Bps=1e6)
    assert net.allreduce_seconds(1_000_000, 4) == pytest.approx(1e-3 + 1.5)
    assert net.allgather_seconds(1000, 4) == pytest.approx(1e-3 + 3e-3)
    compute = link.Compute(fixed_s=1e-4, per_element_s=1e-9)
    assert compute.seconds(1_000_000) == pytest.approx(1.1e-3)
    # t_sparse = 2 alpha + allgather + compute; it must beat t_dense by AUTO_MARGIN
    t_dense = net.allreduce_seconds(4_000_000, 4)
    t_sparse = 2e-3 + 3 * 40_000 / 1e6 + 1e-4 + 1e-9 * 1_000_000
    assert link.sparse_pays(net, compute, 1_000_000, 40_000, 4_000_000, 4) == (t_sparse * link.AUTO_MARGIN <= t_dense)
    assert link.sparse_pays(net, compute, 1_000_000, 40_000, 4_000_000, 4)  # slow link: sparse
    fast = link.Network(latency_s=1e-5, bandwidth_Bps=1e11)
    assert not link.sparse_pays(fast, compute, 1_000_000, 40_000, 4_000_000, 4)  # compute dominates: dense


def test_fit_recovers_a_line_and_never_goes_negative():
    from hvdspar import link

    assert link._fit(10, 1.0 + 2 * 10, 1000, 1.0 + 2 * 1000) == pytest.approx((1.0, 2.0))
    intercept, slope = link._fit(10, 5.0, 1000, 4.0)  # noise: the larger size timed faster
    assert intercept >= 0 and slope > 0


@pytest.mark.parametrize("spec", ["gspar:rho=0.01", "unisp:rho=0.01", "topk:ratio=0.01", "randomk:ratio=0.01",
                                  "qsgd:levels=4", "terngrad", "atomo:budget=2"])
def test_by_bytes_is_every_compressors_default_and_auto_is_opt_in(spec):
    comp = hvdspar.from_spec(spec)
    assert comp.fallback is True and "fallback=true" in comp.spec()
    assert hvdspar.from_spec(spec + ("," if ":" in spec else ":") + "fallback=auto").fallback == "auto"


def test_auto_on_one_rank_sends_compressed_without_measuring(monkeypatch):
    """A one-rank world: no network to measure and no bytes to save; the compressor runs
    its method (simulations) and no timing collective is attempted."""
    from hvdspar import link

    def no_measuring(*args, **kwargs):
        raise AssertionError("the link was measured in a one-process world")

    monkeypatch.setattr(link, "network", no_measuring)
    monkeypatch.setattr(link, "measure_compute", no_measuring)
    comp = in_world(hvdspar.GSpar(rho=0.01, fallback="auto", seed=1), 1)
    _, out, ctx = _compress(comp, [10_000])
    assert _kind(ctx) == "sparse" and comp.traffic()["dense_tensors"] == 0


def test_fallback_argument_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="fallback must be True, False or 'auto'"):
        hvdspar.GSpar(rho=0.01, fallback="fast")
    comp = hvdspar.from_spec("gspar:rho=0.01,fallback=auto")
    assert comp.fallback == "auto"
    assert hvdspar.from_spec(comp.spec()).fallback == "auto"


@pytest.fixture
def fake_link(monkeypatch):
    """Fix the measured network and compute of fallback="auto" (no collectives, no timing)."""
    from hvdspar import link

    state = {"network": link.Network(1e-3, 1e6), "compute": link.Compute(1e-4, 1e-9), "measured": 0}

    def measure_compute(compressor, dtype, num_ranks, shape=None):
        state["measured"] += 1
        state.setdefault("shapes", []).append(shape)
        return state["compute"]

    monkeypatch.setattr(link, "network", lambda: state["network"])
    monkeypatch.setattr(link, "measure_compute", measure_compute)
    return state


def test_auto_goes_sparse_on_a_slow_link_and_dense_on_a_fast_one(fake_link):
    from hvdspar import link

    slow = in_world(hvdspar.GSpar(rho=0.01, fallback="auto", seed=1), 4)
    assert _kind(_compress(slow, [100_000])[2]) == "sparse"
    fake_link["network"] = link.Network(1e-5, 1e11)
    fast = in_world(hvdspar.GSpar(rho=0.01, fallback="auto", seed=1), 4)
    assert _kind(_compress(fast, [100_000])[2]) == "dense"
    assert fast.traffic()["dense_tensors"] == 1


def test_auto_keeps_the_byte_rule_and_measures_compute_once_per_dtype(fake_link):
    comp = in_world(hvdspar.GSpar(rho=0.05, fallback="auto", seed=1), 32)
    kinds = [_kind(_compress(comp, s, seed=i)[2]) for i, s in enumerate(([20_000, 10], [10], [30_000]))]
    assert kinds == ["sparse", "dense", "sparse"]  # the bias is dense by bytes, before any timing
    assert fake_link["measured"] == 1


@pytest.mark.slow
def test_two_ranks_auto_fallback_decides_alike_on_every_rank(horovodrun):
    results, output = horovodrun("auto_fallback_worker", np=2)
    assert all(r is not None for r in results), output[-4000:]
    for r in results:
        assert r["figures_same"] and r["compute_same"], r
        latency, bandwidth = r["figures"]
        assert latency >= 0 and bandwidth > 0
        fixed, per_element = r["compute"]
        assert fixed >= 0 and per_element > 0
        for case in ("measured", "slow", "fast"):
            assert r[case]["identical"], (case, r[case])
            assert r[case]["loss"][-1] < r[case]["loss"][0], (case, r[case])
        assert r["slow"]["dense_tensors"] == 1 and r["slow"]["ratio"] < 0.1, r["slow"]  # kernel sparse, bias dense
        assert r["fast"]["dense_tensors"] == 2 and r["fast"]["ratio"] == 1.0, r["fast"]
    assert results[0]["measured"]["dense_tensors"] == results[1]["measured"]["dense_tensors"]
    assert results[0]["figures"] == results[1]["figures"]


def test_dense_path_stops_on_a_non_finite_average_with_nonfinite_raise():
    comp = in_world(hvdspar.GSpar(rho=0.5, nonfinite="raise", seed=1), 32)
    g, out, ctx = _compress(comp, [10, 10])
    assert _kind(ctx) == "dense"
    bad = tf.tensor_scatter_nd_update(out, [[3, 4]], [float("nan")])
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        comp.decompress(bad, ctx)
    assert comp.traffic()["variance_ratio"] == 1.0  # nothing went compressed: Q = identity


def test_dense_path_lets_a_non_finite_average_through_by_default_and_keeps_the_memory():
    """As Horovod's none: the Inf reaches the optimizer (a LossScaleOptimizer skips the step)."""
    comp = in_world(hvdspar.GSpar(rho=0.5, memory=True, seed=1), 32)
    g, out, ctx = _compress(comp, [10, 10])
    assert _kind(ctx) == "dense"
    bad = tf.tensor_scatter_nd_update(out, [[3, 4]], [float("inf")])
    before = comp.slots[0].memory.numpy().copy()
    result = comp.decompress(bad, ctx)
    assert bool(tf.reduce_all(tf.equal(result, bad)))
    assert (comp.slots[0].memory.numpy() == before).all()


def test_atomo_auto_times_the_spectral_encoder_at_the_shape_it_sends(fake_link):
    comp = in_world(hvdspar.Atomo(budget=2, fallback="auto", seed=1), 4)
    for i, shape in enumerate(([300, 200], [300, 200], [400, 100], [5000])):
        _compress(comp, shape, seed=i)
    assert fake_link["shapes"] == [(300, 200), (400, 100), None]  # once per matrix shape; vectors by size


def test_the_plan_is_a_pure_function_of_sizes_and_world():
    """``fallback.plan`` needs no compressor, state or Horovod: the byte rule M m >= 2 D, a codec's own
    rule (PowerSGD), elastic training left to run time, and no rule at all."""
    from hvdspar.gspar import GSparCodec
    from hvdspar.powersgd import PowerSGDCodec

    codec, d = GSparCodec(rho=0.3), 10_000
    m = codec.expected_nbytes(d, tf.float32)
    seen = set()
    for ranks in (1, 2, 4, 8, 16, 64):
        dense, reason = fallback.plan(True, codec, d, tf.float32, tf.TensorShape([d]), ranks, elastic=False)
        seen.add(dense)
        assert dense == (ranks > 1 and ranks * m >= 2 * 4 * d), (ranks, reason)
        assert reason == ("by bytes" if dense else "compressed")
        assert fallback.plan(False, codec, d, tf.float32, tf.TensorShape([d]), ranks, False) == (False, "compressed")
        assert fallback.plan(True, codec, d, tf.float32, tf.TensorShape([d]), ranks, True) == (False, fallback.RUN_TIME)
    assert seen == {True, False}  # the rule switches inside the range tried
    assert fallback.plan(True, codec, 0, tf.float32, tf.TensorShape([0]), 4, False) == (True, "empty")
    psgd = PowerSGDCodec(rank=1)
    assert fallback.plan(True, psgd, 50, tf.float32, tf.TensorShape([50]), 64, False) == (True, "a vector")
    assert fallback.plan(True, psgd, 600, tf.float32, tf.TensorShape([30, 20]), 64, True) == (False, "compressed")
