"""A user's own Keras script, written as Horovod's examples/tensorflow2/tensorflow2_keras_mnist.py
is, with hvdspar's two lines: ``compression=`` and ``MLflowCallback``. Nothing else of hvdspar.

    horovodrun -np 2 -H localhost:2 python user_keras_mnist.py MNIST.npz SPEC EPOCHS STEPS

MNIST.npz holds x_train (uint8, N x 28 x 28) and y_train, as tf.keras.datasets.mnist.load_data
returns them (the test writes it: nothing can be downloaded here). SPEC: none, fp16 (Horovod's
own) or an hvdspar spec. Each rank reports its compressor's traffic() for the test.
"""

import sys

import numpy as np
import tensorflow as tf

import horovod.tensorflow.keras as hvd

import hvdspar
from hvdspar.tracking import MLflowCallback

path, spec, epochs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

# Horovod: initialize Horovod.
hvd.init()
tf.keras.utils.set_random_seed(1234 + hvd.rank())

with np.load(path) as f:
    mnist_images, mnist_labels = f["x_train"], f["y_train"]
dataset = tf.data.Dataset.from_tensor_slices(
    (tf.cast(mnist_images[..., tf.newaxis] / 255.0, tf.float32), tf.cast(mnist_labels, tf.int64))
)
dataset = dataset.repeat().shuffle(1000).batch(64)

mnist_model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(8, [3, 3], activation="relu"),
    tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(32, activation="relu"),
    tf.keras.layers.Dense(10, activation="softmax"),
])

# Horovod: adjust learning rate based on number of workers.
scaled_lr = 0.002 * hvd.size()
opt = tf.optimizers.Adam(scaled_lr)

# hvdspar: the compressor (Horovod's own none/fp16 work here too)
compression = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}.get(spec) or hvdspar.from_spec(spec)

# Horovod: add Horovod DistributedOptimizer.
opt = hvd.DistributedOptimizer(opt, backward_passes_per_step=1, average_aggregated_gradients=True,
                               compression=compression)

mnist_model.compile(loss=tf.losses.SparseCategoricalCrossentropy(), optimizer=opt, metrics=["accuracy"],
                    experimental_run_tf_function=False)

callbacks = [
    # Horovod: broadcast initial variable states from rank 0 to all other processes.
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),
    # Horovod: average metrics among workers at the end of every epoch.
    hvd.callbacks.MetricAverageCallback(),
    # Horovod: warm the scaled learning rate up over the first epoch.
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=1, verbose=0),
    # hvdspar: the run, its bytes summed over ranks, loss and accuracy, in MLflow (on every rank)
    MLflowCallback(compression, model="mnist-cnn", data="mnist", batch_size=64, log_every=4),
]

# Horovod: write logs on worker 0.
verbose = 1 if hvd.rank() == 0 else 0
mnist_model.fit(dataset, steps_per_epoch=steps, callbacks=callbacks, epochs=epochs, verbose=verbose)

traffic = compression.traffic() if hasattr(compression, "traffic") else None
run_id = callbacks[-1].run_id
from tests.workers.common import report  # noqa: E402  (the test's side channel, not the user's)

report(hvd.rank(), traffic=traffic, run_id=run_id,
       dense_bytes_per_step=int(sum(v.shape.num_elements() * v.dtype.size for v in mnist_model.trainable_variables)))
