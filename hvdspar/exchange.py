"""How a compressed message travels inside Horovod's allreduce.

Horovod calls ``compress(g) -> (t, ctx)``, allreduces ``t`` (same shape and
dtype on every rank), then returns ``decompress(t_reduced, ctx)``. A per-rank
sparse message cannot go through that allreduce, so ``compress`` exchanges it
itself with ``hvd.allgather`` (only the first dimension may differ between
ranks) and hands Horovod a one-element placeholder to allreduce instead.

The placeholder carries Horovod's reduction semantics back to ``decompress``.
It is 1 on the root of the process set and 0 elsewhere, so after Horovod's
allreduce it equals exactly the factor Horovod applies to the *sum* of a tensor
over the ranks:

    op=Average:  prescale * postscale / M        op=Sum:  prescale * postscale

(``gradient_predivide_factor`` is a pair of such scale factors). On ROCm builds
Horovod reduces with Sum and divides ``decompress``'s output by M itself; the
placeholder then comes back as prescale * postscale, and the same rule,
``result = factor * sum_r Q(g_r)``, is right again. So hvdspar never needs to
know the op, the factors or the build: the reduced placeholder is the factor.
The world size M that the decoder loops over is read at run time
(``size_op``), as Horovod does under ``HOROVOD_ELASTIC``.

A compressor reaches the collectives through its ``exchange`` attribute:
``Horovod()`` (the default) calls Horovod's; ``InProcess(num_ranks)`` is a world
of ``num_ranks`` ranks inside one process, for unit tests: this process is one
rank of it, and every other rank's message is given by
``peers`` (by default, an equal copy of this rank's).

What Horovod does not hand to ``compress``, the process set, the op, the scale
factors and (from ``allreduce_grads``) the whole gradient list with its
variables, is read from Horovod's own calling frames (``call_site``): the
allgather must run on the same process set as the allreduce; Adasum or a
reducescatter cannot carry a compressed message, so they are refused at trace
time with a clear error; Min/Max/Product do not sum, so the compressor passes
their tensors through (``sums``).

Cost model (per rank, ring algorithms, M ranks): an allgather of messages of m
bytes moves (M-1) m bytes, a ring allreduce of D dense bytes 2 (M-1)/M D. The
sparse path pays only while M m < 2 D; ``prefer_dense`` applies that rule per
tensor, from the expected message size, so every rank decides the same way.
"""

import collections
import os
import sys

import tensorflow as tf


def _hvd():
    import horovod.tensorflow as hvd

    return hvd


def _initialized():
    try:
        return _hvd().is_initialized()
    except ImportError:  # pragma: no cover - Horovod absent: a single process
        return False


class CallSite(collections.namedtuple("CallSite", ["process_set", "op", "name", "group", "grads", "vars",
                                                   "prescale", "postscale"],
                                       defaults=[None, None, 1.0, 1.0])):
    """What Horovod's allreduce was called with: process set (None = global), op, name, for
    ``grouped_allreduce`` the group's tensors that go through compress (else None), the scale
    factors, and where Horovod's ``allreduce_grads`` (DistributedOptimizer, DistributedGradientTape)
    is the caller, its whole gradient list and the variables (else None)."""

    def position(self, tensor):
        """The index of ``tensor`` in ``grads`` (by identity), or None."""
        if self.grads is None:
            return None
        return next((i for i, g in enumerate(self.grads) if g is tensor), None)

    def variable(self, tensor):
        """The variable whose gradient ``tensor`` is, when Horovod's frame tells (else None)."""
        i = self.position(tensor)
        if i is None or self.vars is None or i >= len(self.vars):
            return None
        return self.vars[i]


#: Horovod functions that call compress(); the first two are supported.
_SUPPORTED_CALLERS = ("allreduce", "grouped_allreduce")
_REFUSED_CALLERS = ("reducescatter", "grouped_reducescatter")
#: Horovod's function that reduces an optimizer's gradients: its locals hold the whole list
_GRADIENTS_CALLER = "allreduce_grads"


def call_site(max_depth=80):
    """The arguments of the Horovod collective that is calling ``compress()``.

    Walks up the Python stack to the nearest frame of ``horovod.tensorflow``'s
    ``allreduce`` / ``grouped_allreduce`` and reads its ``process_set``, ``op``,
    ``name`` and scale factors (and, for a grouped call, the group's tensors);
    then on up to Horovod's ``allreduce_grads``, if that is the caller, for the
    gradient list and the variables. Inside a ``tf.function`` AutoGraph may
    have converted Horovod's functions: their frames are then ``tf__allreduce``
    (branches run in nested frames below it), with the same local names.
    Raises ``NotImplementedError`` for collectives a compressed message cannot
    travel through (reducescatter, Adasum). Called by anything else (a test, a
    user's own code), it is the global set.
    """
    frame = sys._getframe(1)
    seen = []  # Horovod's frames on the way up: AutoGraph's branch functions hold the live values
    site = None
    for _ in range(max_depth):
        frame = frame.f_back
        if frame is None:
            break
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("horovod.tensorflow"):
            continue
        seen.append(frame)
        name = frame.f_code.co_name
        name = name[len("tf__"):] if name.startswith("tf__") else name
        if site is None and name in _REFUSED_CALLERS:
            raise NotImplementedError(
                f"hvdspar: hvd.{name} cannot carry a compressed message (its output is split across the ranks); "
                "use compression=hvd.Compression.none for it"
            )
        if site is None and name in _SUPPORTED_CALLERS:
            args = _live_locals(seen)
            _check_op(args.get("op"))
            process_set = args.get("process_set")
            if process_set is not None and getattr(process_set, "process_set_id", 0) == 0:
                process_set = None
            # grouped_allreduce compresses its dense tensors (``tensor_list``: IndexedSlices go apart) in
            # order, before it decompresses any: the group can travel in shared messages.
            group = args.get("tensor_list") if name == "grouped_allreduce" else None
            site = CallSite(process_set, args.get("op"), args.get("name"), group,
                            prescale=_number(args.get("prescale_factor"), 1.0),
                            postscale=_number(args.get("postscale_factor"), 1.0))
            seen = []
        elif site is not None and name == _GRADIENTS_CALLER:
            args = _live_locals([frame], ("grads", "vars"))
            grads, variables = args.get("grads"), args.get("vars")
            if isinstance(grads, (list, tuple)):
                return site._replace(grads=list(grads),
                                     vars=list(variables) if isinstance(variables, (list, tuple)) else None)
            return site
    return site or CallSite(None, None, None, None)


def _number(value, default):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _live_locals(frames, names=("op", "process_set", "name", "tensor_list", "prescale_factor", "postscale_factor")):
    """``names`` as Horovod's function sees them: from the innermost of ``frames`` that holds a
    defined value (in AutoGraph-converted code the outer frame may hold an ``Undefined`` stand-in
    for a variable its branch functions carry)."""
    out = {}
    for key in names:
        for frame in frames:
            value = frame.f_locals.get(key)
            if value is not None and type(value).__name__ != "Undefined":
                out[key] = value
                break
    return out


def _check_op(op):
    if op is None:
        return
    hvd = _hvd()
    if op == hvd.Adasum:
        raise NotImplementedError(
            "hvdspar: op=hvd.Adasum combines the ranks' dense gradients pairwise and cannot be applied to a "
            "compressed message; use op=hvd.Average or hvd.Sum with hvdspar, or Compression.none with Adasum"
        )


def sums(op):
    """Whether Horovod's ``op`` sums (Average, Sum, None = Average): only then can a compressed message
    stand in for the tensor. Min, Max and Product travel as Horovod's none sends them."""
    if op is None:
        return True
    hvd = _hvd()
    return op in (hvd.Average, hvd.Sum)


def op_name(op):
    """A Horovod op's name for messages (``hvd.Min`` -> "Min")."""
    try:
        hvd = _hvd()
    except ImportError:  # pragma: no cover
        return str(op)
    names = {hvd.Average: "Average", hvd.Sum: "Sum", hvd.Adasum: "Adasum", hvd.Min: "Min", hvd.Max: "Max",
             hvd.Product: "Product"}
    return names.get(op, str(op))


def world(process_set=None):
    """(size, rank) at trace time: of ``process_set`` if given, else of the global set;
    (1, 0) before hvd.init()."""
    if process_set is not None:
        if not process_set.included():
            raise ValueError(f"hvdspar: this rank is not in {process_set}, yet it called allreduce on it")
        return process_set.size(), process_set.rank()
    if not _initialized():
        return 1, 0
    hvd = _hvd()
    return hvd.size(), hvd.rank()


def size_op(process_set=None):
    """The number of ranks, read at run time (int32 scalar): what the decoder loops over."""
    if not _initialized():
        return tf.constant(world()[0], tf.int32)
    hvd = _hvd()
    return hvd.size_op(process_set_id=process_set.process_set_id if process_set is not None else 0)


def rank_op():
    """This process's global rank, read at run time (int64 scalar)."""
    if not _initialized():
        return tf.constant(world()[1], tf.int64)
    return tf.cast(_hvd().rank_op(), tf.int64)


def elastic():
    """True under ``horovodrun`` elastic (``HOROVOD_ELASTIC=1``), as Horovod itself tests it."""
    return bool(int(os.environ.get("HOROVOD_ELASTIC", 0) or 0))


def collective_name(kind, tensor, suffix):
    """A name for a collective hvdspar runs itself inside a ``tf.cond`` branch (None in eager mode).

    Horovod names an unnamed collective after its input tensor, and names inside a branch's
    graph are not unique in the step, so it is named after the gradient (unique in the step's
    graph). ``kind`` ("HorovodAllreduce" / "HorovodAllgather") starts the name, as Horovod's own
    names do: ``hvd.elastic.run`` recognises a failed collective (a lost rank) only by that
    word in the error message, and without it silently ends the training function instead.
    """
    if tf.executing_eagerly():
        return None
    return f"{kind}_hvdspar_" + tensor.name.replace(":", "_").replace("/", "_") + "_" + suffix


def allgather(message, process_set=None, name=None):
    """Concatenate every rank's 1-D uint8 message, in rank order (before hvd.init(): one process's)."""
    if not _initialized():
        return message
    kwargs = {"name": name} if name else {}
    if process_set is not None:
        kwargs["process_set"] = process_set
    return _hvd().allgather(message, **kwargs)


#: the dtypes Horovod's allreduce takes; a signature of another dtype names it in its shape
_HOROVOD_DTYPES = (tf.uint8, tf.int8, tf.int32, tf.int64, tf.float16, tf.float32, tf.float64)


def check_signature(tensors, process_set=None):
    """A collective of no bytes that every rank takes alike before a message: Horovod's allreduce of
    empty tensors [0, *shape] of each tensor's dtype (grouped where there are several, all of one
    dtype). Ranks that disagree on a shape or a dtype get Horovod's ``FailedPreconditionError`` on
    every rank, as with ``Compression.none``, instead of one rank decoding the others' messages
    wrongly and another waiting forever. Unnamed, Horovod names it after the empty tensor made here,
    as it names its own (a name from the gradient's tensor can differ between an elastic survivor's
    retrace and a joiner's trace). Returns what the message's ops must wait for ([] before
    hvd.init())."""
    if not _initialized() or elastic():  # (an elastic survivor and a joiner hang in it after a reset)
        return []
    hvd = _hvd()
    empties = [tf.zeros([0] + t.shape.as_list(), t.dtype) if t.dtype in _HOROVOD_DTYPES
               else tf.zeros([0] + t.shape.as_list() + [t.dtype.as_datatype_enum], tf.uint8)  # bfloat16
               for t in tensors]
    kwargs = {"op": hvd.Sum, "compression": hvd.Compression.none}
    if process_set is not None:
        kwargs["process_set"] = process_set
    if len(empties) == 1:
        return [hvd.allreduce(empties[0], **kwargs)]
    return list(hvd.grouped_allreduce(empties, **kwargs))


def allreduce_gradient(grad, site):
    """The gradient of an allreduce with respect to its input, as Horovod registers it for its own
    op: the allreduce of the upstream gradient with the call's op and scale factors."""
    hvd = _hvd()
    kwargs = {"op": site.op if site.op is not None else hvd.Average, "prescale_factor": site.prescale,
              "postscale_factor": site.postscale, "compression": hvd.Compression.none}
    if site.process_set is not None:
        kwargs["process_set"] = site.process_set
    return hvd.allreduce(grad, **kwargs)


def allreduce_sum(tensor, process_set=None, name=None):
    """Horovod's uncompressed allreduce with op=Sum (before hvd.init(): the tensor)."""
    if not _initialized():
        return tensor
    hvd = _hvd()
    kwargs = {"name": name} if name else {}
    if process_set is not None:
        kwargs["process_set"] = process_set
    return hvd.allreduce(tensor, op=hvd.Sum, compression=hvd.Compression.none, **kwargs)


class Horovod:
    """The collectives of a compressor's trip, run by Horovod (before hvd.init(): a one-process world)."""

    def world(self, process_set=None):
        """(size, rank) at trace time."""
        return world(process_set)

    def size_op(self, process_set=None):
        """The number of ranks at run time (int32 scalar)."""
        return size_op(process_set)

    def rank_op(self):
        """This process's global rank at run time (int64 scalar)."""
        return rank_op()

    def allgather(self, message, process_set=None, name=None):
        """Every rank's 1-D uint8 message, concatenated in rank order."""
        return allgather(message, process_set, name)

    def allreduce_sum(self, tensor, process_set=None, name=None):
        """The sum over the ranks of a dense tensor."""
        return allreduce_sum(tensor, process_set, name)

    def check_signature(self, tensors, process_set=None):
        """Fail on every rank where the ranks disagree on shapes or dtypes (``check_signature``)."""
        return check_signature(tensors, process_set)

    def placeholder(self, dtype, process_set=None):
        """What Horovod allreduces in place of a compressed message: [1] on the set's root, [0] elsewhere.

        Reduced, it is the factor Horovod applies to the sum (see the module docstring).
        """
        root = 0 if process_set is None else min(process_set.ranks)
        return tf.reshape(tf.cast(tf.equal(self.rank_op(), root), placeholder_dtype(dtype)), [1])


class InProcess(Horovod):
    """A world of ``num_ranks`` ranks in this process, of which this process is ``rank``.

    ``peers(r, message)`` gives rank r's message for this rank's ``message`` (default: an equal
    copy, as if every rank had sent the same); ``allreduce_sum`` sums one copy per rank.
    ``gathers`` counts the allgathers built. Process sets are not modelled: every collective is
    over the whole world. Horovod's own reduction of the placeholder is not run either: hand
    ``decompress`` the placeholder ``compress`` returned (1 on rank 0: factor 1, so the result is
    the sum over the ranks), or the factor you want.
    """

    def __init__(self, num_ranks, rank=0, peers=None):
        if not (isinstance(num_ranks, int) and num_ranks >= 1 and 0 <= rank < num_ranks):
            raise ValueError(f"hvdspar: InProcess needs num_ranks >= 1 and 0 <= rank < num_ranks, "
                             f"got {num_ranks!r}, {rank!r}")
        self.num_ranks, self.rank = num_ranks, rank
        self.peers = peers or (lambda r, message: message)
        self.gathers = 0

    def world(self, process_set=None):
        return self.num_ranks, self.rank

    def size_op(self, process_set=None):
        return tf.constant(self.num_ranks, tf.int32)

    def rank_op(self):
        return tf.constant(self.rank, tf.int64)

    def allgather(self, message, process_set=None, name=None):
        self.gathers += 1
        return tf.concat([message if r == self.rank else self.peers(r, message) for r in range(self.num_ranks)], 0)

    def allreduce_sum(self, tensor, process_set=None, name=None):
        return tensor * tf.cast(self.num_ranks, tensor.dtype)

    def check_signature(self, tensors, process_set=None):
        return []  # one process: every "rank" holds the same tensors


#: the placeholder of a float32 (or 16-bit) gradient; float64 gradients get a float64 one
PLACEHOLDER_DTYPE = tf.float32
PLACEHOLDER_NBYTES = 4


def placeholder_dtype(dtype):
    """float64 for float64 gradients (the factor exact in their precision), else float32."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def placeholder_nbytes(dtype):
    return placeholder_dtype(dtype).size


def indexed_slices_nbytes(slices):
    """Bytes of an ``IndexedSlices`` as Horovod sends it (its values and indices, allgathered, never
    compressed): an int64 scalar tensor."""
    return (tf.size(slices.values, out_type=tf.int64) * slices.values.dtype.size
            + tf.size(slices.indices, out_type=tf.int64) * slices.indices.dtype.size)


def horovod_step_bytes(variables, compression=None, gradients=None):
    """(bytes a rank sends, dense bytes) in one step where Horovod's own compression allreduces the
    gradients of ``variables``: every tensor once at its dtype's size with ``Compression.none``
    (or None, or "none"); with ``Compression.fp16`` (or "fp16") floating tensors travel as
    float16, 2 bytes an element, as Horovod's FP16Compressor casts them, and the others as they
    are. With ``gradients`` (one step's, in the order of ``variables``), an ``IndexedSlices``
    gradient (an embedding without ``sparse_as_dense``) counts as Horovod sends it: its values and
    indices, allgathered and never compressed. The one count of Horovod's none/fp16 bytes for
    training, tracking and the benchmarks. (With one rank Horovod skips the collective; callers
    counting wire bytes take 0 there.)"""
    name = compression if isinstance(compression, str) else getattr(compression, "__name__", type(compression).__name__)
    fp16 = "fp16" in str(name).lower()
    variables = list(variables)
    gradients = [None] * len(variables) if gradients is None else list(gradients)
    if len(gradients) != len(variables):
        raise ValueError(f"hvdspar: {len(gradients)} gradients for {len(variables)} variables")
    sent = dense = 0
    for v, g in zip(variables, gradients):
        n = int(v.shape.num_elements())
        size = v.dtype.size
        dense += n * size
        if isinstance(g, tf.IndexedSlices):
            sent += int(indexed_slices_nbytes(g))
        else:
            sent += n * (min(size, 2) if fp16 and v.dtype.is_floating else size)
    return sent, dense


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
