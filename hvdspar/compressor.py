"""The base of every hvdspar compressor: Horovod's two-method interface plus state.

A subclass only says how one rank's (flattened) gradient becomes a message and
how a concatenation of the ranks' messages becomes their sum::

    encode(x, seed, dtype, shape)         -> Encoded(message, q, kept, q_sq_norm)
    decode_sum(data, num_ranks, d, dtype) -> (sum of the ranks' Q [d], all senders finite)
    expected_nbytes(d, dtype, shape)      -> planned message size (for the dense fallback)

This class does the rest, once for all methods. A gradient's trip:

    compress(g):    x = g + m (error feedback)       plan: dense or compressed (per tensor, at trace time)
                    dense:      hand x to Horovod's allreduce as it is
                    compressed: message = encode(x); gathered = allgather(message);
                                hand Horovod the placeholder (``exchange.placeholder``)
    Horovod:        allreduce of what compress returned, with the user's op and scale factors
    decompress(t):  dense:      t is Horovod's result; m <- x - sent
                    compressed: result = t[0] * decode_sum(gathered)  (t[0]: Horovod's factor)
                                m <- x - Q(x); the random stream advances

So ``op=hvd.Sum``/``hvd.Average``, ``prescale_factor``/``postscale_factor`` and
``gradient_predivide_factor`` give what Horovod gives without compression, in
expectation, on every build (see ``hvdspar.exchange``).

Non-finite gradients (``nonfinite=``): with "propagate" (default) a step where
any rank's gradient holds NaN or Inf returns a non-finite result on every rank,
as Horovod's own allreduce does, so Keras' ``LossScaleOptimizer`` skips that
step on every rank and lowers its scale; nothing of that step enters the
error-feedback memory, the variance figures or the random streams. "raise"
stops training with a clear error instead.

The dense fallback (``fallback=``, per tensor, decided at trace time alike on
every rank, counted in ``traffic()["dense_tensors"]``; rank 0 logs the
decisions once, at the first step, through the ``hvdspar`` logger):

    True (default)    by bytes (``exchange.prefer_dense``): dense when the allgather
                      would move at least as many bytes as a ring allreduce;
                      deterministic, the same decisions on every machine
    "auto"            by bytes, then by time (``hvdspar.link``): also dense when the
                      dense allreduce is faster on this network once the compressor's
                      own compute is paid (measured at the first step)
    False             always compressed

State (``SlotState``: memory, random stream, traffic counters) is kept per
tensor: inside a ``tf.function`` by the tensor's position in Horovod's call
order (a retrace restarts the order); in eager calls of ``hvd.allreduce`` by
its ``name=`` and otherwise its shape and dtype. It is a ``tf.Module``: put the
compressor in a ``tf.train.Checkpoint`` (or ``hvdspar.track(model, compressor)``)
and error-feedback memory survives a save and restore.
"""

import collections
import logging
import random

import numpy as np
import tensorflow as tf

from hvdspar import exchange
from hvdspar.probabilities import compute_dtype
from hvdspar import traffic as _traffic
from hvdspar.traffic import SlotState, trace_key

try:  # Horovod's interface; hvdspar's pure-TF parts work without Horovod.
    from horovod.tensorflow.compression import Compressor as _HorovodCompressor
except ImportError:  # pragma: no cover - exercised only where Horovod is absent

    class _HorovodCompressor:
        """Stand-in with Horovod's interface when Horovod is not installed."""


log = logging.getLogger("hvdspar")

NONFINITE = ("propagate", "raise")


class Encoded(collections.namedtuple("Encoded", ["message", "q", "kept", "q_sq_norm"])):
    """What ``Compressor.encode`` returns: the uint8 message, Q(x) if memory is on
    (else a [0] tensor), the count of kept elements, and ||Q(x)||^2."""


class _Dense(collections.namedtuple("_Dense", ["slot", "x", "sent"])):
    """compress -> decompress context of a tensor sent dense."""

    kind = "dense"


class _Sparse(collections.namedtuple("_Sparse", ["slot", "x", "enc", "gathered", "shape", "process_set"])):
    """compress -> decompress context of a tensor sent compressed."""

    kind = "sparse"


class _RunTime(collections.namedtuple("_RunTime", ["slot", "total", "finite", "new_memory", "sparse", "norms",
                                                   "shape"])):
    """compress -> decompress context of a tensor whose plan is taken at run time (elastic)."""

    kind = "run time"


#: the plan's reason for tensors planned at every step (elastic training)
RUN_TIME = "by bytes at run time"


class Compressor(_HorovodCompressor, tf.Module):
    """Base class; see the module docstring. Not used directly."""

    #: short name used by ``hvdspar.from_spec``
    spec_name = None

    def __init__(self, memory=False, fallback=True, nonfinite="propagate", seed=None, name=None):
        tf.Module.__init__(self, name=name or type(self).__name__)
        if not isinstance(memory, bool):
            raise ValueError(f"hvdspar: memory must be True or False, got {memory!r}")
        if not (isinstance(fallback, bool) or fallback == "auto"):
            raise ValueError(f"hvdspar: fallback must be True, False or 'auto', got {fallback!r}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"hvdspar: nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"hvdspar: seed must be a non-negative integer or None, got {seed!r}")
        self.memory = memory
        self.fallback = fallback
        self.nonfinite = nonfinite
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.slots = []
        # Python-only bookkeeping, kept out of tf.Module's tracking (and so out of checkpoints).
        self.__dict__["_trace"] = None
        self.__dict__["_next_slot"] = 0
        self.__dict__["_eager_index"] = {}  # (name, shape, dtype) -> slot index, for eager calls
        self.__dict__["_plans"] = {}  # slot index -> (dense?, reason, ranks) of the latest trace
        self.__dict__["_logged_plan"] = None
        self.__dict__["_eager_logged"] = set()  # slot indices whose eager plan was logged
        self.__dict__["_compute_costs"] = {}  # (dtype, timing shape) -> link.Compute (fallback="auto")

    # --- what a subclass provides -----------------------------------------------------------

    def encode(self, x, seed, dtype, shape=None):
        """Flat x (gradient, plus memory) of a tensor of ``shape`` -> ``Encoded``.

        ``dtype`` is the gradient's dtype, x is in it or in its compute dtype.
        Encoded.q, this rank's Q(x) as the receivers will decode it (compute
        dtype), is needed only when ``self.memory`` (else a [0] tensor).
        Encoded.q_sq_norm is ||Q(x)||^2 (for the variance figures). A
        non-finite x must give a message that decode_sum flags as such.
        """
        raise NotImplementedError

    def decode_sum(self, data, num_ranks, d, dtype):
        """The sum of ``num_ranks`` (an int32 tensor) concatenated messages, and whether all were finite."""
        raise NotImplementedError

    def expected_nbytes(self, d, dtype, shape=None):
        raise NotImplementedError

    def config(self):
        """The constructor arguments, for ``spec()`` and tracking."""
        out = {"memory": self.memory, "fallback": self.fallback}
        if self.nonfinite != "propagate":
            out["nonfinite"] = self.nonfinite
        out["seed"] = self.seed
        return out

    # --- the Horovod interface --------------------------------------------------------------

    @tf.autograph.experimental.do_not_convert
    def compress(self, tensor):
        site = exchange.call_site()
        tensor = tf.convert_to_tensor(tensor)
        if not tensor.shape.is_fully_defined():
            raise ValueError(f"hvdspar: {self.name} needs gradients of static shape, got {tensor.shape}")
        dtype, shape = tensor.dtype, tensor.shape
        cdt = compute_dtype(dtype)
        d = shape.num_elements()
        num_ranks, rank = exchange.world(site.process_set)
        slot, position = self._slot_for(tensor, site)
        dense, reason = self._plan(slot, d, dtype, shape, num_ranks)
        self._log_plan_at_first_step(slot, position, rank)

        x = tf.reshape(tensor, [-1])
        if self.memory:
            x = tf.cast(x, cdt) + slot.memory  # e = m + g (error feedback)

        if reason == RUN_TIME:
            return self._compress_planned_at_run_time(tensor, x, slot, site)
        if dense:
            sent = tf.cast(x, dtype)
            dense_nbytes = d * dtype.size
            slot.record(dense_nbytes, dense_nbytes, d, d, dense=True)
            # Nothing heavier before Horovod's allreduce: tf.function runs stateful ops in program
            # order, so work here would delay the collective.
            return tf.reshape(sent, shape), _Dense(slot, x, sent)

        seed = tf.stack([self._seed_base(0, slot.index) + 65_537 * exchange.rank_op(), slot.calls.read_value()])
        enc = self.encode(x, seed, dtype, shape)
        gathered = exchange.allgather(enc.message, site.process_set)
        nbytes = tf.size(enc.message, out_type=tf.int64) + exchange.placeholder_nbytes(dtype)
        slot.record(nbytes, d * dtype.size, d, enc.kept, dense=False)
        return exchange.placeholder(dtype, site.process_set), _Sparse(slot, x, enc, gathered, shape, site.process_set)

    def _compress_planned_at_run_time(self, tensor, x, slot, site):
        """Elastic training: the byte rule decided at every step, from the world size at run time.

        Horovod does not retrace its allreduce after an elastic reset, so a plan taken at
        trace time would stay that of the first world, and a rank that joins later would
        plan (and so call collectives) differently. Here the graph is the same whatever the
        size: a ``tf.cond`` on ``exchange.prefer_dense_op`` runs either hvdspar's own dense
        allreduce (op=Sum) or the encode + allgather + decode, and Horovod reduces the
        placeholder in both cases, for its factor. ``decompress`` finishes both alike.
        """
        dtype, shape = tensor.dtype, tensor.shape
        cdt, d = compute_dtype(dtype), shape.num_elements()
        ps = site.process_set
        num_ranks = exchange.size_op(ps)
        message_nbytes, dense_nbytes = self.expected_nbytes(d, dtype, shape), d * dtype.size
        go_dense = exchange.prefer_dense_op(message_nbytes, dense_nbytes, num_ranks)
        seed = tf.stack([self._seed_base(0, slot.index) + 65_537 * exchange.rank_op(), slot.calls.read_value()])
        zero = tf.zeros([0], cdt)

        def dense_branch():
            sent = tf.cast(x, dtype)
            name = exchange.collective_name("HorovodAllreduce", tensor, "dense")
            total = tf.cast(exchange.allreduce_sum(sent, ps, name), cdt)
            wide = total if total.dtype == tf.float64 else tf.cast(total, tf.float32)
            new_memory = x - tf.cast(sent, x.dtype) if self.memory else zero
            return (total, tf.math.is_finite(tf.reduce_sum(wide)), new_memory, tf.constant(dense_nbytes, tf.int64),
                    tf.constant(d, tf.int64), tf.zeros([2], tf.float64))

        def sparse_branch():
            enc = self.encode(x, seed, dtype, shape)
            name = exchange.collective_name("HorovodAllgather", tensor, "gather")
            gathered = exchange.allgather(enc.message, ps, name)
            total, finite = self.decode_sum(gathered, num_ranks, d, dtype)
            nbytes = tf.size(enc.message, out_type=tf.int64) + exchange.placeholder_nbytes(dtype)
            norms = tf.stack([tf.cast(_sq_norm(x), tf.float64), tf.cast(enc.q_sq_norm, tf.float64)])
            new_memory = x - tf.cast(enc.q, x.dtype) if self.memory else zero
            return (tf.cast(total, cdt), finite, new_memory, nbytes, tf.cast(enc.kept, tf.int64), norms)

        total, finite, new_memory, nbytes, kept, norms = tf.cond(go_dense, dense_branch, sparse_branch)
        slot.record(nbytes, dense_nbytes, d, kept, dense=go_dense)
        ctx = _RunTime(slot, total, finite, new_memory, tf.logical_not(go_dense), norms, shape)
        return exchange.placeholder(dtype, ps), ctx

    @tf.autograph.experimental.do_not_convert
    def decompress(self, tensor, ctx):
        if isinstance(ctx, _Dense):
            return self._finish_dense(tensor, ctx)
        if isinstance(ctx, _RunTime):
            return self._finish_run_time(tensor, ctx)
        slot, x, enc, shape = ctx.slot, ctx.x, ctx.enc, ctx.shape
        dtype, d = slot.dtype, shape.num_elements()
        total, all_finite = self.decode_sum(ctx.gathered, exchange.size_op(ctx.process_set), d, dtype)
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(all_finite, [_nonfinite_message(slot, shape, dtype)]))
        with tf.control_dependencies(checks):
            # Horovod's factor (op, scale factors, 1/M) times the sum; NaN everywhere where a rank was not finite.
            factor = tf.cast(tf.reshape(tensor, [-1])[0], total.dtype)
            poison = tf.where(all_finite, tf.constant(0, total.dtype), tf.constant(np.nan, total.dtype))
            result = tf.cast(total * factor + poison, dtype)
        if self.memory:
            tf.cond(all_finite, lambda: slot.memory.assign(x - enc.q).op, tf.no_op)
        slot.calls.assign_add(tf.cast(all_finite, tf.int64))  # a skipped step does not use up a stream
        slot.sq_norms.assign_add(
            tf.where(all_finite, tf.stack([tf.cast(_sq_norm(x), tf.float64), tf.cast(enc.q_sq_norm, tf.float64)]),
                     tf.zeros([2], tf.float64))
        )
        return tf.reshape(result, shape)

    def _finish_dense(self, reduced, ctx):
        """A tensor sent dense: Horovod's result as it is; the memory keeps the cast's residual."""
        if not (self.memory or self.nonfinite == "raise"):
            return reduced
        slot = ctx.slot
        # Any rank's NaN/Inf makes the reduced sum non-finite: one reduction tells every rank alike.
        wide = reduced if reduced.dtype == tf.float64 else tf.cast(reduced, tf.float32)
        finite = tf.math.is_finite(tf.reduce_sum(wide))
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(finite, [_nonfinite_message(slot, slot.shape, slot.dtype)]))
        with tf.control_dependencies(checks):
            if self.memory:
                residual = ctx.x - tf.cast(ctx.sent, ctx.x.dtype)
                tf.cond(finite, lambda: slot.memory.assign(residual).op, tf.no_op)
            return tf.identity(reduced)

    def _finish_run_time(self, reduced, ctx):
        """A tensor planned at run time: Horovod's factor times the sum either branch produced."""
        slot, dtype = ctx.slot, ctx.slot.dtype
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(ctx.finite, [_nonfinite_message(slot, ctx.shape, dtype)]))
        with tf.control_dependencies(checks):
            factor = tf.cast(tf.reshape(reduced, [-1])[0], ctx.total.dtype)
            poison = tf.where(ctx.finite, tf.constant(0, ctx.total.dtype), tf.constant(np.nan, ctx.total.dtype))
            result = tf.cast(ctx.total * factor + poison, dtype)
        if self.memory:
            tf.cond(ctx.finite, lambda: slot.memory.assign(ctx.new_memory).op, tf.no_op)
        used = tf.logical_and(ctx.finite, ctx.sparse)
        slot.calls.assign_add(tf.cast(used, tf.int64))
        slot.sq_norms.assign_add(tf.where(used, ctx.norms, tf.zeros([2], tf.float64)))
        return tf.reshape(result, ctx.shape)

    # --- state ------------------------------------------------------------------------------

    def traffic(self):
        """This rank's traffic so far, as Python numbers.

        bytes_sent / dense_bytes: cumulative bytes this compressor put on the
        wire, and the dense bytes of the gradients it replaced;
        last_step_*: the same for the most recent step (every tensor's latest
        call); ratio: bytes_sent / dense_bytes; density: kept / total
        elements (kept, elements: the raw counts); steps: completed steps
        (calls of the first tensor); dense_tensors: tensors sent dense by the
        fallback (last step); variance_ratio: sum ||Q(g)||^2 / sum ||g||^2
        over the tensors sent compressed (sq_norm_sent, sq_norm: the sums).
        The counters are per tensor (see ``hvdspar.traffic``); these are their sums.
        """
        return _traffic.summary(self.slots)

    def reset_traffic(self):
        """Zero the traffic figures (not the random streams or the memory)."""
        for slot in self.slots:
            slot.reset()

    def spec(self):
        """A string that ``hvdspar.from_spec`` turns back into an equal compressor."""
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.config().items() if v is not None)
        return f"{self.spec_name}:{args}" if args else self.spec_name

    def __repr__(self):
        return f"hvdspar.{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    # --- internals --------------------------------------------------------------------------

    def _plan(self, slot, d, dtype, shape, num_ranks):
        """(dense?, reason): the fallback's decision for one tensor, at trace time, alike on every rank.

        fallback=True: by bytes (``exchange.prefer_dense``: dense when M m >= 2 D).
        fallback="auto": by bytes first, then by time, from the measured network
        and this compressor's measured compute (``hvdspar.link``): compressed must
        be AUTO_MARGIN times faster. The measurement is collective (every rank
        traces the same step), taken once and broadcast from rank 0.
        """
        if d == 0:
            dense, reason = True, "empty"
        elif not self.fallback:
            dense, reason = False, "compressed"
        elif exchange.elastic():
            if self.fallback == "auto":
                raise ValueError(
                    f"hvdspar: {self.name}: fallback='auto' times the network once and plans at the first trace, "
                    "which Horovod does not redo when an elastic job changes size; use fallback=True (the byte "
                    "rule, taken at every step from the world size) or fallback=False under hvd.elastic"
                )
            dense, reason = False, RUN_TIME
        elif num_ranks <= 1:
            dense, reason = False, "compressed"
        else:
            message_nbytes, dense_nbytes = self.expected_nbytes(d, dtype, shape), d * dtype.size
            if exchange.prefer_dense(message_nbytes, dense_nbytes, num_ranks):
                dense, reason = True, "by bytes"
            elif self.fallback == "auto" and not self._sparse_is_faster(d, dtype, shape, num_ranks, message_nbytes):
                dense, reason = True, "by time"
            else:
                dense, reason = False, "compressed"
        self._plans[slot.index] = (dense, reason, num_ranks)
        return dense, reason

    def _sparse_is_faster(self, d, dtype, shape, num_ranks, message_nbytes):
        from hvdspar import link

        timing_shape = self._timing_shape(shape)
        key = (dtype.name, timing_shape)
        if key not in self._compute_costs:
            self._compute_costs[key] = link.measure_compute(self, dtype, num_ranks, timing_shape)
        return link.sparse_pays(link.network(), self._compute_costs[key], d, message_nbytes, d * dtype.size, num_ranks)

    def _timing_shape(self, shape):
        """The shape fallback="auto" times this compressor at: None = flat vectors of two sizes
        (cost linear in d); a compressor whose cost depends on the shape returns it."""
        return None

    def plan_summary(self):
        """One line: how many tensors the latest trace sends dense, and why."""
        plans = list(self._plans.values())
        if not plans:
            return f"hvdspar: {self!r}: no tensor planned yet"
        reasons = collections.Counter(reason for dense, reason, _ in plans if dense)
        ranks = sorted({m for _, _, m in plans})
        at_run_time = sum(reason == RUN_TIME for _, reason, _ in plans)
        if at_run_time:
            return (f"hvdspar: {type(self).__name__} (elastic): {at_run_time} of {len(plans)} tensors planned at "
                    f"every step by bytes from the world size then, {sum(reasons.values())} dense at the first "
                    f"trace ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items())) or 'none'})")
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
        rule = {True: "by bytes", "auto": "by bytes, then by time", False: "never"}[self.fallback]
        return (f"hvdspar: {type(self).__name__} at {'/'.join(map(str, ranks))} ranks: "
                f"{sum(reasons.values())} of {len(plans)} tensors sent dense ({why}; fallback={rule}), "
                f"{len(plans) - sum(reasons.values())} compressed")

    def _emit_plan(self, rank=0):
        line = self.plan_summary()
        if rank == 0 and line != self._logged_plan:
            self._logged_plan = line
            log.info(line)
        return np.bool_(True)

    def _log_plan_at_first_step(self, slot, position, rank):
        """Rank 0 logs ``plan_summary()`` once, when the first step runs (the whole trace planned by then).

        The graph built here is the same on every rank (Horovod matches collectives across ranks by
        op names, so a rank-dependent op would shift them); only the Python callback looks at the rank.
        """
        if tf.executing_eagerly():
            if slot.index not in self._eager_logged:
                self._eager_logged.add(slot.index)
                self._emit_plan(rank)
            return
        if position != 0:
            return
        graph = tf.compat.v1.get_default_graph()
        from tensorflow.python.ops import control_flow_util

        if control_flow_util.GraphOrParentsInXlaContext(graph):  # no Python callbacks under XLA
            self._emit_plan(rank)
            return
        first = tf.equal(slot.totals[_traffic.TOTALS.index("calls")], 0)
        tf.cond(first, lambda: tf.numpy_function(lambda: self._emit_plan(rank), [], tf.bool, stateful=True),
                lambda: tf.constant(True))

    def _seed_base(self, rank, slot_index):
        # Distinct streams per (seed, rank, tensor); the step comes from slot.calls.
        return (self.seed * 1_000_003 + rank * 65_537 + slot_index) % (2**62)

    def _slot_for(self, tensor, site):
        """(state, position in the trace) of the tensor being compressed.

        In a tf.function (how DistributedOptimizer and DistributedGradientTape
        call it, even in eager mode) Horovod calls compress() once per gradient,
        in the same order; a new trace restarts the order, so state is keyed by
        the position. An eager ``hvd.allreduce(t, compression=c)`` has no trace:
        its state is keyed by the call's ``name=`` if it has one, else by shape
        and dtype (so repeated calls of one tensor share one state; give two
        tensors of equal shape distinct names). Either way the slot is checked
        against shape and dtype.
        """
        if tf.executing_eagerly():
            key = (site.name, tuple(tensor.shape.as_list()), tensor.dtype.name)
            if site.name is not None:
                for (name, shp, dt), _ in self._eager_index.items():
                    if name == site.name and (shp, dt) != key[1:]:
                        raise ValueError(
                            f"hvdspar: {self.name} got a {tensor.dtype.name}{tensor.shape.as_list()} tensor "
                            f"named {site.name!r}, where earlier calls of that name had {dt}{list(shp)}"
                        )
            index = self._eager_index.get(key)
            if index is None:
                index = self._eager_index[key] = len(self.slots)
            position = index
        else:
            key = trace_key()
            if key is not self._trace:
                self._trace, self._next_slot = key, 0
            index = position = self._next_slot
            self._next_slot += 1
        if index == len(self.slots):
            with tf.init_scope():
                self.slots.append(SlotState(index, tensor.shape, tensor.dtype, self.memory))
        slot = self.slots[index]
        if slot.shape != tensor.shape or slot.dtype != tensor.dtype:
            raise ValueError(
                f"hvdspar: {self.name} got a {tensor.dtype.name}{tensor.shape.as_list()} gradient at position "
                f"{index}, where earlier steps had {slot.dtype.name}{slot.shape.as_list()}. Use one compressor "
                "instance per optimizer, with a fixed set of trainable variables."
            )
        return slot, position


def _nonfinite_message(slot, shape, dtype):
    return (
        f"hvdspar: a gradient of shape {shape.as_list()} ({dtype.name}, tensor #{slot.index}) holds NaN or Inf "
        "on at least one rank; training stopped before the model was changed (nonfinite='raise'). Lower the "
        "learning rate, clip gradients, or use loss scaling for float16; nonfinite='propagate' (the default) "
        "lets the non-finite result through, as Horovod does, for a LossScaleOptimizer to skip the step."
    )


def _sq_norm(x):
    """||x||^2 in one pass (a dot product; float64 stays float64)."""
    x = tf.reshape(x, [-1])
    if x.dtype not in (tf.float32, tf.float64):
        x = tf.cast(x, tf.float32)
    return tf.tensordot(x, x, 1)


def _fmt(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
