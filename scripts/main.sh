#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the main job: a short 2-rank
# horovodrun training comparing GSpar with no compression (training/compare.py).
# Extra arguments go to hvdspar.training.compare, e.g. --epochs 10 --compressors none fp16 gspar:rho=0.01
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python -m hvdspar.training.compare "$@" 2>&1 \
  | grep --line-buffered -v -E 'W tensorflow|WARNING|oneDNN|cpu_feature_guard|rebuild TensorFlow|^\[1\]' \
  | sed -u 's/^\[0\]<std\(out\|err\)>://'
