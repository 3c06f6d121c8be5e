"""Traffic accounting and per-tensor state, kept in tf.Variables.

``compress()`` runs while a tf.function is traced, so Python counters would
count traces, not steps. Every number here is a variable updated by ops that
run each step: cumulative counters on ``Traffic`` and, per tensor ("slot"),
the bytes of its latest call, so the last step's total is the sum over slots
whatever order the graph runs them in.
"""

import tensorflow as tf

try:  # TF's control-flow branch graphs (tf.cond / tf.while_loop bodies)
    from tensorflow.python.ops import control_flow_v2_func_graphs as _cf_graphs

    _CONTROL_FLOW_GRAPHS = tuple(
        getattr(_cf_graphs, n)
        for n in ("CondBranchFuncGraph", "WhileCondFuncGraph", "WhileBodyFuncGraph")
        if hasattr(_cf_graphs, n)
    )
except ImportError:  # pragma: no cover
    _CONTROL_FLOW_GRAPHS = ()


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


def _counter(name):
    return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)


class SlotState(tf.Module):
    """State of the tensor at one position of the gradient list."""

    def __init__(self, index, shape, dtype, memory):
        super().__init__(name=f"slot_{index}")
        self.index = index
        self.shape = tf.TensorShape(shape)
        self.dtype = tf.as_dtype(dtype)
        self.calls = _counter("calls")
        self.last_bytes = _counter("last_bytes")
        self.last_dense_bytes = _counter("last_dense_bytes")
        self.last_kept = _counter("last_kept")
        self.last_dense = tf.Variable(False, trainable=False, name="last_dense")
        if memory:
            from hvdspar.probabilities import compute_dtype

            self.memory = tf.Variable(
                tf.zeros([self.shape.num_elements()], compute_dtype(self.dtype)), trainable=False, name="memory"
            )
        else:
            self.memory = None


class Traffic(tf.Module):
    """Cumulative traffic of one compressor on this rank."""

    def __init__(self):
        super().__init__(name="traffic")
        self.bytes_sent = _counter("bytes_sent")
        self.dense_bytes = _counter("dense_bytes")
        self.elements = _counter("elements")
        self.kept = _counter("kept")
        self.steps = _counter("steps")
        # sum over calls of ||g||^2 and ||Q(g)||^2: their ratio estimates E||Q||^2 / ||g||^2
        self.sq_norm = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="sq_norm")
        self.sq_norm_sent = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="sq_norm_sent")

    def record(self, slot, nbytes, dense_nbytes, elements, kept, dense):
        """Add one tensor's call; all arguments may be tensors."""
        nbytes = tf.cast(nbytes, tf.int64)
        kept = tf.cast(kept, tf.int64)
        self.bytes_sent.assign_add(nbytes)
        self.dense_bytes.assign_add(tf.cast(dense_nbytes, tf.int64))
        self.elements.assign_add(tf.cast(elements, tf.int64))
        self.kept.assign_add(kept)
        slot.last_bytes.assign(nbytes)
        slot.last_dense_bytes.assign(tf.cast(dense_nbytes, tf.int64))
        slot.last_kept.assign(kept)
        slot.last_dense.assign(dense)
        if slot.index == 0:
            self.steps.assign_add(1)

    def record_norms(self, sq_norm, sq_norm_sent):
        self.sq_norm.assign_add(tf.cast(sq_norm, tf.float64))
        self.sq_norm_sent.assign_add(tf.cast(sq_norm_sent, tf.float64))

    def summary(self, slots):
        def total(name):
            return int(sum(int(getattr(s, name).numpy()) for s in slots))

        sent, dense = int(self.bytes_sent.numpy()), int(self.dense_bytes.numpy())
        last_sent, last_dense = total("last_bytes"), total("last_dense_bytes")
        elements = int(self.elements.numpy())
        return {
            "bytes_sent": sent,
            "dense_bytes": dense,
            "ratio": sent / dense if dense else 0.0,
            "last_step_bytes_sent": last_sent,
            "last_step_dense_bytes": last_dense,
            "last_step_ratio": last_sent / last_dense if last_dense else 0.0,
            "density": int(self.kept.numpy()) / elements if elements else 0.0,
            "steps": int(self.steps.numpy()),
            "tensors": len(slots),
            "dense_tensors": int(sum(bool(s.last_dense.numpy()) for s in slots)),
            # over the tensors sent compressed; 1.0 when every tensor went dense (Q = identity)
            "variance_ratio": float(self.sq_norm_sent.numpy() / self.sq_norm.numpy()) if self.sq_norm.numpy() else 1.0,
        }

    def reset(self, slots):
        for v in (self.bytes_sent, self.dense_bytes, self.elements, self.kept, self.steps):
            v.assign(0)
        self.sq_norm.assign(0.0)
        self.sq_norm_sent.assign(0.0)
        for s in slots:
            for v in (s.last_bytes, s.last_dense_bytes, s.last_kept):
                v.assign(0)
