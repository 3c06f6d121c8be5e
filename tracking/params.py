"""What a run records as MLflow params: the settings it was given, the compressor, ranks, versions, commit.

``run_config(params, compressor, num_ranks)`` returns the nested dict that is also saved as the
run's config artifact; ``flatten`` turns it into MLflow params ("compressor.rho": "0.01").
"""

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# MLflow 3 limits: param keys 250 characters, values 6000.
MAX_KEY = 250
MAX_VALUE = 6000
REPO = Path(__file__).resolve().parent.parent


def compressor_spec(compressor):
    """'gspar:rho=0.01,...', 'none', 'fp16', or a class name for anything else."""
    if compressor is None:
        return "none"
    if callable(getattr(compressor, "spec", None)) and hasattr(compressor, "traffic"):
        return compressor.spec()  # an hvdspar compressor (no need to import hvdspar for it)
    try:
        from hvdspar.spec import to_spec

        return to_spec(compressor)
    except Exception:  # pragma: no cover - hvdspar importable wherever tracking is used
        return getattr(compressor, "__name__", type(compressor).__name__).lower()


def compressor_config(compressor):
    """The compressor's constructor arguments (hvdspar), or {} for Horovod's none/fp16."""
    config = getattr(compressor, "config", None)
    if callable(config) and hasattr(compressor, "traffic"):
        try:
            return dict(config())
        except TypeError:  # a class, not an instance
            return {}
    return {}


def git_commit(path=REPO):
    """``git rev-parse HEAD`` of the repository holding hvdspar, else of the working directory; "unknown"."""
    for where in (path, os.getcwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def git_dirty(path=REPO):
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _version(module, *dists):
    """The module's __version__ if it is imported, else its installed distribution's (no import)."""
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    for dist in dists or (module,):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def versions():
    return {
        "hvdspar": _version("hvdspar"),
        "tensorflow": _version("tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow-gpu"),
        "horovod": _version("horovod"),
        "mlflow": _version("mlflow"),
        "python": platform.python_version(),
    }


def run_config(params, compressor, num_ranks, extra=None):
    """The run's full configuration: the given params, the compressor, ranks, versions, git commit."""
    config = dict(params or {})
    config.update(extra or {})
    config["compressor"] = compressor_spec(compressor)
    for key, value in compressor_config(compressor).items():
        config[f"compressor.{key}"] = value
    config.setdefault("num_ranks", num_ranks)
    if "seed" not in config and compressor_config(compressor).get("seed") is not None:
        config["seed"] = compressor_config(compressor)["seed"]
    config["version"] = versions()
    config["git_commit"] = git_commit()
    return config


def _text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def flatten(config, prefix=""):
    """Nested dict -> {"a.b": "text"}, keys and values cut to MLflow's limits."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
            continue
        text = _text(value)
        if len(text) > MAX_VALUE:
            text = text[: MAX_VALUE - 3] + "..."
        flat[name[:MAX_KEY]] = text
    return flat


def jsonable(config):
    """A copy of config that json.dumps and yaml.safe_dump accept."""
    if isinstance(config, dict):
        return {str(k): jsonable(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [jsonable(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    try:
        return config.item()  # numpy scalars
    except AttributeError:
        return str(config)
