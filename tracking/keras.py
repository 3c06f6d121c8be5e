"""The Keras callback: every run logs communication against loss/accuracy, with no configuration.

In a user's own script (one line added to Horovod's Keras examples)::

    from hvdspar.tracking import MLflowCallback

    compression = hvdspar.GSpar(rho=0.01)        # or hvd.Compression.none / .fp16
    opt = hvd.DistributedOptimizer(opt, compression=compression)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                 hvd.callbacks.MetricAverageCallback(),
                 MLflowCallback(compression, model="mnist-cnn", batch_size=128)]  # any params to record
    model.fit(..., callbacks=callbacks)

The training CLI uses the same class through ``make_callbacks(params, compressor, steps_per_epoch,
checkpoint_dir)``, so the runs of both sit side by side in the MLflow UI.

Put it on EVERY rank, after any callback that adds entries to the epoch logs (those entries are
logged too). Every ``log_every`` steps and at each epoch end it sums the ranks' traffic counters
with one ``hvd.allreduce``; rank 0 logs to MLflow. Step metrics are named "step/<name>" with
step = optimizer steps; epoch metrics keep Keras' names with step = epochs done.
"""

import tensorflow as tf

from hvdspar.tracking.tracker import Tracker, trainable_variables


class MLflowTracking(tf.keras.callbacks.Callback):
    """Logs params, step/epoch metrics and traffic, plots and config (see the module docstring)."""

    def __init__(self, params=None, compressor=None, steps_per_epoch=None, checkpoint_dir=None):
        super().__init__()
        self.run_params = dict(params or {})
        self.compressor = compressor
        self.steps_per_epoch = steps_per_epoch
        self.checkpoint_dir = checkpoint_dir
        self.tracker = None
        self._run_id = None
        self._epoch = 0
        # Keras hands this callback its logs as tensors, not numbers: converting them each batch waits for
        # the step to finish; log_step reads them only at its logging steps (every log_every)
        self._supports_tf_logs = True
        self._unbuilt = False

    @property
    def run_id(self):
        return self.tracker.run_id if self.tracker is not None and self.tracker.run_id else self._run_id

    def _spe(self):
        return int(self.steps_per_epoch or (self.params or {}).get("steps") or 0)

    def on_train_begin(self, logs=None):
        if self.tracker is None or self.tracker.closed:  # a second fit() continues the same run
            self.tracker = Tracker(self.run_params, self.compressor, self.checkpoint_dir, run_id=self._run_id)
        self.tracker.describe(self.model, getattr(self.model, "optimizer", None))
        self._unbuilt = not trainable_variables(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.tracker.epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        if self._unbuilt:  # a model without an Input is built by its first step: describe it now
            self._unbuilt = False
            self.tracker.describe(self.model, getattr(self.model, "optimizer", None))
        spe = self._spe()
        self.tracker.log_step(self._epoch * spe + batch + 1 if spe else self.tracker.steps + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        spe = self._spe()
        step = (epoch + 1) * spe if spe else self.tracker.steps
        self.tracker.log_epoch(epoch + 1, logs, step=step)

    def on_train_end(self, logs=None):
        self._run_id = self.tracker.run_id
        self.tracker.close()


class MLflowCallback(MLflowTracking):
    """``MLflowCallback(compression, **params)``: track a user's ``model.fit`` in MLflow.

    Add it to the callbacks of ``model.fit`` on EVERY rank (rank 0 logs; the bytes are summed
    over ranks with one ``hvd.allreduce`` at each logging point). ``compression`` is what the
    script gives ``hvd.DistributedOptimizer`` / ``DistributedGradientTape``: an hvdspar
    compressor (it counts its own bytes) or Horovod's ``Compression.none`` / ``.fp16`` (every
    trainable variable once per step, fp16 halving the floating ones). ``params`` are recorded
    as the run's MLflow params beside what is found (model name, optimizer, learning rate,
    trainable parameters, epochs, steps per epoch, ranks, versions, commit), and may hold
    ``run_name``, ``experiment``, ``log_every`` (steps; 0 logs epochs only) or ``tracking``
    ("off", or a tracking URI). Runs go to ``MLFLOW_TRACKING_URI``, else to ``mlflow.db`` in
    the working directory. ``checkpoint_dir`` (keyword) keeps the run id there, so a resumed
    training continues the same run.
    """

    def __init__(self, compression=None, *, steps_per_epoch=None, checkpoint_dir=None, **params):
        super().__init__(params, compression, steps_per_epoch, checkpoint_dir)

    def on_train_begin(self, logs=None):
        fit = self.params or {}  # Keras' own: epochs, steps (per epoch), verbose
        for key, value in (("epochs", fit.get("epochs")), ("steps_per_epoch", self.steps_per_epoch or fit.get("steps"))):
            if value is not None:
                self.run_params.setdefault(key, value)
        super().on_train_begin(logs)
