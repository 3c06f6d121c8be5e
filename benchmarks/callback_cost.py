"""What ``MLflowCallback`` costs a step: a small Keras model's epoch with and without it.

    python -m benchmarks.callback_cost            # one process, 150 steps of batch 32 an epoch

A Dense(64)-Dense(10) model on random data, ``hvd.DistributedOptimizer`` with ``GSpar(rho=0.1)``,
one rank (``hvd.init()`` in this process). Blocks of ``--epochs`` epochs with and without the
callback alternate ``--blocks`` times in one process (the first epoch of each block, which
traces, is left out); prints the median seconds of an epoch's steps (first step's start to last
step's end, batch hooks included, epoch-end logging not) of each and the cost per step. It also
times the callback's own batch hook directly (what it adds to the step path, logging points
included), which this machine's noise does not hide. MLflow is imported before the blocks (the
delivery thread's one-time import would otherwise overlap the first block's epochs). The runs
are logged to a SQLite store in a temporary folder.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=4, help="epochs per block (the first is not timed)")
    p.add_argument("--blocks", type=int, default=5, help="blocks with and without the callback, alternating")
    p.add_argument("--log-every", type=int, default=None, help="the callback's log_every (its default if unset)")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="hvdspar-callback-cost-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")

    import tensorflow as tf
    import horovod.tensorflow.keras as hvd

    import hvdspar
    from hvdspar.tracking import MLflowCallback

    hvd.init()
    # The callback's delivery thread imports MLflow at a run's start (2-3 s of CPU once per process, beside
    # the first epochs); imported here, the blocks time the steady per-step cost.
    import mlflow  # noqa: F401
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.steps * 32)

    class EpochClock(tf.keras.callbacks.Callback):
        """The seconds from the first step's start to the last step's end: the steps and every batch
        hook, not the epoch-end logging (a per-epoch cost, MLflow's write of the epoch metrics)."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == args.steps - 1:
                self.seconds.append(time.perf_counter() - self.start)

    def block(with_callback):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((32,)), tf.keras.layers.Dense(64, activation="relu"),
                                     tf.keras.layers.Dense(10)])
        compression = hvdspar.GSpar(rho=0.1, seed=0)
        model.compile(optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.01), compression=compression),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        clock = EpochClock()
        params = {} if args.log_every is None else {"log_every": args.log_every}
        callbacks = [clock]
        if with_callback:
            tracking = MLflowCallback(compression, model="callback-cost", **params)
            hook = tracking.on_train_batch_end

            def timed_hook(batch, logs=None):
                start = time.perf_counter()
                hook(batch, logs)
                hook_seconds.append(time.perf_counter() - start)

            tracking.on_train_batch_end = timed_hook
            callbacks.append(tracking)
        model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=callbacks)
        return clock.seconds[1:]

    times, hook_seconds = {False: [], True: []}, []
    for _ in range(args.blocks):
        for with_callback in (False, True):
            times[with_callback] += block(with_callback)
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    step = without / args.steps
    hook_mean = sum(hook_seconds) / len(hook_seconds)
    print(f"epoch of {args.steps} steps, median of {len(times[True])}: without the callback {without * 1e3:.1f} ms, "
          f"with it {with_ * 1e3:.1f} ms ({with_ / without:.2f}x; "
          f"{(with_ - without) / args.steps * 1e3:.3f} ms a step)")
    print(f"the callback's batch hook, {len(hook_seconds)} calls: median {statistics.median(hook_seconds) * 1e6:.1f} us, "
          f"mean {hook_mean * 1e6:.1f} us a step (logging points included) = {hook_mean / step:.1%} of a "
          f"{step * 1e3:.2f} ms step")
    return without, with_


if __name__ == "__main__":
    main()
