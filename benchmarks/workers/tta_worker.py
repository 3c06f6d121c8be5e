"""One horovodrun launch of the time-to-accuracy benchmark (benchmarks/time_to_accuracy.py).

    horovodrun -np M -H localhost:M --gloo python -m benchmarks.workers.tta_worker \
        --compressors none gspar:rho=0.01 --out result.json

Model: a wide multinomial logistic regression (softmax, no hidden layer) on
synthetic data in the spirit of the paper's sec. 4 generator (skewed feature
scales): a_bar ~ N(0, I_f), a = a_bar * B where B_i = 1 on a random set S of
--informative features and B_i ~ --noise-scale * U[0, 1] elsewhere, and
label = argmax(a_bar[:, S] W_bar) for a random W_bar (|S| x K). The gradient
is then skewed (large on S, small elsewhere), which is the regime GSpar is
built for, and the problem is learnable in a few hundred steps. With
f = 16384 features and K = 32 classes the kernel has 524,288 weights: 2 MiB
per dense fp32 gradient per step, so a 100 Mbit/s link (12.5 MB/s) costs
about 0.17 s (2 ranks) to 0.25 s (4 ranks) a step for the ring allreduce,
far above the compute. Each rank trains on its own pool of --n rows (drawn
with its own seed); loss and accuracy are measured on a common test set.

Per compressor (in turn, same seed, same initial weights on every rank):
SGD with a DistributedGradientTape step in a tf.function; wall-clock training
time is summed over steps (time.time() after each step, evaluation excluded).
Every --eval-every steps the test loss and accuracy are computed (the same
weights on every rank); the first time the test loss <= --target-loss the training time so far is the time to target.
A run stops at the target plus --after-target steps, when the test loss
exceeds --diverge-factor x its initial value (diverged), or
at --max-seconds of training time, or at --max-steps. Rank 0 writes JSON.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar
from hvdspar.spec import to_spec


def make_problem(f, k, informative, noise_scale, seed):
    """The fixed part of the generator: informative set S, per-feature scale B, W_bar."""
    rng = np.random.default_rng(seed)
    s = np.sort(rng.choice(f, size=min(informative, f), replace=False))
    b = (noise_scale * rng.uniform(0.0, 1.0, size=f)).astype(np.float32)
    b[s] = 1.0
    w_bar = rng.standard_normal((len(s), k)).astype(np.float32)
    return s, b, w_bar


def draw(n, problem, seed):
    s, b, w_bar = problem
    a_bar = np.random.default_rng(seed).standard_normal((n, len(b)), dtype=np.float32)
    labels = np.argmax(a_bar[:, s] @ w_bar, axis=1).astype(np.int32)
    a_bar *= b
    return a_bar, labels


def run_one(spec, data, args):
    rank, size = hvd.rank(), hvd.size()
    xs, ys, xt, yt = data  # this rank's training pool; the test set (the same on every rank)
    compression = hvdspar.from_spec(spec)
    f, k = xs.shape[1], args.classes
    w = tf.Variable(tf.zeros([f, k]))
    b = tf.Variable(tf.zeros([k]))
    variables = [w, b]
    opt = tf.keras.optimizers.SGD(args.lr)

    def loss_fn(xb, yb):
        logits = tf.matmul(xb, w) + b
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(xb, yb)
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def evaluate():
        logits = tf.matmul(xt, w) + b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yt, logits=logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), yt), tf.float32))
        return loss, acc

    def global_eval(train_seconds):
        # Test loss/accuracy: the weights are identical on all ranks, so rank 0's figures are
        # everyone's; the allreduce only shares the clock (mean over ranks) and the stop decision.
        loss, acc = evaluate()
        v = hvd.allreduce(tf.constant([train_seconds], tf.float64), op=hvd.Sum).numpy()
        return float(loss), float(acc), float(v[0] / size)

    rng = np.random.default_rng(args.seed + 1000 * rank)
    bs = args.batch_size
    # Warm up (trace) outside the clock: one step on a zero batch leaves the weights
    # at zero (zero input, and the bias gradient is reset below by re-zeroing).
    step(tf.zeros([bs, f]), tf.zeros([bs], tf.int32))
    w.assign(tf.zeros_like(w))
    b.assign(tf.zeros_like(b))
    if hasattr(compression, "reset_traffic"):
        compression.reset_traffic()

    train_s, steps, curve = 0.0, 0, []
    loss0, acc0, _ = global_eval(0.0)
    curve.append((0, 0.0, loss0, acc0))
    t_target = step_target = acc_at_target = None
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
            if t_target is None and loss <= args.target_loss:
                t_target, step_target, acc_at_target = mean_s, steps, acc
                stop_at = steps + args.after_target
            diverged = not np.isfinite(loss) or loss > args.diverge_factor * loss0
            if diverged or (stop_at is not None and steps >= stop_at):
                break
            if mean_s >= args.max_seconds or steps >= args.max_steps:
                break
    final_loss, final_acc, mean_s = curve[-1][2], curve[-1][3], curve[-1][1]
    if hasattr(compression, "traffic"):
        t = compression.traffic()
        bytes_per_step = t["bytes_sent"] / max(t["steps"], 1)
        dense_tensors = t["dense_tensors"]
    else:
        item = 2 if spec == "fp16" else 4
        bytes_per_step = sum(int(np.prod(v.shape)) for v in variables) * item
        dense_tensors = len(variables)
    return {
        "spec": spec,
        "full_spec": to_spec(compression) if hasattr(compression, "spec") else spec,
        "ranks": size,
        "time_to_target_s": t_target,
        "steps_to_target": step_target,
        "acc_at_target": acc_at_target,
        "final_loss": final_loss,
        "final_acc": final_acc,
        "steps": steps,
        "train_seconds": mean_s,
        "seconds_per_step": mean_s / max(steps, 1),
        "bytes_per_step": bytes_per_step,
        "dense_tensors": dense_tensors,
        "curve": curve,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compressors", nargs="+", required=True)
    p.add_argument("--features", type=int, default=16384)
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--n", type=int, default=1024, help="training rows per rank")
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--informative", type=int, default=32, help="features the labels depend on")
    p.add_argument("--noise-scale", type=float, default=0.05, help="scale of the other features")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--target-loss", type=float, default=1.5)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--after-target", type=int, default=0, help="steps to keep training after the target")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--diverge-factor", type=float, default=1.5, help="stop when the test loss exceeds this x the initial")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    for s in args.compressors:
        hvdspar.from_spec(s)
    hvd.init()
    problem = make_problem(args.features, args.classes, args.informative, args.noise_scale, args.seed)
    xs, ys = draw(args.n, problem, args.seed + 1 + hvd.rank())
    xt, yt = draw(args.n_test, problem, args.seed)
    data = (xs, ys, xt, yt)
    results = []
    for spec in args.compressors:
        tf.keras.utils.set_random_seed(args.seed)
        r = run_one(spec, data, args)
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
