"""Run ``hvdspar.training.train.main`` several times in one horovodrun launch (saves launches).

argv[1]: JSON list of runs, each {"name": str, "argv": [...]} ; "{out}" in an argument is
replaced by $HVDSPAR_TEST_OUT. With HVDSPAR_FAKE_TRACKING=1 a stand-in
``hvdspar.tracking`` module records what train.py hands it (params, the logs its callbacks see).
Each rank reports {name: {"rc": int, "tracking": {...}}}; metrics and weights go to files.
"""

import json
import os
import sys
import types

import tensorflow as tf

from tests.workers.common import report

OUT = os.environ["HVDSPAR_TEST_OUT"]
seen = {}


def install_fake_tracking():
    class Recorder(tf.keras.callbacks.Callback):
        def __init__(self, params):
            super().__init__()
            self.record = {"params": {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))}, "epochs": []}

        def on_epoch_end(self, epoch, logs=None):
            self.record["epochs"].append({k: float(v) for k, v in (logs or {}).items()})

    class Tracker:
        def __init__(self, params):
            self.record = Recorder(params).record

        def log_epoch(self, epoch, metrics):
            self.record["epochs"].append({k: float(v) for k, v in metrics.items()})

        def log_step(self, step, metrics):
            self.record.setdefault("steps", []).append(step)

        def close(self):
            self.record["closed"] = True

    def make_callbacks(params, compressor, steps_per_epoch, checkpoint_dir):
        cb = Recorder(params)
        cb.record.update(steps_per_epoch=steps_per_epoch, has_traffic=hasattr(compressor, "traffic"))
        seen["current"] = cb.record
        return [cb]

    def make_tracker(params, compressor, checkpoint_dir, variables=None):
        assert variables, "train.py passes the trainable variables (tracking counts none/fp16 bytes with them)"
        t = Tracker(params)
        seen["current"] = t.record
        return t

    mod = types.ModuleType("hvdspar.tracking")
    mod.make_callbacks, mod.make_tracker = make_callbacks, make_tracker
    sys.modules["hvdspar.tracking"] = mod


def main():
    import horovod.tensorflow as hvd

    from hvdspar.training import train

    if os.environ.get("HVDSPAR_FAKE_TRACKING") == "1":
        install_fake_tracking()
    runs = json.loads(sys.argv[1])
    results = {}
    for run in runs:
        seen.clear()
        argv = [a.replace("{out}", OUT) for a in run["argv"]]
        tf.keras.backend.clear_session()
        rc = train.main(argv)
        results[run["name"]] = {"rc": rc, "tracking": seen.get("current")}
    report(hvd.rank(), **results)


if __name__ == "__main__":
    main()
