"""Nodes of several GPUs: only what crosses between nodes is compressed.

On N nodes of L ranks each (M = N L), the flat exchange has every rank's message allgathered by
all M ranks. The hierarchical one (``communicators.Hierarchical``) instead

    s = sum_{l in node} x_l                      dense allreduce inside the node (NVLink, PCIe)
    rank l compresses its 1/L share s[l] of s    one message per node and share crosses nodes
    t[l] = sum_{nodes} Q(s[l])                   allgather across the nodes' rank l, decode N messages
    t = concat_l t[l]                            dense allgather of the shares inside the node

so the bytes between nodes are 1/L of the flat allgather's at the same density, the decode grows
with N, not M, and E[t] = sum of every rank's x, as Horovod's none.

Horovod's process sets must exist from ``hvd.init`` on:

    hvd.init(process_sets=hvdspar.node_process_sets())

registers one set per node and one per local rank across the nodes (ranks are numbered node by
node, as ``horovodrun -H host1:L,host2:L`` numbers them). Without it, under elastic training
(sets would have to be rebuilt after every reset) or for an allreduce on another process set,
the exchange stays flat (``topology`` is None; the log says why once).
"""

import os

_SETS = {}  # "layout": (N, L); "sets": the ProcessSet objects handed to hvd.init


def node_process_sets():
    """The process sets of the hierarchical exchange, for ``hvd.init(process_sets=...)``: one per node
    (ranks n L .. n L + L - 1) and one per local rank l (ranks l, L + l, ...). Read from horovodrun's
    environment (``HOROVOD_SIZE``, ``HOROVOD_LOCAL_SIZE``, ``HOROVOD_CROSS_SIZE``); [] outside
    horovodrun, on one node, one rank per node, or nodes of different sizes."""
    import horovod.tensorflow as hvd

    size, local, cross = launched_layout()
    if local < 2 or cross < 2 or size != local * cross:
        _SETS.clear()
        return []
    nodes = [hvd.ProcessSet(list(range(n * local, (n + 1) * local))) for n in range(cross)]
    shares = [hvd.ProcessSet(list(range(l, size, local))) for l in range(local)]
    _SETS.update(layout=(cross, local), sets=(nodes, shares))
    return nodes + shares


def launched_layout():
    """(ranks, ranks per node, nodes) as horovodrun launched this job (``HOROVOD_SIZE``,
    ``HOROVOD_LOCAL_SIZE``, ``HOROVOD_CROSS_SIZE``; 0 outside horovodrun)."""
    return tuple(int(os.environ.get(k, 0) or 0) for k in ("HOROVOD_SIZE", "HOROVOD_LOCAL_SIZE", "HOROVOD_CROSS_SIZE"))


class Topology:
    """This rank's place: ``node`` (the ranks of its node), ``cross`` (its local rank's ranks across
    the nodes), N nodes of L ranks, its local rank ``l``."""

    def __init__(self, node, cross, num_nodes, local_size, local_rank):
        self.node, self.cross = node, cross
        self.num_nodes, self.local_size, self.local_rank = num_nodes, local_size, local_rank


def topology():
    """(``Topology`` or None, why not): the hierarchy of this job, from the sets ``node_process_sets``
    made, checked against Horovod's own view after ``hvd.init``."""
    from hvdspar import exchange

    if not _SETS:
        return None, "hvd.init was not given hvdspar.node_process_sets()"
    if exchange.elastic():
        return None, "elastic training (the sets would change at every reset)"
    import horovod.tensorflow as hvd

    num_nodes, local_size = _SETS["layout"]
    nodes, shares = _SETS["sets"]
    if not hvd.is_initialized() or hvd.size() != num_nodes * local_size:
        return None, "Horovod's world is not the one the process sets were made for"
    rank, local_rank = hvd.rank(), hvd.local_rank()
    if hvd.local_size() != local_size or rank != hvd.cross_rank() * local_size + local_rank:
        return None, "ranks are not numbered node by node"
    if any(s.process_set_id is None for s in nodes + shares):
        return None, "the process sets were not passed to hvd.init"
    return Topology(nodes[rank // local_size], shares[local_rank], num_nodes, local_size, local_rank), None


def shares(d, local_size):
    """The sizes of the L shares of a message of d elements (the first d mod L one element longer)."""
    return [d // local_size + (1 if l < d % local_size else 0) for l in range(local_size)]
