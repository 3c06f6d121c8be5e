"""Two simulated nodes of two ranks whose hvd.init was not given hvdspar.node_process_sets(): the
exchange stays flat, and rank 0 says so once in the log."""

import logging

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd

import hvdspar
from tests.workers.common import report, same_on_all_ranks

logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
hvd.init()
comp = hvdspar.GSpar(rho=0.1, seed=1)
g = tf.constant(np.random.default_rng(hvd.rank()).normal(size=5000).astype(np.float32))
for name in ("a", "b"):
    result = tf.function(lambda: hvd.allreduce(g, compression=comp, name=name))()
report(hvd.rank(), flat=comp._nodes is None, equal=same_on_all_ranks([result]),
       bytes=comp.traffic()["last_step_bytes_sent"], within=comp.traffic()["last_step_within_node_bytes"])
