"""MLflow tracking for hvdspar: every run logs communication savings against loss/accuracy.

In a user's own Keras script, on every rank::

    from hvdspar.tracking import MLflowCallback
    model.fit(..., callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                              MLflowCallback(compression, model="resnet50", batch_size=64)])

In a custom loop, ``Tracker`` (below). The contract with the training CLI::

    from hvdspar.tracking import make_callbacks, make_tracker

    # Keras: append after the CLI's own metrics callback (its epoch logs are logged too)
    callbacks = make_callbacks(params=dict, compressor=obj, steps_per_epoch=int, checkpoint_dir=str|None)

    # custom loops (e.g. SVRG), on every rank
    tracker = make_tracker(params, compressor, checkpoint_dir, variables=model.trainable_variables)
    tracker.log_step(step, {"loss": ...})      # every step; logs every log_every steps
    tracker.log_epoch(epoch, {"loss": ..., "test_accuracy": ...})
    tracker.close()

Runs go to ``MLFLOW_TRACKING_URI``, else to ``sqlite:///mlflow.db`` in the working directory
(``mlflow ui`` there shows them). See tracking/README.md, and ``hvdspar.tracking.context`` for settings.

Modules: context (rank, settings), params (what a run records), meter (bytes summed over ranks),
logger (spool and delivery), tracker (one run), keras (the callback), plots, sweep, replay.
"""

from hvdspar.tracking.tracker import Tracker


def __getattr__(name):  # MLflowCallback needs TensorFlow; the rest of this package does not
    if name == "MLflowCallback":
        from hvdspar.tracking.keras import MLflowCallback

        return MLflowCallback
    raise AttributeError(f"module 'hvdspar.tracking' has no attribute {name!r}")


def make_tracker(params=None, compressor=None, checkpoint_dir=None, variables=None):
    """A ``Tracker`` for a custom training loop (call it on every rank).

    ``variables`` (the trainable variables) are needed to count bytes for Horovod's
    Compression.none / fp16; hvdspar compressors count their own.
    """
    return Tracker(params, compressor, checkpoint_dir, variables=variables)


def make_callbacks(params=None, compressor=None, steps_per_epoch=None, checkpoint_dir=None):
    """Keras callbacks that track the run (a list, empty when tracking is off). Every rank."""
    from hvdspar.tracking import context
    from hvdspar.tracking.keras import MLflowTracking

    if not context.enabled(params):
        return []
    return [MLflowTracking(params, compressor, steps_per_epoch, checkpoint_dir)]


__all__ = ["MLflowCallback", "Tracker", "make_callbacks", "make_tracker"]
