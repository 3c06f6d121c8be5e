"""The hierarchical exchange (hvdspar.hierarchy) on two simulated nodes of two ranks each
(``horovodrun -np 4 -H localhost:2,127.0.0.1:2``; tests/workers/hierarchy_worker.py)."""

import numpy as np
import pytest

from hvdspar import hierarchy
from tests.conftest import WORKERS, run_horovod

NODES = "localhost:2,127.0.0.1:2"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out, log = run_horovod([str(WORKERS / "hierarchy_worker.py")], tmp_path_factory.mktemp("hierarchy"), np=4,
                           timeout=900, hosts=NODES)
    assert all(r is not None for r in out), log[-4000:]
    return out


def test_shares_cover_the_message_in_order():
    for d in (1, 7, 2000, 2001):
        for local in (2, 3, 8):
            sizes = hierarchy.shares(d, local)
            assert sum(sizes) == d and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_two_nodes_of_two_ranks_exchange_hierarchically(results):
    for r in results:
        assert (r["local_size"], r["cross_size"]) == (2, 2)
        assert r["hierarchical"] and r["keras_hierarchical"]
        assert r["results_equal"]


def test_the_sum_is_horovods_in_expectation(results):
    """Each coordinate's mean over 300 steps against Horovod's none: z-scores centred on 0 and
    within 4 standard errors (a 1-in-16,000 event for one coordinate); coordinates kept with
    probability 1 every step are exact."""
    for r in results:
        assert r["z_count"] > 1000
        assert abs(r["z_mean"]) < 4 / np.sqrt(r["z_count"]) * 3, r
        assert r["z_over_4"] < 0.005, r
        assert r["fixed_max_error"] < 1e-3, r


def test_bytes_across_nodes_are_one_share_and_the_node_moves_the_rest(results):
    """Per rank and step, on a gradient of 100k elements: one message of its 1/L share crosses the
    nodes (half the flat exchange's message of the whole gradient at L = 2, headers aside), and
    3 (L - 1) / L D dense bytes stay inside the node."""
    d, local = 100_000, 2
    for r in results:
        assert r["bytes_per_step"] <= r["flat_bytes_per_step"] / local * 1.02, r
        assert r["bytes_per_step"] >= r["flat_bytes_per_step"] / local * 0.9, r
        assert r["within_node_per_step"] == 3 * (local - 1) * d * 4 // local
        assert 0.09 < r["density"] < 0.11 and 0.09 < r["flat_density"] < 0.11  # rho of what each rank compressed


def test_op_scale_factors_and_a_nan_on_one_rank_behave_as_in_the_flat_exchange(results):
    """op=Average with prescale 0.5 and postscale 3 gives 1.5 x the average (rho = 1: exact); a NaN on
    one rank (of the other node) makes the result NaN everywhere on every rank, and the memory is
    left as it was."""
    for r in results:
        assert r["average_scaled_error"] < 1e-4, r
        assert r["nan_everywhere"] and r["nan_memory_untouched"], r


def test_error_feedback_keeps_the_memory_identity_every_step(results):
    """sum over ranks of m' + the result = sum over ranks of (m + g), step after step."""
    for r in results:
        assert r["memory_identity_worst"] < 1e-5, r
        # float16 gradients: the sum inside the node in float32, so only the returned result's
        # float16 rounding (2^-11 relative) remains
        assert r["memory_identity_worst_float16"] < 2e-3, r


def test_a_keras_model_trains_with_identical_weights_on_every_rank(results):
    for r in results:
        assert r["keras_weights_equal"]
        assert r["keras_messages"] == 1  # the model's four gradients in one bucket
        assert r["keras_loss"][-1] < r["keras_loss"][0]


def test_without_the_process_sets_the_exchange_stays_flat_and_says_so_once(tmp_path):
    out, log = run_horovod([str(WORKERS / "hierarchy_flat_worker.py")], tmp_path, np=4, timeout=600, hosts=NODES)
    assert all(r["flat"] and r["equal"] and r["within"] == 0 for r in out), out
    said = [ln for ln in log.splitlines() if "exchanges flat across 2 nodes of 2 ranks" in ln]
    assert len(said) == 1 and "hvd.init was not given hvdspar.node_process_sets()" in said[0], said


def test_elastic_training_keeps_the_flat_exchange(monkeypatch):
    """Horovod does not retrace after an elastic reset, and process sets would have to be rebuilt:
    under elastic training the exchange is flat whatever hvd.init was given."""
    monkeypatch.setitem(hierarchy._SETS, "layout", (2, 2))
    monkeypatch.setitem(hierarchy._SETS, "sets", ([], []))
    monkeypatch.setenv("HOROVOD_ELASTIC", "1")
    assert hierarchy.topology() == (None, "elastic training (the sets would change at every reset)")
