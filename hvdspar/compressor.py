"""The base of every hvdspar compressor: Horovod's two-method interface plus state.

A subclass only says how one rank's (flattened) gradient becomes a message and
how a concatenation of the ranks' messages becomes their sum::

    encode(x, seed, dtype)                -> Encoded(message, q, kept, q_sq_norm)
    decode_sum(data, num_ranks, d, dtype) -> (sum of the ranks' Q [d], all senders finite)
    expected_nbytes(d, dtype)             -> planned message size (for the dense fallback)

This class does the rest, once for all methods: slot bookkeeping across
``tf.function`` traces, the allgather exchange and averaging, the dense
fallback, error feedback (``memory=True``), NaN/Inf handling and traffic
accounting in ``tf.Variable`` counters (see ``traffic()``).

The dense fallback (``fallback=``, per tensor, decided at trace time alike on
every rank, counted in ``traffic()["dense_tensors"]``):

    "auto" (default)  dense when the allgather would move more bytes than a
                      ring allreduce, or when the dense allreduce is faster on
                      this network once the compressor's own compute is paid
                      (measured at the first step, ``hvdspar.link``): on a fast
                      link (loopback, InfiniBand) compression does not pay and
                      training runs as fast as without it
    True              by bytes only (``exchange.prefer_dense``): deterministic,
                      the same decisions on every machine; for studying the
                      method itself on a fast link
    False             always compressed

State is a ``tf.Module``: put the compressor in a ``tf.train.Checkpoint`` (or
``hvdspar.track(model, compressor)``) and error-feedback memory survives a
save and restore; restoring before the first step is deferred until the
memory variables exist.
"""

import collections
import random

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


class Encoded(collections.namedtuple("Encoded", ["message", "q", "kept", "q_sq_norm"])):
    """What ``Compressor.encode`` returns: the uint8 message, Q(x) if memory is on
    (else a [0] tensor), the count of kept elements, and ||Q(x)||^2."""


class Compressor(_HorovodCompressor, tf.Module):
    """Base class; see the module docstring. Not used directly."""

    #: short name used by ``hvdspar.from_spec``
    spec_name = None

    def __init__(self, memory=False, fallback="auto", seed=None, name=None):
        tf.Module.__init__(self, name=name or type(self).__name__)
        if not isinstance(memory, bool):
            raise ValueError(f"hvdspar: memory must be True or False, got {memory!r}")
        if not (isinstance(fallback, bool) or fallback == "auto"):
            raise ValueError(f"hvdspar: fallback must be True, False or 'auto', got {fallback!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"hvdspar: seed must be a non-negative integer or None, got {seed!r}")
        self.memory = memory
        self.fallback = fallback
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.slots = []
        self._trace = None
        self._next_slot = 0
        self.__dict__["_compute_costs"] = {}  # dtype -> link.Compute (fallback="auto"); not checkpointed

    # --- what a subclass provides -----------------------------------------------------------

    def encode(self, x, seed, dtype):
        """Flat x (gradient, plus memory) -> ``Encoded``.

        ``dtype`` is the gradient's dtype, x is in it or in its compute dtype.
        Encoded.q, this rank's Q(x) as the receivers will decode it (compute
        dtype), is needed only when ``self.memory`` (else a [0] tensor).
        Encoded.q_sq_norm is ||Q(x)||^2 (for the variance figures). A
        non-finite x must give a message that decode_sum flags as such.
        """
        raise NotImplementedError

    def decode_sum(self, data, num_ranks, d, dtype):
        raise NotImplementedError

    def expected_nbytes(self, d, dtype):
        raise NotImplementedError

    def config(self):
        """The constructor arguments, for ``spec()`` and tracking."""
        return {"memory": self.memory, "fallback": self.fallback, "seed": self.seed}

    # --- the Horovod interface --------------------------------------------------------------

    @tf.autograph.experimental.do_not_convert
    def compress(self, tensor):
        tensor = tf.convert_to_tensor(tensor)
        if not tensor.shape.is_fully_defined():
            raise ValueError(f"hvdspar: {self.name} needs gradients of static shape, got {tensor.shape}")
        dtype = tensor.dtype
        cdt = compute_dtype(dtype)
        d = tensor.shape.num_elements()
        num_ranks, rank = exchange.world()
        slot = self._slot_for(tensor)
        dense_nbytes = d * dtype.size

        x = tf.reshape(tensor, [-1])
        if self.memory:
            x = tf.cast(x, cdt) + slot.memory  # e = m + g (error feedback)

        if d == 0 or (self.fallback and not self._sparse_pays(d, dtype, num_ranks)):
            sent = tf.cast(x, dtype)
            if self.memory:
                slot.memory.assign(x - tf.cast(sent, cdt))
            slot.record(dense_nbytes, dense_nbytes, d, d, dense=True)
            # Nothing heavier before Horovod's allreduce: tf.function runs stateful ops in program
            # order, so work here would delay the collective. The norm is taken in decompress.
            return tf.reshape(sent, tensor.shape), ("dense", tensor.shape)

        seed = tf.stack([tf.constant(self._seed_base(rank, slot.index), tf.int64), slot.calls.read_value()])
        slot.calls.assign_add(1)
        enc = self.encode(x, seed, dtype)
        gathered = exchange.allgather(enc.message)
        total, all_finite = self.decode_sum(gathered, num_ranks, d, dtype)
        check = tf.debugging.Assert(
            all_finite,
            [
                f"hvdspar: a gradient of shape {tensor.shape.as_list()} ({dtype.name}, tensor #{slot.index}) "
                "holds NaN or Inf on at least one rank; training stopped before the model was changed. "
                "Lower the learning rate, clip gradients, or use loss scaling for float16."
            ],
        )
        with tf.control_dependencies([check]):
            average = tf.cast(total / tf.cast(num_ranks, total.dtype), dtype)
        if self.memory:
            slot.memory.assign(x - enc.q)
        nbytes = tf.size(enc.message, out_type=tf.int64) + exchange.PLACEHOLDER_NBYTES
        slot.record(nbytes, dense_nbytes, d, enc.kept, dense=False, sq_norm=_sq_norm(x), sq_norm_sent=enc.q_sq_norm)
        return exchange.placeholder(), ("sparse", tf.reshape(average, tensor.shape))

    @tf.autograph.experimental.do_not_convert
    def decompress(self, tensor, ctx):
        kind, payload = ctx
        if kind == "sparse":
            return payload
        # The NaN/Inf check in one reduction (a non-finite element makes the sum non-finite).
        # Nothing else: a dense tensor is sent as it is (Q = identity) and stays out of the
        # variance figures, which describe the compressed tensors.
        check = tf.debugging.Assert(
            tf.math.is_finite(tf.reduce_sum(tf.cast(tensor, tf.float32) if tensor.dtype != tf.float64 else tensor)),
            [f"hvdspar: an averaged gradient of shape {payload.as_list()} holds NaN or Inf, or values whose "
             "sum overflows float32 (dense path)"],
        )
        with tf.control_dependencies([check]):
            return tf.identity(tensor)

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

    def _sparse_pays(self, d, dtype, num_ranks):
        """The fallback's per-tensor decision, taken at trace time, the same on every rank.

        fallback=True: by bytes (``exchange.prefer_dense``). fallback="auto"
        (the default): by bytes first, then by time, from the measured network
        and this compressor's measured compute (``hvdspar.link``): sparse must
        be AUTO_MARGIN times faster. The measurement is collective (every rank
        traces the same step), taken once and broadcast from rank 0.
        """
        message_nbytes, dense_nbytes = self.expected_nbytes(d, dtype), d * dtype.size
        if exchange.prefer_dense(message_nbytes, dense_nbytes, num_ranks):
            return False
        if self.fallback != "auto" or num_ranks <= 1:  # one process: no network to measure
            return True
        from hvdspar import link

        if dtype.name not in self._compute_costs:
            self._compute_costs[dtype.name] = link.measure_compute(self, dtype, num_ranks)
        return link.sparse_pays(link.network(), self._compute_costs[dtype.name], d, message_nbytes, dense_nbytes,
                                num_ranks)

    def _seed_base(self, rank, slot_index):
        # Distinct streams per (seed, rank, tensor); the step comes from slot.calls.
        return (self.seed * 1_000_003 + rank * 65_537 + slot_index) % (2**62)

    def _slot_for(self, tensor):
        """The tensor's position in the call order of the current trace.

        Horovod calls compress() once per gradient, in the same order, inside a
        tf.function; a new trace restarts the order. State (memory, counters,
        random streams) is keyed by that position and checked against shape and dtype.
        """
        key = trace_key()
        if key is not self._trace:
            self._trace, self._next_slot = key, 0
        index = self._next_slot
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
        return slot


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
