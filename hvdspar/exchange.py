"""The collectives of a compressed message's trip, inside Horovod's allreduce.

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
``peers`` (by default, an equal copy of this rank's). What Horovod does not hand
``compress`` (process set, op, scale factors, the gradient list) is read from its
frames (``hvdspar.callsite``).
"""

import os

import tensorflow as tf


def _hvd():
    import horovod.tensorflow as hvd

    return hvd


def _initialized():
    try:
        return _hvd().is_initialized()
    except ImportError:  # pragma: no cover - Horovod absent: a single process
        return False


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
