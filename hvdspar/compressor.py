"""The base of every hvdspar compressor: Horovod's two-method interface around a codec.

A gradient's trip, read first (each role is an object; docs/design.md is the map)::

    compress(g):
        message, j = buckets.find(g)                   # the bucket g travels in  (hvdspar.buckets)
        once per message, where every member reaches it:
            x = feedback.feed(concat(g...), m)         # e = m + g            (hvdspar.error_feedback)
            plan = fallback.decide(d, dtype, M)        # dense or compressed  (hvdspar.fallback)
            sent = communicator(plan).send(x, message) # hvdspar.communicators: Dense, Allgather, ...
        return sent.handed[j]
    Horovod: allreduce of what compress returned, with the user's op and scale factors
    decompress(t):
        return sent.receive(j, t)                      # dense: t; compressed: factor(t) x part j

Tensors that cannot carry a compressed message (integers, op=Min/Max/Product, a shape
unknown at trace time with no variable to take it from) travel as Horovod's none sends
them (``callsite.passes_as_none``). State (``SlotState``) is one per message, keyed by its
variables where Horovod's frame names them (``_slot_for``); a compressor is a
``tf.Module``, so checkpoints hold it.
"""

import collections
import contextlib
import dataclasses
import logging
import random
import sys
import weakref

import tensorflow as tf
from tensorflow.python.eager import record as _record

from hvdspar import callsite, communicators, exchange, hierarchy, kernels
from hvdspar.buckets import Buckets, Message, flat_shape, graph_of
from hvdspar.error_feedback import ErrorFeedback, NoMemory
from hvdspar.fallback import RUN_TIME, Fallback
from hvdspar import state as _state
from hvdspar.state import SlotState, trace_key

try:  # Horovod's interface; hvdspar's pure-TF parts work without Horovod.
    from horovod.tensorflow.compression import Compressor as _HorovodCompressor
except ImportError:  # pragma: no cover - exercised only where Horovod is absent

    class _HorovodCompressor:
        """Stand-in with Horovod's interface when Horovod is not installed."""


NONFINITE = ("propagate", "raise")


class Receipt(collections.namedtuple("Receipt", ["sent", "j", "tensor"])):
    """compress -> decompress context: member ``j`` of ``sent`` (``communicators.Sent``), whose
    input was ``tensor``. (None instead for a tensor that travels as Horovod's none sends it.)"""


class Compressor(_HorovodCompressor, tf.Module):
    """A Horovod compressor running ``codec`` (an ``hvdspar.codec.Codec``); see the module docstring.

    A method's class (``hvdspar.GSpar``, ...) builds its codec and passes it here with the
    arguments every compressor has (memory, fallback, nonfinite, seed, bucket_mb).
    """

    #: short name used by ``hvdspar.from_spec``
    spec_name = None

    #: Python-only bookkeeping (in ``__dict__``), which ``tf.Module`` need not walk
    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES | {
        "feedback", "buckets", "_bucket_mb", "_dense", "_compressed", "_at_run_time", "_fallback", "_sent", "_trace",
        "_eager_index", "_by_variables", "_passed", "_traced_fns", "_owner", "_nodes"}

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
        self.bucket_mb = bucket_mb  # (and ``buckets``, which cuts by it)
        self.memory = memory
        self.fallback = fallback
        self.nonfinite = nonfinite
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.slots = []
        #: the collectives of the trip: Horovod's (``exchange.Horovod``), or ``exchange.InProcess`` for tests
        self.exchange = exchange.Horovod()
        # The roles, and Python-only bookkeeping, kept out of tf.Module's tracking (and so out of checkpoints).
        self.__dict__.update(
            #: error feedback (``ErrorFeedback``), or none (``NoMemory``): what x is fed and encoded with
            feedback=(ErrorFeedback if memory else NoMemory)(codec),
            # how a message meets the other ranks, by its plan (``hvdspar.communicators``)
            _dense=communicators.Dense(self),
            _compressed=(communicators.Allreduce if codec.sums_by_allreduce else communicators.Allgather)(self),
            _at_run_time=communicators.ChosenAtRunTime(self),
            _fallback=plans,  # the dense fallback's policy and latest decisions
            _sent=weakref.WeakKeyDictionary(),  # Message -> communicators.Sent, while a trace holds it
            _trace=None,  # the bookkeeping of the trace being built (``_Trace``)
            _eager_index={},  # (name, shapes, dtype) -> slot index, for eager calls
            _by_variables={},  # the variables of a message (their refs) -> slot index
            _passed=set(),  # reasons already logged for tensors sent as Horovod's none
            _traced_fns={},  # the traced encoders and decoders, by dtype and shape
        )
        if tf.inside_function():
            _share_in_step_state(self)

    @property
    def bucket_mb(self):
        """The cap of a bucket in MB (None: no cap; 0: each tensor alone)."""
        if "_bucket_mb" not in self.__dict__:  # (tf.Module's setattr reads an attribute before it sets it)
            raise AttributeError("bucket_mb")
        return self.__dict__["_bucket_mb"]

    @bucket_mb.setter
    def bucket_mb(self, value):
        self.__dict__["_bucket_mb"] = value
        #: which message each tensor travels in (``hvdspar.buckets``)
        self.__dict__["buckets"] = Buckets(self.codec.buckets and value != 0, None if value is None else value * 2**20,
                                           self._new_message)

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
        """Horovod's first call. The first member of a message sends it (``_send``)."""
        _check_tf2()
        site = callsite.call_site()
        why = callsite.passes_as_none(tensor, site)
        if why is not None:
            return self._pass_through(tensor, site, why), None
        num_ranks = self.exchange.world(site.process_set)[0]
        if site.grads is not None and num_ranks > 1 and not tf.executing_eagerly():
            self._count_horovod_path(site)
        message, j = self.buckets.find(tensor, site, num_ranks)
        sent = self._sent.get(message)
        if sent is None:
            sent = self._sent[message] = self._send(message)
        return tf.identity(sent.handed[j]), Receipt(sent, j, tensor)

    @tf.autograph.experimental.do_not_convert
    def decompress(self, tensor, ctx):
        """Horovod's second call, with its reduction of what ``compress`` returned."""
        if ctx is None:
            return tensor
        return _with_horovod_gradient(ctx.tensor, ctx.sent.receive(ctx.j, tensor), ctx.sent.message.site)

    def _send(self, message):
        """x = concat(g) + m, the plan, and the plan's communicator's send, built where every member's
        Horovod branch reaches it (``Message.graph``)."""
        slot, ps, dtype = message.slot, message.site.process_set, message.dtype
        with _building_in(message.graph):
            num_ranks, rank = self.exchange.world(ps)
            nodes = self._across_nodes(ps, num_ranks)  # the byte rule then counts nodes, not ranks
            plan = self._fallback.decide(self, slot.index, message.d, dtype, message.shape,
                                         nodes.topology.num_nodes if nodes else num_ranks, len(message.tensors))
            self._fallback.log_at_first_step(self, slot, message.position, rank)
            checked = self.exchange.check_signature(message.tensors, ps)  # ranks that disagree all stop here
            with tf.control_dependencies(checked):
                x = self.feedback.feed(message.concat(), slot.memory, dtype)
            communicator = (self._at_run_time if plan.reason == RUN_TIME else self._dense if plan.dense
                            else nodes or self._compressed)
            return communicator.send(x, message)

    def _across_nodes(self, process_set, num_ranks):
        """The hierarchical exchange (``communicators.Hierarchical``) where this job has its process
        sets (``hvdspar.node_process_sets``), for an allgather codec on the global set; else None
        (flat), said once in the log on a job of several nodes of several ranks."""
        if "_nodes" not in self.__dict__:
            topology, why = hierarchy.topology()
            self.__dict__["_nodes"] = communicators.Hierarchical(self, topology) if topology else None
            _, local, cross = hierarchy.launched_layout()
            if topology is None and local > 1 and cross > 1 and self.exchange.world()[1] == 0:
                logging.getLogger("hvdspar").info("hvdspar: %s exchanges flat across %d nodes of %d ranks: %s",
                                                  type(self).__name__, cross, local, why)
        if process_set is not None or num_ranks < 2 or self.codec.sums_by_allreduce:
            return None
        return self._nodes

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

    def encoder(self, dtype, shape):
        """``feedback.encode`` for one dtype and shape, traced once: every message of that shape (of
        that size, for a codec that buckets) calls the same function, and every message under
        ``kernels.XLA_MIN_ELEMENTS`` one function for all sizes where the codec takes d at run time
        (``Codec.sizes_at_run_time``). x and the seed in, ``Encoded`` out."""
        d = shape.num_elements()
        if not self._one_for_small_sizes(d):
            shape = self._traced_shape(shape)
            return self._traced(("encode", dtype.name, tuple(shape.as_list())),
                                lambda x, seed: self.feedback.encode(x, seed, dtype, shape))

        def encode(x, seed):
            fn = self._traced(("encode", dtype.name, "small", x.dtype.name),
                              lambda x, seed: self.feedback.encode(x, seed, dtype),
                              (tf.TensorSpec([None], x.dtype), tf.TensorSpec.from_tensor(seed)))
            enc = fn(tf.reshape(x, [-1]), seed)
            enc.q.set_shape([d if self.memory else 0])
            return enc

        return encode

    def decoder(self, dtype, shape):
        """``codec.decode_sum`` for one dtype and shape, traced once (see ``encoder``): the gathered
        messages and the number of ranks (a tensor read at run time: ``exchange.size_op``) in,
        (sum_r Q(x_r), every rank finite?) out.

        No argument of the call is a constant, which Grappler would answer with a copy of the
        function for that call site (docs/design.md, "A message's trip"): d, where the function
        takes it, travels stacked with the number of ranks."""
        d = shape.num_elements()
        if not self._one_for_small_sizes(d):
            shape = self._traced_shape(shape)
            return self._traced(("decode", dtype.name, tuple(shape.as_list())),
                                lambda data, num_ranks: self.codec.decode_sum(data, num_ranks, d, dtype, shape),
                                (tf.TensorSpec([None], tf.uint8), tf.TensorSpec([], tf.int32)))
        fn = self._traced(("decode", dtype.name, "small"),
                          lambda data, sizes: self.codec.decode_sum(data, tf.cast(sizes[0], tf.int32), sizes[1],
                                                                    dtype),
                          (tf.TensorSpec([None], tf.uint8), tf.TensorSpec([2], tf.int64)))

        def decode(data, num_ranks):
            total, finite = fn(data, tf.stack([tf.cast(num_ranks, tf.int64), tf.constant(d, tf.int64)]))
            total.set_shape([d])
            return total, finite

        return decode

    def _one_for_small_sizes(self, d):
        return self.codec.sizes_at_run_time and not kernels.large(d)

    def _traced_shape(self, shape):
        """The shape a traced function is made for: a codec that buckets reads only the size, so
        tensors of one size share it whatever their shapes."""
        return tf.TensorShape([shape.num_elements()]) if self.codec.buckets else shape

    def _traced(self, key, fn, signature=None):
        """``fn`` as a tf.function, once per key (for ``signature``'s shapes, if given); not inlined,
        so that messages sent one by one share one copy of the encoder instead of each carrying its own."""
        if key not in self._traced_fns:
            self._traced_fns[key] = tf.function(fn, input_signature=signature, autograph=False,
                                                experimental_attributes={"_noinline": True})
        return self._traced_fns[key]

    def nonfinite_message(self, slot, shapes, dtype):
        """The error of nonfinite='raise' for a message of gradients of ``shapes``."""
        what = (f"a gradient of shape {shapes[0].as_list()}" if len(shapes) == 1 else
                f"one of the {len(shapes)} gradients of a bucket (shapes {[s.as_list() for s in shapes][:4]}"
                f"{', ...' if len(shapes) > 4 else ''})")
        return (
            f"hvdspar: {what} ({dtype.name}, message #{slot.index}) holds NaN or Inf "
            "on at least one rank; training stopped before the model was changed (nonfinite='raise'). Lower the "
            "learning rate, clip gradients, or use loss scaling for float16; nonfinite='propagate' (the default) "
            "lets the non-finite result through, as Horovod does, for a LossScaleOptimizer to skip the step."
        )

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

    def stream_seed(self, rank, index):
        """The base of the random stream of message ``index`` (a tensor or bucket, in Horovod's call order)
        on ``rank``: its step t draws with the seed ``[stream_seed(rank, index), t]``, t counting the
        steps sent compressed. Distinct per (seed, rank, message); what a simulated worker uses to draw
        as rank ``rank`` would (``training/reproduce_sim.py``)."""
        return (self.seed * 1_000_003 + rank * 65_537 + index) % (2**62)

    def seed_of(self, slot):
        """This step's seed of ``slot``'s random stream, with this rank read at run time."""
        offset = self.once_per_trace("rank", lambda: 65_537 * self.exchange.rank_op())
        return tf.stack([self.stream_seed(0, slot.index) + offset, slot.calls.read_value()])

    def size_op(self, process_set=None):
        """The number of ranks of ``process_set``, read at run time (``exchange.size_op``), once per trace."""
        return self.once_per_trace(("size", process_set), lambda: self.exchange.size_op(process_set))

    def placeholder(self, dtype, process_set=None):
        """What a compressed message hands Horovod (``exchange.Horovod.placeholder``), once per trace."""
        return self.once_per_trace(("placeholder", tf.as_dtype(dtype).name, process_set),
                                   lambda: self.exchange.placeholder(dtype, process_set))

    def once_per_trace(self, key, make):
        """``make()`` built once per trace, in the traced function's own graph (``state.trace_key``),
        which Horovod's per-tensor conds capture: the rank, sizes and placeholders that every message
        of a step reads cost their ops once, not once per tensor. Eagerly, ``make()``."""
        if tf.executing_eagerly():
            return make()
        trace = self._this_trace()
        if key not in trace.values:
            with trace.graph().as_default(), tf.name_scope("hvdspar"):
                trace.values[key] = make()
        return trace.values[key]

    def _this_trace(self):
        """The bookkeeping of the trace being built (``state.trace_key``), new with each trace."""
        graph = trace_key()
        trace = self._trace
        if trace is None or trace.graph() is not graph:
            trace = self.__dict__["_trace"] = _Trace(weakref.ref(graph))
        return trace

    def new_slot(self, index, shape, dtype):
        """The state of message ``index``: memory, stream, counters, and the codec's own (PowerSGD's Q,
        alike on every rank). Created once, under ``tf.init_scope``, by compress or ``hvdspar.build``."""
        shape = tf.TensorShape(shape)
        return SlotState(index, shape, dtype, self.memory,
                         self.codec.initial_state(shape, dtype, self.stream_seed(0, index)))

    def state_of(self, variables, shape, dtype):
        """The state of the message of ``variables`` (a list), made if new: what compress finds for
        them in any trace, and what ``hvdspar.build`` makes ahead."""
        key = tuple(_variable_key(v) for v in variables)
        index = self._by_variables.get(key)
        if index is None:
            self._new_slot_here(len(self.slots), shape, dtype)
            index = self._by_variables[key] = len(self.slots) - 1
        return self.slots[index]

    def _new_message(self, members, site, variables, graph):
        """A ``buckets.Message`` of ``members`` (their variables, if known), with its state."""
        slot, position = self._slot_for(flat_shape(members), members[0].dtype, site, _shapes_key(members),
                                        variables)
        return Message(tuple(members), slot, site, position, graph, flat=self.codec.buckets)

    def _count_horovod_path(self, site):
        """Count the gradients that Horovod sends itself and never hands to compress: ``IndexedSlices``
        (an embedding's rows), whose values and indices it allgathers. Their bytes as sent go into
        ``traffic()`` beside the compressed messages, their dense size as the dense equivalent, so
        a model with an embedding reports the ratio it really got. Once per trace and gradient list,
        in the graph of the gradients, in one state per variable."""
        counted = self._this_trace().counted
        key = tuple(id(g) for g in site.grads)
        if key in counted:
            return
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
            with graph_of(g.values, tf.compat.v1.get_default_graph()).as_default():
                self.slots[index].record(_state.indexed_slices_nbytes(g), shape.num_elements() * dtype.size,
                                         shape.num_elements(), tf.size(g.values, out_type=tf.int64), dense=False)

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
        trace = self._this_trace()
        position = trace.next_position
        if not tf.executing_eagerly():
            trace.next_position += 1
        if variables is not None:
            index = self.state_of(variables, shape, dtype).index
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


@dataclasses.dataclass
class _Trace:
    """What a compressor keeps of the trace being built: its graph (held weakly), the position of the
    next message in Horovod's call order, the gradient lists whose Horovod-path tensors are counted
    (``_count_horovod_path``), and the values ``once_per_trace`` made."""

    graph: weakref.ref
    next_position: int = 0
    counted: set = dataclasses.field(default_factory=set)
    values: dict = dataclasses.field(default_factory=dict)


def _variable_key(variable):
    """A hashable key of a variable that outlives traces (a variable's ``ref()``)."""
    return variable.ref() if hasattr(variable, "ref") else id(variable)


def _shapes_key(members):
    """The eager key of a message's shapes: the tensor's, or the bucket's members'."""
    if len(members) == 1:
        return tuple(members[0].shape.as_list())
    return ("bucket",) + tuple(tuple(t.shape.as_list()) for t in members)


def _building_in(graph):
    """Build in ``graph`` (the graph of a bucket's gradients, outside their Horovod conds), or where
    we are (None). Horovod's rank and size ops are stateful: made there once, they keep the
    members' conds free of them."""
    if graph is None or graph is tf.compat.v1.get_default_graph():
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for scope in (graph.as_default(), graph.name_scope(""), tf.name_scope("hvdspar")):
        stack.enter_context(scope)
    return stack


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
    for name in ("_eager_index", "_fallback", "_by_variables", "_passed", "_traced_fns"):
        comp.__dict__[name] = owner.__dict__[name]
    comp.__dict__["_owner"] = owner


def in_step_compressors():
    """The compressors built inside ``tf.function`` steps, one per line of code and arguments (the
    first built; later traces share its state): for ``traffic()`` or tracking of a compressor the
    script never holds, e.g. ``hvdspar.in_step_compressors()[0].traffic()`` after the first step."""
    return list(_IN_STEP.values())
