"""The main job: GSpar against no compression, side by side, under horovodrun.

    horovodrun -np 2 -H localhost:2 --gloo python -m hvdspar.training.compare

Trains the paper's l2-logistic regression (synthetic data of sec. 4, N=1024,
d=2048, C1=0.9, C2=1/16, minibatch 8) once per compressor with the stock
``hvd.DistributedOptimizer``, then prints, on rank 0, the loss per epoch and
the bytes each rank put on the wire per step, for every compressor.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow.keras as hvd
import hvdspar
from hvdspar.spec import to_spec
from hvdspar.training.data import load_synthetic
from hvdspar.training.train import add_fallback_argument, make_compressor


def dense_bytes_per_step(model, compression):
    """What Horovod's own allreduce sends per rank and step (fp16 halves it)."""
    itemsize = 2 if compression is hvd.Compression.fp16 else 4
    return sum(int(np.prod(v.shape)) * itemsize for v in model.trainable_variables)


def train(spec, data, args):
    tf.keras.utils.set_random_seed(args.seed)
    compression = make_compressor(spec, args.seed, args.fallback)
    x = data.x_train[hvd.rank() :: hvd.size()]
    y = (data.y_train[hvd.rank() :: hvd.size()] + 1) / 2  # {-1, 1} -> {0, 1}
    lambda2 = 1.0 / data.n_train
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Dense(
                1,
                use_bias=False,
                kernel_initializer="zeros",
                kernel_regularizer=tf.keras.regularizers.l2(lambda2),
                input_shape=(x.shape[1],),
            )
        ]
    )
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(args.lr), compression=compression)
    model.compile(opt, tf.keras.losses.BinaryCrossentropy(from_logits=True))
    start = time.time()
    hist = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)],
    )
    seconds = time.time() - start
    # full-batch loss on all N rows, the same on every rank
    full = float(model.evaluate(data.x_train, (data.y_train + 1) / 2, batch_size=1024, verbose=0))
    if hasattr(compression, "traffic"):
        t = compression.traffic()
        per_step = t["bytes_sent"] / max(t["steps"], 1)
        dense = t["dense_bytes"] / max(t["steps"], 1)
        variance = t["variance_ratio"]
    else:
        variance = 1.0
        per_step = dense = dense_bytes_per_step(model, compression)
        if compression is hvd.Compression.fp16:
            dense = 2 * per_step
    return {
        "name": spec,
        "spec": to_spec(compression) if hasattr(compression, "spec") else spec,
        "loss": hist.history["loss"],
        "full_loss": full,
        "bytes_per_step": per_step,
        "dense_per_step": dense,
        "seconds": seconds,
        "variance_ratio": variance,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--compressors", nargs="+", default=["none", "gspar:rho=0.1", "gspar:rho=0.01"], metavar="SPEC",
        help="compressor specs, e.g. none fp16 gspar:rho=0.01 topk:ratio=0.01 (default: %(default)s)",
    )
    add_fallback_argument(parser)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank (the paper's minibatch is 8)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD step size, the same for every compressor")
    parser.add_argument("--c2", type=float, default=1 / 16, help="C2 of the synthetic data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    specs = args.compressors
    for s in specs:
        hvdspar.from_spec(s)  # fail early, on every rank, with the spec's own error

    hvd.init()
    data = load_synthetic(c2=args.c2, seed=args.seed)
    runs = [train(s, data, args) for s in specs]
    if hvd.rank() != 0:
        return
    print(f"\nl2-logistic regression, synthetic data (N={data.n_train}, d={data.x_train.shape[1]}, C2={args.c2:g}), "
          f"{hvd.size()} ranks, SGD lr={args.lr}, minibatch {args.batch_size}\n")
    head = "epoch | " + " | ".join(f"loss {r['name']:<28}" for r in runs)
    print(head)
    print("-" * len(head))
    for e in range(args.epochs):
        print(f"{e + 1:5d} | " + " | ".join(f"{r['loss'][e]:<33.4f}" for r in runs))
    print("\n(loss: mean minibatch loss of rank 0 during the epoch; full loss: all N rows after training)")
    print()
    width = max(len("compressor"), *(len(r["name"]) for r in runs))
    print(f"{'compressor':<{width}} {'full loss':>10} {'bytes/step':>12} {'dense':>10} {'ratio':>8} {'E|Q|2/|g|2':>11} "
          f"{'seconds':>8}")
    for r in runs:
        ratio = r["bytes_per_step"] / r["dense_per_step"]
        print(f"{r['name']:<{width}} {r['full_loss']:>10.4f} {r['bytes_per_step']:>12.1f} "
              f"{r['dense_per_step']:>10.0f} {ratio:>8.4f} {r['variance_ratio']:>11.1f} {r['seconds']:>8.1f}")
    print("\n(full specs, for hvdspar.from_spec: " + "; ".join(r["spec"] for r in runs if r["spec"] != r["name"]) + ")")


if __name__ == "__main__":
    main()
