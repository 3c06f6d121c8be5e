"""Two ranks: Horovod's per-gradient conds stay independent with every compressor.

Horovod runs each gradient's compress -> collective -> decompress in its own
tf.cond. TensorFlow chains the stateful ops of a tf.function that share a
resource, so a compressor that kept one counter for all tensors would
serialise the collectives (no fusion, no overlap). This worker traces a
three-variable training step per compressor, finds the conds in the traced
functions' graph, reports whether any cond waits on another (a control input
``^cond``), and trains a few steps to show the step still works.
"""

import re

import horovod.tensorflow as hvd
import tensorflow as tf

import hvdspar
from tests.workers.common import report

SPECS = ["none", "gspar:rho=0.01", "gspar:rho=0.01,fallback=auto", "gspar:rho=0.9", "unisp:rho=0.01",
         "topk:ratio=0.01,memory=true", "qsgd:levels=4", "terngrad", "atomo:budget=4"]
COND_OPS = ("If", "StatelessIf")


def conds(graph_def):
    """[(graph, cond node, [conds it has a control input from])] over the graph and its functions."""
    graphs = [("step", graph_def.node)] + [(fn.signature.name, fn.node_def) for fn in graph_def.library.function]
    out = []
    for graph, nodes in graphs:
        names = {n.name for n in nodes if n.op in COND_OPS}
        for n in nodes:
            if n.op in COND_OPS:
                waits = [i[1:] for i in n.input if i.startswith("^") and i[1:].split(":")[0] in names]
                out.append((graph, n.name, waits))
    return out


def main():
    hvd.init()
    tf.keras.utils.set_random_seed(hvd.rank())  # Python, NumPy, TF: the data below differ per rank, seeded
    x = tf.random.normal([64, 512])
    y = tf.cast(tf.random.uniform([64], maxval=10, dtype=tf.int32), tf.int32)
    results = {}
    for spec in SPECS:
        comp = hvd.Compression.none if spec == "none" else hvdspar.from_spec(spec, seed=3, fallback=True)
        w1 = tf.Variable(tf.random.stateless_normal([512, 256], seed=[1, 2]) * 0.05)
        w2 = tf.Variable(tf.random.stateless_normal([256, 10], seed=[3, 4]) * 0.05)
        b = tf.Variable(tf.zeros([10]))
        variables = [w1, w2, b]
        opt = tf.keras.optimizers.SGD(0.1)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                logits = tf.nn.relu(x @ w1) @ w2 + b
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            tape = hvd.DistributedGradientTape(tape, compression=comp)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        found = conds(step.get_concrete_function().graph.as_graph_def())
        losses = [float(step()) for _ in range(3)]
        results[spec] = {
            "conds": len(found),
            "horovod_conds": sum(1 for graph, name, _ in found
                                 if graph == "step" and re.search(r"Allreduce/cond(_\d+)?$", name)),
            "chained": [f"{name} waits on {waits}" for _, name, waits in found if waits],
            "finite": all(l == l and abs(l) < 1e6 for l in losses),
        }
    report(hvd.rank(), **results)


if __name__ == "__main__":
    main()
