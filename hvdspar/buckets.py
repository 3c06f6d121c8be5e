"""Buckets: which gradients share one message, and the ``Message`` they make.

The paper's g is the whole gradient: GSpar's probabilities p_i = min(lambda |g_i|, 1)
meet the budget sum_i p_i = rho d over all of a bucket's coordinates at once, and a
bucket pays one traced encoder, one allgather and one header instead of one per tensor:

    bucket = consecutive gradients, all of one dtype, at most ``cap`` bytes    (``partition``)

Horovod hands ``compress`` one tensor at a time. ``Buckets.find`` tells which message a
tensor travels in, from what Horovod's frames tell (``callsite.CallSite``):

- a Horovod group (``groups=``, ``hvd.grouped_allreduce``) is compressed in order before
  any decompress: its buckets are built in the group's own graph;
- without groups, ``allreduce_grads`` hands every gradient of its list alone, each in its
  own ``tf.cond``: the list is cut once per trace and each bucket is built in the graph
  of the gradients, which every member's branch reaches (``Message.graph``);
- anything else (``hvd.allreduce``, ``bucket_mb=0``, a codec that needs each tensor's
  shape, elastic training, one rank) is a message of one tensor.

Every rank cuts the same buckets: Horovod hands every rank the same tensors in order.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from hvdspar import callsite, exchange
from hvdspar.callsite import passes_as_none, static_shape, with_static_shape
from hvdspar.state import trace_key


def partition(nbytes, dtypes, cap=None):
    """Positions of a list of tensors cut into buckets: a list of lists of consecutive positions.

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


@dataclasses.dataclass(frozen=True, eq=False)
class Message:
    """One message: the flattened gradients of a bucket, or one tensor. Immutable.

    ``slot``: its state (``hvdspar.state.SlotState``); ``position``: its place in the trace;
    ``graph``: where to build it when its members sit in separate Horovod conds (None: in
    Horovod's own branch); ``flat``: the codec sees [d] even for one tensor (a codec that
    buckets reads only d, so tensors of one size share an encoder).
    """

    tensors: tuple
    slot: object
    site: callsite.CallSite
    position: int
    graph: object = None
    flat: bool = False
    # derived from the tensors (``__post_init__``)
    dtype: tf.DType = dataclasses.field(init=False)
    shapes: tuple = dataclasses.field(init=False)
    sizes: tuple = dataclasses.field(init=False)
    d: int = dataclasses.field(init=False)
    shape: tf.TensorShape = dataclasses.field(init=False)  # what the codec sees: the tensor's own, or [d]

    def __post_init__(self):
        shapes = tuple(t.shape for t in self.tensors)
        sizes = tuple(s.num_elements() for s in shapes)
        d = int(sum(sizes))
        shape = shapes[0] if len(shapes) == 1 and not self.flat else tf.TensorShape([d])
        for name, value in (("dtype", self.slot.dtype), ("shapes", shapes), ("sizes", sizes), ("d", d),
                            ("shape", shape)):
            object.__setattr__(self, name, value)

    def concat(self):
        """x: the members flattened, one after the other."""
        flat = [tf.reshape(t, [-1]) for t in self.tensors]
        return flat[0] if len(flat) == 1 else tf.concat(flat, 0)

    def split(self, x):
        """The members' parts of a flat [d] tensor, each in its member's shape (``concat`` undone)."""
        flat = tf.split(x, self.sizes) if len(self.tensors) > 1 else [x]
        return tuple(tf.reshape(part, shape) for part, shape in zip(flat, self.shapes))


class Buckets:
    """Which message each tensor handed to ``compress`` travels in (see the module docstring).

    ``on``: whether tensors share messages at all (a codec that buckets, ``bucket_mb != 0``);
    ``cap``: bytes per bucket (None: no cap); ``new_message(members, site, variables, graph)``
    makes a ``Message`` with its state. Python only: the layouts of the latest trace.
    """

    def __init__(self, on, cap, new_message):
        self.on, self.cap, self.new_message = on, cap, new_message
        self._layout = None  # (trace, gradient list ids, graph, where, open messages) of Horovod's list
        self._group = None  # (group, where, tensors, parts, open messages) of the Horovod group being sent

    def find(self, tensor, site, world_size):
        """(message, j): the message ``tensor`` travels in and its place there; a new message is
        made when ``tensor`` is its first member. ``tensor`` must compress (``Compressor``'s rule)."""
        if self.on and site.group is not None and len(site.group) > 1 and any(t is tensor for t in site.group):
            return self._in_group(tensor, site)
        if (self.on and site.grads is not None and world_size > 1 and not tf.executing_eagerly()
                and not exchange.elastic()):
            # (Horovod's conds skip the allreduce at one rank, or at run time under elastic: a bucket
            # built outside them would run anyway)
            found = self._in_list(tensor, site)
            if found is not None:
                return found
        tensor = with_static_shape(tensor, site)
        variable = site.variable(tensor)
        return self.new_message([tensor], site, None if variable is None else [variable], None), 0

    def cut(self, shapes, dtypes):
        """The messages of a gradient list: lists of positions that travel together, over the
        gradients that compress (a known shape, floating point); one per gradient when ``on`` is
        False or under elastic training. ``hvdspar.build`` makes their state from this too."""
        eligible = [i for i, (s, dt) in enumerate(zip(shapes, dtypes))
                    if s is not None and s.is_fully_defined() and dt is not None and tf.as_dtype(dt).is_floating]
        if not self.on or exchange.elastic():
            return [[i] for i in eligible]
        return [[eligible[k] for k in part] for part in partition(
            [shapes[i].num_elements() * tf.as_dtype(dtypes[i]).size for i in eligible],
            [tf.as_dtype(dtypes[i]) for i in eligible], self.cap)]

    def _in_list(self, tensor, site):
        """(message, j) in Horovod's gradient list, built where every member's branch reaches it;
        None where the gradient goes alone (fewer than two share its message)."""
        key = (trace_key(), tuple(id(g) for g in site.grads))
        if self._layout is None or self._layout[0] != key:
            self._layout = (key,) + self._list_layout(site)  # one trace's layout at a time
        _, graph, where, parts, open_messages = self._layout
        i = site.position(tensor)
        if graph is None or i not in where:
            return None
        b, j = where[i]
        if b not in open_messages:
            positions = parts[b]
            with graph.as_default():
                members = [with_static_shape(site.grads[p], site) for p in positions]
            variables = [site.vars[p] for p in positions] if site.vars is not None else None
            open_messages[b] = self.new_message(members, site, variables, graph)
        return open_messages[b], j

    def _list_layout(self, site):
        """(graph, where, parts, {}) of Horovod's gradient list: its buckets (``cut``) and the graph of
        its gradients; graph None where no two gradients share a message or they sit in several graphs."""
        ok = [isinstance(g, tf.Tensor) and callsite.sums(site.op) for g in site.grads]
        shapes = [static_shape(g, site) if o else None for g, o in zip(site.grads, ok)]
        parts = self.cut(shapes, [g.dtype if o else None for g, o in zip(site.grads, ok)])
        graphs = {graph_of(site.grads[i], None) for part in parts for i in part}
        if not any(len(part) > 1 for part in parts) or len(graphs) != 1 or None in graphs:
            return None, {}, parts, {}
        where = {p: (b, j) for b, part in enumerate(parts) for j, p in enumerate(part)}
        return graphs.pop(), where, parts, {}

    def _in_group(self, tensor, site):
        """(message, j) in a Horovod group: its tensors that compress, cut by ``partition``, the first
        member of each bucket making the message."""
        group = site.group
        if self._group is None or self._group[0] is not group:
            dtypes = {tf.as_dtype(t.dtype) for t in group}
            if len(dtypes) > 1:
                raise ValueError(
                    f"hvdspar: this Horovod group mixes {', '.join(sorted(d.name for d in dtypes))} tensors, and "
                    "Horovod's grouped allreduce takes one dtype per group (Compression.none fails on it too): "
                    "give each dtype its own group (groups=[[float32 variables], [float16 variables]]) or "
                    "leave groups= out")
            eligible = [i for i, t in enumerate(group) if passes_as_none(t, site) is None]
            tensors = {i: with_static_shape(tf.convert_to_tensor(group[i]), site) for i in eligible}
            parts = [[eligible[k] for k in part] for part in partition(
                [tensors[i].shape.num_elements() * tensors[i].dtype.size for i in eligible],
                [tensors[i].dtype for i in eligible], self.cap)]
            where = {p: (b, j) for b, part in enumerate(parts) for j, p in enumerate(part)}
            self._group = (group, where, tensors, parts, {})
        _, where, tensors, parts, open_messages = self._group
        pos = next(i for i, t in enumerate(group) if t is tensor)
        b, j = where[pos]
        if b not in open_messages:
            variables = [site.variable(group[p]) for p in parts[b]]
            variables = variables if all(v is not None for v in variables) else None
            open_messages[b] = self.new_message([tensors[p] for p in parts[b]], site, variables, None)
        if pos == parts[-1][-1]:
            self._group = None  # the group is sent: drop the references to its graph's tensors
        return open_messages[b], j


def graph_of(tensor, default):
    """The graph ``tensor`` was built in; ``default`` for an eager tensor (a constant a step captures)."""
    if tf.executing_eagerly() or isinstance(tensor, tf.__internal__.EagerTensor):
        return default
    return tensor.graph


def flat_shape(tensors):
    """The shape of a message of ``tensors``: the tensor's own for one, else [d]."""
    if len(tensors) == 1:
        return tf.TensorShape(tensors[0].shape)
    return tf.TensorShape([int(np.sum([t.shape.num_elements() for t in tensors]))])
