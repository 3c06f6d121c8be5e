"""The GPU-readiness check (benchmarks/gpu_readiness.py) in its own environment, .venv-gpu-check/
(the CUDA build of TensorFlow cannot share .venv/ with tensorflow-cpu; scripts/test.sh sets it up
with scripts/setup_gpu_check.sh, as CI does)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-gpu-check" / "bin" / "python"

pytestmark = pytest.mark.slow


def test_every_op_of_every_compressor_has_a_gpu_kernel_with_its_data_on_the_device(tmp_path):
    if not PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail("CI: .venv-gpu-check/ is missing; scripts/test.sh runs scripts/setup_gpu_check.sh")
        pytest.skip("no .venv-gpu-check/: run bash scripts/setup_gpu_check.sh")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([str(PYTHON), "-m", "benchmarks.gpu_readiness", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "every op of every compressor has a GPU kernel with its data on the device" in proc.stdout
    import json

    result = json.loads(out.read_text())
    assert result["failures"] == []
    # every compressor was really walked (graphs of thousands of ops, most of them)
    assert len(result["checked"]) >= 12 and min(result["checked"].values()) > 1000, result["checked"]
    # what runs on the host is the first-step plan log only: a scalar callback
    assert {r["op"] for r in result["allowed"]} <= {"PyFunc"}, result["allowed"]


def test_the_check_finds_an_int32_data_path_and_a_missing_kernel():
    """A negative control: the checker flags what the fixes removed (int32 bit arithmetic kept in
    host memory, a float16 scatter with no GPU kernel)."""
    if not PYTHON.exists():
        pytest.skip("no .venv-gpu-check/")
    code = (
        "import tensorflow as tf\n"
        "from benchmarks.gpu_readiness import check_op\n"
        "@tf.function(autograph=False)\n"
        "def f(x, i):\n"
        "    bits = tf.cast(x > 0, tf.int32)\n"
        "    s = tf.reduce_sum(tf.reshape(bits, [-1, 8]), 1)\n"
        "    h = tf.tensor_scatter_nd_update(tf.cast(x, tf.float16), i, tf.zeros([4], tf.float16))\n"
        "    return s, h\n"
        "g = f.get_concrete_function(tf.TensorSpec([4096], tf.float32), tf.TensorSpec([4, 1], tf.int64)).graph\n"
        "found = {(op.type, r) for op in g.get_operations() for r, _ in check_op(op, False)}\n"
        "print(sorted(found))\n"
    )
    proc = subprocess.run([str(PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "('Sum', 'host memory')" in proc.stdout and "('TensorScatterUpdate', 'no GPU kernel')" in proc.stdout, proc.stdout
