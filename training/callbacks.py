"""Per-epoch metrics, checkpoints and the metrics file, as Keras callbacks.

``EpochMetrics`` writes into Keras' ``logs`` dict (so the tracking callbacks
that run after it see the values) on every rank:

  objective        f(w_t) on the full training set (convex models: float64
                   NumPy; CNN: mean cross-entropy in inference mode)
  suboptimality    f(w_t) - f*                       (convex models only)
  train_accuracy   accuracy on the full training set
  test_accuracy    accuracy on the test set
  data_passes      samples visited / N (SVRG adds 1 per epoch for its full gradient)
  bytes_sent       this rank's cumulative bytes on the wire (compressor.traffic();
  dense_bytes      for Horovod's none/fp16: steps x the dense gradient bytes)
  epoch_seconds    wall time of the epoch's training steps (evaluation excluded)

For the CNN, ranks evaluate their own shard of the training and test sets and
add up the counts with ``hvd.allreduce``; batch-normalisation moving
statistics (local to each rank during training) are averaged across ranks
first, so every rank ends an epoch with the same model.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from hvdspar.state import horovod_step_bytes
from hvdspar.training import fstar as fstar_mod
from hvdspar.training.models import CONVEX, linear_weights


def traffic(compressor, steps, step_bytes, size):
    """(bytes_sent, dense_bytes) of this rank so far.

    hvdspar compressors count their own traffic; for Horovod's none/fp16 it is steps x
    ``step_bytes`` (``hvdspar.state.horovod_step_bytes``). One rank sends nothing.
    """
    if hasattr(compressor, "traffic"):
        t = compressor.traffic()
        return int(t["bytes_sent"]), int(t["dense_bytes"])
    if size <= 1:
        return 0, 0
    sent, dense = step_bytes
    return int(steps) * sent, int(steps) * dense


class Evaluator:
    """Computes one epoch's metrics; shared by the Keras callback and the SVRG loop."""

    def __init__(self, model_name, model, data, shard_train, shard_test, fstar, lambda2, compressor, hvd, samples_per_epoch, extra_passes_per_epoch=0.0, eval_batch=1024):
        self.model_name = model_name
        self.model = model
        self.data = data
        self.shard_train, self.shard_test = shard_train, shard_test
        self.fstar = fstar
        self.lambda2 = lambda2
        self.compressor = compressor
        self.hvd = hvd
        self.samples_per_epoch = samples_per_epoch  # over all ranks
        self.extra = extra_passes_per_epoch
        self.eval_batch = eval_batch
        self.step_bytes = horovod_step_bytes(model.trainable_variables, compressor)  # none/fp16
        self._logits = None

    def passes(self, epochs_done):
        return epochs_done * (self.samples_per_epoch / self.data.n_train + self.extra)

    def sync_non_trainable(self):
        """Average non-trainable state (BN moving statistics) across ranks."""
        if self.hvd.size() > 1 and self.model.non_trainable_variables:
            for v in self.model.non_trainable_variables:
                if v.dtype.is_floating:
                    v.assign(self.hvd.allreduce(v, op=self.hvd.Average, name=f"sync_{v.name.replace(':', '_')}"))

    def _eval_counts(self, x, y):
        """(sum of cross-entropy, correct) on these rows, in inference mode."""
        if self._logits is None:
            self._logits = tf.function(lambda t: self.model(t, training=False))
        loss_sum, correct = 0.0, 0
        for i in range(0, x.shape[0], self.eval_batch):
            logits = self._logits(tf.constant(x[i : i + self.eval_batch])).numpy().astype(np.float64)
            yb = y[i : i + self.eval_batch]
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
            correct += int((logits.argmax(axis=1) == yb).sum())
        return loss_sum, correct

    def compute(self, epochs_done, steps_done):
        d = self.data
        out = {}
        if self.model_name in CONVEX:
            w = linear_weights(self.model)
            out["objective"] = fstar_mod.objective(self.model_name, d.x_train, d.y_train, w, self.lambda2)
            if self.fstar is not None:
                out["suboptimality"] = out["objective"] - self.fstar
            out["train_accuracy"] = fstar_mod.accuracy(d.x_train, d.y_train, w)
            out["test_accuracy"] = fstar_mod.accuracy(d.x_test, d.y_test, w) if d.x_test.shape[0] else float("nan")
        else:
            self.sync_non_trainable()
            tr = self._eval_counts(d.x_train[self.shard_train], d.y_train[self.shard_train])
            te = self._eval_counts(d.x_test[self.shard_test], d.y_test[self.shard_test])
            sums = np.array([tr[0], tr[1], te[0], te[1]], np.float64)
            if self.hvd.size() > 1:
                sums = self.hvd.allreduce(tf.constant(sums), op=self.hvd.Sum, name="eval_counts").numpy()
            out["objective"] = sums[0] / d.n_train
            out["train_accuracy"] = sums[1] / d.n_train
            out["test_loss"] = sums[2] / max(1, d.x_test.shape[0])
            out["test_accuracy"] = sums[3] / max(1, d.x_test.shape[0])
        out["data_passes"] = self.passes(epochs_done)
        sent, dense = traffic(self.compressor, steps_done, self.step_bytes, self.hvd.size())
        out["bytes_sent"], out["dense_bytes"] = float(sent), float(dense)
        return out


def format_line(epoch, epochs, logs):
    """The compact per-epoch line printed by rank 0."""
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {logs.get('objective', logs.get('loss', float('nan'))):.6g}"]
    if "suboptimality" in logs:
        parts.append(f"subopt {logs['suboptimality']:.3e}")
    parts.append(f"acc {logs.get('train_accuracy', float('nan')):.4f}")
    parts.append(f"test {logs.get('test_accuracy', float('nan')):.4f}")
    parts.append(f"passes {logs.get('data_passes', 0):.2f}")
    sent, dense = logs.get("bytes_sent", 0.0), logs.get("dense_bytes", 0.0)
    parts.append(f"sent {sent / 1e6:.3f} MB" + (f" ({sent / dense:.3f} of dense)" if dense else ""))
    if "epoch_seconds" in logs:
        parts.append(f"{logs['epoch_seconds']:.1f} s")
    return "  ".join(parts)


class EpochMetrics(tf.keras.callbacks.Callback):
    """Adds the metrics above to ``logs``; rank 0 prints ``format_line``."""

    def __init__(self, evaluator, epochs, steps_counter, rank=0, printer=print):
        super().__init__()
        self.evaluator = evaluator
        self.epochs = epochs
        self.steps_counter = steps_counter  # callable -> optimizer steps done so far
        self.rank = rank
        self.printer = printer
        self._t0 = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._t0 if self._t0 is not None else float("nan")
        logs.update(self.evaluator.compute(epoch + 1, int(self.steps_counter())))
        logs["epoch_seconds"] = seconds
        if self.rank == 0 and self.printer:
            self.printer(format_line(epoch, self.epochs, logs))


class CheckpointSaver(tf.keras.callbacks.Callback):
    """After each epoch: epoch counter <- epoch + 1, then ``manager.save()`` (every rank
    saves its own checkpoint: error-feedback memory is per rank)."""

    def __init__(self, manager, epoch_var):
        super().__init__()
        self.manager = manager
        self.epoch_var = epoch_var

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


class MetricsFile(tf.keras.callbacks.Callback):
    """Rank 0 keeps a JSON list of per-epoch logs at ``path`` (rewritten each epoch;
    on resume, entries of earlier epochs are kept)."""

    def __init__(self, path, initial_epoch=0, header=None):
        super().__init__()
        self.path = Path(path)
        self.records = []
        self.header = header or {}
        if self.path.exists() and initial_epoch > 0:
            try:
                old = json.loads(self.path.read_text())
                self.records = [r for r in old.get("epochs", []) if r.get("epoch", 0) < initial_epoch]
            except (ValueError, OSError):
                self.records = []

    def on_epoch_end(self, epoch, logs=None):
        rec = {"epoch": epoch}
        for k, v in (logs or {}).items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                continue
        self.records = [r for r in self.records if r["epoch"] != epoch] + [rec]
        self.write()

    def write(self, **extra):
        self.header.update(extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({**self.header, "epochs": self.records}, indent=1))
        os.replace(tmp, self.path)
