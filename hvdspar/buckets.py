"""Buckets: which tensors of a Horovod group share one compressed message.

The paper's g is the whole gradient: GSpar's probabilities p_i = min(lambda |g_i|, 1)
meet the budget sum_i p_i = rho d over all of the model's coordinates at once. A
model with hundreds of tensors compressed one tensor at a time pays per tensor:
one traced graph (seconds of Python each), one allgather, one header. hvdspar
therefore compresses the tensors of one Horovod group (``groups=`` /
``num_groups=`` of ``hvd.DistributedOptimizer`` and ``hvd.DistributedGradientTape``,
or one ``hvd.grouped_allreduce`` call) as one flat vector per bucket:

    bucket = consecutive tensors of the group, all of one dtype, at most ``cap`` bytes

A tensor larger than the cap is a bucket of its own; ``cap=None`` puts the whole
group (per dtype run) in one bucket. Every rank cuts the same buckets, since
Horovod hands every rank the same tensors in the same order.
"""


def partition(nbytes, dtypes, cap=None):
    """Positions of a group's tensors cut into buckets: a list of lists of consecutive positions.

    ``nbytes[i]``, ``dtypes[i]``: the dense size and dtype of tensor i; ``cap``: the
    most bytes a bucket holds (None: no cap). A new bucket starts where the dtype
    changes or where the next tensor would take the bucket over the cap.
    """
    if len(nbytes) != len(dtypes):
        raise ValueError(f"hvdspar: {len(nbytes)} sizes for {len(dtypes)} dtypes")
    if cap is not None and cap < 0:
        raise ValueError(f"hvdspar: a bucket cap must be >= 0 bytes, got {cap!r}")
    parts, current, size = [], [], 0
    for i, (b, dt) in enumerate(zip(nbytes, dtypes)):
        if current and (dt != dtypes[current[0]] or (cap is not None and size + b > cap)):
            parts.append(current)
            current, size = [], 0
        current.append(i)
        size += b
    if current:
        parts.append(current)
    return parts
