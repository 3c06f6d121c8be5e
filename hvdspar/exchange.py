"""How a compressed message travels inside ``hvd.DistributedOptimizer``.

Horovod calls ``compress(g) -> (t, ctx)``, allreduces ``t`` (same shape and
dtype on every rank), then ``decompress(t, ctx)``. A per-rank sparse message
cannot go through that allreduce, so ``compress`` exchanges it itself with
``hvd.allgather`` (only the first dimension may differ between ranks), decodes
and averages the ranks' messages, and hands Horovod a 2-byte placeholder to
allreduce; ``decompress`` returns the average. See ../shared/DESIGN.md.

Cost model (per rank, ring algorithms, M ranks): an allgather of messages of m
bytes moves (M-1) m bytes, a ring allreduce of D dense bytes 2 (M-1)/M D. The
sparse path pays only while M m < 2 D; ``prefer_dense`` applies that rule per
tensor, from the expected message size, so every rank decides the same way.
"""

import tensorflow as tf

PLACEHOLDER_DTYPE = tf.float16
PLACEHOLDER_NBYTES = 2


def _hvd():
    import horovod.tensorflow as hvd

    return hvd


def world():
    """(size, rank) of the global Horovod process set; (1, 0) before hvd.init()."""
    hvd = _hvd()
    try:
        return hvd.size(), hvd.rank()
    except ValueError:  # Horovod not initialised: a single process
        return 1, 0


def allgather(message):
    """Concatenate every rank's 1-D uint8 message, in rank order."""
    return _hvd().allgather(message)


def placeholder():
    """The tiny tensor Horovod allreduces in place of a sparse message."""
    return tf.zeros([1], PLACEHOLDER_DTYPE)


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
