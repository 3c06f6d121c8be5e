"""Keras models of realistic shape with only compression= changed, under a real 2-rank horovodrun
(tests/workers/real_models_worker.py): a Transformer encoder of over a hundred gradient tensors in one
message, and an embedding model with and without sparse_as_dense, its bytes beside Horovod's none."""

import pytest

from tests.conftest import worker_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    return worker_results("real_models_worker", tmp_path_factory, timeout=900)


def test_a_transformer_encoder_trains_in_one_message_with_only_compression_set(real_models):
    for r in real_models:
        t = r["transformer"]
        assert t["tensors"] > 100, t
        assert t["messages"] == 1, t  # every dense gradient in one bucket: no groups= given
        assert t["embedding_counted"] == 1, t  # the embedding's IndexedSlices, counted as Horovod sends them
        assert t["identical"] and t["finite"] and t["steps"] == 4, t
        assert t["dense_bytes"] == t["model_bytes"], t  # every gradient counted, the embedding included
        assert t["ratio"] < 0.5, t


def test_an_embedding_gradient_with_unknown_static_shape_compresses(real_models):
    for r in real_models:
        e = r["embedding"]
        for label, v in e.items():
            assert v["identical"] and v["finite"], (label, v)  # sparse_as_dense crashed here before
        assert e["gspar_dense"]["slots"] == 1  # the [None, 32] embedding gradient takes its variable's shape
        assert e["gspar_dense"]["dense"] == e["none_dense"]["bytes"]
        assert e["gspar_dense"]["bytes"] < e["none_dense"]["bytes"] / 10, e  # mostly zero: far below none


def test_indexed_slices_that_horovod_sends_itself_count_in_the_traffic(real_models):
    for r in real_models:
        e = r["embedding"]["gspar_slices"]
        assert e["slots"] == 2  # the dense layers' message and the embedding's slices
        assert e["dense"] == r["embedding"]["none_dense"]["bytes"]  # was the dense layers' 264 bytes alone
        rows = 16 * 8  # a batch of 16 sequences of 8 tokens: float32 values and their indices
        assert e["bytes"] >= rows * 32 * 4 + rows * 4, e  # int32 indices (Keras)
        # Horovod's none without sparse_as_dense, counted as Horovod sends it: the rows, not the table
        none = r["embedding"]["none_slices"]
        assert none["bytes"] == rows * 32 * 4 + rows * 4 + (32 * 2 + 2) * 4, none
        assert none["bytes_without_gradients"] == r["embedding"]["none_dense"]["bytes"]
