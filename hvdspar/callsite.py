"""What Horovod's allreduce was called with, read from Horovod's own calling frames.

Horovod hands ``compress`` a tensor alone. The process set, the op, the scale
factors and (from ``allreduce_grads``) the whole gradient list with its variables
are read from its frames (``call_site``): the allgather must run on the same
process set as the allreduce; Adasum or a reducescatter cannot carry a compressed
message, so they are refused at trace time with a clear error; Min/Max/Product do
not sum, so the compressor passes their tensors through (``sums``,
``passes_as_none``), as it does integers and shapes unknown at trace time whose
variable the frame does not name (``static_shape``).
"""

import collections
import sys

import tensorflow as tf


def _hvd():
    import horovod.tensorflow as hvd

    return hvd


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


def passes_as_none(tensor, site):
    """Why ``tensor`` travels as Horovod's none sends it, or None to compress it: an op that does not
    sum, a dtype that is not floating point, a shape unknown at trace time (where Horovod's frame
    names no variable of that gradient to take the shape from)."""
    if not sums(site.op):
        return f"op=hvd.{op_name(site.op)}"
    dtype = tf.as_dtype(tensor.dtype)
    if not dtype.is_floating:
        return f"{dtype.name}, not floating point"
    if not tensor.shape.is_fully_defined() and static_shape(tensor, site) is None:
        return "shape unknown at trace time"
    return None


def static_shape(tensor, site):
    """``tensor``'s static shape, or its variable's where the tensor's is not known at trace time
    (``sparse_as_dense=True`` turns an embedding's gradient into a [None, k] tensor); None if neither."""
    if tensor.shape.is_fully_defined():
        return tensor.shape
    variable = site.variable(tensor)
    if variable is not None and variable.shape.is_fully_defined() and tensor.shape.is_compatible_with(
            variable.shape):
        return tf.TensorShape(variable.shape)
    return None


def with_static_shape(tensor, site):
    """``tensor`` with its static shape (``static_shape``) set, checked at run time."""
    shape = static_shape(tensor, site)
    if shape is None or tensor.shape.is_fully_defined():
        return tensor
    return tf.ensure_shape(tensor, shape)
