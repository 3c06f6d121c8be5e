#!/usr/bin/env bash
# The GPU-readiness check's own environment (default .venv-gpu-check/): the CUDA
# build of TensorFlow 2.15.1 (`tensorflow`, without the [and-cuda] libraries: it
# installs and imports on a CPU machine, and its kernel registry lists the GPU
# kernels), numpy, pytest, and hvdspar in editable mode. No Horovod: the check
# walks hvdspar's own ops. It cannot share .venv/, which holds tensorflow-cpu.
#
# Idempotent and cached like .venv/: a second run reuses the environment while
# constraints.txt is unchanged.
#
#   scripts/setup_gpu_check.sh      # then: .venv-gpu-check/bin/python -m benchmarks.gpu_readiness
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDSPAR_GPU_CHECK_VENV:-$ROOT/.venv-gpu-check}
PYTHON=${PYTHON:-python3.11}
log() { echo "[setup-gpu-check] $*"; }

if [[ ! -x $VENV/bin/python ]]; then
  command -v "$PYTHON" >/dev/null || { echo "setup_gpu_check.sh: '$PYTHON' not found" >&2; exit 1; }
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip<25" "setuptools<70" wheel
fi
stamp=$VENV/.hvdspar-gpu-check
want=$(cat "$ROOT/constraints.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "installing tensorflow==2.15.1 (the CUDA build) and the check's dependencies"
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" tensorflow numpy protobuf pytest
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" - <<'PY'
import tensorflow as tf
assert tf.test.is_built_with_cuda(), "setup_gpu_check.sh: this TensorFlow is not the CUDA build"
print(f"[setup-gpu-check] ready: TensorFlow {tf.__version__}, built with CUDA")
PY
