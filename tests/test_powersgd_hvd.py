"""PowerSGD and EF-signSGD under a real 2-rank horovodrun, in one launch (tests/workers/powersgd_worker.py)."""

import pytest

from hvdspar import exchange, wire

pytestmark = pytest.mark.slow

ROWS, COLS, RANK = 24, 10, 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.conftest import WORKERS, run_horovod

    res, output = run_horovod([str(WORKERS / "powersgd_worker.py")], tmp_path_factory.mktemp("powersgd"), np=2)
    assert all(r is not None for r in res), output[-4000:]
    return res


def test_powersgd_matches_the_numpy_iteration_with_identical_results_on_ranks(results):
    for r in results:
        v = r["reference"]
        assert max(v["errors"]) < 1e-4, v
        assert v["memory_error"] < 1e-4, v
        assert v["identical"]
        ph = exchange.PLACEHOLDER_NBYTES
        assert v["bytes"][0] == ROWS * COLS * 4 + ph  # the warm-up step: dense
        assert v["bytes"][1:] == [(ROWS + COLS) * RANK * 4 + ph] * 4, v["bytes"]  # P and Q, float32


@pytest.mark.parametrize("name", ["powersgd", "efsignsgd"])
def test_with_error_feedback_a_convex_problem_reaches_nones_loss(results, name):
    for r in results:
        none, v = r["none"]["loss"], r[name]["loss"]
        assert r[name]["identical"] and r["none"]["identical"]
        assert r[name]["memory_nonzero"]
        assert v[-1] < 0.5 * v[0], v
        assert v[-1] < none[-1] * 1.05 + 0.01, (v[-1], none[-1])


def test_bytes_are_the_compressed_sizes(results):
    d, k = 40, 6
    steps = 12 * (512 // 32)
    for r in results:
        t = r["efsignsgd"]["traffic"]
        # the kernel and the bias in one message (one bucket), a placeholder each
        per_step = wire.header_nbytes(d * k + k, "float32") + -(-(d * k + k) // 8) + 2 * exchange.PLACEHOLDER_NBYTES
        assert t["bytes_sent"] == per_step * steps, t
        p = r["powersgd"]["traffic"]
        assert p["last_step_bytes_sent"] == (d + k) * 1 * 4 + exchange.PLACEHOLDER_NBYTES + k * 4, p  # bias dense
