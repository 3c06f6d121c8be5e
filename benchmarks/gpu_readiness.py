"""GPU readiness without a GPU: does every op of hvdspar's hot path have a GPU kernel, with the data in device memory?

    bash scripts/setup_gpu_check.sh                                   # .venv-gpu-check/: the CUDA build of TF 2.15.1
    .venv-gpu-check/bin/python -m benchmarks.gpu_readiness [--json out/gpu_readiness.json]

The CUDA build of TensorFlow installs and imports on a CPU machine, and its
kernel registry (``kernels.get_registered_kernels_for_op``) lists every op's
GPU kernels with their dtype constraints and the arguments each keeps in host
memory. This builds the graph of one compressor's whole trip (compress, the
exchange in an in-process world of 2 ranks, decompress) for float16,
bfloat16, float32 and float64 gradients of a few shapes, per tensor and as a
bucket of three tensors, walks every op (the step's graph and every function
it calls: tf.cond and tf.while_loop bodies, the traced encoders; an
XLA-compiled function is checked against the XLA GPU kernels), and checks each:

- a GPU kernel exists whose dtype constraints the op's dtypes meet
  ("no GPU kernel");
- no argument that kernel keeps in host memory is a data-path tensor, that is
  one that is not a scalar or a small static vector of at most 16 elements
  (a shape, a slice's begin): gradient-sized or message-sized tensors, or any
  of dynamic size ("host memory"), since each would be a device-host copy.

Horovod's own ops are outside the check (Horovod provides them with NCCL).
Exit status 1 when anything fails (``--allow-failures``: 0, for the table
before the fixes). Prints a table of failures by compressor, op and dtype.
"""

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import tensorflow as tf
from tensorflow.python.framework import kernels

import hvdspar
from hvdspar import exchange

SPECS = [
    "gspar:rho=0.1", "gspar:rho=0.1,memory=true", "gspar:epsilon=1.0", "unisp:rho=0.1", "topk:ratio=0.1",
    "randomk:ratio=0.1,rescale=true", "qsgd:levels=4", "terngrad", "atomo:budget=2", "atomo:budget=2,memory=true",
    "powersgd:rank=2,start_iter=1", "efsignsgd",
]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
SHAPES = [(4096,), (1 << 17,), (64, 48), (3, 3, 16, 32)]  # 2^17: GSpar's chunked, XLA-compiled passes
#: a bucket: one message for several tensors (what Horovod's groups= sends through hvdspar)
BUCKET = [(64, 48), (48,), (3, 3, 16, 32)]
#: graph structure, not kernels
STRUCTURAL = {"Placeholder", "NoOp", "_Arg", "_Retval"}
#: host-memory arguments up to this many elements (shapes, scalars, slice bounds) are no data path
SMALL = 16
#: an op with no GPU kernel whose every tensor is small: it runs on the host, on scalars (allowed; listed)
HOST_SCALARS = "host op on scalars (allowed)"


# --- building the graphs --------------------------------------------------------------------------


def _grouped_caller():
    """A stand-in for Horovod's ``grouped_allreduce`` frame: ``hvdspar.callsite.call_site`` reads the
    group from the calling frame of a ``horovod.tensorflow`` function of that name, so the bucketed
    path can be built without Horovod (its collectives are in-process here anyway)."""
    scope = {"__name__": "horovod.tensorflow.gpu_readiness_stand_in"}
    exec(  # noqa: S102 - a fixed function definition, given a module name so that call_site accepts the frame
        "def grouped_allreduce(tensor_list, compression):\n"
        "    sent = [compression.compress(t) for t in tensor_list]\n"
        "    return [compression.decompress(t, ctx) for t, ctx in sent]\n",
        scope,
    )
    return scope["grouped_allreduce"]


def trip_graph(spec, dtype, shapes):
    """The FuncGraph of one step: every tensor of ``shapes`` through compress -> decompress (a bucket
    when there are several), in an in-process world of 2 ranks."""
    joint = "," if ":" in spec else ":"
    comp = hvdspar.from_spec(f"{spec}{joint}fallback=false,seed=1")
    comp.exchange = exchange.InProcess(2)
    grouped = _grouped_caller()

    @tf.function(autograph=False)
    def step(*grads):
        if len(grads) == 1:
            return [comp.decompress(*comp.compress(grads[0]))]
        return grouped(list(grads), comp)

    specs = [tf.TensorSpec(s, dtype) for s in shapes]
    return step.get_concrete_function(*specs).graph


def all_graphs(graph):
    """[(graph, xla)] for ``graph`` and every function it calls, transitively (each once)."""
    out, seen, todo = [(graph, False)], set(), [graph]
    while todo:
        g = todo.pop()
        for name, fn in getattr(g, "_functions", {}).items():
            if name in seen:
                continue
            seen.add(name)
            sub = getattr(fn, "graph", None)
            if sub is None:
                continue
            attrs = fn.definition.attr if hasattr(fn, "definition") else {}
            xla = "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b
            out.append((sub, xla))
            todo.append(sub)
    return out


# --- checking one op --------------------------------------------------------------------------------


def _attr_types(op):
    """{attr name: [DataType enums]} of the op's type attributes."""
    out = {}
    for name, value in op.node_def.attr.items():
        if value.HasField("type"):
            out[name] = [value.type]
        elif value.HasField("list") and value.list.type:
            out[name] = list(value.list.type)
    return out


def _matches(kernel, types):
    for c in kernel.constraint:
        allowed = set(c.allowed_values.list.type)
        if c.name in types and not set(types[c.name]) <= allowed:
            return False
    return True


def _arg_tensors(op, args, tensors):
    """{arg name: [tensors]} for an op_def's input or output args."""
    out, i = {}, 0
    for arg in args:
        if arg.number_attr:
            n = op.get_attr(arg.number_attr)
        elif arg.type_list_attr:
            n = len(op.get_attr(arg.type_list_attr))
        else:
            n = 1
        out[arg.name] = list(tensors[i:i + n])
        i += n
    return out


def _is_small(t):
    shape = t.shape
    return shape.is_fully_defined() and shape.num_elements() <= SMALL


_REGISTRY = {}


def _kernels(op_type, device):
    """The kernels of ``op_type`` for ``device``: its own, and those registered for every device
    (DEVICE_DEFAULT: how TensorFlow registers many int32 kernels, in host memory, and the
    functional ops)."""
    key = (op_type, device)
    if key not in _REGISTRY:
        _REGISTRY[key] = [k for k in kernels.get_registered_kernels_for_op(op_type).kernel
                          if k.device_type in (device, "DEFAULT")]
    return _REGISTRY[key]


def check_op(op, xla):
    """[(reason, detail)] of one op: empty when it runs on the GPU with its data in device memory."""
    if op.type in STRUCTURAL or op.type.startswith("Horovod"):
        return []
    device = "XLA_GPU_JIT" if xla else "GPU"
    types = _attr_types(op)
    candidates = [k for k in _kernels(op.type, device) if _matches(k, types)]
    type_text = ",".join(f"{k}={'/'.join(tf.as_dtype(t).name for t in v)}" for k, v in sorted(types.items()))
    if not candidates:
        if all(_is_small(t) for t in list(op.inputs) + list(op.outputs)):
            return [(HOST_SCALARS, type_text or "-")]
        return [("no GPU kernel", type_text or "-")]
    if xla:
        return []  # XLA places its own buffers; the compiled cluster runs on the device
    # the kernel TensorFlow would pick among those that match: the one with fewest host-memory args
    kernel = min(candidates, key=lambda k: len(k.host_memory_arg))
    inputs = _arg_tensors(op, op.op_def.input_arg, op.inputs)
    outputs = _arg_tensors(op, op.op_def.output_arg, op.outputs)
    problems = []
    for name in kernel.host_memory_arg:
        for t in inputs.get(name, []) + outputs.get(name, []):
            if not _is_small(t):
                problems.append(("host memory", f"{name} {t.dtype.name}{t.shape}"))
    return problems


# --- the check -----------------------------------------------------------------------------------


def run(specs=SPECS, dtypes=DTYPES, shapes=SHAPES, bucket=BUCKET):
    """(failures: [row dict], checked: {spec: ops checked})."""
    failures = collections.Counter()
    checked = collections.Counter()
    for spec in specs:
        cases = [(s,) for s in shapes] + ([tuple(bucket)] if hvdspar.from_spec(spec).codec.buckets else [])
        for dtype in dtypes:
            for case in cases:
                for graph, xla in all_graphs(trip_graph(spec, dtype, case)):
                    for op in graph.get_operations():
                        checked[spec] += 1
                        for reason, detail in check_op(op, xla):
                            where = "bucket" if len(case) > 1 else "x".join(map(str, case[0]))
                            failures[(spec, dtype.name, op.type, reason, detail, where)] += 1
    rows = [{"compressor": s, "dtype": d, "op": o, "reason": r, "detail": det, "case": w, "count": n}
            for (s, d, o, r, det, w), n in sorted(failures.items())]
    return rows, dict(checked)


def failing(rows):
    """The rows that fail the check (host ops on scalars are allowed)."""
    return [r for r in rows if r["reason"] != HOST_SCALARS]


def table(rows, checked):
    lines = ["| compressor | gradient dtype | op | reason | detail | case | ops |", "|---|---|---|---|---|---|---|"]
    merged = collections.defaultdict(lambda: [0, set()])
    for r in rows:
        key = (r["compressor"], r["dtype"], r["op"], r["reason"], r["detail"])
        merged[key][0] += r["count"]
        merged[key][1].add(r["case"])
    for (s, d, o, reason, det), (n, cases) in sorted(merged.items()):
        lines.append(f"| {s} | {d} | {o} | {reason} | {det} | {', '.join(sorted(cases))} | {n} |")
    if not checked:
        return "\n".join(lines)
    per = collections.Counter(r["compressor"] for r in rows for _ in range(r["count"]))
    summary = ["", "| compressor | ops checked | failing |", "|---|---|---|"]
    summary += [f"| {s} | {n} | {per.get(s, 0)} |" for s, n in checked.items()]
    return "\n".join(lines + summary)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="also write the failures and counts here")
    p.add_argument("--specs", nargs="+", default=SPECS)
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when ops fail")
    args = p.parse_args(argv)
    if not tf.test.is_built_with_cuda():
        sys.exit("gpu_readiness: this TensorFlow is not the CUDA build; run it with .venv-gpu-check/bin/python "
                 "(bash scripts/setup_gpu_check.sh)")
    # the trip a GPU runs: hvdspar.native's CPU kernels are off wherever a GPU is visible
    os.environ["HVDSPAR_NATIVE"] = "0"
    rows, checked = run(args.specs)
    bad = failing(rows)
    print(f"TensorFlow {tf.__version__} (CUDA build); dtypes {', '.join(d.name for d in DTYPES)}; "
          f"shapes {SHAPES} and the bucket {BUCKET}\n")
    print(table(bad, checked) if bad else "every op of every compressor has a GPU kernel with its data on the device")
    allowed = [r for r in rows if r["reason"] == HOST_SCALARS]
    if allowed:
        print("\nAllowed, on the host: ops without a GPU kernel whose every tensor is a scalar or a small vector\n")
        print(table(allowed, {}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"failures": bad, "allowed": allowed, "checked": checked}, indent=1))
    return 1 if bad and not args.allow_failures else 0


if __name__ == "__main__":
    sys.exit(main())
