"""Where this process stands: Horovod rank and size, and tracking settings from the environment.

Everything here is cheap and imports neither MLflow nor TensorFlow unless asked.

Settings (all optional; a ``params`` entry of the same name wins over the environment):

    MLFLOW_TRACKING_URI          where runs go; default: sqlite:///<cwd>/mlflow.db (MLflow 3's own default)
    HVDSPAR_EXPERIMENT           experiment name (also MLFLOW_EXPERIMENT_NAME); default "hvdspar"
    HVDSPAR_LOG_EVERY            log step metrics every N steps (params["log_every"]); default 100
    HVDSPAR_TRACKING             "0"/"off" turns MLflow logging off (params["tracking"] too)
    HVDSPAR_PARENT_RUN_ID        make the run a child of this run (set by ``python -m hvdspar.tracking.sweep``)
    HVDSPAR_RUN_NAME             the run's name; default "<model>-<data>-<compressor>-np<ranks>"
    HVDSPAR_TRACKING_FLUSH_SECS  seconds between deliveries to MLflow; default 5
    HVDSPAR_TRACKING_CLOSE_WAIT  seconds the end of training waits for an unreachable server; default 15
"""

import os
import sys

DEFAULT_EXPERIMENT = "hvdspar"
DEFAULT_LOG_EVERY = 100  # step metrics every 100 steps: ~0 cost a step (every 10: ~0.4 ms, BENCHMARKS.md)
OFF_VALUES = ("0", "off", "false", "no", "none", "disabled")


def horovod_world():
    """(rank, size, hvd module or None). Without an initialized Horovod: one process, rank from env.

    Horovod cannot be initialized unless horovod.tensorflow was imported, so a process that never
    imported it (a plain script, a test) is not made to import TensorFlow here.
    """
    hvd = sys.modules.get("horovod.tensorflow")
    try:
        if hvd is not None and hvd.is_initialized():
            return hvd.rank(), hvd.size(), hvd
    except (ValueError, AttributeError):  # pragma: no cover - an unusual Horovod build
        pass
    rank = int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    return rank, 1, None


def setting(params, key, env, default=None):
    """params[key] if given, else the environment variable ``env``, else ``default``."""
    if params and params.get(key) not in (None, ""):
        return params[key]
    value = os.environ.get(env)
    return value if value not in (None, "") else default


def log_every(params=None):
    value = int(setting(params, "log_every", "HVDSPAR_LOG_EVERY", DEFAULT_LOG_EVERY))
    if value < 0:
        raise ValueError(f"hvdspar.tracking: log_every must be >= 0 (0: epoch metrics only), got {value}")
    return value


def enabled(params=None):
    value = setting(params, "tracking", "HVDSPAR_TRACKING", True)
    return str(value).strip().lower() not in OFF_VALUES


def tracking_uri(params=None):
    """The tracking URI, made explicit: MLflow 3's default local store is sqlite:///mlflow.db in the
    working directory, written here as an absolute path so every process of a run agrees on it.

    ``params["tracking"]`` may itself be a URI (http://..., sqlite:///..., file:...)."""
    value = params.get("tracking") if params else None
    if isinstance(value, str) and ("://" in value or value.startswith("file:")):
        return value
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.join(os.path.abspath(os.getcwd()), "mlflow.db")


def experiment_name(params=None):
    return str(
        setting(params, "experiment", "HVDSPAR_EXPERIMENT", os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    )


def flush_seconds():
    return float(os.environ.get("HVDSPAR_TRACKING_FLUSH_SECS", "5"))


def close_wait_seconds():
    return float(os.environ.get("HVDSPAR_TRACKING_CLOSE_WAIT", "15"))
