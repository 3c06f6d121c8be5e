"""Network namespaces with a shaped loopback, for bandwidth-limited benchmarks.

    with namespace("hvdspar-100m", rate="100mbit") as prefix:
        subprocess.run(prefix + ["horovodrun", ...])

The recipe of docs/design.md: ``ip netns add NAME``, ``lo`` up, and
``tc qdisc add dev lo root tbf rate RATE burst 1mb latency 100ms`` (a burst
below the loopback MTU stalls Gloo). ``rate=None`` leaves ``lo`` unshaped.
The namespace is deleted on exit, also on errors (try/finally). Needs root.
"""

import contextlib
import subprocess


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
