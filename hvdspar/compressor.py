"""The base of every hvdspar compressor: Horovod's two-method interface around a codec.

A gradient's trip (docs/design.md says why each step is where it is):

    compress(g):    the bucket g travels in (``_bucket_for``: Horovod's group, or a bucket of its
                    gradient list built where every member's tf.cond reaches it, or g alone)
                    the bucket's first member sends it (``_send``): a signature check every rank
                    takes alike; x = concat(g...) + m; plan (``hvdspar.fallback``); then
                      dense:      each member hands its part of x to Horovod's allreduce
                      compressed: encode, allgather (decoded here when members sit in different conds)
                      reduced:    a codec summing by allreduce itself (PowerSGD)
                    hand Horovod a placeholder per member (``exchange.placeholder``)
    Horovod:        allreduce of what compress returned, with the user's op and scale factors
    decompress(t):  t[0] is Horovod's factor; the member's part of factor x the decoded sum
                    (``_receive``); memory, stream and figures updated once per bucket, never
                    from a step where a rank was not finite; Horovod's gradient attached

Tensors that cannot carry a compressed message (integers, op=Min/Max/Product, a shape
unknown at trace time with no variable to take it from) travel as Horovod's none sends
them. State (``SlotState``) is one per message, keyed by its variables where Horovod's
frame names them (``_slot_for``); a compressor is a ``tf.Module``, so checkpoints hold it.
"""

import collections
import logging
import random
import sys

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record as _record

from hvdspar import buckets as _buckets
from hvdspar import exchange
from hvdspar.error_feedback import ErrorFeedback
from hvdspar.fallback import RUN_TIME, Fallback
from hvdspar.probabilities import compute_dtype
from hvdspar.scan import scan
from hvdspar import state as _state
from hvdspar import wire
from hvdspar.state import SlotState, trace_key

try:  # Horovod's interface; hvdspar's pure-TF parts work without Horovod.
    from horovod.tensorflow.compression import Compressor as _HorovodCompressor
except ImportError:  # pragma: no cover - exercised only where Horovod is absent

    class _HorovodCompressor:
        """Stand-in with Horovod's interface when Horovod is not installed."""



NONFINITE = ("propagate", "raise")


class _Bucket:
    """One message: the flattened gradients of consecutive tensors, or of one tensor.

    Built by ``Compressor._send`` (in the graph every member's Horovod branch can reach),
    finished by the members' ``decompress`` (``Compressor._receive``). Python only.
    """

    def __init__(self, tensors, slot, site, position, graph=None, flat=False):
        self.tensors = list(tensors)
        self.graph = graph  # where to build it, when its members sit in separate Horovod conds
        self.outer = False  # built there (set by _send)
        self.slot, self.site, self.position = slot, site, position
        self.dtype = slot.dtype
        self.shapes = [t.shape for t in self.tensors]
        self.sizes = [s.num_elements() for s in self.shapes]
        self.offsets = list(np.cumsum([0] + self.sizes[:-1]))
        self.d = int(sum(self.sizes))
        # the shape the codec sees: [d] for a bucket of several, or where the codec buckets (it reads
        # only d, so tensors of one size share an encoder); else the tensor's own
        self.shape = self.shapes[0] if len(self.shapes) == 1 and not flat else tf.TensorShape([self.d])
        self.kind = None  # "dense", "sparse", "reduced" or RUN_TIME, set by _send
        self.dense_parts = None  # dense: what each member hands Horovod
        self.placeholder = None  # compressed, members in separate conds: the placeholder they hand Horovod
        self.x = None  # the flat message input: concat(g) (+ memory)
        self.flat_sent = None  # dense: the flat tensor sent
        self.enc = self.gathered = None  # sparse: this rank's message, every rank's messages
        self.total = self.finite = None  # sum_r Q(x_r) [d] (times Horovod's factor if ``scaled``), all finite?
        self.scaled = False
        self.parts = None  # built outside the members' conds: each member's part of the sum (see _split)
        self.cond = None  # run time / reduced: (total, finite, new memory, compressed?, norms)
        self.codec_state = None  # reduced: the codec's new state values (applied when every rank was finite)
        self.finite_members = [None] * len(self.tensors)  # dense: each member's reduced tensor finite?

    def member(self, j, flat):
        """Member j's part of a flat [d] tensor, in its shape."""
        if len(self.tensors) == 1:
            return tf.reshape(flat, self.shapes[0])
        return tf.reshape(flat[self.offsets[j]:self.offsets[j] + self.sizes[j]], self.shapes[j])


class _Member(collections.namedtuple("_Member", ["bucket", "j", "tensor"])):
    """compress -> decompress context: member ``j`` of ``bucket``, whose input was ``tensor``."""

    @property
    def kind(self):
        return self.bucket.kind


#: compress -> decompress context of a tensor that travels as Horovod's none sends it
PASSED_THROUGH = "passed through"


class _Layout:
    """How Horovod's gradient list (``CallSite.grads``) travels: buckets of its positions, and where
    each position sits. Built at the first compress() of a trace, for all of the list at once."""

    def __init__(self, graph, parts, where):
        self.graph, self.parts, self.where = graph, parts, where
        self.buckets = {}  # bucket index -> _Bucket, once sent


class Compressor(_HorovodCompressor, tf.Module):
    """A Horovod compressor running ``codec`` (an ``hvdspar.codec.Codec``); see the module docstring.

    A method's class (``hvdspar.GSpar``, ...) builds its codec and passes it here with the
    arguments every compressor has (memory, fallback, nonfinite, seed, bucket_mb).
    """

    #: short name used by ``hvdspar.from_spec``
    spec_name = None

    def __init__(self, codec, memory=False, fallback=True, nonfinite="propagate", seed=None, bucket_mb=None,
                 name=None):
        tf.Module.__init__(self, name=name or type(self).__name__)
        if not isinstance(memory, bool):
            raise ValueError(f"hvdspar: memory must be True or False, got {memory!r}")
        plans = Fallback(fallback)  # checks the argument
        if nonfinite not in NONFINITE:
            raise ValueError(f"hvdspar: nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"hvdspar: seed must be a non-negative integer or None, got {seed!r}")
        if bucket_mb is not None and (isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float))
                                      or not 0 <= bucket_mb < float("inf")):
            raise ValueError(f"hvdspar: bucket_mb must be a number >= 0 (MB) or None (no cap), got {bucket_mb!r}")
        if bucket_mb is not None and not codec.buckets:
            raise ValueError(f"hvdspar: {type(self).__name__} compresses every tensor on its own (its codec needs "
                             "the tensor's shape): bucket_mb does not apply")
        self.codec = codec
        #: what the trip encodes with: the codec, or the codec with error feedback
        self.coder = ErrorFeedback(codec) if memory else codec
        self.memory = memory
        self.fallback = fallback
        self.nonfinite = nonfinite
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.bucket_mb = bucket_mb
        self.slots = []
        #: the collectives of the trip: Horovod's (``exchange.Horovod``), or ``exchange.InProcess`` for tests
        self.exchange = exchange.Horovod()
        # Python-only bookkeeping, kept out of tf.Module's tracking (and so out of checkpoints).
        self.__dict__["_trace"] = None
        self.__dict__["_next_slot"] = 0
        self.__dict__["_eager_index"] = {}  # (name, shapes, dtype) -> slot index, for eager calls
        self.__dict__["_fallback"] = plans  # the dense fallback's policy and latest decisions
        self.__dict__["_group"] = None  # the Horovod group being compressed: (tensor list, {position: (bucket, j)})
        self.__dict__["_layouts"] = {}  # (trace, gradient list) -> _Layout of the trace's buckets
        self.__dict__["_by_variables"] = {}  # the variables of a message (their refs) -> slot index
        self.__dict__["_passed"] = set()  # reasons already logged for tensors sent as Horovod's none
        if tf.inside_function():
            _share_in_step_state(self)

    def __getattr__(self, name):
        """The method's arguments read on the compressor (``GSpar(rho=0.01).rho``) are its codec's."""
        codec = self.__dict__.get("codec")
        if codec is not None and not name.startswith("_") and name in codec.config():
            return getattr(codec, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def config(self):
        """The constructor arguments, for ``spec()`` and tracking: the codec's, then the compressor's."""
        out = {**self.codec.config(), "memory": self.memory, "fallback": self.fallback}
        if self.nonfinite != "propagate":
            out["nonfinite"] = self.nonfinite
        if self.bucket_mb is not None:
            out["bucket_mb"] = self.bucket_mb
        out["seed"] = self.seed
        return out

    # --- the Horovod interface: a gradient's whole trip ---------------------------------------

    @tf.autograph.experimental.do_not_convert
    def compress(self, tensor):
        """Horovod's first call. The first member of a bucket sends the bucket's message."""
        _check_tf2()
        site = exchange.call_site()
        why = self._pass_reason(tensor, site)
        if why is not None:
            return self._pass_through(tensor, site, why), PASSED_THROUGH
        bucket, j = self._bucket_for(tensor, site)
        if bucket.kind is None:
            self._send(bucket)
        if bucket.kind == "dense":
            return bucket.dense_parts[j], _Member(bucket, j, tensor)
        # Horovod reduces one placeholder per member (a few bytes each); each carries its factor back.
        if bucket.placeholder is not None:  # made beside the bucket: no stateful op in the member's cond
            return tf.identity(bucket.placeholder), _Member(bucket, j, tensor)
        return self.exchange.placeholder(bucket.dtype, site.process_set), _Member(bucket, j, tensor)

    @tf.autograph.experimental.do_not_convert
    def decompress(self, tensor, ctx):
        """Horovod's second call, with its reduction of what ``compress`` returned."""
        if ctx is PASSED_THROUGH:
            return tensor
        result = self._receive(ctx.bucket, ctx.j, tensor)
        return _with_horovod_gradient(ctx.tensor, result, ctx.bucket.site)

    def _pass_reason(self, tensor, site):
        """Why ``tensor`` travels as Horovod's none sends it (dense, as it is), or None to compress it:
        an op that does not sum, a dtype that is not floating point, a shape unknown at trace time
        (where Horovod's frame names no variable of that gradient to take the shape from)."""
        if not exchange.sums(site.op):
            return f"op=hvd.{exchange.op_name(site.op)}"
        dtype = tf.as_dtype(tensor.dtype)
        if not dtype.is_floating:
            return f"{dtype.name}, not floating point"
        if not tensor.shape.is_fully_defined() and _static_shape(tensor, site) is None:
            return "shape unknown at trace time"
        return None

    def _pass_through(self, tensor, site, why):
        """Hand ``tensor`` to Horovod as it is (after the signature check every message makes), and say
        so once per reason (Python logger "hvdspar", rank 0)."""
        if why not in self._passed:
            self._passed.add(why)
            if self.exchange.world(site.process_set)[1] == 0:
                logging.getLogger("hvdspar").info("hvdspar: %s sends a tensor as Horovod's none does (%s)",
                                                  type(self).__name__, why)
        if not tensor.shape.is_fully_defined():
            return tensor
        checked = self.exchange.check_signature([tensor], site.process_set)
        with tf.control_dependencies(checked):
            return tf.identity(tensor)

    def _encoder(self, dtype, shape):
        """``encode`` for one dtype and shape, traced once: every tensor (or bucket) of that
        shape (of that size, for a codec that buckets) calls the same traced function. Pure: x
        and the seed in, the message out."""
        return self._traced(("encode", dtype.name, tuple(shape.as_list())),
                            lambda x, seed: self.coder.encode(x, seed, dtype, shape))

    def _decoder(self, dtype, shape, scaled=False):
        """``decode_sum`` for one dtype and shape, traced once (see ``_encoder``); ``scaled``: with
        Horovod's factor as a third argument (the sum times it, NaN if a rank was not finite)."""
        d = shape.num_elements()
        if scaled:
            return self._traced(("decode_scaled", dtype.name, tuple(shape.as_list())),
                                lambda data, num_ranks, factor: self.codec.decode_sum(data, num_ranks, d, dtype, shape,
                                                                                      factor))
        return self._traced(("decode", dtype.name, tuple(shape.as_list())),
                            lambda data, num_ranks: self.codec.decode_sum(data, num_ranks, d, dtype, shape))

    def _traced(self, key, fn):
        """``fn`` as a tf.function, once per key. Not inlined: TensorFlow inlines a function's body at
        every call, so tensors sent one by one would each carry a copy of the whole encoder."""
        cache = self.__dict__.setdefault("_traced_fns", {})  # plain dict: tf.Module would track it
        if key not in cache:
            cache[key] = tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})
        return cache[key]

    def _send(self, bucket):
        """x = g + m; plan; then dense (hand x to Horovod), compressed (encode, allgather, and where
        members sit in different Horovod branches, decode here), reduced or planned at run time.
        Built in the graph of the bucket's tensors, so that every member's branch can reach it."""
        here = tf.compat.v1.get_default_graph()
        graph = bucket.graph
        if graph is None or graph is here:  # a group, or a tensor alone: in Horovod's own branch
            return self._send_here(bucket, outer=False)
        # Horovod's rank and size ops are stateful without a resource, which TensorFlow runs in program
        # order: made here, once, they keep the members' conds free of them (and of each other).
        with graph.as_default(), graph.name_scope(""), tf.name_scope("hvdspar"):
            self._send_here(bucket, outer=True)
            if bucket.kind != "dense":
                bucket.placeholder = self.exchange.placeholder(bucket.dtype, bucket.site.process_set)
                bucket.parts = self._split(bucket)

    def _split(self, bucket):
        """The members' parts of the decoded sum, made once beside the bucket: NaN everywhere where a
        rank was not finite (``wire.scaled`` with factor 1), so that each member's branch only
        multiplies its part by Horovod's factor (``_receive``)."""
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(bucket.finite, [_nonfinite_message(bucket.slot, bucket.shape,
                                                                                 bucket.dtype, bucket.shapes)]))
        with tf.control_dependencies(checks):
            total = wire.scaled(bucket.total, tf.ones([], bucket.total.dtype), bucket.finite)
        flat = tf.split(total, bucket.sizes) if len(bucket.sizes) > 1 else [total]
        return [tf.reshape(part, shape) for part, shape in zip(flat, bucket.shapes)]

    def _send_here(self, bucket, outer):
        slot, site, dtype, d = bucket.slot, bucket.site, bucket.dtype, bucket.d
        shape = bucket.shape
        num_ranks, rank = self.exchange.world(site.process_set)
        dense, reason, _, _ = self._fallback.decide(self, slot.index, d, dtype, shape, num_ranks, len(bucket.tensors))
        self._fallback.log_at_first_step(self, slot, bucket.position, rank)

        # Ranks that disagree on a shape or dtype stop here, all of them (nothing else is sent before).
        checked = self.exchange.check_signature(bucket.tensors, site.process_set)
        with tf.control_dependencies(checked):
            flat = [tf.reshape(t, [-1]) for t in bucket.tensors]
            x = flat[0] if len(flat) == 1 else tf.concat(flat, 0)
        if self.memory:
            x = self.coder.feed(x, slot.memory, dtype)  # e = m + g
        bucket.x = x
        bucket.outer = outer
        n = len(bucket.tensors)

        if reason == RUN_TIME:
            bucket.kind = RUN_TIME
            self._send_planned_at_run_time(bucket, shape)
        elif dense:
            bucket.kind = "dense"
            bucket.flat_sent = tf.cast(x, dtype)
            dense_nbytes = d * dtype.size
            slot.record(dense_nbytes, dense_nbytes, d, d, dense=True)
            # Nothing heavier before Horovod's allreduce: tf.function runs stateful ops in program
            # order, so work here would delay the collective.
            bucket.dense_parts = [bucket.member(j, bucket.flat_sent) for j in range(n)]
            if outer and self.memory:  # the members' results are in separate branches: this rank's cast residual
                residual = x - tf.cast(bucket.flat_sent, x.dtype)
                tf.cond(tf.math.is_finite(tf.reduce_sum(residual)), lambda: slot.memory.assign(residual).op,
                        tf.no_op)
            return
        elif self.codec.collective == "allreduce":
            bucket.kind = "reduced"
            self._send_reduced(bucket)
        else:
            bucket.kind = "sparse"
            bucket.enc = self._encoder(dtype, shape)(x, self._seed(slot))
            bucket.gathered = self.exchange.allgather(bucket.enc.message, site.process_set)
            slot.record(_message_nbytes(bucket.enc, n, dtype), d * dtype.size, d, bucket.enc.kept, dense=False)
            if not outer:
                return  # decoded at the first decompress, with Horovod's factor inside the decoding
            size = self.exchange.size_op(site.process_set)
            bucket.total, bucket.finite = self._decoder(dtype, shape)(bucket.gathered, size)
            self._update_state(bucket, bucket.finite, _norms(bucket.enc),
                               lambda: self.coder.residual(bucket.x, bucket.enc))
            return
        # reduced, run time: the sum and the new state computed above, in bucket.cond
        bucket.total, bucket.finite, memory_value, compressed, norms = bucket.cond
        self._update_state(bucket, tf.logical_and(bucket.finite, compressed), norms, lambda: memory_value)

    def _update_state(self, bucket, used, norms, new_memory):
        """After the sum: the memory, the codec's state, the random stream and the variance figures,
        none of them from a step where a rank was not finite."""
        slot, finite = bucket.slot, bucket.finite
        if self.memory:
            tf.cond(finite, lambda: slot.memory.assign(new_memory()).op, tf.no_op)
        if bucket.codec_state:
            tf.cond(finite, lambda: tf.group([slot.codec_state[k].assign(v) for k, v in bucket.codec_state.items()]),
                    tf.no_op)
        slot.calls.assign_add(tf.cast(used, tf.int64))  # a skipped step does not use up a stream
        slot.sq_norms.assign_add(tf.where(used, norms, tf.zeros([2], tf.float64)))

    def _receive(self, bucket, j, reduced):
        """Member j's result: Horovod's own (dense), or its factor times its part of the decoded sum."""
        slot, dtype = bucket.slot, bucket.dtype
        if bucket.kind == "dense":
            return self._receive_dense(bucket, j, reduced)
        if bucket.parts is not None:  # split beside the bucket: Horovod's factor, [1], times the part
            part = bucket.parts[j]
            factor = tf.cast(reduced if part.shape.rank else tf.reshape(reduced, []), part.dtype)
            return tf.cast(part * factor, dtype)
        if bucket.total is None:  # compressed, in this branch: decode once, with Horovod's factor inside
            size = self.exchange.size_op(bucket.site.process_set)
            # every member's placeholder carries the same factor (one op, one pair of scale factors)
            bucket.total, bucket.finite = self._decoder(dtype, bucket.shape, scaled=True)(
                bucket.gathered, size, _factor(reduced, compute_dtype(dtype)))
            bucket.scaled = True
            self._update_state(bucket, bucket.finite, _norms(bucket.enc),
                               lambda: self.coder.residual(bucket.x, bucket.enc))
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(bucket.finite, [_nonfinite_message(slot, bucket.shapes[j], dtype)]))
        with tf.control_dependencies(checks):
            part = bucket.member(j, bucket.total)
            if not bucket.scaled:  # Horovod's factor (op, scale factors, 1/M); NaN where a rank was not finite
                part = wire.scaled(part, _factor(reduced, part.dtype), bucket.finite)
            return tf.cast(part, dtype)

    def _receive_dense(self, bucket, j, reduced):
        """A bucket sent dense: Horovod's results as they are; the memory keeps the cast's residual
        (at the last member, when every member's reduced tensor is finite)."""
        if not (self.memory or self.nonfinite == "raise"):
            return reduced
        slot = bucket.slot
        finite = bucket.finite_members[j] = _reduced_is_finite(reduced)
        checks = []
        if self.nonfinite == "raise":
            checks.append(tf.debugging.Assert(finite, [_nonfinite_message(slot, bucket.shapes[j], slot.dtype)]))
        with tf.control_dependencies(checks):
            if self.memory and not bucket.outer and j == len(bucket.tensors) - 1:
                residual = bucket.x - tf.cast(bucket.flat_sent, bucket.x.dtype)
                all_finite = tf.reduce_all(tf.stack(bucket.finite_members))
                tf.cond(all_finite, lambda: slot.memory.assign(residual).op, tf.no_op)
            return tf.identity(reduced)

    def _send_reduced(self, bucket):
        """A codec that sums through Horovod's allreduce itself (PowerSGD): its step runs here, with
        hvdspar's own op=Sum allreduces, and Horovod reduces the placeholder, for its factor."""
        slot, ps, dtype, d = bucket.slot, bucket.site.process_set, bucket.dtype, bucket.d
        x = tf.cast(bucket.x, compute_dtype(dtype))

        def allreduce_sum(t, tag):
            return self.exchange.allreduce_sum(t, ps, exchange.collective_name("HorovodAllreduce", bucket.x, tag))

        red = self.codec.reduce_sum(x, slot.codec_state, allreduce_sum, dtype, bucket.shape,
                                    self.exchange.size_op(ps), self.stream_seed(0, slot.index))
        slot.record(red.nbytes + exchange.placeholder_nbytes(dtype), d * dtype.size, d, red.kept, dense=red.dense)
        new_memory = self.coder.residual(x, red) if self.memory else tf.zeros([0], x.dtype)
        norms = tf.stack([scan(x).sq_norm, tf.cast(red.q_sq_norm, tf.float64)])
        bucket.cond = (red.total, red.finite, new_memory, tf.logical_not(red.dense), norms)
        bucket.codec_state = red.state

    def _send_planned_at_run_time(self, bucket, shape):
        """Elastic training: the byte rule decided at every step, from the world size at run time.

        Horovod does not retrace its allreduce after an elastic reset, so a plan taken at
        trace time would stay that of the first world, and a rank that joins later would
        plan (and so call collectives) differently. Here the graph is the same whatever the
        size: a ``tf.cond`` on ``exchange.prefer_dense_op`` runs either hvdspar's own dense
        allreduce (op=Sum) or the encode + allgather + decode, and Horovod reduces the
        placeholders in both cases, for its factor. ``_receive`` finishes both alike.
        """
        slot, ps, dtype, d, x = bucket.slot, bucket.site.process_set, bucket.dtype, bucket.d, bucket.x
        cdt = compute_dtype(dtype)
        num_ranks = self.exchange.size_op(ps)
        message_nbytes, dense_nbytes = self.codec.expected_nbytes(d, dtype, shape), d * dtype.size
        go_dense = exchange.prefer_dense_op(message_nbytes, dense_nbytes, num_ranks)
        seed = self._seed(slot)
        zero = tf.zeros([0], cdt)
        n = len(bucket.tensors)

        def dense_branch():
            sent = tf.cast(x, dtype)
            total = tf.cast(self.exchange.allreduce_sum(sent, ps, exchange.collective_name("HorovodAllreduce", x, "dense")),
                            cdt)
            new_memory = x - tf.cast(sent, x.dtype) if self.memory else zero
            return (total, _reduced_is_finite(total), new_memory, tf.constant(dense_nbytes, tf.int64),
                    tf.constant(d, tf.int64), tf.zeros([2], tf.float64))

        def sparse_branch():
            enc = self._encoder(dtype, shape)(x, seed)
            gathered = self.exchange.allgather(enc.message, ps, exchange.collective_name("HorovodAllgather", x, "gather"))
            total, finite = self._decoder(dtype, shape)(gathered, num_ranks)
            nbytes = _message_nbytes(enc, n, dtype)
            norms = _norms(enc)
            new_memory = self.coder.residual(x, enc) if self.memory else zero
            return tf.cast(total, cdt), finite, new_memory, nbytes, tf.cast(enc.kept, tf.int64), norms

        total, finite, new_memory, nbytes, kept, norms = tf.cond(go_dense, dense_branch, sparse_branch)
        slot.record(nbytes, dense_nbytes, d, kept, dense=go_dense)
        bucket.cond = (total, finite, new_memory, tf.logical_not(go_dense), norms)

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
        The counters are per tensor (see ``hvdspar.state``); these are their sums.
        """
        return _state.summary(self.slots)

    def plan_summary(self):
        """One line: how many messages the latest trace sends dense, and why (``hvdspar.fallback``)."""
        return self._fallback.summary(self)

    def plans(self):
        """{message index: ``fallback.Plan``} of the latest trace."""
        return dict(self._fallback.plans)

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

    def stream_seed(self, rank, index):
        """The base of the random stream of message ``index`` (a tensor or bucket, in Horovod's call order)
        on ``rank``: its step t draws with the seed ``[stream_seed(rank, index), t]``, t counting the
        steps sent compressed. Distinct per (seed, rank, message); what a simulated worker uses to draw
        as rank ``rank`` would (``training/reproduce_sim.py``)."""
        return (self.seed * 1_000_003 + rank * 65_537 + index) % (2**62)

    def _seed(self, slot):
        """This step's seed of ``slot``'s random stream, with this rank read at run time."""
        return tf.stack([self.stream_seed(0, slot.index) + 65_537 * self.exchange.rank_op(), slot.calls.read_value()])

    def new_slot(self, index, shape, dtype):
        """The state of message ``index``: memory, stream, counters, and the codec's own (PowerSGD's Q,
        alike on every rank). Created once, under ``tf.init_scope``, by compress or ``hvdspar.build``."""
        init = getattr(self.codec, "initial_state", None)
        shape = tf.TensorShape(shape)
        codec_state = init(shape, dtype, self.stream_seed(0, index)) if init and len(shape) >= 2 else None
        return SlotState(index, shape, dtype, self.memory, codec_state)

    def _bucket_for(self, tensor, site):
        """(bucket, j): the message ``tensor`` travels in, and its place there.

        A Horovod group (``groups=``, ``hvd.grouped_allreduce``) is compressed in order before
        any decompress, so its buckets are built in the group's own graph. Without groups,
        Horovod's ``allreduce_grads`` hands every gradient alone to compress, each in its own
        ``tf.cond``; its whole list is known (``CallSite.grads``), so the list is cut into
        buckets once (``_layout``) and each bucket is built in the graph of the gradients, which
        every member's branch reaches. Anything else (``hvd.allreduce``, ``bucket_mb=0``, a
        codec that needs each tensor's shape) is a bucket of one.
        """
        bucketing = self.codec.buckets and self.bucket_mb != 0
        group = site.group if bucketing and site.group is not None and len(site.group) > 1 else None
        if group is not None and any(t is tensor for t in group):
            return self._group_bucket(tensor, site, group)
        traced_list = (site.grads is not None and not tf.executing_eagerly()
                       and self.exchange.world(site.process_set)[0] > 1)
        if traced_list:
            self._count_horovod_path(site)  # (Horovod sends nothing at one rank)
        # Horovod's conds skip the allreduce at one rank (a constant, or at run time under elastic): a
        # bucket built outside them would run anyway, so only where more than one rank is certain
        if bucketing and traced_list and not exchange.elastic():
            layout = self._layout(site)
            i = site.position(tensor)
            if layout is not None and i in layout.where:
                b, j = layout.where[i]
                if b not in layout.buckets:
                    positions = layout.parts[b]
                    with layout.graph.as_default():  # where every member's branch can reach them
                        members = [_with_static_shape(site.grads[p], site) for p in positions]
                    variables = [site.vars[p] for p in positions] if site.vars is not None else None
                    slot, position = self._slot_for(_flat_shape(members), members[0].dtype, site,
                                                    _shapes_key(members), variables)
                    layout.buckets[b] = _Bucket(members, slot, site, position, layout.graph)
                return layout.buckets[b], j
        tensor = _with_static_shape(tensor, site)
        variable = site.variable(tensor)
        slot, position = self._slot_for(tensor.shape, tensor.dtype, site, tuple(tensor.shape.as_list()),
                                        None if variable is None else [variable])
        return _Bucket([tensor], slot, site, position, flat=self.codec.buckets), 0

    def _layout(self, site):
        """The buckets of Horovod's gradient list in this trace (cached): the gradients that compress
        (dense, floating point, a known shape), cut by ``buckets.partition`` (one dtype, at most
        ``bucket_mb``); None where fewer than two would share a message (each then goes alone)."""
        key = (trace_key(), tuple(id(g) for g in site.grads))
        if key in self._layouts:
            return self._layouts[key]
        dense = [isinstance(g, tf.Tensor) and exchange.sums(site.op) for g in site.grads]
        shapes = [_static_shape(g, site) if ok else None for g, ok in zip(site.grads, dense)]
        parts = self.messages(shapes, [g.dtype if ok else None for g, ok in zip(site.grads, dense)])
        graphs = {_graph_of(site.grads[i], None) for part in parts for i in part}
        layout = None
        if any(len(part) > 1 for part in parts) and len(graphs) == 1 and None not in graphs:
            where = {p: (b, j) for b, part in enumerate(parts) for j, p in enumerate(part)}
            layout = _Layout(graphs.pop(), parts, where)
        self._layouts.clear()  # one trace's layout at a time: drop the references to older graphs
        self._layouts[key] = layout
        return layout

    def _count_horovod_path(self, site):
        """Count the gradients that Horovod sends itself and never hands to compress: ``IndexedSlices``
        (an embedding's rows), whose values and indices it allgathers. Their bytes as sent go into
        ``traffic()`` beside the compressed messages, their dense size as the dense equivalent, so
        a model with an embedding reports the ratio it really got. Once per trace and gradient list,
        in the graph of the gradients, in one state per variable."""
        key = (trace_key(), tuple(id(g) for g in site.grads))
        counted = self.__dict__.setdefault("_counted", set())
        if key in counted:
            return
        counted.clear()
        counted.add(key)
        for i, g in enumerate(site.grads):
            if not isinstance(g, tf.IndexedSlices) or site.vars is None or i >= len(site.vars):
                continue
            variable = site.vars[i]
            shape, dtype = tf.TensorShape(variable.shape), tf.as_dtype(g.values.dtype)
            if not shape.is_fully_defined():
                continue
            var_key = ("horovod", _variable_key(variable))
            index = self._by_variables.get(var_key)
            if index is None:
                index = self._by_variables[var_key] = len(self.slots)
                with tf.init_scope():
                    self.slots.append(SlotState(index, shape, dtype, memory=False))
            with _graph_of(g.values, tf.compat.v1.get_default_graph()).as_default():
                self.slots[index].record(exchange.indexed_slices_nbytes(g), shape.num_elements() * dtype.size,
                                         shape.num_elements(), tf.size(g.values, out_type=tf.int64), dense=False)

    def messages(self, shapes, dtypes):
        """The messages of a gradient list without groups=: lists of positions that travel together
        (``buckets.partition``: consecutive, one dtype, at most ``bucket_mb``), over the gradients
        that compress (a known shape, floating point); the others are in none. One per gradient where
        the codec needs each tensor's shape or ``bucket_mb=0``. ``hvdspar.build`` makes their state."""
        eligible = [i for i, (s, dt) in enumerate(zip(shapes, dtypes))
                    if s is not None and s.is_fully_defined() and dt is not None and tf.as_dtype(dt).is_floating]
        if not (self.codec.buckets and self.bucket_mb != 0) or exchange.elastic():
            return [[i] for i in eligible]
        cap = None if self.bucket_mb is None else self.bucket_mb * 2**20
        return [[eligible[k] for k in part] for part in _buckets.partition(
            [shapes[i].num_elements() * tf.as_dtype(dtypes[i]).size for i in eligible],
            [tf.as_dtype(dtypes[i]) for i in eligible], cap)]

    def _group_bucket(self, tensor, site, group):
        """(bucket, j) of ``tensor`` in a Horovod group: consecutive tensors of one dtype, at most
        ``bucket_mb`` MB (``buckets.partition``), the first member of each bucket sending it."""
        pos = next(i for i, t in enumerate(group) if t is tensor)
        if self._group is None or self._group[0] is not group:
            dtypes = {tf.as_dtype(t.dtype) for t in group}
            if len(dtypes) > 1:
                raise ValueError(
                    f"hvdspar: this Horovod group mixes {', '.join(sorted(d.name for d in dtypes))} tensors, and "
                    "Horovod's grouped allreduce takes one dtype per group (Compression.none fails on it too): "
                    "give each dtype its own group (groups=[[float32 variables], [float16 variables]]) or "
                    "leave groups= out")
            # the group's tensors that compress (the others pass through: ``_pass_reason``)
            eligible = [i for i, t in enumerate(group) if self._pass_reason(t, site) is None]
            tensors = {i: _with_static_shape(tf.convert_to_tensor(group[i]), site) for i in eligible}
            cap = None if self.bucket_mb is None else self.bucket_mb * 2**20
            parts = [[eligible[k] for k in part] for part in _buckets.partition(
                [tensors[i].shape.num_elements() * tensors[i].dtype.size for i in eligible],
                [tensors[i].dtype for i in eligible], cap)]
            where = {p: (b, j) for b, part in enumerate(parts) for j, p in enumerate(part)}
            # (in __dict__: tf.Module would wrap a tuple attribute in a tracked copy)
            self.__dict__["_group"] = (group, tensors, parts, where, {})
        _, tensors, parts, where, open_buckets = self._group
        b, j = where[pos]
        if j == 0:
            members = [tensors[p] for p in parts[b]]
            variables = [site.variable(group[p]) for p in parts[b]]
            variables = variables if all(v is not None for v in variables) else None
            slot, position = self._slot_for(_flat_shape(members), members[0].dtype, site, _shapes_key(members),
                                            variables)
            open_buckets[b] = _Bucket(members, slot, site, position)
        bucket = open_buckets[b]
        if pos == parts[-1][-1]:
            self.__dict__["_group"] = None  # the group is sent: drop the references to its graph's tensors
        return bucket, j

    def _slot_for(self, shape, dtype, site, eager_key, variables=None):
        """(state, position in the trace) of the message being sent (one tensor or a bucket).

        Keyed by the message's variables where Horovod's frame names them (what
        DistributedOptimizer and DistributedGradientTape pass): two optimizers, or two models of
        the same shapes, never share memory or streams, and a retrace finds its state again.
        Otherwise, in a tf.function, by the position in Horovod's call order (a new trace
        restarts it); in an eager ``hvd.allreduce(t, compression=c)``, by the call's ``name=``
        if it has one, else by shape and dtype (give two tensors of equal shape distinct
        names). Either way the slot is checked against shape and dtype.
        """
        key = trace_key()
        if key is not self._trace:
            self._trace, self._next_slot = key, 0
        position = self._next_slot
        if not tf.executing_eagerly():
            self._next_slot += 1
        if variables is not None:
            var_key = tuple(_variable_key(v) for v in variables)
            index = self._by_variables.get(var_key)
            if index is None:
                index = self._by_variables[var_key] = len(self.slots)
        elif tf.executing_eagerly():
            key = (site.name, eager_key, dtype.name)
            if site.name is not None:
                for (name, shp, dt), _ in self._eager_index.items():
                    if name == site.name and (shp, dt) != key[1:]:
                        raise ValueError(
                            f"hvdspar: {self.name} got a {dtype.name}{list(eager_key)} tensor "
                            f"named {site.name!r}, where earlier calls of that name had {dt}{list(shp)}"
                        )
            index = self._eager_index.get(key)
            if index is None:
                index = self._eager_index[key] = len(self.slots)
            position = index
        else:
            index = position
        if index == len(self.slots):
            self._new_slot_here(index, shape, dtype)
        slot = self.slots[index]
        if slot.shape != shape or slot.dtype != dtype:
            raise ValueError(
                f"hvdspar: {self.name} got a {dtype.name}{shape.as_list()} gradient (or bucket) at position "
                f"{index}, where earlier steps had {slot.dtype.name}{slot.shape.as_list()}. Where Horovod's "
                "frame does not name the variables (a bare hvd.allreduce in a tf.function), use one compressor "
                "instance per optimizer, with a fixed set of trainable variables (and the same groups=)."
            )
        return slot, position

    def _new_slot_here(self, index, shape, dtype):
        """Append slot ``index`` (under ``tf.init_scope``), with errors that say what to do."""
        try:
            with tf.init_scope():
                self.slots.append(self.new_slot(index, shape, dtype))
                restored = int(self.slots[index].elements.numpy()) if tf.executing_eagerly() else None
            if restored is not None and restored != shape.num_elements():
                raise ValueError(f"restored a message of {restored} elements into one of {shape.num_elements()}")
        except ValueError as e:
            if "restor" in str(e).lower():
                del self.slots[index:]
                raise ValueError(
                    f"hvdspar: the checkpoint restored into {self.name} holds message #{index} with another "
                    f"shape than the {dtype.name}{shape.as_list()} it sends now: the checkpoint was written "
                    "with another bucket layout (hvdspar before 0.2 sent each tensor alone without groups=; "
                    "now a model's gradients travel in buckets), other groups= or bucket_mb=, or another "
                    "model. Restore it into a compressor with the layout it was written with (bucket_mb=0: "
                    "per tensor, as before 0.2), or restore the model and optimizer only (the compressor's "
                    f"state starts at zero). TensorFlow said: {e}"
                ) from e
            raise


def _static_shape(tensor, site):
    """``tensor``'s static shape, or its variable's where the tensor's is not known at trace time
    (``sparse_as_dense=True`` turns an embedding's gradient into a [None, k] tensor); None if neither."""
    if tensor.shape.is_fully_defined():
        return tensor.shape
    variable = site.variable(tensor)
    if variable is not None and variable.shape.is_fully_defined() and tensor.shape.is_compatible_with(
            variable.shape):
        return tf.TensorShape(variable.shape)
    return None


def _with_static_shape(tensor, site):
    """``tensor`` with its static shape (``_static_shape``) set, checked at run time."""
    shape = _static_shape(tensor, site)
    if shape is None or tensor.shape.is_fully_defined():
        return tensor
    return tf.ensure_shape(tensor, shape)


def _graph_of(tensor, default):
    """The graph ``tensor`` was built in; ``default`` for an eager tensor (a constant a step captures)."""
    if tf.executing_eagerly() or isinstance(tensor, tf.__internal__.EagerTensor):
        return default
    return tensor.graph


def _flat_shape(members):
    return members[0].shape if len(members) == 1 else tf.TensorShape([sum(t.shape.num_elements() for t in members)])


def _shapes_key(members):
    if len(members) == 1:
        return tuple(members[0].shape.as_list())
    return ("bucket",) + tuple(tuple(t.shape.as_list()) for t in members)


def _variable_key(variable):
    """A hashable key of a variable that outlives traces (a variable's ``ref()``)."""
    return variable.ref() if hasattr(variable, "ref") else id(variable)


def _check_tf2():
    """hvdspar needs TensorFlow 2's eager execution or tf.function (its state is in variables created
    on first use, which a TF1 graph would need a session to initialise), also around a tf.function
    (a tf.function called in a TF1 graph has that graph outside it)."""
    with tf.init_scope():
        outside_eager = tf.executing_eagerly()
    if not outside_eager:
        raise RuntimeError(
            "hvdspar: compressors run in TensorFlow 2's eager mode or inside tf.function, not in a TF1 graph "
            "(tf.compat.v1 sessions): their state (random stream, memory, traffic) is created on first use. "
            "Use hvd.Compression.none or .fp16 in TF1 graph code")


def _with_horovod_gradient(x, y, site):
    """``y`` (the allreduce of ``x``), with Horovod's gradient with respect to ``x``: the allreduce of
    the upstream gradient with the call's op and scale factors (``exchange.allreduce_gradient``).
    Only where a gradient tape could record it: an optimizer's allreduce of its gradients, after the
    tape, needs none (and a custom gradient per tensor costs its trace a few ms each)."""
    if not _record.could_possibly_record():
        return y

    @tf.custom_gradient
    def allreduced(x_):
        def grad(dy):
            return exchange.allreduce_gradient(dy, site)

        return tf.identity(y), grad

    return allreduced(x)



def _nonfinite_message(slot, shape, dtype, shapes=None):
    """The error of nonfinite='raise': the gradient, or the bucket's gradients (``shapes``, several)."""
    what = (f"a gradient of shape {shape.as_list()}" if not shapes or len(shapes) == 1 else
            f"one of the {len(shapes)} gradients of a bucket (shapes {[s.as_list() for s in shapes][:4]}"
            f"{', ...' if len(shapes) > 4 else ''})")
    return (
        f"hvdspar: {what} ({dtype.name}, message #{slot.index}) holds NaN or Inf "
        "on at least one rank; training stopped before the model was changed (nonfinite='raise'). Lower the "
        "learning rate, clip gradients, or use loss scaling for float16; nonfinite='propagate' (the default) "
        "lets the non-finite result through, as Horovod does, for a LossScaleOptimizer to skip the step."
    )


def _message_nbytes(enc, n_members, dtype):
    """Bytes a compressed message puts on the wire: the message and one placeholder per member."""
    return tf.size(enc.message, out_type=tf.int64) + n_members * exchange.placeholder_nbytes(dtype)


def _factor(reduced, dtype):
    """Horovod's factor: its reduction of the placeholder (``hvdspar.exchange``), a scalar of ``dtype``."""
    return tf.cast(tf.reshape(reduced, [-1])[0], dtype)


def _reduced_is_finite(reduced):
    """Whether a reduced (summed) tensor is finite: any rank's NaN/Inf makes the sum non-finite,
    so one reduction tells every rank alike."""
    wide = reduced if reduced.dtype == tf.float64 else tf.cast(reduced, tf.float32)
    return tf.math.is_finite(tf.reduce_sum(wide))


def _norms(enc):
    """[||x||^2, ||Q(x)||^2] (float64) of a message sent compressed, for the variance figures
    (both from ``encode``: ||x||^2 from its first pass over x, ``hvdspar.scan``)."""
    return tf.stack([tf.cast(enc.x_sq_norm, tf.float64), tf.cast(enc.q_sq_norm, tf.float64)])


def _fmt(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: compressors created while a tf.function is traced, by (class, arguments, place in the code): the
#: first of each holds the state that the later ones (the same line traced again) share
_IN_STEP = {}


def _share_in_step_state(comp):
    """A compressor built inside a ``tf.function`` step (``compression=hvdspar.GSpar(...)`` in the step,
    as Horovod's custom-loop benchmark builds its compressor) is built again at every trace of that
    step. Each later one shares the state of the first built at the same line with the same
    arguments (random stream, memory, traffic): variables cannot be created again at a retrace,
    and the step must not start over. ``in_step_compressors()`` returns the first ones."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("hvdspar"):
        frame = frame.f_back  # a method class's own __init__: the user's line is above it
    where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else None
    config = {k: v for k, v in comp.config().items() if k != "seed"}
    key = (type(comp), repr(sorted(config.items(), key=lambda kv: kv[0])), where)
    owner = _IN_STEP.setdefault(key, comp)
    if owner is comp:
        return
    comp.seed = owner.seed
    comp.slots = owner.slots
    for name in ("_eager_index", "_fallback", "_layouts", "_by_variables", "_passed", "_traced_fns"):
        if name in owner.__dict__:
            comp.__dict__[name] = owner.__dict__[name]
    comp.__dict__["_owner"] = owner


def in_step_compressors():
    """The compressors built inside ``tf.function`` steps, one per line of code and arguments (the
    first built; later traces share its state): for ``traffic()`` or tracking of a compressor the
    script never holds, e.g. ``hvdspar.in_step_compressors()[0].traffic()`` after the first step."""
    return list(_IN_STEP.values())
