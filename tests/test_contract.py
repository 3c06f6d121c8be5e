"""Horovod's contract for compression=, under a real 2-rank horovodrun (tests/workers/contract_worker.py).

Every case runs the same call with Horovod's Compression.none beside a lossless hvdspar compressor:
every dtype and op, the gradient through the allreduce, ranks that disagree on shapes or dtypes, a
model's gradients in one message with only compression= set, one compressor given to two
optimizers, and local gradients (Horovod's partial tape, a model-parallel local source).
"""

import pytest

from tests.conftest import worker_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    # a hang (ranks that disagree, before the signature check) fails by the timeout
    return worker_results("contract_worker", tmp_path_factory, timeout=900)


def test_integers_and_min_max_product_travel_as_none_sends_them(contract):
    for r in contract:
        failed = [case for case, ok in r["passed"].items() if not ok]
        assert not failed, failed
        assert {"int32/Sum/eager", "uint8/Max/function", "float32/Min/eager", "float64/Product/function",
                "float16/Average/function"} <= set(r["passed"])


def test_adasum_is_refused_naming_the_op(contract):
    for r in contract:
        assert "op=hvd.Adasum" in r["adasum"]


def test_the_gradient_through_a_compressed_allreduce_is_horovods(contract):
    for r in contract:
        g = r["grads"]
        for op in ("Sum", "Average"):
            assert g[f"{op}/hvdspar"] is not None, op  # was silently None
            assert g[f"{op}/hvdspar"] == g[f"{op}/none"], op  # exact: the same allreduce of the same gradient
            assert g[f"{op}/grouped"] == g[f"{op}/grouped_none"], op


def test_ranks_that_disagree_on_shape_or_dtype_fail_on_every_rank_as_with_none(contract):
    for r in contract:
        for case, outcome in r["disagree"].items():
            assert outcome == "FailedPrecondition", (case, outcome)  # never a hang or a silent result


def test_a_model_travels_in_one_message_with_only_compression_set(contract):
    for r in contract:
        b = r["bucketed"]
        assert b["slots"] == 1 and b["slot_shape"] == [467], b  # 6 tensors, one bucket, no groups=
        assert b["max_err"] == 0.0 and b["identical"] and b["steps"] == 3, b  # lossless: none's gradients
        assert b["per_tensor_slots"] == 6  # bucket_mb=0 keeps one message per tensor
        k = r["keras_fit"]
        assert k["slots"] == 1 and k["identical"] and k["steps"] == 4, k
        assert 0.2 < k["density"] < 0.4, k


def test_one_compressor_two_optimizers_keep_apart_state(contract):
    for r in contract:
        assert r["gan"]["slots"] == 2  # one message per model, keyed by its variables
        assert r["gan"]["max_diff"] == 0.0  # as with two compressors: no memory shared


def test_local_gradients_and_model_parallel_match_none(contract):
    """Horovod's PartialDistributedGradientTape (0, 1, 2 local layers) and a model-parallel embedding
    registered as a local source (test_partial_distributed_gradient_tape, test_model_parallel_model):
    the same gradients and step as Horovod's none, with the lossless compressor."""
    for r in contract:
        assert r["local"]["max_diff"] <= 1e-6, r["local"]
        assert r["local"]["model_parallel_diff"] <= 1e-6, r["local"]
