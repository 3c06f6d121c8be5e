"""A job launched as on two nodes: ``horovodrun -np 4 -H nodeA:2,nodeB:2`` from nodeA, nodeB reached
over ssh. Each node is a network namespace joined to the other by a veth pair
(benchmarks/netns.py ``two_nodes``); ``ssh`` is benchmarks/bin/ssh, which runs horovodrun's remote
command in nodeB's namespace (this machine has no sshd). Needs root; skipped otherwise."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, WORKERS, run_horovod


def _can_make_namespaces():
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = subprocess.run(["ip", "netns", "add", "hvdspar-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "hvdspar-probe"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_make_namespaces(), reason="network namespaces need root and iproute2")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from benchmarks import netns

    with netns.two_nodes() as nodes:
        out, log = run_horovod([str(WORKERS / "two_nodes_worker.py")], tmp_path_factory.mktemp("two_nodes"), np=4,
                               timeout=600, hosts="nodeA:2,nodeB:2", launcher=nodes["nodeA"],
                               options=["--network-interfaces", "hv0"],
                               env={"PATH": f"{ROOT / 'benchmarks' / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    assert all(r is not None for r in out), log[-4000:]
    return out


def test_horovodrun_starts_each_hosts_ranks_in_its_own_node(results):
    assert [r["host"] for r in results] == ["nodeA", "nodeA", "nodeB", "nodeB"]
    namespaces = [r["netns"] for r in results]
    assert namespaces[0] == namespaces[1] and namespaces[2] == namespaces[3] and namespaces[0] != namespaces[2]
    assert namespaces[0] != os.stat("/proc/self/ns/net").st_ino
    assert all((r["local_size"], r["cross_size"]) == (2, 2) for r in results)


def test_the_hierarchical_exchange_runs_across_the_two_nodes(results):
    """rho = 1 sends every coordinate: the sum equals Horovod's none's to float32 rounding, on every rank;
    the dense node sum stays inside the node (3 (L - 1) / L D bytes per rank at L = 2)."""
    for r in results:
        assert r["hierarchical"] and r["equal"]
        assert r["max_error"] < 1e-4, r
        assert r["within"] == 3 * 20000 * 4 // 2
        assert 0 < r["bytes"] < 20000 * 4  # one share crosses, not the whole gradient
