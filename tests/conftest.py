"""Shared test helpers: run a worker script under a real `horovodrun`.

Worker scripts live in tests/workers/. Each rank writes its results as JSON
to $HVDSPAR_TEST_OUT/rank<r>.json (``tests.workers.common.report``); the
``horovodrun`` fixture returns those dicts in rank order.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "tests" / "workers"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def horovodrun_executable():
    exe = Path(sys.executable).with_name("horovodrun")
    return str(exe) if exe.exists() else shutil.which("horovodrun")


def run_horovod(command, tmp_path, np=2, timeout=600, env=None, check=True, hosts=None, launcher=(), options=()):
    """Run ``command`` (list: python module/script and args) on ``np`` local ranks (``hosts``: horovodrun's
    -H, e.g. "localhost:2,127.0.0.1:2" for two simulated nodes of two ranks; default one host).
    ``launcher``: a prefix for horovodrun itself (e.g. ``ip netns exec NAME``); ``options``: more of
    horovodrun's options.

    Returns (list of per-rank result dicts, combined output).
    """
    exe = horovodrun_executable()
    assert exe, "horovodrun not found beside the test interpreter: run scripts/setup.sh"
    out_dir = Path(tmp_path) / "hvd-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HVDSPAR_TEST_OUT": str(out_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    full_env.update(env or {})
    cmd = [*launcher, exe, "-np", str(np), "-H", hosts or f"localhost:{np}", *options, "--gloo", sys.executable,
           *command]
    proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"horovodrun failed ({proc.returncode}): {' '.join(cmd)}\n{_rank_errors(output)}")
    results = []
    for r in range(np):
        f = out_dir / f"rank{r}.json"
        results.append(json.loads(f.read_text()) if f.exists() else None)
    return results, output


def worker_results(worker, tmp_path_factory, np=2, timeout=600):
    """Per-rank results of tests/workers/<worker>.py under ``np`` ranks, for a module fixture; fails
    with the output's tail where a rank wrote nothing (a hang fails by the timeout)."""
    results, output = run_horovod([str(WORKERS / f"{worker}.py")], tmp_path_factory.mktemp(worker), np=np,
                                  timeout=timeout)
    assert all(r is not None for r in results), output[-4000:]
    return results


def _rank_errors(output, limit=8000):
    """The ranks' own lines (not the launcher's traceback, not TF's warnings)."""
    lines = [
        ln
        for ln in output.splitlines()
        if ln.startswith("[") and "W tensorflow" not in ln and "WARNING" not in ln and "I tensorflow" not in ln
    ]
    return "\n".join(lines)[-limit:] or output[-limit:]


@pytest.fixture
def horovodrun(tmp_path):
    """horovodrun(worker_name_or_args, np=2, ...) -> per-rank results."""

    def run(worker, *args, np=2, timeout=600, env=None, check=True, hosts=None):
        command = [str(WORKERS / f"{worker}.py"), *map(str, args)] if isinstance(worker, str) else list(worker)
        return run_horovod(command, tmp_path, np=np, timeout=timeout, env=env, check=check, hosts=hosts)

    return run


def pytest_configure(config):
    """``pytest -m quick`` runs as it would where Horovod was never built: importing horovod fails,
    so a quick test that needs Horovod shows up here and not on a contributor's machine."""
    if (config.getoption("markexpr", "") or "").strip() == "quick":
        for name in [m for m in sys.modules if m == "horovod" or m.startswith("horovod.")]:
            del sys.modules[name]
        sys.modules["horovod"] = None  # import horovod -> ImportError


@pytest.fixture(params=["native", "xla"])
def kernels(request, monkeypatch):
    """Run a test on hvdspar.native's compiled kernels and again on the XLA path they stand in for
    (HVDSPAR_NATIVE=0's path): the kernels are in use wherever they are built, so without this the
    XLA path would go untested. "native" fails where the kernels should be built but are not."""
    from hvdspar import native

    if request.param == "native":
        require_native(native)
    else:
        monkeypatch.setitem(native._state, "why_not", "HVDSPAR_NATIVE=0")
    return request.param


def require_native(native):
    """Fail unless hvdspar.native's kernels are in use; skip only where no C++ compiler exists to build them."""
    compiler = os.environ.get("CXX", "g++")
    if native.why_not() is not None and shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) to build hvdspar.native")
    assert native.why_not() is None, f"hvdspar.native's kernels are not in use: {native.why_not()}"

