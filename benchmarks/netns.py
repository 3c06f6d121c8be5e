"""Network namespaces with a shaped loopback, for bandwidth-limited benchmarks.

    with namespace("hvdspar-100m", rate="100mbit") as prefix:
        subprocess.run(prefix + ["horovodrun", ...])

The recipe of docs/design.md: ``ip netns add NAME``, ``lo`` up, and
``tc qdisc add dev lo root tbf rate RATE burst 1mb latency 100ms`` (a burst
below the loopback MTU stalls Gloo). ``rate=None`` leaves ``lo`` unshaped.
The namespace is deleted on exit, also on errors (try/finally). Needs root.
"""

import contextlib
import shutil
import socket
import subprocess
from pathlib import Path


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def create(name, rate=None, burst="1mb", latency="100ms"):
    """Make namespace ``name`` with ``lo`` up, shaped to ``rate`` (e.g. "100mbit") if given."""
    delete(name)  # a leftover of an interrupted run
    _ip("netns", "add", name)
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        if rate:
            subprocess.run(
                ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                 "rate", rate, "burst", burst, "latency", latency],
                check=True, capture_output=True, text=True,
            )
    except BaseException:
        delete(name)
        raise
    return ["ip", "netns", "exec", name]


def delete(name):
    """Remove namespace ``name`` if it exists (its qdisc goes with it)."""
    _ip("netns", "del", name, check=False)


def exists(name):
    return name in _ip("netns", "list", check=False).stdout.split()


@contextlib.contextmanager
def namespace(name, rate=None, burst="1mb", latency="100ms"):
    """Context manager: yields the command prefix that runs a command inside the namespace."""
    prefix = create(name, rate, burst, latency)
    try:
        yield prefix
    finally:
        delete(name)


#: the simulated nodes' addresses on the link between them (interface ``hv0`` in each namespace)
NODE_ADDRESSES = ("10.77.0.1", "10.77.0.2")


def node_namespace(host):
    """The namespace of simulated node ``host`` (``two_nodes``)."""
    return f"hvdspar-{host}"


@contextlib.contextmanager
def two_nodes(rate=None, hosts=("nodeA", "nodeB"), burst="1mb", latency="100ms"):
    """Two simulated nodes: one namespace per host, joined by a veth pair (``hv0`` at
    NODE_ADDRESSES in each), each end's egress shaped to ``rate`` (a tbf, as ``create``), so only the
    traffic between the nodes is shaped: ranks of one node talk over their own ``lo``, unshaped.
    ``/etc/netns/<namespace>/hosts`` names the hosts (``ip netns exec`` mounts it on /etc/hosts).
    Yields {host: command prefix}; everything is removed on exit. Needs root."""
    names = [node_namespace(h) for h in hosts]
    try:
        for name in names:
            create(name)
        _ip("link", "add", "hvdspar-a", "type", "veth", "peer", "name", "hvdspar-b")
        for end, name, address in zip(("hvdspar-a", "hvdspar-b"), names, NODE_ADDRESSES):
            _ip("link", "set", end, "netns", name)
            run = ["ip", "netns", "exec", name]
            for cmd in (["ip", "link", "set", end, "name", "hv0"], ["ip", "addr", "add", f"{address}/24", "dev", "hv0"],
                        ["ip", "link", "set", "hv0", "up"]):
                subprocess.run(run + cmd, check=True, capture_output=True, text=True)
            if rate:
                subprocess.run(run + ["tc", "qdisc", "add", "dev", "hv0", "root", "tbf", "rate", rate,
                                      "burst", burst, "latency", latency], check=True, capture_output=True, text=True)
            etc = Path("/etc/netns") / name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" + "".join(  # this machine's name is the node's own
                f"{a} {h}{' ' + socket.gethostname() if a == address else ''}\n" for a, h in zip(NODE_ADDRESSES, hosts)))
        yield {h: ["ip", "netns", "exec", n] for h, n in zip(hosts, names)}
    finally:
        for name in names:
            delete(name)  # the veth pair goes with its namespaces
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
