"""Two nodes launched as on a cluster (tests/test_two_nodes.py): horovodrun -H nodeA:2,nodeB:2
reaches nodeB over ssh, each node is its own network namespace. Reports where this rank ran and
what the hierarchical exchange gave."""

import os

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd

import hvdspar
from tests.workers.common import report, same_on_all_ranks

hvd.init(process_sets=hvdspar.node_process_sets())
comp = hvdspar.GSpar(rho=1.0, fallback=False, seed=1)  # rho = 1: exact, checked against none
g = tf.constant(np.random.default_rng(hvd.rank()).normal(size=20000).astype(np.float32))
step = tf.function(lambda: (hvd.allreduce(g, compression=comp, op=hvd.Sum, name="g"),
                            hvd.allreduce(g, op=hvd.Sum, name="g_none")))
result, dense = step()
report(hvd.rank(), host=os.environ.get("HOROVOD_HOSTNAME"), netns=os.stat("/proc/self/ns/net").st_ino,
       local_size=hvd.local_size(), cross_size=hvd.cross_size(), hierarchical=comp._nodes is not None,
       equal=same_on_all_ranks([result]), max_error=float(tf.reduce_max(tf.abs(result - dense))),
       bytes=comp.traffic()["last_step_bytes_sent"], within=comp.traffic()["last_step_within_node_bytes"])
