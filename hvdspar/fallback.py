"""The dense fallback: per message (a tensor or a bucket), send it compressed or dense?

Decided at trace time, alike on every rank, from the message's size and the
number of ranks; the same decisions on every machine unless the rule is timed::

    True (default)    by bytes (``fallback.prefer_dense``): dense when the allgather
                      of M messages of m bytes moves at least as many bytes as a ring
                      allreduce of the D dense bytes, M m >= 2 D
    "auto"            by bytes, then by time (``hvdspar.link``): also dense when the
                      dense allreduce is faster on this network once the compressor's
                      own compute is paid (measured once, at the first trace)
    False             always compressed

Under elastic training (``HOROVOD_ELASTIC=1``) Horovod does not retrace after
the world changes, so the byte rule is left to run time (``RUN_TIME``: the
compressor decides in the graph at every step) and the timed rule is refused.

Rank 0 logs the decisions once, at the first step, through the ``hvdspar``
logger (``Fallback.log_at_first_step``); ``Fallback.summary`` is that line.
"""

import collections
import logging

import numpy as np
import tensorflow as tf

from hvdspar import exchange
from hvdspar.state import TOTALS

log = logging.getLogger("hvdspar")

RULES = (True, False, "auto")

#: the reason of messages planned at every step (elastic training)
RUN_TIME = "by bytes at run time"


class Plan(collections.namedtuple("Plan", ["dense", "reason", "num_ranks", "n_tensors"])):
    """One message's decision: dense?, why, at how many ranks, for how many tensors."""


def plan(rule, codec, d, dtype, shape, num_ranks, elastic):
    """(dense?, reason) of a message of d elements of ``dtype`` (a tensor of ``shape``, or a bucket:
    [d]) at ``num_ranks`` ranks, under the rule ``fallback=`` (True / "auto": by bytes, M m >= 2 D,
    ``fallback.prefer_dense``; False: never). A pure function of sizes and world; a codec that sums
    by allreduce has its own rule (``Codec.plan``), and under elastic training the byte rule is left
    to run time (``RUN_TIME``)."""
    if d == 0:
        return True, "empty"
    why = codec.plan(d, shape)
    if why is not None:
        return True, why
    if codec.sums_by_allreduce or not rule or (num_ranks <= 1 and not elastic):
        return False, "compressed"
    if elastic:
        return False, RUN_TIME
    if prefer_dense(codec.expected_nbytes(d, dtype, shape), d * dtype.size, num_ranks):
        return True, "by bytes"
    return False, "compressed"


class Fallback:
    """The fallback policy of one compressor, and its latest decisions (Python only).

    ``rule`` is the compressor's ``fallback=`` argument. ``plans`` maps a
    message's slot index to its ``Plan`` at the latest trace.
    """

    def __init__(self, rule):
        if not (isinstance(rule, bool) or rule == "auto"):
            raise ValueError(f"hvdspar: fallback must be True, False or 'auto', got {rule!r}")
        self.rule = rule
        self.plans = {}
        self._compute_costs = {}  # (dtype, timing shape) -> link.Compute, measured once (rule "auto")
        self._logged = None  # the latest line rank 0 logged
        self._eager_logged = set()  # slot indices whose eager plan was logged

    def decide(self, comp, index, d, dtype, shape, num_ranks, n_tensors=1):
        """The ``Plan`` of message ``index`` of ``comp`` (``plan``, then the timed rule where asked),
        also kept in ``plans``."""
        if self.rule == "auto" and exchange.elastic():
            raise ValueError(
                f"hvdspar: {comp.name}: fallback='auto' times the network once and plans at the first trace, "
                "which Horovod does not redo when an elastic job changes size; use fallback=True (the byte "
                "rule, taken at every step from the world size) or fallback=False under hvd.elastic"
            )
        dense, reason = plan(self.rule, comp.codec, d, dtype, shape, num_ranks, exchange.elastic())
        if (self.rule == "auto" and reason == "compressed" and num_ranks > 1 and not comp.codec.sums_by_allreduce
                and not self._sparse_is_faster(comp, d, dtype, shape, num_ranks)):
            dense, reason = True, "by time"
        self.plans[index] = Plan(dense, reason, num_ranks, n_tensors)
        return self.plans[index]

    def _sparse_is_faster(self, comp, d, dtype, shape, num_ranks):
        """The timed rule (``hvdspar.link``): compressed must be AUTO_MARGIN times faster than dense."""
        from hvdspar import link

        timing_shape = comp.codec.timing_shape(shape)
        key = (dtype.name, timing_shape)
        if key not in self._compute_costs:
            self._compute_costs[key] = link.measure_compute(comp, dtype, num_ranks, timing_shape)
        message_nbytes = comp.codec.expected_nbytes(d, dtype, shape)
        return link.sparse_pays(link.network(), self._compute_costs[key], d, message_nbytes, d * dtype.size, num_ranks)

    def summary(self, comp):
        """One line: how many messages (tensors, or buckets of tensors) the latest trace sends dense, and why."""
        plans = list(self.plans.values())
        if not plans:
            return f"hvdspar: {comp!r}: no tensor planned yet"
        reasons = collections.Counter(p.reason for p in plans if p.dense)
        ranks = sorted({p.num_ranks for p in plans})
        tensors = sum(p.n_tensors for p in plans)
        what = "tensors" if tensors == len(plans) else f"messages ({tensors} tensors in buckets)"
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
        at_run_time = sum(p.reason == RUN_TIME for p in plans)
        name = type(comp).__name__
        if at_run_time:
            return (f"hvdspar: {name} (elastic): {at_run_time} of {len(plans)} {what} planned at "
                    f"every step by bytes from the world size then, {sum(reasons.values())} dense at the first "
                    f"trace ({why})")
        rule = {True: "by bytes", "auto": "by bytes, then by time", False: "never"}[self.rule]
        if comp.codec.sums_by_allreduce:
            rule = f"{name}'s own rule"
        return (f"hvdspar: {name} at {'/'.join(map(str, ranks))} ranks: "
                f"{sum(reasons.values())} of {len(plans)} {what} sent dense ({why}; fallback={rule}), "
                f"{len(plans) - sum(reasons.values())} compressed")

    def _emit(self, comp, rank=0):
        line = self.summary(comp)
        if rank == 0 and line != self._logged:
            self._logged = line
            log.info(line)
        return np.bool_(True)

    def log_at_first_step(self, comp, slot, position, rank):
        """Rank 0 logs ``summary`` once, when the first step runs (the whole trace planned by then).

        The graph built here is the same on every rank (Horovod matches collectives across ranks by
        op names, so a rank-dependent op would shift them); only the Python callback looks at the rank.
        No call recorded yet in the message's traffic counters marks the first step.
        """
        if tf.executing_eagerly():
            if slot.index not in self._eager_logged:
                self._eager_logged.add(slot.index)
                self._emit(comp, rank)
            return
        if position != 0:
            return
        from tensorflow.python.ops import control_flow_util

        if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
            self._emit(comp, rank)  # no Python callbacks under XLA: log at trace time
            return
        first = tf.equal(slot.totals[TOTALS.index("calls")], 0)
        def emit():
            done = tf.numpy_function(lambda: self._emit(comp, rank), [], tf.bool, stateful=True)
            done.set_shape([])  # a scalar: this host callback touches nothing of the data path
            return done

        tf.cond(first, emit, lambda: tf.constant(True))


# The cost model (per rank, ring algorithms, M ranks): an allgather of messages of m bytes moves
# (M-1) m bytes, a ring allreduce of D dense bytes 2 (M-1)/M D; compressed pays while M m < 2 D.


def allgather_bytes_moved(message_nbytes, num_ranks):
    """Bytes a rank sends in a ring allgather of messages of that size."""
    return (num_ranks - 1) * message_nbytes


def allreduce_bytes_moved(dense_nbytes, num_ranks):
    """Bytes a rank sends in a ring allreduce of a dense tensor."""
    return 2 * (num_ranks - 1) * dense_nbytes / num_ranks


def prefer_dense(message_nbytes, dense_nbytes, num_ranks):
    """True when a dense allreduce would move no more bytes than the allgather."""
    if num_ranks <= 1:
        return False
    return allgather_bytes_moved(message_nbytes, num_ranks) >= allreduce_bytes_moved(dense_nbytes, num_ranks)


def prefer_dense_op(message_nbytes, dense_nbytes, num_ranks):
    """``prefer_dense`` at run time: ``num_ranks`` an int32 tensor (``size_op``), the sizes static.

    For M > 1 the rule (M-1) m >= 2 (M-1)/M D is M m >= 2 D.
    """
    m = tf.cast(num_ranks, tf.int64)
    return tf.logical_and(m > 1, m * int(message_nbytes) >= 2 * int(dense_nbytes))
