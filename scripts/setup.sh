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
#
# Environment: HVDSPAR_VENV (where the venv goes), PYTHON (interpreter to
# create it with, default python3.11).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDSPAR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
WITH_TEST=0
for arg in "$@"; do
  case $arg in
    --test) WITH_TEST=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test)" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*"; }

if [[ ! -x $VENV/bin/python ]]; then
  command -v "$PYTHON" >/dev/null || { echo "setup.sh: '$PYTHON' not found; set PYTHON to a Python 3.11 interpreter" >&2; exit 1; }
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip<25" "setuptools<70" wheel
fi
PIP=("$VENV/bin/python" -m pip)

# Python packages, only when the requirement files changed.
req_hash=$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)
stamp=$VENV/.hvdspar-requirements
if [[ ! -f $stamp || $(cat "$stamp") != "$req_hash" ]]; then
  log "installing Python packages (requirements.txt, pinned by constraints.txt)"
  "${PIP[@]}" install --quiet -c "$ROOT/constraints.txt" -r "$ROOT/requirements.txt"
  echo "$req_hash" > "$stamp"
else
  log "Python packages up to date"
fi

# Horovod: built from source in this environment, without build isolation, so
# that CMake finds this TensorFlow.
horovod_ok() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import horovod, horovod.tensorflow as hvd
from horovod.common.util import gloo_built
assert horovod.__version__ == "0.28.1", horovod.__version__
assert hvd.gloo_built()
PY
}
if horovod_ok; then
  log "Horovod 0.28.1 with Gloo already built"
else
  hv=$(grep -E '^horovod==' "$ROOT/constraints.txt" | cut -d= -f3)
  log "building Horovod $hv with Gloo against TensorFlow (several minutes)"
  "${PIP[@]}" uninstall --quiet -y horovod >/dev/null 2>&1 || true
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=${HOROVOD_CPU_OPERATIONS:-gloo} \
  MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "${PIP[@]}" install --no-build-isolation --no-cache-dir -c "$ROOT/constraints.txt" "horovod==$hv"
  horovod_ok || { echo "setup.sh: Horovod built but does not import with Gloo" >&2; exit 1; }
fi

# hvdspar itself (editable, so the checkout is what runs).
if ! "$VENV/bin/python" -c "import hvdspar" 2>/dev/null \
   || [[ $("$VENV/bin/python" -c "import hvdspar, os; print(os.path.dirname(os.path.dirname(hvdspar.__file__)))" 2>/dev/null) != "$ROOT" ]]; then
  log "installing hvdspar (editable)"
  "${PIP[@]}" install --quiet --no-deps --no-build-isolation -e "$ROOT"
fi

if (( WITH_TEST )); then
  # Headless Chromium for the MLflow UI test; iproute2 for shaped networks.
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v ip >/dev/null || missing+=(iproute2)
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
