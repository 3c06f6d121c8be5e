"""A method's message, in pure TensorFlow: no state, no Horovod, the shape passed in.

A codec turns one rank's flat vector x (a tensor of ``shape``, or a bucket of
tensors: [d]) into a byte message, and a concatenation of the ranks' messages
into their sum::

    encode(x, seed, dtype, shape, contract=False)  -> Encoded(message, q, kept, q_sq_norm, x_sq_norm)
    decode_sum(data, num_ranks, d, dtype, shape, factor=None)
                                                   -> (sum_r Q(x_r) [d], all senders finite); with factor:
                                                      factor x the sum, NaN if a sender was not finite
    expected_nbytes(d, dtype, shape)               -> the planned message size (the fallback's rule)

``encode`` is the same for every method: one first pass over x
(``hvdspar.scan``: finite?, ||x||^2, ||x||_1), then a method gives its random
message and that message's second moment (``draw``, which may use the scan),
how to scale it (``scaled``) and how to put it in bytes (``pack``). A
non-finite x sends the header-only non-finite message
(``hvdspar.wire.nonfinite``), which ``decode_sum`` flags.
With ``contract=True`` (error feedback, ``hvdspar.error_feedback``) it sends
gamma Q(x) with the one contraction rule gamma = ||x||^2 / E||Q(x)||^2 and
returns Q as sent, for the memory.

A codec whose messages are dense and the same shape on every rank (PowerSGD's
P and Q) instead sums them with Horovod's allreduce itself
(``sums_by_allreduce``, ``reduce_sum`` -> ``Reduced``), may keep state per
message (``initial_state``) and says which gradients it sends dense (``plan``).

``hvdspar.compressor.Compressor`` runs a codec inside Horovod's allreduce; a
codec alone runs anywhere (tests, simulated workers, benchmarks).
"""

import collections
import math

import tensorflow as tf

from hvdspar import error_feedback, kernels, wire
from hvdspar.dtypes import compute_dtype
from hvdspar.scan import scan


class Encoded(collections.namedtuple("Encoded", ["message", "q", "kept", "q_sq_norm", "x_sq_norm"],
                                     defaults=[None])):
    """What ``Codec.encode`` returns: the uint8 message; Q(x) as the receivers decode it, in the
    compute dtype, if asked for (``contract=True``; else a [0] tensor); the count of kept elements
    (int64); ||Q(x)||^2 and ||x||^2 (float64, for the variance figures; 0 for a non-finite x).
    A method's ``pack`` gives the first four; ``encode`` adds ||x||^2 from its scan."""


class Reduced(collections.namedtuple("Reduced", ["total", "finite", "q", "nbytes", "kept", "q_sq_norm", "state",
                                                 "dense"])):
    """What a codec that sums through Horovod's allreduce itself (``sums_by_allreduce``:
    PowerSGD) returns from ``reduce_sum``: the sum over the ranks [d], whether every rank was
    finite, this rank's C(x) for the error-feedback memory, the bytes and numbers this rank sent,
    ||own part||^2 (float64), the codec's new state values {name: tensor}, and whether it went dense."""


class Codec:
    """Base class of the codecs; see the module docstring."""

    #: how the ranks' messages meet: False, allgathered (``encode`` / ``decode_sum``); True, summed by
    #: allreduce (``reduce_sum``; ``communicators.Allreduce``)
    sums_by_allreduce = False

    #: whether several tensors may share one message (False: the method needs each tensor's shape)
    buckets = True

    #: whether ``encode`` and ``decode_sum`` take d as a tensor for a message under
    #: ``kernels.XLA_MIN_ELEMENTS``, so that one traced function serves every small size
    sizes_at_run_time = False

    def config(self):
        """The method's arguments, for ``spec()`` and tracking."""
        return {}

    # --- what a method gives --------------------------------------------------------------

    def draw(self, x, seed, dtype, shape, scan):
        """(message, second): the method's random message of flat x (finite), and a function giving
        E||Q(x)||^2 given x (float64 scalar), or None when Q is already a contraction (a biased
        method such as top-k, which error feedback sends as it is). ``scan``: x's
        ``hvdspar.scan.Scan``, for a method that starts from ||x||_1 or ||x||^2 (GSpar, UniSp)."""
        raise NotImplementedError

    def scaled(self, msg, gamma):
        """The message of gamma Q(x), gamma a float64 scalar."""
        raise NotImplementedError

    def pack(self, msg, d, dtype, shape, with_q):
        """A finite message -> ``Encoded`` (Q(x) in it only ``with_q``)."""
        raise NotImplementedError

    def decode_sum(self, data, num_ranks, d, dtype, shape=None, factor=None):
        """The sum of ``num_ranks`` (an int32 tensor) concatenated messages of d elements (a tensor of
        ``shape``, or a bucket: [d]), and whether all were finite (``hvdspar.wire.fold``).

        With ``factor`` (a scalar: Horovod's op and scale factors, ``hvdspar.exchange``) the sum
        comes back multiplied by it, and NaN everywhere when a sender was not finite: what
        ``decompress`` returns, the factor applied where it is cheapest (``wire.fold_entries``:
        to the entries, before the dense output is written)."""
        raise NotImplementedError

    def expected_nbytes(self, d, dtype, shape=None):
        """The message size to plan for, in bytes, alike on every rank."""
        raise NotImplementedError

    def plan(self, d, shape):
        """Why a message of ``shape`` goes dense whatever the network (a ``fallback.Plan`` reason), or
        None. Only a codec that sums by allreduce decides alone; allgathered messages also get the
        byte rule (``hvdspar.fallback``)."""
        return None

    def initial_state(self, shape, dtype, seed):
        """The codec's own state of a message of ``shape`` ({name: initial value}; none by default),
        made alike on every rank from ``seed``."""
        return {}

    def reduce_sum(self, x, state, allreduce_sum, dtype, shape, num_ranks, seed):
        """A codec that ``sums_by_allreduce``: this rank's x summed over the ranks with
        ``allreduce_sum(t, tag)`` -> ``Reduced``."""
        raise NotImplementedError

    def timing_shape(self, shape):
        """The shape fallback="auto" times this codec at: None = flat vectors of two sizes (cost linear
        in d); a codec whose cost depends on the shape returns it."""
        return None

    # --- the same for every method ----------------------------------------------------------

    @tf.autograph.experimental.do_not_convert
    def encode(self, x, seed, dtype, shape=None, contract=False):
        """Flat x (in ``dtype`` or its compute dtype) of a tensor of ``shape`` -> ``Encoded``."""
        x = tf.reshape(x, [-1])
        d = kernels.length(x)
        cdt = compute_dtype(dtype)
        first = scan(x)  # one read of x: finite?, ||x||^2, ||x||_1

        def finite():
            msg, second = self.draw(x, seed, dtype, shape, first)
            if contract and second is not None:
                msg = self.scaled(msg, error_feedback.contraction(first.sq_norm, second()))
            return self.pack(msg, d, dtype, shape, with_q=contract)._replace(x_sq_norm=first.sq_norm)

        def nonfinite():
            zero = tf.constant(0, tf.int64)
            q = tf.zeros([d if contract else 0], cdt)
            none = tf.constant(0.0, tf.float64)
            return Encoded(wire.nonfinite(d, dtype), q, zero, none, none)

        return tf.cond(first.finite, finite, nonfinite)


def matrix_layout(shape):
    """(rows, cols) of the 2-D view of a tensor of ``shape`` (ATOMO's spectral atoms, PowerSGD's power
    iteration): rows = prod(shape[:-1]), cols = shape[-1]; None for a vector."""
    dims = tf.TensorShape(shape).as_list()
    if len(dims) < 2:
        return None
    return int(math.prod(dims[:-1])), int(dims[-1])
