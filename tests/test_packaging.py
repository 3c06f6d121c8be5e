"""What installing hvdspar puts on a user's machine: one top-level name, and CLIs that work under it."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")


def test_the_wheel_claims_only_hvdspar(tmp_path):
    """training/ and tracking/ install as hvdspar.training and hvdspar.tracking: no generic
    top-level modules that would collide with a user's own ``training`` or ``tracking``."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("hvdspar-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {n.split("/")[0] for n in names} == {"hvdspar", info}
    archive = zipfile.ZipFile(wheel)
    assert archive.read(f"{info}/top_level.txt").decode().split() == ["hvdspar"]
    assert "hvdspar-train = hvdspar.training.train:main" in archive.read(f"{info}/entry_points.txt").decode()
    for module in ("hvdspar/training/train.py", "hvdspar/training/data.py", "hvdspar/tracking/keras.py",
                   "hvdspar/tracking/sweep.py", "hvdspar/__init__.py"):
        assert module in names


def test_the_clis_run_under_hvdspars_name_from_anywhere(tmp_path):
    """From a directory that is not the checkout (as a user runs them), and the console script."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in ([sys.executable, "-m", "hvdspar.training.train", "--help"],
                    [sys.executable, "-m", "hvdspar.tracking.sweep", "--help"],
                    [str(Path(sys.executable).with_name("hvdspar-train")), "--help"]):
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stderr[-2000:])
    from hvdspar.tracking import MLflowCallback, Tracker  # noqa: F401  (the names the README gives)
