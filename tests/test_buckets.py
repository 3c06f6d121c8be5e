"""Buckets: a Horovod group compressed as one message per bucket (hvdspar.buckets, Compressor).

The partition rule on its own (pure Python, with hypothesis), then 2 real ranks
(tests/workers/buckets_worker.py): bucketed against Horovod's Compression.none and
against hvdspar's per-tensor path, through hvd.grouped_allreduce,
DistributedOptimizer(groups=1) and DistributedGradientTape(groups=1).
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import hvdspar
from hvdspar import buckets


def test_partition_cuts_at_dtype_changes_and_at_the_cap():
    f32, f16 = tf.float32, tf.float16
    assert buckets.partition([4, 4, 4], [f32] * 3) == [[0, 1, 2]]
    assert buckets.partition([4, 4, 4], [f32, f16, f32]) == [[0], [1], [2]]
    assert buckets.partition([4, 4, 4, 4], [f32] * 4, cap=8) == [[0, 1], [2, 3]]
    assert buckets.partition([2, 10, 2], [f32] * 3, cap=8) == [[0], [1], [2]]  # over the cap: alone
    assert buckets.partition([4, 4], [f32] * 2, cap=0) == [[0], [1]]
    assert buckets.partition([], []) == []
    with pytest.raises(ValueError, match="sizes for"):
        buckets.partition([4], [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["float32", "float16"])), max_size=30),
       st.one_of(st.none(), st.integers(0, 300)))
def test_partition_is_an_ordered_cover_of_single_dtype_buckets_within_the_cap(items, cap):
    nbytes = [b for b, _ in items]
    dtypes = [d for _, d in items]
    parts = buckets.partition(nbytes, dtypes, cap)
    assert [i for p in parts for i in p] == list(range(len(items)))  # every tensor once, in order
    for p in parts:
        assert p and len({dtypes[i] for i in p}) == 1
        if cap is not None and len(p) > 1:
            assert sum(nbytes[i] for i in p) <= cap
    for a, b in zip(parts, parts[1:]):  # a cut only where needed
        joined = a + b
        if len({dtypes[i] for i in joined}) == 1 and cap is not None:
            assert sum(nbytes[i] for i in joined) > cap
        assert not (cap is None and dtypes[a[0]] == dtypes[b[0]])


def test_bucket_mb_is_validated_and_round_trips():
    comp = hvdspar.GSpar(rho=0.1, bucket_mb=25, seed=1)
    assert hvdspar.from_spec(comp.spec()).bucket_mb == 25
    assert "bucket_mb" not in hvdspar.GSpar(rho=0.1, seed=1).spec()
    for bad in (-1, True, "big", float("inf")):
        with pytest.raises(ValueError, match="bucket_mb"):
            hvdspar.TopK(ratio=0.1, bucket_mb=bad)
    with pytest.raises(TypeError, match="bucket_mb"):  # ATOMO compresses each tensor by its own shape
        hvdspar.Atomo(bucket_mb=1)
    with pytest.raises(ValueError, match="no argument"):
        hvdspar.from_spec("atomo:bucket_mb=1")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from tests.conftest import WORKERS, run_horovod

    results, _ = run_horovod([str(WORKERS / "buckets_worker.py")], tmp_path_factory.mktemp("buckets"), timeout=1200)
    return results


def test_a_group_is_one_message_equal_to_none_when_lossless(two_ranks):
    for r in two_ranks:
        for label, res in r["lossless"].items():
            assert res["max_err"] == 0.0, label  # GSpar rho=1 exact: every coordinate, Horovod's factor
            assert res["slots"] == 1 and res["slot_shape"] == [872], label  # 5 tensors, one message


def test_bucket_mb_caps_the_buckets_and_zero_means_per_tensor(two_ranks):
    for r in two_ranks:
        cap = r["cap"]
        assert cap["slot_sizes"] == cap["partition_sizes"] == [600, 220, 52]
        assert cap["max_err"] == 0.0
        assert cap["per_tensor_slots"] == 5


def test_bucketed_and_per_tensor_are_both_unbiased(two_ranks):
    """300 steps of GSpar rho=0.2 on fixed tensors: per coordinate, z = (mean - exact) / (sd / sqrt(300)).
    For an unbiased estimator |z| averages sqrt(2/pi) = 0.80 and exceeds 4 almost never."""
    for r in two_ranks:
        for mode in ("bucketed", "per_tensor"):
            u = r["unbiased"][mode]
            assert 0.7 < u["mean_abs_z"] < 0.9, (mode, u)
            assert u["frac_z_over_4"] < 0.01, (mode, u)
            assert abs(u["density"] - 0.2) < 0.01, (mode, u)
        assert r["unbiased"]["bucketed"]["slots"] == 1 and r["unbiased"]["per_tensor"]["slots"] == 5


def test_error_feedback_identity_holds_per_bucket(two_ranks):
    """TopK with memory, op=Sum, 20 steps: sum_t result_t = sum_t sum_r g_r,t - sum_r m_r,T."""
    for r in two_ranks:
        m = r["memory"]
        assert m["slots"] == 1 and m["memory_norm"] > 1
        assert m["identity_err"] < 1e-5 * m["scale"], m


def test_the_bucket_memory_survives_a_checkpoint(two_ranks):
    for r in two_ranks:
        assert r["checkpoint"]["changed"] and r["checkpoint"]["restored_err"] == 0.0


@pytest.mark.parametrize("path", ["keras", "tape"])
def test_groups_1_trains_with_one_message_identical_on_the_ranks(two_ranks, path):
    lossless, lossy = "gspar:rho=1.0,method=exact,fallback=false,seed=1", "gspar:rho=0.3,memory=true,fallback=false,seed=2"
    r0, r1 = two_ranks
    for spec in ("none", lossless, lossy):
        run = r0[path][spec]
        assert run["identical"], spec
        assert run["weights"] == r1[path][spec]["weights"], spec
        assert run["loss"][-1] < 0.5 * run["loss"][0], (spec, run["loss"])
        assert run["slots"] == (0 if spec == "none" else 1), spec
    none = np.concatenate([np.asarray(w) for w in r0[path]["none"]["weights"]])
    exact = np.concatenate([np.asarray(w) for w in r0[path][lossless]["weights"]])
    np.testing.assert_allclose(exact, none, rtol=0, atol=1e-6)
