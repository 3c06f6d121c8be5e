"""The Keras callback: every run logs communication against loss/accuracy, with no configuration.

    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), ...,
                 *make_callbacks(params, compressor, steps_per_epoch, checkpoint_dir)]
    model.fit(..., callbacks=callbacks)

Put it on EVERY rank, after any callback that adds entries to the epoch logs (those entries are
logged too). Every ``log_every`` steps and at each epoch end it sums the ranks' traffic counters
with one ``hvd.allreduce``; rank 0 logs to MLflow. Step metrics are named "step/<name>" with
step = optimizer steps; epoch metrics keep Keras' names with step = epochs done.
"""

import tensorflow as tf

from tracking.tracker import Tracker


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

    @property
    def run_id(self):
        return self.tracker.run_id if self.tracker is not None and self.tracker.run_id else self._run_id

    def _spe(self):
        return int(self.steps_per_epoch or (self.params or {}).get("steps") or 0)

    def on_train_begin(self, logs=None):
        if self.tracker is None or self.tracker.closed:  # a second fit() continues the same run
            self.tracker = Tracker(self.run_params, self.compressor, self.checkpoint_dir, run_id=self._run_id)
        self.tracker.describe(self.model, getattr(self.model, "optimizer", None))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.tracker.epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        spe = self._spe()
        self.tracker.log_step(self._epoch * spe + batch + 1 if spe else self.tracker.steps + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        spe = self._spe()
        step = (epoch + 1) * spe if spe else self.tracker.steps
        self.tracker.log_epoch(epoch + 1, logs, step=step)

    def on_train_end(self, logs=None):
        self._run_id = self.tracker.run_id
        self.tracker.close()
