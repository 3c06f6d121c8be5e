"""Helpers for worker scripts launched by the horovodrun fixture."""

import json
import os
from pathlib import Path


def report(rank, **results):
    """Write this rank's results where the test reads them."""
    out = Path(os.environ["HVDSPAR_TEST_OUT"]) / f"rank{rank}.json"
    out.write_text(json.dumps(results))


def counting_exchange():
    """Horovod's collectives, counting every byte handed to the allgather, independently of the
    compressors' own counters: set it as ``compressor.exchange``; ``.gathered`` is the int64
    tf.Variable holding the count."""
    import tensorflow as tf

    from hvdspar import exchange

    class Counting(exchange.Horovod):
        def __init__(self):
            self.gathered = tf.Variable(0, dtype=tf.int64, trainable=False)

        def allgather(self, message, process_set=None, name=None):
            self.gathered.assign_add(tf.size(message, out_type=tf.int64))
            return super().allgather(message, process_set, name)

    return Counting()


def same_on_all_ranks(values):
    """True when the tensors ``values`` are bit-identical on every Horovod rank."""
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], 0)
    everyone = hvd_tf.allgather(tf.reshape(flat, [1, -1]))
    return bool(tf.reduce_all(everyone == everyone[0]))
