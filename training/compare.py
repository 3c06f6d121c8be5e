"""The main job: what GSpar buys, side by side with Horovod's own none and fp16, under horovodrun.

    horovodrun -np 2 -H localhost:2 --gloo python -m hvdspar.training.compare

Task ``softmax`` (the default): a wide multinomial logistic regression, 16384 features x 32
classes (a 2 MiB fp32 gradient a step, the size at which a link's bandwidth matters), on the
skewed synthetic data of ``hvdspar.training.data.wide_softmax`` (few informative features, as in
the paper's sec. 4 generator). Task ``logreg``: the paper's l2-logistic regression on its
synthetic data (N=1024, d=2048: an 8 KB gradient, which no compressor can speed up; shown for
the paper's setting).

Every compressor trains the same model from the same zero weights and seeds for ``--epochs`` with
the stock ``hvd.DistributedOptimizer``, so the runs repeat exactly (only the seconds vary). Rank 0
prints the test loss after every epoch, then per compressor: the final test loss and accuracy,
the first epoch whose test loss is at most ``--target-loss``, the bytes a rank sends per step and
their ratio to dense fp32, E|Q(g)|^2/|g|^2, the step time measured here, and the step time the
link model predicts on a cluster where every rank has its own link of 1 Gbit/s or 100 Mbit/s:

    t_step(link) = t_compute + t_exchange(link, bytes)
    t_compute    = t_step measured here - t_exchange(bytes) at the beta measured here, alpha = 0
    t_exchange   = alpha + 2 (M-1)/M D / beta                   Horovod's ring allreduce of D bytes
                 = 2 alpha + (M-1) m / beta                     an hvdspar message of m bytes

(``hvdspar.link``: beta of this machine's link is measured with timed allreduces, and alpha is
not taken off, which favours none; alpha = 50 us on the modelled links). The time to the target
is the epochs to it x steps x that step time. Each run is logged to MLflow through
``hvdspar.tracking.MLflowCallback`` (``--no-mlflow`` to skip), so ``mlflow ui`` in the working
directory shows them side by side.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow.keras as hvd
import hvdspar
from hvdspar import link, state
from hvdspar.spec import to_spec
from hvdspar.training import data as data_sets
from hvdspar.training.train import add_fallback_argument, make_compressor

#: the modelled cluster links: (label, latency s, bandwidth bytes/s per rank)
LINKS = (("1 Gbit/s", 50e-6, 1e9 / 8), ("100 Mbit/s", 50e-6, 1e8 / 8))
DEFAULTS = {  # per task: compressors, epochs, SGD step, batch per rank
    "softmax": (["none", "fp16", "gspar:rho=0.02"], 4, 0.3, 32),
    "logreg": (["none", "gspar:rho=0.1", "gspar:rho=0.01"], 5, 0.01, 8),
}


def load(task, seed, c2):
    """(x, y) of this rank's training rows, (x, y) of the common test rows, the model's builder."""
    rank, size = hvd.rank(), hvd.size()
    if task == "softmax":
        x, y, xt, yt = data_sets.wide_softmax(rows=1024, test_rows=4096, rank=rank, seed=seed)
        classes = int(max(y.max(), yt.max())) + 1

        def build():
            return tf.keras.Sequential([tf.keras.Input((x.shape[1],)),
                                        tf.keras.layers.Dense(classes, kernel_initializer="zeros")], name="softmax")

        return (x, y), (xt, yt), build, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    ds = data_sets.load_synthetic(c2=c2, seed=seed)
    x = ds.x_train[rank::size]
    y = (ds.y_train[rank::size] + 1) / 2  # {-1, 1} -> {0, 1}

    def build():
        return tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(
            1, use_bias=False, kernel_initializer="zeros",
            kernel_regularizer=tf.keras.regularizers.l2(1.0 / ds.n_train))], name="logreg")

    # the paper's objective is the full training loss, so "test" is all N training rows here
    return (x, y), (ds.x_train, (ds.y_train + 1) / 2), build, tf.keras.losses.BinaryCrossentropy(from_logits=True), []


class StepClock(tf.keras.callbacks.Callback):
    """Wall seconds between consecutive steps, after the first epoch (which traces the step) and
    without the first step of an epoch (which follows the previous epoch's validation)."""

    def __init__(self):
        super().__init__()
        self.seconds, self._last, self._epoch = [], None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._last = epoch, None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if (self._epoch > 0 or self.params.get("epochs") == 1) and self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now


def train(spec, data, args):
    (x, y), (xt, yt), build, loss, metrics = data
    tf.keras.utils.set_random_seed(args.seed)
    compression = make_compressor(spec, args.seed, args.fallback)
    model = build()
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(args.lr), compression=compression)
    model.compile(opt, loss, metrics=metrics)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
    if not args.no_mlflow:
        from hvdspar.tracking import MLflowCallback

        callbacks.append(MLflowCallback(compression, model=args.task, data="synthetic", batch_size=args.batch_size,
                                        lr=args.lr, seed=args.seed, experiment="hvdspar-main", log_every=0))
    steps = len(x) // args.batch_size
    clock = StepClock()
    hist = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=steps, shuffle=True,
                     validation_data=(xt, yt), validation_batch_size=1024, verbose=0, callbacks=[clock, *callbacks])
    test = model.evaluate(xt, yt, batch_size=1024, verbose=0, return_dict=True)
    if hasattr(compression, "traffic"):
        t = compression.traffic()
        per_step, dense = t["bytes_sent"] / max(t["steps"], 1), t["dense_bytes"] / max(t["steps"], 1)
        variance = t["variance_ratio"]
    else:
        variance = 1.0
        per_step, dense = state.horovod_step_bytes(model.trainable_variables, compression)
        if hvd.size() == 1:  # Horovod skips the collective with one rank, as hvdspar's counters show
            per_step = dense = 0
    return {
        "name": spec,
        "spec": to_spec(compression) if hasattr(compression, "spec") else spec,
        "sparse": hasattr(compression, "traffic"),
        "val_loss": hist.history["val_loss"],
        "loss": test["loss"],
        "accuracy": test.get("accuracy"),
        "bytes_per_step": per_step,
        "dense_per_step": dense,
        "steps_per_epoch": steps,
        "step_s": float(np.median(clock.seconds)) if clock.seconds else float("nan"),
        "variance_ratio": variance,
    }


def exchange_seconds(net, run, num_ranks):
    """The link model's seconds for one step's exchange of ``run``'s measured bytes."""
    if run["sparse"]:
        return net.latency_s + net.allgather_seconds(run["bytes_per_step"], num_ranks)
    return net.allreduce_seconds(run["bytes_per_step"], num_ranks)


def report(runs, args, local):
    size = hvd.size()
    print(f"\n{args.task}, {size} ranks, SGD lr={args.lr}, minibatch {args.batch_size} per rank, "
          f"{args.epochs} epochs (seed {args.seed})\n")
    head = "epoch | " + " | ".join(f"{r['name']:>16}" for r in runs)
    print("test loss after each epoch\n" + head + "\n" + "-" * len(head))
    for e in range(args.epochs):
        print(f"{e + 1:5d} | " + " | ".join(f"{r['val_loss'][e]:>16.4f}" for r in runs))
    target = args.target_loss if args.target_loss is not None else runs[0]["loss"] * 1.001
    steps = runs[0]["steps_per_epoch"]
    print()
    cols = ["compressor", "test loss", "acc %", f"loss <= {target:.4g}", "bytes/step", "x dense", "E|Q|2/|g|2",
            "s/step here"] + [f"s/step {label}" for label, _, _ in LINKS]
    width = max(len(cols[0]), *(len(r["name"]) for r in runs))
    print(f"{cols[0]:<{width}} " + " ".join(f"{c:>14}" for c in cols[1:]))
    to_target = {}
    for r in runs:
        epoch = next((e + 1 for e, v in enumerate(r["val_loss"]) if v <= target), None)
        # only the bytes' time comes off: the eager latency measured above overstates a graph's
        compute = max(r["step_s"] - exchange_seconds(link.Network(0.0, local.bandwidth_Bps), r, size), 0.0)
        per_step = [r["step_s"]] + [compute + exchange_seconds(link.Network(a, b), r, size) for _, a, b in LINKS]
        to_target[r["name"]] = [epoch * steps * t if epoch else None for t in per_step]
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        cells = [f"{r['loss']:.4f}", acc, f"epoch {epoch}" if epoch else "not reached", f"{r['bytes_per_step']:.0f}",
                 f"{r['bytes_per_step'] / r['dense_per_step']:.4f}" if r["dense_per_step"] else "-",
                 f"{r['variance_ratio']:.1f}"]
        cells += [f"{t:.4f}" for t in per_step]
        print(f"{r['name']:<{width}} " + " ".join(f"{c:>14}" for c in cells))
    base = to_target[runs[0]["name"]]
    print(f"\nseconds of training to test loss <= {target:.4g} (epochs to it x steps x s/step; x: {runs[0]['name']}'s / this)")
    links = ["here"] + [label for label, _, _ in LINKS]
    print(f"{'compressor':<{width}} " + " ".join(f"{c:>20}" for c in links))
    for r in runs:
        cells = []
        for t, b in zip(to_target[r["name"]], base):
            cells.append("not reached" if t is None else f"{t:.2f}" + (f" ({b / t:.2f}x)" if b else ""))
        print(f"{r['name']:<{width}} " + " ".join(f"{c:>20}" for c in cells))
    print(f"\n(test loss: on {'the common test rows' if args.task == 'softmax' else 'all N training rows'}; "
          f"loss <= target: the first epoch that reached it; here: this machine, link measured at "
          f"alpha {local.latency_s * 1e6:.0f} us, beta {local.bandwidth_Bps / 1e9:.2f} GB/s; the link columns are "
          "the model above, every rank on its own link)")
    print("(full specs, for hvdspar.from_spec: " + "; ".join(r["spec"] for r in runs) + ")")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(DEFAULTS), default="softmax")
    parser.add_argument("--compressors", nargs="+", default=None, metavar="SPEC",
                        help="compressor specs, e.g. none fp16 gspar:rho=0.01 topk:ratio=0.01 (default: per task, "
                             + "; ".join(f"{t}: {' '.join(d[0])}" for t, d in DEFAULTS.items()) + ")")
    add_fallback_argument(parser)
    parser.add_argument("--epochs", type=int, default=None, help="default: softmax 4, logreg 5")
    parser.add_argument("--batch-size", type=int, default=None, help="per rank (default: softmax 32, logreg 8)")
    parser.add_argument("--lr", type=float, default=None, help="SGD step, the same for every compressor "
                                                               "(default: softmax 0.3, logreg 0.01)")
    parser.add_argument("--c2", type=float, default=1 / 16, help="logreg: C2 of the paper's synthetic data")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="the test loss timed to (default: softmax 1.5; logreg: the first compressor's final loss)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the runs to MLflow")
    args = parser.parse_args(argv)
    specs, epochs, lr, batch = DEFAULTS[args.task]
    args.compressors = args.compressors or specs
    args.epochs, args.lr, args.batch_size = args.epochs or epochs, args.lr or lr, args.batch_size or batch
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")
    for s in args.compressors:
        hvdspar.from_spec(s)  # fail early, on every rank, with the spec's own error
    if args.target_loss is None and args.task == "softmax":
        args.target_loss = 1.5

    hvd.init()
    data = load(args.task, args.seed, args.c2)
    runs = [train(s, data, args) for s in args.compressors]
    local = link.network()  # collective: every rank measures, rank 0's figures are used
    if hvd.rank() == 0:
        report(runs, args, local)
        if hvd.size() == 1:
            print("(one rank: Horovod sends nothing and nothing is compressed; run it under horovodrun -np 2, "
                  "as scripts/main.sh does)")


if __name__ == "__main__":
    main()
