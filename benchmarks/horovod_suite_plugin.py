"""A pytest plugin that runs Horovod's own TensorFlow tests with an hvdspar compressor passed in.

Loaded by ``benchmarks/horovod_suite.py`` (``pytest -p benchmarks.horovod_suite_plugin``). Every
call that takes ``compression=`` and was not given one (``hvd.allreduce``, ``hvd.grouped_allreduce``,
``DistributedOptimizer``, ``DistributedGradientTape``, their ``Partial*`` forms, Keras' too) gets a
fresh lossless compressor, chosen by ``HVDSPAR_SUITE``: ``none`` (Horovod's own), ``gspar``
(``GSpar(rho=1.0, fallback=False)``) or ``topk`` (``TopK(ratio=1.0, fallback=False)``). With
``HVDSPAR_SUITE_GRAPH=none`` the TF1-graph-mode half of each test keeps Horovod's none (hvdspar
needs TensorFlow 2's eager mode or tf.function and says so in a TF1 graph).
"""

import functools
import inspect
import os

CHOICE = os.environ.get("HVDSPAR_SUITE", "none")
GRAPH = os.environ.get("HVDSPAR_SUITE_GRAPH", "hvdspar")


def _fresh():
    import tensorflow as tf
    from horovod.tensorflow import Compression

    with tf.init_scope():  # a TF1 graph around (a tf.function called in it included)
        tf1 = not tf.executing_eagerly()
    if CHOICE == "none" or (GRAPH == "none" and tf1):
        return Compression.none
    import hvdspar

    if CHOICE == "gspar":
        return hvdspar.GSpar(rho=1.0, fallback=False)
    if CHOICE == "topk":
        return hvdspar.TopK(ratio=1.0, fallback=False)
    raise ValueError(f"HVDSPAR_SUITE={CHOICE!r}: none, gspar or topk")


def _with_default_compression(module, name):
    original = getattr(module, name)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def call(*args, **kwargs):
        if "compression" not in signature.bind_partial(*args, **kwargs).arguments:
            kwargs["compression"] = _fresh()
        return original(*args, **kwargs)

    setattr(module, name, call)


def pytest_configure(config):
    import horovod.keras
    import horovod.tensorflow
    import horovod.tensorflow.keras

    for name in ("allreduce", "grouped_allreduce", "DistributedOptimizer",
                 "DistributedGradientTape", "PartialDistributedGradientTape"):
        _with_default_compression(horovod.tensorflow, name)
    for module in (horovod.tensorflow.keras, horovod.keras):
        for name in ("DistributedOptimizer", "PartialDistributedOptimizer"):
            if hasattr(module, name):
                _with_default_compression(module, name)
