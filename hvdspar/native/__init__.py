"""GSpar's hot loops as compiled TensorFlow CPU kernels (``kernels.cc``), used through ``hvdspar.kernels``.

    keep(x, lam, seed)        -> the sorted i with u_i < lam |x_i|       the sampling pass
    scatter_rows(idx, val, d) -> the M rows of entries summed into [d]   the decode's sum

with u_i = ``hvdspar.rng.uniform_at(i, seed)``. Each gives the bits of the XLA computation it stands
in for: ``keep``'s hash is integer arithmetic and its test one float32 multiply and compare;
``scatter_rows`` adds in the XLA computation's order (row after row). Each is one loop on
TensorFlow's intra-op threads, vectorised for the CPU it runs on (XLA runs a computation on one
thread and does not compact a mask).

The library is built once per environment, against the installed TensorFlow::

    python -m hvdspar.native          # scripts/setup.sh runs it; needs g++ (or $CXX)

and used (``hvdspar.kernels``) when it is built for this source and TensorFlow, no GPU is visible
(the kernels run on the CPU), and ``HVDSPAR_NATIVE`` is not ``0``; otherwise the XLA path runs, and
the log says why once ("hvdspar" logger).
"""

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tensorflow as tf

log = logging.getLogger("hvdspar")

SOURCE = Path(__file__).with_name("kernels.cc")
LIBRARY = Path(__file__).with_name("_kernels.so")
STAMP = LIBRARY.with_suffix(".stamp")  # what the library was built from (``fingerprint``)

FLAGS = ["-std=c++17", "-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-fast-math"]


def fingerprint():
    """The source's hash and the TensorFlow build (version, CPU or CUDA): a library built from other ones
    is not loaded (the CUDA build's environment beside the CPU one, ``.venv-gpu-check/``, shares this folder)."""
    build = "cuda" if tf.test.is_built_with_cuda() else "cpu"
    return f"{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]} tensorflow-{tf.__version__}-{build}"


def build(compiler=None):
    """Compile ``kernels.cc`` into ``LIBRARY`` against this TensorFlow (atomically: a concurrent
    loader sees the old library or the new one). Raises CalledProcessError with the compiler's output."""
    compiler = compiler or os.environ.get("CXX", "g++")
    with tempfile.TemporaryDirectory(dir=LIBRARY.parent) as tmp:
        out = Path(tmp) / LIBRARY.name
        cmd = [compiler, *FLAGS, str(SOURCE), "-o", str(out), *tf.sysconfig.get_compile_flags(),
               *tf.sysconfig.get_link_flags()]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(out, LIBRARY)
    STAMP.write_text(fingerprint() + "\n")


def is_current():
    """Whether ``LIBRARY`` exists and was built from this source for this TensorFlow."""
    return LIBRARY.exists() and STAMP.exists() and STAMP.read_text().strip() == fingerprint()


_state = {}


def why_not():
    """None if the kernels are in use, else the reason, logged once: a warning where the library is
    missing, stale or does not load; information where the choice is deliberate (``HVDSPAR_NATIVE=0``,
    a visible GPU, whose gradients the XLA path handles where they live)."""
    if "why_not" not in _state:
        reason = None
        if os.environ.get("HVDSPAR_NATIVE", "1") == "0":
            reason = "HVDSPAR_NATIVE=0"
        elif tf.config.list_physical_devices("GPU"):
            reason = "a GPU is visible (the kernels are CPU kernels)"
        elif not is_current():
            reason = (f"{LIBRARY.name} is not built for this source and TensorFlow "
                      "(build it with: python -m hvdspar.native)")
        else:
            reason = _load()
        if reason is not None:
            deliberate = reason == "HVDSPAR_NATIVE=0" or reason.startswith("a GPU")
            log.log(logging.INFO if deliberate else logging.WARNING,
                    "hvdspar: the native kernels are not used (%s); GSpar's passes and the decode take the "
                    "XLA path (the same bits)%s", reason, "" if deliberate else ", slower on a large gradient")
        _state["why_not"] = reason
    return _state["why_not"]


# TensorFlow registers an op and its kernel once per process, and a second library with the same ops
# breaks the first ("multiple OpKernel registrations"). So the loaded library is kept in sys.modules,
# where every copy of hvdspar in the process finds it (benchmarks.ab_trip imports a second one).
_LOADED = "hvdspar_native_kernels"


def _load():
    """Load ``LIBRARY`` into ``_state["ops"]`` (or take the one this process loaded); the reason on failure."""
    loaded = sys.modules.get(_LOADED)
    if loaded is None:
        try:
            loaded = tf.load_op_library(str(LIBRARY))
        except (tf.errors.NotFoundError, OSError) as err:
            return f"{LIBRARY.name} does not load: {err}"
        loaded.hvdspar_fingerprint = fingerprint()
        sys.modules[_LOADED] = loaded
    elif loaded.hvdspar_fingerprint != fingerprint():
        return "another copy of hvdspar in this process loaded kernels built from another source"
    _state["ops"] = loaded
    return None


def _ops():
    """The loaded library; a RuntimeError saying why when it is not in use."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(f"hvdspar.native: the kernels are not in use: {reason}")
    return _state["ops"]


def usable(x):
    """Whether the kernels take flat x: float32, and the library is in use."""
    return x.dtype == tf.float32 and why_not() is None


def scatter_usable(dtype):
    """Whether ``scatter_rows`` takes values of ``dtype`` (float32, float64), the library in use."""
    return tf.as_dtype(dtype) in (tf.float32, tf.float64) and why_not() is None


def keep(x, lam, seed):
    """The sorted int64 indices i of flat float32 x with u_i < lam |x_i| (u_i = ``rng.uniform_at(i, seed)``)."""
    return _ops().hvdspar_keep(x, tf.cast(lam, tf.float32), tf.cast(seed, tf.int64))


def scatter_rows(idx, val, d):
    """sum_r of the rows of the [M, P] table of entries (idx int64, val) into zeros [d], row after row:
    the bits of ``hvdspar.kernels``' XLA computation. Indices must be unique within a row and in [0, d)
    (an index outside is an InvalidArgumentError)."""
    return _ops().hvdspar_scatter_rows(idx, val, d=d)
