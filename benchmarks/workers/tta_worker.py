"""One horovodrun launch of the time-to-accuracy benchmark (benchmarks/time_to_accuracy.py).

    horovodrun -np M -H localhost:M --gloo python -m benchmarks.workers.tta_worker \
        --compressors none gspar:rho=0.01 --out result.json

Tasks (--task):

  softmax           a wide multinomial logistic regression, below (the default);
  logreg-synthetic  l2-logistic regression on the paper's synthetic data (sec. 4,
                    training.data.load_synthetic: N=1024, d=2048; 8 KB gradient);
  logreg-a9a        l2-logistic regression on LIBSVM a9a (123 features);
  cnn-cifar10       the paper's CNN (training.models.cnn, 1.08M weights, 4.3 MB
                    gradient) on the exact-pixel CIFAR-10 subset, Adam.

The data sets are sharded over the ranks (training.data.shard_indices); loss
and accuracy are measured on the test set by rank 0 and broadcast (BatchNorm's
moving statistics differ between ranks).

softmax: a wide multinomial logistic regression (softmax, no hidden layer) on
synthetic data (hvdspar.training.data.wide_softmax) in the spirit of the paper's sec. 4 generator (skewed feature
scales): a_bar ~ N(0, I_f), a = a_bar * B where B_i = 1 on a random set S of
--informative features and B_i ~ --noise-scale * U[0, 1] elsewhere, and
label = argmax(a_bar[:, S] W_bar) for a random W_bar (|S| x K). The gradient
is then skewed (large on S, small elsewhere), which is the regime GSpar is
built for, and the problem is learnable in a few hundred steps. With
f = 16384 features and K = 32 classes the kernel has 524,288 weights: 2 MiB
per dense fp32 gradient per step, so a 100 Mbit/s link (12.5 MB/s) costs
about 0.17 s (2 ranks) to 0.25 s (4 ranks) a step for the ring allreduce,
far above the compute. Each rank trains on its own pool of --rows rows (drawn
with its own seed); loss and accuracy are measured on a common test set.

Per compressor (in turn, same seeds, same initial weights on every rank):
SGD (Adam for the CNN) with a DistributedGradientTape step in a tf.function,
after one untimed warm-up step (tracing; fallback="auto"'s measurements) and
a reset to the initial weights; wall-clock training time is summed over
steps (time.time() after each step, evaluation excluded). Every --eval-every
steps rank 0 computes the loss and test accuracy and broadcasts them; the
first time the loss <= --target-loss the training time so far (mean over
ranks) is the time to target, likewise for --target-acc. A run stops at the target plus --after-target steps, when the test loss
exceeds --diverge-factor x its initial value (diverged), or
at --max-seconds of training time, or at --max-steps. Rank 0 writes JSON.
"""

import argparse
import json
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar
from hvdspar.state import horovod_step_bytes
from hvdspar.spec import to_spec

TASKS = ("softmax", "logreg-synthetic", "logreg-a9a", "cnn-cifar10")


def load_data(args, rank, size):
    """(this rank's training rows and labels, the test rows and labels) for args.task."""
    if args.task == "softmax":
        from hvdspar.training.data import wide_softmax

        return wide_softmax(args.rows, args.test_rows, rank, args.seed, features=args.features, classes=args.classes,
                            informative=args.informative, noise_scale=args.noise_scale)
    from hvdspar.training import data

    name = {"logreg-synthetic": "synthetic", "logreg-a9a": "a9a", "cnn-cifar10": "cifar10-subset"}[args.task]
    ds = data.load(name)
    idx = data.shard_indices(ds.n_train, rank, size, args.seed)
    x_all = data.to_dense(ds.x_train)
    xs, ys = x_all[idx], ds.y_train[idx]
    xt, yt = data.to_dense(ds.x_test)[: args.test_rows], ds.y_test[: args.test_rows]
    if args.task.startswith("logreg"):  # convex: the target is on the training objective f(w)
        return xs, ys, xt, yt, x_all, ds.y_train
    return xs, ys, xt, yt


class Task:
    """One benchmark problem on this rank: its variables, a training loss on a batch,
    the test loss and accuracy, and the optimizer."""

    def __init__(self, args, data):
        self.args = args
        self.xs, self.ys, self.xt, self.yt = data[:4]
        # where the target loss is measured: the training objective for the convex tasks,
        # the test set otherwise
        self.xe, self.ye = data[4:] if len(data) > 4 else data[2:4]
        if args.task == "softmax":
            f = self.xs.shape[1]
            self.w = tf.Variable(tf.zeros([f, args.classes]))
            self.b = tf.Variable(tf.zeros([args.classes]))
            self.variables = [self.w, self.b]
            self.model = None
        else:
            from hvdspar.training import data as data_sets, models

            name = "cnn" if args.task.startswith("cnn") else "logreg"
            kwargs = {"mean": data_sets.CIFAR10_MEAN, "std": data_sets.CIFAR10_STD} if name == "cnn" else {}
            self.model, self.loss_fn, _ = models.build(name, self.xs.shape[1:], lambda2=args.lambda2, **kwargs)
            self.variables = self.model.trainable_variables
        self.state = self.model.variables if self.model is not None else self.variables  # BatchNorm stats too
        self.opt = (tf.keras.optimizers.Adam(args.lr) if args.task.startswith("cnn")
                    else tf.keras.optimizers.SGD(args.lr))

    def initial(self):
        return [v.numpy() for v in self.state]

    def reset(self, initial):
        for v, x in zip(self.state, initial):
            v.assign(x)

    def loss(self, xb, yb, training):
        if self.model is None:
            logits = tf.matmul(xb, self.w) + self.b
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)), logits
        out = self.model(xb, training=training)
        if self.args.task.startswith("cnn"):
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(yb, out, from_logits=True))
        else:
            loss = self.loss_fn(yb, out) + tf.add_n(self.model.losses) if self.model.losses else self.loss_fn(yb, out)
        return loss, out

    def accuracy(self, yb, out):
        if self.model is None or self.args.task.startswith("cnn"):
            return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(out, 1, output_type=tf.int32), tf.cast(yb, tf.int32)), tf.float32))
        pred = tf.where(tf.reshape(out, [-1]) >= 0, 1.0, -1.0)
        return tf.reduce_mean(tf.cast(tf.equal(pred, tf.reshape(yb, [-1])), tf.float32))


def make_step(task, compression):
    """One training step of ``task`` (a tf.function): DistributedGradientTape with ``compression``."""
    variables, opt = task.variables, task.opt

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss, _ = task.loss(xb, yb, True)
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def run_one(spec, task, initial, args):
    rank, size = hvd.rank(), hvd.size()
    xs, ys, xt, yt = task.xs, task.ys, task.xt, task.yt
    compression = hvdspar.from_spec(spec, seed=args.seed)  # the same random streams in every sweep
    task.reset(initial)
    variables, opt = task.variables, task.opt
    step = make_step(task, compression)

    # The CNN is evaluated with BatchNorm on batch statistics (training=True): its moving
    # averages lag far behind in a short run and made the test loss jump by 0.3.
    bn_batch_stats = args.task.startswith("cnn")

    @tf.function
    def evaluate(xb, yb):
        loss, out = task.loss(xb, yb, bn_batch_stats)
        n = tf.cast(tf.shape(xb)[0], tf.float32)
        return loss * n, task.accuracy(yb, out) * n

    def mean_over(x, y):
        """(mean loss, mean accuracy) of the model on rows x, labels y, in chunks of 2048 rows."""
        loss = acc = 0.0
        for i in range(0, len(x), 2048):
            chunk_loss, chunk_acc = evaluate(x[i:i + 2048], y[i:i + 2048])
            loss, acc = loss + float(chunk_loss), acc + float(chunk_acc)
        return loss / len(x), acc / len(x)

    def global_eval(train_seconds):
        # Rank 0 alone evaluates its loss (on task.xe) and test accuracy and broadcasts them
        # (BatchNorm statistics differ between ranks, so only one rank's model is scored);
        # the training clock is the mean over ranks.
        loss = acc = 0.0
        if rank == 0:
            test_loss, acc = mean_over(xt, yt)
            loss = test_loss if task.xe is xt else mean_over(task.xe, task.ye)[0]
        v = tf.constant([loss, acc, train_seconds / size], tf.float64)
        mine = hvd.broadcast(v[:2], root_rank=0, name="tta_eval")
        clock = hvd.allreduce(v[2:], op=hvd.Sum, name="tta_clock")
        return float(mine[0]), float(mine[1]), float(clock[0])

    rng = np.random.default_rng(args.seed + 1000 * rank)
    bs = args.batch_size
    # Warm up (trace, and fallback="auto"'s measurements) outside the clock, then
    # restart from the common initial weights and a fresh optimizer state.
    idx = rng.integers(0, len(xs), size=bs)
    step(xs[idx], ys[idx])
    task.reset(initial)
    for v in opt.variables:
        v.assign(tf.zeros_like(v))
    if hasattr(compression, "reset_traffic"):
        compression.reset_traffic()
        for slot in compression.slots:  # error-feedback memory of the warm-up step
            if slot.memory is not None:
                slot.memory.assign(tf.zeros_like(slot.memory))

    train_s, steps, curve = 0.0, 0, []
    loss0, acc0, _ = global_eval(0.0)
    curve.append((0, 0.0, loss0, acc0))
    t_target = step_target = acc_at_target = t_acc = None
    stop_at = None
    while True:
        idx = rng.integers(0, len(xs), size=bs)
        t0 = time.time()
        step(xs[idx], ys[idx]).numpy()
        train_s += time.time() - t0
        steps += 1
        if steps % args.eval_every == 0:
            loss, acc, mean_s = global_eval(train_s)
            curve.append((steps, mean_s, loss, acc))
            if t_acc is None and args.target_acc is not None and acc >= args.target_acc:
                t_acc = mean_s
            if t_target is None and loss <= args.target_loss:
                t_target, step_target, acc_at_target = mean_s, steps, acc
                stop_at = steps + args.after_target
            diverged = not np.isfinite(loss) or loss > args.diverge_factor * loss0
            if diverged or (stop_at is not None and steps >= stop_at):
                break
            if mean_s >= args.max_seconds or steps >= args.max_steps:
                break
    final_loss, final_acc, mean_s = curve[-1][2], curve[-1][3], curve[-1][1]
    within_node_per_step = 0
    if hasattr(compression, "traffic"):
        t = compression.traffic()
        bytes_per_step = t["bytes_sent"] / max(t["steps"], 1)
        within_node_per_step = t["within_node_bytes"] / max(t["steps"], 1)
        dense_tensors = t["dense_tensors"]
    else:
        bytes_per_step, _ = horovod_step_bytes(variables, spec)
        dense_tensors = len(variables)
    tensors = len(variables)
    return {
        "spec": spec,
        "full_spec": to_spec(compression) if hasattr(compression, "spec") else spec,
        "ranks": size,
        "time_to_target_s": t_target,
        "steps_to_target": step_target,
        "acc_at_target": acc_at_target,
        "time_to_acc_s": t_acc,
        "final_loss": final_loss,
        "final_acc": final_acc,
        "steps": steps,
        "train_seconds": mean_s,
        "seconds_per_step": mean_s / max(steps, 1),
        "bytes_per_step": bytes_per_step,
        "within_node_bytes_per_step": within_node_per_step,
        "dense_tensors": dense_tensors,
        "tensors": tensors,
        "task": args.task,
        "curve": curve,
    }


def parser(description=__doc__):
    """The worker's options (shared with benchmarks/workers/step_time_worker.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compressors", nargs="+", required=True)
    p.add_argument("--task", choices=TASKS, default="softmax")
    p.add_argument("--features", type=int, default=16384, help="softmax: features")
    p.add_argument("--classes", type=int, default=32, help="softmax: classes")
    p.add_argument("--rows", type=int, default=1024, help="softmax: training rows per rank")
    p.add_argument("--test-rows", type=int, default=4096, help="test rows (at most; the data set's own test set)")
    p.add_argument("--informative", type=int, default=32, help="softmax: features the labels depend on")
    p.add_argument("--noise-scale", type=float, default=0.05, help="softmax: scale of the other features")
    p.add_argument("--lambda2", type=float, default=1e-4, help="logreg: l2 regularisation")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--target-loss", type=float, default=1.5)
    p.add_argument("--target-acc", type=float, default=None, help="also time the first test accuracy >= this")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--after-target", type=int, default=0, help="steps to keep training after the target")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--diverge-factor", type=float, default=1.5, help="stop when the test loss exceeds this x the initial")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--node-sets", action="store_true",
                   help="hvd.init(process_sets=hvdspar.node_process_sets()): the hierarchical exchange on several nodes")
    p.add_argument("--out", required=True)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    for s in args.compressors:
        hvdspar.from_spec(s)
    hvd.init(process_sets=hvdspar.node_process_sets() if args.node_sets else None)
    data = load_data(args, hvd.rank(), hvd.size())
    tf.keras.utils.set_random_seed(args.seed)
    task = Task(args, data)
    initial = task.initial()
    results = []
    for spec in args.compressors:
        tf.keras.utils.set_random_seed(args.seed)
        r = run_one(spec, task, initial, args)
        results.append(r)
        if hvd.rank() == 0:
            print(f"[tta] {hvd.size()} ranks {spec}: target at {r['time_to_target_s']} s "
                  f"(step {r['steps_to_target']}), final loss {r['final_loss']:.4f} acc {r['final_acc']:.4f}, "
                  f"{r['seconds_per_step'] * 1000:.1f} ms/step, {r['bytes_per_step']:.0f} B/step", flush=True)
    if hvd.rank() == 0:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh)


if __name__ == "__main__":
    main()
