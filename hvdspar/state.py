"""Traffic accounting and per-tensor state, kept in tf.Variables.

``compress()`` runs while a tf.function is traced, so Python counters would
count traces, not steps. Every number here is a variable updated by ops that
run each step.

All of it is per tensor ("slot"): a tensor's compress() touches only its own
slot's variables. That matters for speed. Horovod runs each gradient's
compress -> collective -> decompress in its own ``tf.cond``; TensorFlow orders
the stateful ops of a tf.function that share a resource in program order, so
one counter shared by all tensors would chain the conds and serialise every
tensor's collective (no tensor fusion, no overlap). With per-slot variables
the conds stay independent, as they are for Horovod's own compressors.
Totals are sums over slots, taken when ``summary()`` is read.
"""

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

try:  # TF's control-flow branch graphs (tf.cond / tf.while_loop bodies)
    from tensorflow.python.ops import control_flow_v2_func_graphs as _cf_graphs

    _CONTROL_FLOW_GRAPHS = tuple(
        getattr(_cf_graphs, n)
        for n in ("CondBranchFuncGraph", "WhileCondFuncGraph", "WhileBodyFuncGraph")
        if hasattr(_cf_graphs, n)
    )
except ImportError:  # pragma: no cover
    _CONTROL_FLOW_GRAPHS = ()

#: fields of SlotState.totals (cumulative over calls)
TOTALS = ("bytes_sent", "dense_bytes", "elements", "kept", "calls")
#: fields of SlotState.last (the latest call)
LAST = ("bytes_sent", "dense_bytes", "kept", "dense")
#: fields of SlotState.sq_norms (cumulative): ||g||^2 and ||Q(g)||^2 of the calls sent compressed
SQ_NORMS = ("sq_norm", "sq_norm_sent")


def variable(value, dtype=None, name=None):
    """A non-trainable variable of state, made outside any tf.function's variable capture.

    ``tf.Variable`` goes through the variable-creator scopes, and a ``tf.function`` whose
    first trace creates a variable (even under ``tf.init_scope``) traces itself a second
    time: Horovod's allreduce_grads would be traced twice for hvdspar's state alone. The
    state is made eagerly (callers hold ``tf.init_scope``) and held by the compressor, so
    it needs none of what those scopes add."""
    return resource_variable_ops.ResourceVariable(value, dtype=dtype, trainable=False, name=name)


def trace_key():
    """The graph of the tf.function being traced (control-flow branches skipped).

    Horovod wraps its gradient allreduce in a tf.function and each gradient's
    compress() in a tf.cond branch; a new trace of that function is a new
    graph, which is how a compressor knows its call order restarts.
    """
    graph = tf.compat.v1.get_default_graph()
    while isinstance(graph, _CONTROL_FLOW_GRAPHS) and getattr(graph, "outer_graph", None) is not None:
        graph = graph.outer_graph
    return graph


class SlotState(tf.Module):
    """State of the tensor at one position of the gradient list.

    calls: the random-stream counter of the sparse path (never reset, so a
    stream is not reused); totals / last / sq_norms: the traffic figures
    (fields in TOTALS, LAST, SQ_NORMS); memory: error feedback, if any;
    codec_state: the codec's own variables, by name (PowerSGD's Q and step).
    """

    def __init__(self, index, shape, dtype, memory, codec_state=None):
        super().__init__(name=f"slot_{index}")
        self.index = index
        self.shape = tf.TensorShape(shape)
        self.dtype = tf.as_dtype(dtype)
        self.calls = variable(0, tf.int64, name="calls")
        # the message's size, restored with the rest: a checkpoint of another bucket layout shows here
        self.elements = variable(self.shape.num_elements(), tf.int64, name="elements")
        self.totals = variable(tf.zeros([len(TOTALS)], tf.int64), name="totals")
        self.last = variable(tf.zeros([len(LAST)], tf.int64), name="last")
        self.sq_norms = variable(tf.zeros([len(SQ_NORMS)], tf.float64), name="sq_norms")
        # a hierarchical exchange's dense bytes inside the node: cumulative, the latest call
        self.within_node = variable(tf.zeros([2], tf.int64), name="within_node")
        if memory:
            from hvdspar.dtypes import compute_dtype

            self.memory = variable(tf.zeros([self.shape.num_elements()], compute_dtype(self.dtype)), name="memory")
        else:
            self.memory = None
        # a codec's own state (PowerSGD: Q and its step), checkpointed with the rest
        self.codec_state = {k: variable(v, name=k) for k, v in (codec_state or {}).items()}

    def record(self, nbytes, dense_nbytes, elements, kept, dense, sq_norm=None, sq_norm_sent=None, within_node=None):
        """Count one call (two variable updates; three with the norms, four with ``within_node``: the
        dense bytes a hierarchical exchange sent inside the node). Arguments may be tensors."""

        def i64(v):  # (a Python number as one int64 constant, not a constant and a cast)
            return tf.cast(v, tf.int64) if tf.is_tensor(v) else tf.constant(int(v), tf.int64)

        nbytes, kept = i64(nbytes), i64(kept)
        self.totals.assign_add(tf.stack([nbytes, i64(dense_nbytes), i64(elements), kept, i64(1)]))
        self.last.assign(tf.stack([nbytes, i64(dense_nbytes), kept, i64(dense)]))
        if within_node is not None:
            self.within_node.assign(tf.stack([self.within_node[0] + i64(within_node), i64(within_node)]))
        if sq_norm is not None:
            self.sq_norms.assign_add(tf.stack([tf.cast(sq_norm, tf.float64), tf.cast(sq_norm_sent, tf.float64)]))

    def keep(self, finite, used, norms, codec_state=None):
        """After a compressed sum: the codec's new state where every rank was finite; one step of
        the random stream and the norms where the step was ``used`` (compressed and finite)."""
        if codec_state:
            tf.cond(finite, lambda: tf.group([self.codec_state[k].assign(v) for k, v in codec_state.items()]),
                    tf.no_op)
        self.calls.assign_add(tf.cast(used, tf.int64))  # a skipped step does not use up a stream
        self.sq_norms.assign_add(tf.where(used, norms, tf.zeros([2], tf.float64)))

    def reset(self):
        self.totals.assign(tf.zeros_like(self.totals))
        self.last.assign(tf.zeros_like(self.last))
        self.sq_norms.assign(tf.zeros_like(self.sq_norms))
        self.within_node.assign(tf.zeros_like(self.within_node))


def counts(slots):
    """The raw sums over slots: TOTALS, SQ_NORMS and ``last_*`` of LAST, as Python numbers."""
    out = {name: 0 for name in TOTALS}
    out.update({name: 0.0 for name in SQ_NORMS})
    out.update({f"last_{name}": 0 for name in LAST})
    out["within_node_bytes"] = out["last_within_node_bytes"] = 0
    for s in slots:
        within = s.within_node.numpy().tolist()
        out["within_node_bytes"] += int(within[0])
        out["last_within_node_bytes"] += int(within[1])
        for name, v in zip(TOTALS, s.totals.numpy().tolist()):
            out[name] += int(v)
        for name, v in zip(SQ_NORMS, s.sq_norms.numpy().tolist()):
            out[name] += float(v)
        for name, v in zip(LAST, s.last.numpy().tolist()):
            out[f"last_{name}"] += int(v)
    return out


def summary(slots):
    """The figures ``Compressor.traffic()`` returns (see there)."""
    c = counts(slots)
    sent, dense = c["bytes_sent"], c["dense_bytes"]
    last_sent, last_dense = c["last_bytes_sent"], c["last_dense_bytes"]
    return {
        "bytes_sent": sent,
        "dense_bytes": dense,
        "ratio": sent / dense if dense else 0.0,
        "last_step_bytes_sent": last_sent,
        "last_step_dense_bytes": last_dense,
        "last_step_ratio": last_sent / last_dense if last_dense else 0.0,
        "kept": c["kept"],
        "elements": c["elements"],
        "density": c["kept"] / c["elements"] if c["elements"] else 0.0,
        "steps": int(slots[0].totals[TOTALS.index("calls")].numpy()) if slots else 0,
        "tensors": len(slots),
        "dense_tensors": c["last_dense"],
        "sq_norm": c["sq_norm"],
        "sq_norm_sent": c["sq_norm_sent"],
        # over the tensors sent compressed; 1.0 when every tensor went dense (Q = identity)
        "variance_ratio": c["sq_norm_sent"] / c["sq_norm"] if c["sq_norm"] else 1.0,
        # the hierarchical exchange (``hvdspar.hierarchy``): bytes_sent cross the nodes, these stay inside
        "within_node_bytes": c["within_node_bytes"],
        "last_step_within_node_bytes": c["last_within_node_bytes"],
    }


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
