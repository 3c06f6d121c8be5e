"""A tiny Keras training with tracking callbacks, as training/train.py would wire them.

Each rank reports its compressor.traffic() and rank 0 the MLflow run id. Arguments:
  --compressor SPEC  --seed N  --epochs N  --steps N (per epoch)  --sleep S (per step)
  --checkpoint-dir DIR  --initial-epoch N  --lr X
  --hold-dir DIR: after each epoch e (1, 2, ...) rank 0 writes DIR/at<e> and waits for DIR/go<e>
    (lets a test act, e.g. stop the tracking server, at known points of the training)
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import horovod.tensorflow.keras as hvd  # noqa: E402

import hvdspar  # noqa: E402
from tests.workers.common import report  # noqa: E402
from hvdspar.tracking import make_callbacks  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--compressor", default="gspar:rho=0.1")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--initial-epoch", type=int, default=0)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--checkpoint-dir", default=None)
p.add_argument("--hold-dir", default=None)
args = p.parse_args()

hvd.init()
tf.keras.utils.set_random_seed(args.seed)  # Python, NumPy and TF (initial weights), alike on every rank
rng = np.random.default_rng(args.seed + hvd.rank())
x = rng.normal(size=(args.steps * 16, 32)).astype("float32")
w = np.random.default_rng(123).normal(size=(32,))
y = (x @ w > 0).astype("int32")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()

spec = args.compressor
if spec not in ("none", "fp16") and "seed=" not in spec:  # the compressor's random streams follow --seed
    spec += f"{',' if ':' in spec else ':'}seed={args.seed}"
compressor = hvdspar.from_spec(spec, fallback=True)  # by bytes, unless the spec sets it: the tests need sparse traffic on a loopback

model = tf.keras.Sequential(
    [tf.keras.Input((32,)), tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(2)], name="mlp"
)
opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(args.lr), compression=compressor)
model.compile(opt, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


class Metrics(tf.keras.callbacks.Callback):
    """Stands in for the training CLI's metrics callback (adds entries to the epoch logs)."""

    def on_train_batch_end(self, batch, logs=None):
        if args.sleep:
            time.sleep(args.sleep)

    def on_epoch_end(self, epoch, logs=None):
        logs["test_accuracy"] = float(logs.get("accuracy", 0.0))
        logs["data_passes"] = float(epoch + 1)


class Hold(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if args.hold_dir and hvd.rank() == 0:
            d = os.path.abspath(args.hold_dir)
            open(os.path.join(d, f"at{epoch + 1}"), "w").close()
            deadline = time.time() + 300
            while not os.path.exists(os.path.join(d, f"go{epoch + 1}")) and time.time() < deadline:
                time.sleep(0.1)


params = {"model": "mlp", "data": "synthetic", "optimizer": "sgd", "learning_rate": args.lr, "batch_size": 16,
          "epochs": args.epochs, "seed": args.seed}
callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), Metrics()]
tracking = make_callbacks(params=params, compressor=compressor, steps_per_epoch=args.steps,
                          checkpoint_dir=args.checkpoint_dir)
model.fit(data, epochs=args.epochs, initial_epoch=args.initial_epoch, steps_per_epoch=args.steps,
          callbacks=callbacks + tracking + [Hold()], verbose=0)

traffic = compressor.traffic() if hasattr(compressor, "traffic") else None
n_params = sum(int(v.shape.num_elements()) for v in model.trainable_variables)
report(hvd.rank(), traffic=traffic, run_id=tracking[0].run_id if tracking else None, n_params=n_params)
