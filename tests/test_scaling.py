"""The scaling model's arithmetic (benchmarks/scaling.py): fast, no Horovod, no gradients."""

import math

import pytest

from benchmarks import scaling
from hvdspar import exchange

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")

PH = exchange.PLACEHOLDER_NBYTES


def tensor(d, m, m_expected=None, itemsize=4):
    return {"tensor": "t", "d": d, "D": d * itemsize, "m": m, "m_expected": m if m_expected is None else m_expected}


@pytest.mark.parametrize("ranks", [2, 4, 16, 1024])
def test_dense_and_sparse_bytes(ranks):
    t = tensor(1000, 50)
    b, _, dense = scaling.tensor_cost(t, ranks, 1.0, 0.0, "dense")
    assert dense and b == pytest.approx(2 * (ranks - 1) / ranks * 4000)
    b, _, dense = scaling.tensor_cost(t, ranks, 1.0, 0.0, "fp16")
    assert b == pytest.approx(2 * (ranks - 1) / ranks * 2000)
    b, _, dense = scaling.tensor_cost(t, ranks, 1.0, 0.0, "sparse")
    assert not dense and b == pytest.approx((ranks - 1) * 50 + 2 * (ranks - 1) / ranks * PH)


def test_time_is_bytes_over_bandwidth_plus_latency():
    t = tensor(1000, 50)
    for mode, hops in (("dense", 2), ("sparse", 3)):  # sparse: allgather + placeholder allreduce
        b, s, _ = scaling.tensor_cost(t, 8, 1e6, 1e-3, mode)
        assert s == pytest.approx(b / 1e6 + hops * 7 * 1e-3)


@pytest.mark.parametrize("d,m", [(1000, 50), (4096, 7), (524288, 6792), (10, 14)])
def test_fallback_switches_exactly_where_m_times_ranks_equals_twice_dense(d, m):
    t = tensor(d, m)
    edge = 2 * t["D"] / m  # M m = 2 D
    for ranks in range(2, 2100):
        _, _, dense = scaling.tensor_cost(t, ranks, 1.0, 0.0, "fallback")
        assert dense == (ranks >= edge), (ranks, edge)
    assert scaling.switch_point(t) == max(2, math.ceil(edge))


def test_fallback_is_the_minimum_of_the_two_when_expected_equals_measured():
    t = tensor(5000, 300)
    for ranks in scaling.RANKS:
        fb = scaling.tensor_cost(t, ranks, 1.0, 0.0, "fallback")[0]
        dn = scaling.tensor_cost(t, ranks, 1.0, 0.0, "dense")[0]
        sp = scaling.tensor_cost(t, ranks, 1.0, 0.0, "sparse")[0]
        assert fb == pytest.approx(min(dn, sp), abs=PH * 2)  # up to the placeholder (PH bytes, twice)


def test_decision_uses_the_expected_size_like_the_compressor():
    # measured message tiny, expected (planned) large: the compressor goes dense anyway
    t = tensor(1000, m=10, m_expected=4000)
    assert scaling.tensor_cost(t, 2, 1.0, 0.0, "fallback")[2]


def test_rows_and_switch_table():
    measured = {("toy", "x"): [tensor(100_000, 4000), tensor(10, 14)]}
    rows = scaling.build_rows(measured, 1e6, 0.0, ranks_list=[2, 4, 64, 128])
    by_m = {r["ranks"]: r for r in rows}
    assert by_m[2]["dense_tensors"] == 0  # the 10-element tensor: 2 * 14 < 80; dense only from M = 6
    assert by_m[4]["dense_tensors"] == 0
    (s,) = scaling.switch_table(measured)
    assert s["switch_largest"] == 200  # 2 * 400000 / 4000
    assert s["first_switch"] == 6  # ceil(2 * 40 / 14)
    assert s["all_dense_from"] == 200
    assert by_m[64]["dense_tensors"] == 1 and by_m[128]["dense_tensors"] == 1
    assert by_m[64]["fallback_bytes"] < by_m[64]["dense_bytes"]


def test_nodes_cost_what_crosses_their_link():
    """One node's link per step: none 2 (M-1)/M D; flat GSpar (M-1) m; hierarchical L (N-1) m_L,
    with the byte rule on nodes (N m >= 2 D) instead of ranks; one node sends nothing across."""
    b = {"d": 1000, "D": 4000, "m": 100, "m_share": 15, "m_expected": 100}
    for nodes, per_node in ((1, 8), (2, 8), (4, 8), (16, 8), (128, 8), (4, 2)):
        ranks = nodes * per_node
        cost = {mode: scaling.node_cost(b, nodes, per_node, 1.0, 0.0, 1e30, mode)
                for mode in ("none", "fp16", "flat", "hierarchical")}
        if nodes == 1:
            assert all(c[0] == 0 for c in cost.values())
            continue
        assert cost["none"][0] == 2 * (ranks - 1) / ranks * 4000 and cost["fp16"][0] == cost["none"][0] / 2
        assert cost["flat"] == ((ranks - 1) * 100, (ranks - 1) * 100, False) or (ranks * 100 >= 8000 and
                                                                                 cost["flat"][2])
        if nodes * 100 < 8000:
            assert cost["hierarchical"][:2] == (per_node * (nodes - 1) * 15,) * 2 and not cost["hierarchical"][2]
        else:
            assert cost["hierarchical"][2] and cost["hierarchical"][0] == cost["none"][0]
