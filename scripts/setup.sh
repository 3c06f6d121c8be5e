#!/usr/bin/env bash
# Set up hvdspar's environment: a virtual environment (default .venv/ in the
# repository root) with the pinned stack, Horovod 0.28.1 built from source with
# Gloo against TensorFlow 2.15.1, and hvdspar installed in editable mode.
#
# Idempotent: a second run reuses the environment, reinstalls Python packages
# only when requirements.txt/constraints.txt changed, and never rebuilds a
# working Horovod.
#
#   scripts/setup.sh            # library, training, tracking
#   scripts/setup.sh --test     # also the system packages the tests use
#   scripts/setup.sh --deps-only  # all but hvdspar itself (docker/ images
#                                 # install the dependencies in a cached layer)
#
# Environment: HVDSPAR_VENV (where the venv goes), PYTHON (interpreter to
# create it with, default python3.11). Opt-in, used by docker/ (default 0):
#   HVDSPAR_GPU=1  tensorflow[and-cuda] in place of tensorflow-cpu (same pins),
#                  Horovod with HOROVOD_GPU_OPERATIONS=NCCL (needs nvcc and NCCL,
#                  e.g. a CUDA devel image; HOROVOD_CUDA_HOME, default /usr/local/cuda)
#   HVDSPAR_MPI=1  Horovod also with the MPI controller (needs mpicxx, e.g. libopenmpi-dev)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDSPAR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
WITH_TEST=0
DEPS_ONLY=0
for arg in "$@"; do
  case $arg in
    --test) WITH_TEST=1 ;;
    --deps-only) DEPS_ONLY=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test or --deps-only)" >&2; exit 2 ;;
  esac
done
GPU=${HVDSPAR_GPU:-0}
MPI=${HVDSPAR_MPI:-0}
[[ $GPU == [01] && $MPI == [01] ]] || { echo "setup.sh: HVDSPAR_GPU and HVDSPAR_MPI must be 0 or 1" >&2; exit 2; }

log() { echo "[setup] $*"; }

if [[ ! -x $VENV/bin/python ]]; then
  command -v "$PYTHON" >/dev/null || { echo "setup.sh: '$PYTHON' not found; set PYTHON to a Python 3.11 interpreter" >&2; exit 1; }
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip<25" "setuptools<70" wheel
fi
PIP=("$VENV/bin/python" -m pip)

# Python packages, only when the requirement files changed.
req_file=$ROOT/requirements.txt
if (( GPU )); then
  # The same requirements with the CUDA build of TensorFlow, pinned by the
  # tensorflow== line of constraints.txt.
  req_file=$VENV/.hvdspar-requirements-gpu.txt
  sed -E 's/^tensorflow-cpu[[:space:]]*$/tensorflow[and-cuda]/' "$ROOT/requirements.txt" > "$req_file"
  grep -qx 'tensorflow\[and-cuda\]' "$req_file" \
    || { echo "setup.sh: HVDSPAR_GPU=1 expects a line 'tensorflow-cpu' in requirements.txt" >&2; exit 1; }
fi
req_hash=$(cat "$req_file" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)
stamp=$VENV/.hvdspar-requirements
if [[ ! -f $stamp || $(cat "$stamp") != "$req_hash" ]]; then
  log "installing Python packages (requirements.txt, pinned by constraints.txt)"
  if (( GPU )) && "${PIP[@]}" show --quiet tensorflow-cpu >/dev/null 2>&1; then
    "${PIP[@]}" uninstall --quiet -y tensorflow-cpu  # it would share files with tensorflow
  fi
  "${PIP[@]}" install --quiet -c "$ROOT/constraints.txt" -r "$req_file"
  echo "$req_hash" > "$stamp"
else
  log "Python packages up to date"
fi

# Horovod: built from source in this environment, without build isolation, so
# that CMake finds this TensorFlow.
features=Gloo
hv_env=(HOROVOD_WITHOUT_MPI=1)
if (( MPI )); then features+=", MPI"; hv_env=(HOROVOD_WITH_MPI=1); fi
if (( GPU )); then
  features+=", NCCL"
  hv_env+=(HOROVOD_GPU_OPERATIONS=NCCL "HOROVOD_CUDA_HOME=${HOROVOD_CUDA_HOME:-/usr/local/cuda}")
fi
horovod_ok() {
  HVDSPAR_GPU=$GPU HVDSPAR_MPI=$MPI "$VENV/bin/python" - <<'PY' 2>/dev/null
import os
import horovod, horovod.tensorflow as hvd
from horovod.common.util import gloo_built
assert horovod.__version__ == "0.28.1", horovod.__version__
assert hvd.gloo_built()
assert os.environ["HVDSPAR_MPI"] != "1" or hvd.mpi_built()
assert os.environ["HVDSPAR_GPU"] != "1" or hvd.nccl_built()
PY
}
if horovod_ok; then
  log "Horovod 0.28.1 with $features already built"
else
  hv=$(grep -E '^horovod==' "$ROOT/constraints.txt" | cut -d= -f3)
  log "building Horovod $hv with $features against TensorFlow (several minutes)"
  "${PIP[@]}" uninstall --quiet -y horovod >/dev/null 2>&1 || true
  env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 "${hv_env[@]}" \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "${PIP[@]}" install --no-build-isolation --no-cache-dir -c "$ROOT/constraints.txt" "horovod==$hv"
  horovod_ok || { echo "setup.sh: Horovod built but does not import with $features" >&2; exit 1; }
fi

# hvdspar itself (editable, so the checkout is what runs). Checked from / so that
# the checkout's own directory on sys.path cannot hide a missing install.
installed_at=$(cd / && "$VENV/bin/python" -c "import hvdspar, hvdspar.training, hvdspar.tracking, os; print(os.path.dirname(os.path.dirname(hvdspar.__file__)))" 2>/dev/null || true)
if (( DEPS_ONLY )); then
  log "skipping hvdspar itself (--deps-only)"
elif [[ $installed_at != "$ROOT" ]]; then
  log "installing hvdspar (editable)"
  "${PIP[@]}" install --quiet --no-deps --no-build-isolation -e "$ROOT"
fi

# hvdspar's native kernels (hvdspar/native: GSpar's passes and the decode's sum), compiled against
# this TensorFlow; without a C++ compiler hvdspar runs on its XLA path, about twice as slow.
if (( ! DEPS_ONLY )); then
  if command -v "${CXX:-g++}" >/dev/null; then
    TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -m hvdspar.native --if-stale 2>&1 | sed 's/^/[setup] /' \
      || log "WARNING: building hvdspar's native kernels failed (above); the XLA path is used"
  else
    log "WARNING: no C++ compiler (${CXX:-g++}); hvdspar's native kernels are not built (the XLA path is used)"
  fi
fi

if (( WITH_TEST )); then
  # Headless Chromium for the MLflow UI test; iproute2 for shaped networks;
  # Debian's Fashion-MNIST for the data tests; PostgreSQL for the tracking
  # server of docker/compose.yaml (tests/workers/postgres_server.py).
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v ip >/dev/null || missing+=(iproute2)
  [[ -d /usr/share/datasets/fashion-mnist ]] || missing+=(dataset-fashion-mnist)
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || missing+=(postgresql)
  if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]]; then
      log "installing system packages: ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      log "WARNING: missing ${missing[*]} and not root; the tests that need them will be skipped"
    fi
  fi
fi
log "ready: $VENV"
