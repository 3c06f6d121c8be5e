"""hvdspar as a drop-in for Horovod's Compression.none, under a real 2-rank horovodrun.

Each check runs the same call with Compression.none beside the hvdspar compressor
(tests/workers/dropin_worker.py, tests/workers/keras_patterns_worker.py).
"""

import pytest

from tests.conftest import WORKERS, run_horovod

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dropin(tmp_path_factory):
    results, output = run_horovod([str(WORKERS / "dropin_worker.py")], tmp_path_factory.mktemp("dropin"), np=2)
    assert all(r is not None for r in results), output[-4000:]
    return results


@pytest.fixture(scope="module")
def keras_patterns(tmp_path_factory):
    results, output = run_horovod([str(WORKERS / "keras_patterns_worker.py")], tmp_path_factory.mktemp("keras"),
                                  np=2, timeout=1800)
    assert all(r is not None for r in results), output[-4000:]
    return results


# --- 1. Horovod's reduction semantics ---------------------------------------------------------


def test_op_and_scale_factors_scale_the_compressed_sum_as_horovod_scales_a_dense_one(dropin):
    """Average, Sum, prescale/postscale: result / result(Sum) is exactly none's ratio, every compressor."""
    assert dropin[0]["none_factor"] == pytest.approx(0.75)  # Average, 0.5 * 3 / 2 ranks
    for r in dropin:
        for spec, errs in r["ratios"].items():
            assert errs.pop("finite") and errs.pop("identical"), spec
            for config, err in errs.items():
                assert err < 1e-5, (spec, config, err)


def test_lossless_settings_return_what_horovod_none_returns(dropin):
    for r in dropin:
        for spec, errs in r["lossless"].items():
            for config, err in errs.items():
                assert err < 1e-4, (spec, config, err)


def test_gradient_tape_op_sum_and_predivide_factor_match_none(dropin):
    for r in dropin:
        for name, by_spec in r["tape"].items():
            for spec, err in by_spec.items():
                assert err < 1e-4, (name, spec, err)


def test_process_sets_reduce_over_the_set(dropin):
    for r in dropin:
        for spec, errs in r["process_set"].items():
            for config, err in errs.items():
                assert err < 1e-5, (spec, config, err)


def test_adasum_and_reducescatter_are_refused_clearly(dropin):
    for r in dropin:
        assert "Adasum" in r["refused"]["adasum"]
        assert "reducescatter" in r["refused"]["reducescatter"]


# --- 2. Non-finite gradients ------------------------------------------------------------------


def test_a_nonfinite_gradient_on_one_rank_is_nonfinite_on_every_rank_and_leaves_no_state(dropin):
    for r in dropin:
        nf = r["nonfinite"]
        assert not nf["none_all_finite"]  # what Horovod's none does: the Inf comes through
        for spec, v in nf.items():
            if isinstance(v, dict):
                assert all(v.values()), (spec, v)


def test_nonfinite_raise_keeps_the_clear_error(dropin):
    for r in dropin:
        assert "NaN or Inf" in r["nonfinite"]["raise"]


def test_mixed_precision_loss_scale_overflows_then_trains_for_every_compressor(keras_patterns):
    """LossScaleOptimizer(hvd.DistributedOptimizer(SGD, compression=C), initial_scale=2**40)."""
    mixed = keras_patterns[0]["mixed"]
    assert len(mixed) == 15  # none + 7 compressors with and without memory
    for r in keras_patterns:
        for spec, v in r["mixed"].items():
            assert v["scale_end"] < 2.0**20, (spec, v)  # it fell from 2**40: the overflowing steps were skipped
            assert v["loss_end"] < 0.7 * v["loss_start"], (spec, v)
            assert v["finite"] and v["identical"], (spec, v)
            assert v["scale_end"] == mixed[spec]["scale_end"]  # the same skips on both ranks


# --- 3. State per tensor in every calling pattern ---------------------------------------------


def test_repeated_eager_allreduce_of_one_tensor_keeps_one_state_with_error_feedback(dropin):
    for r in dropin:
        e = r["eager"]
        assert e["slots"] == 1
        assert e["identity_err"] < 1e-3  # sum of what was sent + memory = sum of the gradients
        # Error feedback delivers what top-k 5% drops: 0.87 of the gradients' norm here; a fresh
        # state per call (no feedback) would send the top 5% alone, about 0.5 of it.
        assert e["memory_norm"] > 0 and e["sent_norm"] > 0.75 * e["dense_norm"]
        assert e["named_slots"] == 2
        assert "named 'a'" in e["renamed_error"]


def test_retraces_reuse_the_state_of_each_tensor(dropin):
    for r in dropin:
        assert r["retrace"]["slots"] == 2
        assert r["retrace"]["calls"] == [10, 10]


@pytest.mark.parametrize("pattern", ["steps_per_execution", "bpps_average", "bpps_sum"])
def test_keras_patterns_keep_one_state_per_message_and_match_none(keras_patterns, pattern):
    for r in keras_patterns:
        for spec, v in r[pattern].items():
            # the kernel and the bias in one message; ATOMO needs each tensor's shape: one each
            assert v["slots"] == (2 if spec.startswith("atomo") else 1), (spec, v)
            assert v["identical"] and v["finite"], (spec, v)
            if "rho=1.0" in spec:
                assert v["max_diff_to_none"] < 1e-5, (spec, v)
    steps = {spec: v["steps"] for spec, v in keras_patterns[0][pattern].items()}
    expected = 2 * 1024 // 32 // (2 if pattern.startswith("bpps") else 1)  # communicating steps
    assert set(steps.values()) == {expected}, steps


# --- 4. A default a researcher can trust ------------------------------------------------------


def test_the_default_fallback_is_by_bytes_and_rank_zero_logs_the_plan_once(dropin):
    for r in dropin:
        d = r["default"]
        assert set(d["fallbacks"].values()) == {True}, d["fallbacks"]
        assert d["dense_tensors"] == 0  # the kernel and the 1-element bias travel in one compressed message
        assert d["ratio"] < 0.2
    logs0 = [m for m in dropin[0]["default"]["log"] if "GSpar" in m]
    assert logs0 == ["hvdspar: GSpar at 2 ranks: 0 of 1 messages (2 tensors in buckets) sent dense "
                     "(none; fallback=by bytes), 1 compressed"]
    assert dropin[1]["default"]["log"] == []
