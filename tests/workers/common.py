"""Helpers for worker scripts launched by the horovodrun fixture."""

import json
import os
from pathlib import Path


def report(rank, **results):
    """Write this rank's results where the test reads them."""
    out = Path(os.environ["HVDSPAR_TEST_OUT"]) / f"rank{rank}.json"
    out.write_text(json.dumps(results))


def count_allgathered_bytes():
    """Wrap hvdspar's allgather so every byte handed to it is counted, independently
    of the compressors' own counters. Returns the int64 tf.Variable holding the count."""
    import tensorflow as tf

    from hvdspar import exchange

    counter = tf.Variable(0, dtype=tf.int64)
    allgather = exchange.allgather

    def counting_allgather(message, *args, **kwargs):  # (message[, process_set]): whatever exchange takes
        counter.assign_add(tf.size(message, out_type=tf.int64))
        return allgather(message, *args, **kwargs)

    exchange.allgather = counting_allgather
    return counter


def same_on_all_ranks(values):
    """True when the tensors ``values`` are bit-identical on every Horovod rank."""
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], 0)
    everyone = hvd_tf.allgather(tf.reshape(flat, [1, -1]))
    return bool(tf.reduce_all(everyone == everyone[0]))
