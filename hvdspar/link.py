"""Time model of one step's exchange, for ``fallback="auto"``.

The byte rule of ``fallback.prefer_dense`` cannot see that on a fast network
(a loopback, InfiniBand) the compressor's own compute costs more than the
bytes it saves. With ``fallback="auto"`` (opt-in; the default is the byte
rule alone) a compressor sends a tensor sparse only when the time model says that pays by at
least ``AUTO_MARGIN``:

    t_dense(D)     = alpha + (2 (M-1) / M) D / beta            ring allreduce of D bytes
    t_sparse(d, m) = 2 alpha + (M-1) m / beta + c_0 + c_1 d    allgather of m-byte messages,
                                                               the placeholder's allreduce,
                                                               encode + decode of M messages

alpha (latency, s) and beta (bandwidth, bytes/s) are fitted to timed eager
allreduces of a small and a large buffer; c_0 and c_1 to the compressor's own
encode + decode_sum at two sizes. Everything is measured once per process
(compute once per compressor and dtype), at the first trace, and rank 0's
figures are broadcast, so every rank takes the same per-tensor decisions.
The margin stands for what the time model cannot see: the extra steps that
the compressor's variance costs.
"""

import collections
import time

import numpy as np
import tensorflow as tf

from hvdspar import exchange, fallback

#: sparse must be at least this many times faster than dense per step
AUTO_MARGIN = 2.0

_SMALL, _LARGE = 1 << 10, 1 << 22  # bytes of the timed allreduces
_D_SMALL, _D_LARGE = 1 << 12, 1 << 20  # elements of the timed encode/decode
_REPEATS = 3


class Network(collections.namedtuple("Network", ["latency_s", "bandwidth_Bps"])):
    """alpha (seconds per collective) and beta (bytes per second a rank sends)."""

    def allreduce_seconds(self, dense_nbytes, num_ranks):
        return self.latency_s + fallback.allreduce_bytes_moved(dense_nbytes, num_ranks) / self.bandwidth_Bps

    def allgather_seconds(self, message_nbytes, num_ranks):
        return self.latency_s + fallback.allgather_bytes_moved(message_nbytes, num_ranks) / self.bandwidth_Bps


class Compute(collections.namedtuple("Compute", ["fixed_s", "per_element_s"])):
    """c_0 + c_1 d: seconds to encode one tensor of d elements and decode M messages."""

    def seconds(self, d):
        return self.fixed_s + self.per_element_s * d


def median_seconds(fn, repeat=_REPEATS, warmup=1):
    """Median wall time of fn() over ``repeat`` calls, after ``warmup`` untimed calls
    (first-call costs: negotiation, tracing, are not the steady state). Seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def ready(result):
    """Wait for a call's result without copying it into NumPy: one element of each tensor is read.

    What fallback="auto"'s timings and the benchmarks wait with. ``x.numpy()`` of a dense [d]
    result copies it into a fresh NumPy array, a d-element write that training never does.
    Returns ``result``."""
    for t in tf.nest.flatten(result):
        if t.shape.num_elements() != 0:
            tf.reshape(t, [-1])[:1].numpy()
    return result


def _fit(x0, t0, x1, t1):
    """(intercept, slope) of the line through two timings; both kept >= a tiny positive."""
    slope = max((t1 - t0) / (x1 - x0), 1e-15)
    return max(t0 - slope * x0, 0.0), slope


def _broadcast(values, name):
    """Rank 0's floats, on every rank (eager)."""
    hvd = exchange._hvd()
    return hvd.broadcast(tf.constant(values, tf.float64), root_rank=0, name=name).numpy().tolist()


_network = None


def network():
    """The measured ``Network`` of this process's Horovod world (measured once, eagerly).

    Every rank must call it at the same point (the first trace of a training
    step is such a point: all ranks trace the same function).
    """
    global _network
    if _network is None:
        with tf.init_scope():
            hvd = exchange._hvd()
            num_ranks = hvd.size()
            moved = [fallback.allreduce_bytes_moved(n, num_ranks) for n in (_SMALL, _LARGE)]
            times = []
            for n in (_SMALL, _LARGE):
                buf = tf.zeros([n // 4], tf.float32)
                times.append(median_seconds(lambda: ready(hvd.allreduce(buf, op=hvd.Sum, name=f"hvdspar.link.{n}"))))
            if num_ranks > 1:
                latency, per_byte = _fit(moved[0], times[0], moved[1], times[1])
            else:  # nothing moves: an "allreduce" costs its fixed overhead only
                latency, per_byte = times[0], 1e-15
            latency, per_byte = _broadcast([latency, per_byte], "hvdspar.link.network")
            _network = Network(latency, 1.0 / per_byte)
    return _network


def measured():
    """The ``Network`` measured so far in this process, or None (nothing measured yet)."""
    return _network


def measure_compute(compressor, dtype, num_ranks, shape=None):
    """The ``Compute`` line of one compressor: its encode + decode_sum of num_ranks messages, timed.

    Runs in a tf.function on a Student-t-like gradient. With ``shape=None``
    (a cost linear in d) at two sizes of flat vectors, fitted to c_0 + c_1 d;
    with a shape (a compressor whose cost depends on it, e.g. ATOMO's SVD) at
    that shape alone, so that the encoder that will run is the one timed
    (c_0 = that time, c_1 = 0). Rank 0's figures are broadcast.
    """
    dtype = tf.as_dtype(dtype)
    with tf.init_scope():
        if shape is None:
            timings = []
            for d in (_D_SMALL, _D_LARGE):
                round_trip = _round_trip(compressor, dtype, [d], num_ranks)
                timings.append(median_seconds(lambda: ready(round_trip())))
            fixed, per_element = _fit(_D_SMALL, timings[0], _D_LARGE, timings[1])
        else:
            round_trip = _round_trip(compressor, dtype, list(shape), num_ranks)
            fixed, per_element = median_seconds(lambda: ready(round_trip())), 0.0
        tag = "x".join(map(str, shape)) if shape is not None else "flat"
        fixed, per_element = _broadcast([fixed, per_element],
                                        f"hvdspar.link.compute.{compressor.name}.{dtype.name}.{tag}")
    return Compute(fixed, per_element)


def _round_trip(compressor, dtype, shape, num_ranks):
    """A tf.function: encode a heavy-tailed (Student t, 2 dof) g of ``shape``, decode num_ranks copies."""
    d = int(np.prod(shape))
    z = tf.random.stateless_normal([d], seed=[7, d], dtype=tf.float32)
    g = tf.cast(z / tf.sqrt(tf.random.stateless_gamma([d], seed=[8, d], alpha=1.0)), dtype)
    tensor_shape = tf.TensorShape(shape)

    @tf.function(autograph=False)
    def round_trip():
        enc = compressor.feedback.encode(g, tf.constant([1, 2], tf.int64), dtype, tensor_shape)
        return compressor.codec.decode_sum(tf.tile(enc.message, [num_ranks]), num_ranks, d, dtype, tensor_shape)[0]

    return round_trip


def sparse_pays(network_, compute, d, message_nbytes, dense_nbytes, num_ranks, margin=AUTO_MARGIN):
    """True when t_sparse * margin <= t_dense (see the module docstring)."""
    t_dense = network_.allreduce_seconds(dense_nbytes, num_ranks)
    t_sparse = network_.latency_s + network_.allgather_seconds(message_nbytes, num_ranks) + compute.seconds(d)
    return t_sparse * margin <= t_dense
