#!/usr/bin/env bash
# Set up if needed (scripts/setup.sh --test, scripts/setup_gpu_check.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_coding.py -x
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh" --test
# the GPU-readiness check's own environment (the CUDA build of TensorFlow; tests/test_gpu_readiness.py)
bash "$ROOT/scripts/setup_gpu_check.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m pytest "$@"
