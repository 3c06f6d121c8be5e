"""Every compressor of the comparison set under a real 2-rank horovodrun, in ONE launch.

GSpar with memory sends gamma Q(e), a contraction (hvdspar.error_feedback.contraction);
plain error feedback with an unbiased Q of relative variance above 1 (GSpar at
rho = 0.1: omega ~ 5.4 on a dense Gaussian-like gradient) made the memory and
the loss grow geometrically.
"""

import pytest

from hvdspar import exchange

pytestmark = pytest.mark.slow

SPECS = [
    "gspar:rho=0.1",
    "unisp:rho=0.1",
    "topk:ratio=0.1",
    "randomk:ratio=0.1",
    "atomo:budget=2",
    "qsgd:levels=4",
    "terngrad",
    "gspar:rho=0.1,memory=true",
    "atomo:budget=2,memory=true",
]
STEPS = 5 * 8  # epochs x (256 rows per rank / batch 32)
TENSORS = 2  # kernel and bias


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.conftest import WORKERS, run_horovod

    res, output = run_horovod(
        [str(WORKERS / "train_compressor.py"), *SPECS], tmp_path_factory.mktemp("baselines"), np=2
    )
    assert all(r is not None for r in res), output[-4000:]
    return res


@pytest.mark.parametrize("spec", SPECS)
def test_trains_with_identical_weights_and_falling_loss(results, spec):
    for r in results:
        v = r[spec]
        assert v["identical"], spec
        loss = v["loss"]
        assert loss[-1] < 0.8 * loss[0], (spec, loss)
        assert all(b < a for a, b in zip(loss, loss[1:])), (spec, loss)


@pytest.mark.parametrize("spec", SPECS)
def test_traffic_is_the_allgathered_messages_plus_placeholders(results, spec):
    for r in results:
        v = r[spec]
        t = v["traffic"]
        # one message for the model's tensors; ATOMO needs each tensor's shape: one each
        assert t["steps"] == STEPS and t["tensors"] == (TENSORS if spec.startswith("atomo") else 1), t
        assert t["dense_tensors"] == 0, t  # every tensor went through the compact message
        assert t["bytes_sent"] == v["gathered_bytes"] + exchange.PLACEHOLDER_NBYTES * TENSORS * STEPS, t
        assert t["bytes_sent"] < 0.3 * t["dense_bytes"], t


def test_memory_is_used_where_enabled(results):
    for r in results:
        for spec in SPECS:
            assert r[spec]["memory_nonzero"] == ("memory=true" in spec or spec.startswith(("topk", "randomk")))


@pytest.mark.parametrize("spec", ["topk:ratio=0.1", "atomo:budget=1.5,memory=true"])
def test_every_rank_receives_the_average_of_what_the_ranks_memories_say_they_sent(results, spec):
    for r in results:
        v = r[f"memory/{spec}"]
        assert max(v["errors"]) < 1e-5 * max(v["own_max"]), v


def test_each_gradients_collective_runs_independently_of_the_others(horovodrun):
    """Horovod's per-gradient conds must not wait on each other: a counter shared by all
    tensors made TensorFlow chain them, serialising every tensor's collective."""
    results, output = horovodrun("independent_conds_worker", np=2)
    assert all(r is not None for r in results), output[-4000:]
    for r in results:
        for spec, figures in r.items():
            assert figures["horovod_conds"] == 3, (spec, figures)  # the inspection sees Horovod's conds
            assert figures["chained"] == [], (spec, figures)
            assert figures["finite"], (spec, figures)
