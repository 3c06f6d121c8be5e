"""Train the paper's models with a Horovod compressor: ``python -m hvdspar.training.train``.

    horovodrun -np 4 -H localhost:4 python -m hvdspar.training.train --model logreg --data synthetic \\
        --compressor gspar:rho=0.01 --optimizer sgd --batch-size 8 --epochs 20
    python -m hvdspar.training.train --model cnn --data cifar10 --compressor none     # one rank works too

Every rank loads the data, takes its shard (rows r::size after a seeded
shuffle) and trains with ``hvd.DistributedOptimizer(opt, compression=C)``
(SGD/Adam, Keras ``fit``) or the SVRG loop of ``hvdspar.training.svrg``
(``hvd.DistributedGradientTape``). Rank 0 prints a progress bar and one line
per epoch; the metrics of ``hvdspar.training.callbacks.EpochMetrics`` go into Keras'
logs for the MLflow callbacks of ``tracking`` (``--no-tracking`` turns them off).

Repeatability: ``--seed`` fixes the initial weights, the shards, every
epoch's batch order (a function of seed, epoch and rank only) and the
compressor's random streams (its ``seed=`` unless the spec sets one).
``--checkpoint-dir`` saves model, optimizer, compressor state and the epoch
counter after each epoch (one checkpoint per rank) and resumes from it, so an
interrupted run ends at the same weights as an uninterrupted one.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from hvdspar.training import data as data_mod

MODELS = ("logreg", "svm", "cnn")
CONVEX = ("logreg", "svm")
DEFAULT_DATA = {"logreg": "synthetic", "svm": "synthetic", "cnn": "cifar10"}
DEFAULT_OPTIMIZER = {"logreg": "sgd", "svm": "sgd", "cnn": "adam"}
# Default step sizes, for uncompressed training with minibatch 8 on 2 ranks (the CNN:
# Adam). Unbiased sparsifiers multiply the gradient variance (GSpar at rho=0.01 on
# the dense synthetic data by ~100): pass a smaller --lr with them, as the paper
# tunes the step per case.
DEFAULT_LR = {
    ("logreg", "sgd"): 0.05,
    ("svm", "sgd"): 0.02,
    ("logreg", "svrg"): 0.05,
    ("svm", "svrg"): 0.02,
    ("logreg", "adam"): 0.001,
    ("svm", "adam"): 0.001,
    ("cnn", "adam"): 0.001,
    ("cnn", "sgd"): 0.05,
}
# Settings a resumed run must share with the checkpoint it resumes from.
RESUME_KEYS = ("model", "data", "optimizer", "compressor", "groups", "batch_size", "limit", "lambda2", "lr",
               "channels", "synthetic_n", "synthetic_d", "c1", "c2", "data_seed", "steps_per_epoch", "svrg_inner")


def say(*args, rank=0):
    if rank == 0:
        print(*args, flush=True)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m hvdspar.training.train",
        description="Train logistic regression, a linear SVM or the paper's CNN with a Horovod "
        "compressor (hvdspar's GSpar, or Horovod's none/fp16). Launch with horovodrun for several ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=MODELS, default="logreg",
                   help="logreg: l2-regularised logistic regression; svm: linear SVM (hinge + l2); "
                   "cnn: the paper's CNN (3 conv 3x3 + BN, 2 max-pool, dense 256)")
    g.add_argument("--data", choices=tuple(data_mod.DATASETS), default=None,
                   help="data set; default synthetic for logreg/svm, cifar10 for cnn. logreg/svm take "
                   "synthetic, a9a, w8a; cnn takes cifar10, cifar10-subset (5,482/1,017 exact images), fashion-mnist")
    g.add_argument("--data-dir", default=None,
                   help="folder with the data files (a9a, a9a.t, w8a / cifar10-images.tgz, cifar10_exact_subset.npz / "
                   "Fashion-MNIST IDX files); default: $HVDSPAR_DATA_ROOT/{libsvm,cifar10} or <repo>/../shared/data/..., "
                   "/usr/share/datasets/fashion-mnist")
    g.add_argument("--limit", type=int, default=None,
                   help="use at most this many training rows and test rows (a seeded random subset)")
    g.add_argument("--lambda2", default="1/N",
                   help="l2 weight of the convex models: a number, or 'C/N' / '1/(10N)' in terms of the number of training rows N")
    g.add_argument("--channels", type=int, default=64, help="channels of each CNN convolution (the paper: 24, 32, 48, 64)")
    g.add_argument("--synthetic-n", type=int, default=1024, help="synthetic data: rows N")
    g.add_argument("--synthetic-d", type=int, default=2048, help="synthetic data: dimension d")
    g.add_argument("--c1", type=float, default=0.9, help="synthetic data: shrink factor C1")
    g.add_argument("--c2", type=float, default=1.0 / 16, help="synthetic data: shrink threshold C2 (fraction shrunk)")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic data: generator seed (independent of --seed)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--compressor", default="none",
                   help="compressor spec for hvdspar.from_spec: e.g. gspar:rho=0.01, gspar:epsilon=1, none, fp16")
    add_fallback_argument(g)
    g.add_argument("--groups", type=int, default=0,
                   help="Horovod's groups= of DistributedOptimizer: 0 (default) allreduces every gradient alone, "
                        "so hvdspar compresses per tensor; 1 puts the whole model in one group, which hvdspar "
                        "compresses as one message (per bucket of bucket_mb, a compressor argument)")
    g.add_argument("--optimizer", choices=("sgd", "adam", "svrg"), default=None,
                   help="default sgd for logreg/svm, adam for cnn; svrg (convex models) is the paper's Figure 2 loop")
    g.add_argument("--lr", type=float, default=None, help="step size; default depends on model and optimizer")
    g.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    g.add_argument("--batch-size", type=int, default=8, help="minibatch per rank (the paper: 8)")
    g.add_argument("--epochs", type=int, default=10, help="total epochs (a resumed run continues up to this)")
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap the steps of an epoch (default: one pass over the rank's shard)")
    g.add_argument("--svrg-inner", type=int, default=None,
                   help="SVRG inner steps per snapshot (default: the steps of one epoch)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of weights, shards, batch order and compressor; default: drawn at random (printed)")

    g = p.add_argument_group("output")
    g.add_argument("--checkpoint-dir", default=None,
                   help="save after every epoch and resume from the latest checkpoint found here")
    g.add_argument("--save-weights", default=None,
                   help="write the final weights to this .npz (rank 0; with '{rank}' in the path every rank writes its own)")
    g.add_argument("--metrics-out", default=None, help="write per-epoch metrics as JSON to this file (rank 0)")
    g.add_argument("--tracking", action=argparse.BooleanOptionalAction, default=True,
                   help="MLflow tracking through the tracking package")
    g.add_argument("--fstar", action=argparse.BooleanOptionalAction, default=True,
                   help="compute f* (cached) for the suboptimality of the convex models")
    g.add_argument("--cache-dir", default=None, help="cache for f* and decoded CIFAR-10 (default ~/.cache/hvdspar or $HVDSPAR_CACHE)")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="Keras verbosity on rank 0 (1: progress bar, 2: one line per epoch); other ranks are silent")
    g.add_argument("--threads", type=int, default=0,
                   help="TensorFlow intra-op threads per rank (0: CPU cores / local ranks)")
    return p


def parse_lambda2(text, n):
    """'0.001', '1/N', '0.1/N', '1/(10N)' -> float."""
    t = text.replace(" ", "").upper()
    try:
        return float(t)
    except ValueError:
        pass
    if t.endswith("/N"):
        return float(t[:-2]) / n
    if t.startswith("1/(") and t.endswith("N)"):
        return 1.0 / (float(t[3:-2] or 1) * n)
    raise ValueError(f"--lambda2 {text!r}: expected a number, 'C/N' or '1/(CN)'")


def validate(args, parser):
    """Every check that needs no Horovod: bad flags end here with parser.error."""
    if args.data is None:
        args.data = DEFAULT_DATA[args.model]
    kind = data_mod.DATASETS[args.data]
    if (args.model in CONVEX) != (kind == "binary"):
        ok = "synthetic, a9a, w8a" if args.model in CONVEX else "cifar10, cifar10-subset, fashion-mnist"
        parser.error(f"--model {args.model} does not fit --data {args.data}; {args.model} takes {ok}")
    if args.optimizer is None:
        args.optimizer = DEFAULT_OPTIMIZER[args.model]
    if args.optimizer == "svrg" and args.model not in CONVEX:
        parser.error("--optimizer svrg is for the convex models (logreg, svm)")
    if args.lr is None:
        args.lr = DEFAULT_LR[(args.model, args.optimizer)]
    for name in ("batch_size", "epochs", "channels", "synthetic_n", "synthetic_d"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("limit", "steps_per_epoch", "svrg_inner"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("lr", "momentum", "c1", "c2"):  # argparse's float() takes "nan" and "inf"
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name} must be a finite number, got {getattr(args, name)}")
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0.0 <= args.momentum < 1.0:
        parser.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if not 0.0 <= args.c2 <= 1.0 or args.c1 < 0:
        parser.error(f"--c1 must be >= 0 and --c2 in [0, 1]; got {args.c1}, {args.c2}")
    try:
        parse_lambda2(args.lambda2, 1000)
    except ValueError as exc:
        parser.error(str(exc))
    if args.data != "synthetic":
        data_dir = Path(args.data_dir) if args.data_dir else data_mod.default_data_dir(args.data)
        problem = data_mod.check_data(args.data, data_dir)
        if problem:
            parser.error(f"--data {args.data}: {problem}")
        args.data_dir = str(data_dir)
    elif args.data_dir:
        parser.error("--data-dir is not used with --data synthetic")
    for path in (args.save_weights and args.save_weights.replace("{rank}", "0"), args.metrics_out):
        if path and not Path(path).resolve().parent.exists():
            parser.error(f"folder of {path} does not exist")
    if args.groups < 0:
        parser.error(f"--groups must be >= 0, got {args.groups}")
    if args.groups and args.optimizer == "svrg":
        parser.error("--groups applies to hvd.DistributedOptimizer; --optimizer svrg allreduces on its own")
    if args.checkpoint_dir:
        run_file = Path(args.checkpoint_dir) / "run.json"
        if run_file.exists():
            saved = json.loads(run_file.read_text())
            mismatch = [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(args, k)!r}"
                        for k in RESUME_KEYS if k in saved and saved.get(k) != getattr(args, k)]
            if args.seed is not None and saved.get("seed") not in (None, args.seed):
                mismatch.append(f"seed: checkpoint {saved.get('seed')!r}, now {args.seed!r}")
            if mismatch:
                parser.error(f"--checkpoint-dir {args.checkpoint_dir} holds a different run ("
                             + "; ".join(mismatch) + "); use another folder or the same settings")
            if args.seed is None:
                args.seed = saved.get("seed")
    # The compressor spec: building it once checks its arguments (rho range, ...). This
    # imports TensorFlow, so the thread settings go first.
    configure_threads(args)
    from hvdspar import spec as spec_mod

    try:
        name, kwargs = spec_mod.parse(args.compressor)
        if name not in spec_mod.available():
            raise ValueError(f"unknown compressor {name!r}; known: {', '.join(spec_mod.available())}")
        spec_mod.from_spec(args.compressor)  # checks the arguments (rho range, ...); built again later
    except (ValueError, TypeError) as exc:
        parser.error(f"--compressor: {exc}")
    return args


def parse_args(argv=None):
    parser = build_parser()
    return validate(parser.parse_args(argv), parser)


def configure_threads(args):
    """Intra-op threads per rank: the CPU cores shared among the local ranks (horovodrun
    exports HOROVOD_LOCAL_SIZE), unless --threads says otherwise."""
    local_size = int(os.environ.get("HOROVOD_LOCAL_SIZE", os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")))
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, local_size))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:  # the runtime already started (main() called twice in one process)
        pass


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def add_fallback_argument(parser):
    """--fallback, shared by the training scripts (this one and training/compare.py)."""
    parser.add_argument("--fallback", choices=("true", "auto", "false"), default="true",
                        help="the dense fallback of a compressor whose spec sets none: true (by bytes alone: the same "
                             "decisions on every machine; the library's default), auto (also by the measured network "
                             "and compute: the fastest step on your network, opt-in; on one machine it sends nearly "
                             "everything dense), false (never)")


def make_compressor(text, seed, fallback="true"):
    """hvdspar.from_spec(text), with seed=<seed> and fallback=<fallback> ("true", "auto" or
    "false") for compressors whose spec sets none."""
    from hvdspar.spec import parse_value, from_spec

    return from_spec(text, seed=seed, fallback=parse_value(fallback))


def load_data(args, rank, hvd_tf):
    """Rank 0 loads first (filling caches such as decoded CIFAR-10); the others follow."""
    syn = {"n": args.synthetic_n, "d": args.synthetic_d, "c1": args.c1, "c2": args.c2, "seed": args.data_seed}

    def load():
        ds = data_mod.load(args.data, args.data_dir, synthetic_args=syn, cache_dir=args.cache_dir)
        return data_mod.limit(ds, args.limit, args.seed)

    if rank == 0:
        ds = load()
    if hvd_tf.size() > 1:
        hvd_tf.broadcast_object(0, root_rank=0, name="data_ready")
    if rank != 0:
        ds = load()
    return ds


def batch_stream(x, y, seed, rank, epochs, steps, batch):
    """tf.data of this rank's minibatches for ``epochs`` (an iterable of epoch numbers):
    each epoch visits the first steps*batch rows of ``epoch_order(seed, epoch, rank)``."""
    import numpy as np
    import tensorflow as tf

    order = [data_mod.epoch_order(x.shape[0], seed, e, rank)[: steps * batch] for e in epochs]
    idx = np.concatenate(order) if order else np.zeros([0], np.int64)
    xt, yt = tf.constant(x), tf.constant(y)
    ds = tf.data.Dataset.from_tensor_slices(idx).batch(batch, drop_remainder=True)
    return ds.map(lambda i: (tf.gather(xt, i), tf.gather(yt, i)), num_parallel_calls=1).prefetch(4)


def save_weights(path, model):
    import numpy as np

    arrays = {v.name: v.numpy() for v in model.variables}
    np.savez(path, **arrays)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    from hvdspar.spec import to_spec
    from hvdspar.training import callbacks as cb_mod
    from hvdspar.training import fstar as fstar_mod
    from hvdspar.training import models as models_mod

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")

    if args.seed is None:
        args.seed = int(hvd_tf.broadcast_object(int(np.random.SeedSequence().entropy % (2**31)), root_rank=0, name="seed"))
        say(f"--seed not given: using seed {args.seed}", rank=rank)

    # Checkpoint folder sanity that needs the world size.
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if ckpt_dir and (ckpt_dir / "run.json").exists():
        saved_size = json.loads((ckpt_dir / "run.json").read_text()).get("size")
        if saved_size not in (None, size):
            if rank == 0:
                print(f"error: --checkpoint-dir {ckpt_dir} was written by {saved_size} ranks; resume with "
                      f"-np {saved_size} (the shards and per-rank compressor state depend on it)", file=sys.stderr)
            return 2

    tf.keras.utils.set_random_seed(args.seed)
    t_start = time.time()

    # ---- data and shards
    ds = load_data(args, rank, hvd_tf)
    n = ds.n_train
    lambda2 = parse_lambda2(args.lambda2, n) if args.model in CONVEX else 0.0
    shard_train = data_mod.shard_indices(n, rank, size, args.seed)
    shard_test = np.arange(ds.x_test.shape[0])[rank::size]
    full_steps = (n // size) // args.batch_size
    if full_steps < 1:
        if rank == 0:
            print(f"error: {n} training rows over {size} ranks leave fewer than --batch-size {args.batch_size} per rank", file=sys.stderr)
        return 2
    steps = min(full_steps, args.steps_per_epoch or full_steps)
    if args.optimizer == "svrg" and args.svrg_inner:
        steps = min(args.svrg_inner, full_steps)
    x_shard = data_mod.to_dense(ds.x_train[shard_train])
    y_shard = ds.y_train[shard_train]
    say(f"{args.model} on {args.data}: {n} train / {ds.x_test.shape[0]} test rows, {size} rank(s), "
        f"{steps} steps/epoch of batch {args.batch_size}, compressor {args.compressor}, {args.optimizer} lr={args.lr}"
        + (f", lambda2={lambda2:.4g}" if args.model in CONVEX else ""), rank=rank)

    # ---- f*
    fstar = None
    if args.model in CONVEX and args.fstar:
        info = None
        if rank == 0:
            info = fstar_mod.cached_fstar(args.model, ds.x_train, ds.y_train, lambda2, args.cache_dir, log=print)
            info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, type(None)))}
            say(f"f* = {info['fstar']:.12g} (certificate {info['certificate']:.1e}, {info['method']}"
                + (", cached)" if info.get("cached") else ")"), rank=rank)
        if size > 1:
            info = hvd_tf.broadcast_object(info, root_rank=0, name="fstar")
        fstar = info["fstar"]

    # ---- model, compressor, optimizer
    model, loss, metrics = models_mod.build(args.model, ds.input_shape, lambda2, args.channels, ds.num_classes, ds.mean, ds.std)
    compressor = make_compressor(args.compressor, args.seed, args.fallback)
    is_module = isinstance(compressor, tf.Module)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    if args.optimizer == "svrg":
        from hvdspar.training.svrg import SVRG

        trainer = SVRG(model, loss, compressor, args.lr, hvd_tf, n)
        opt = trainer.optimizer
        steps_counter = lambda: int(trainer.iterations.numpy())  # noqa: E731
    else:
        if args.optimizer == "sgd":
            base = tf.keras.optimizers.SGD(args.lr, momentum=args.momentum, jit_compile=False)
        else:
            base = tf.keras.optimizers.Adam(args.lr, jit_compile=False)
        opt = hvd.DistributedOptimizer(base, compression=compressor, groups=args.groups or None)
        model.compile(optimizer=opt, loss=loss, metrics=metrics, jit_compile=False)
        opt.build(model.trainable_variables)
        steps_counter = lambda: int(opt.iterations.numpy())  # noqa: E731

    # ---- checkpoint: restore or start
    initial_epoch = 0
    manager = ckpt = None
    if ckpt_dir:
        parts = {"model": model, "optimizer": opt, "epoch": epoch_var}
        if is_module:
            parts["compressor"] = compressor
        ckpt = tf.train.Checkpoint(**parts)
        manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir / f"rank{rank}"), max_to_keep=2)
        if manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            initial_epoch = int(epoch_var.numpy())
            say(f"resumed from {manager.latest_checkpoint} at epoch {initial_epoch}", rank=rank)
        elif rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            record = {k: getattr(args, k) for k in RESUME_KEYS}
            record.update(seed=args.seed, size=size)
            tmp = ckpt_dir / "run.json.tmp"  # atomic: other ranks may be reading it
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, ckpt_dir / "run.json")
    # Same start everywhere (identical by seeding already; this makes it a fact).
    if size > 1:
        hvd_tf.broadcast_variables(model.variables, root_rank=0)
        hvd_tf.broadcast_variables(opt.variables, root_rank=0)

    # ---- callbacks
    samples_per_epoch = steps * args.batch_size * size
    evaluator = cb_mod.Evaluator(args.model, model, ds, shard_train, shard_test, fstar, lambda2, compressor, hvd_tf,
                                 samples_per_epoch, extra_passes_per_epoch=1.0 if args.optimizer == "svrg" else 0.0)
    callbacks = [cb_mod.EpochMetrics(evaluator, args.epochs, steps_counter, rank)]
    if manager is not None:
        callbacks.append(cb_mod.CheckpointSaver(manager, epoch_var))
    metrics_file = None
    if args.metrics_out and rank == 0:
        header = {"settings": {**{k: v for k, v in vars(args).items()}, "size": size, "lambda2_value": lambda2,
                               "steps_per_epoch": steps, "fstar": fstar, "compressor_spec": to_spec(compressor),
                               "n_train": n, "n_test": int(ds.x_test.shape[0])}}
        metrics_file = cb_mod.MetricsFile(args.metrics_out, initial_epoch, header)
        callbacks.append(metrics_file)

    params = {**vars(args), "compressor": to_spec(compressor), "size": size, "steps_per_epoch": steps,
              "lambda2_value": lambda2, "fstar": fstar, "n_train": n, "n_test": int(ds.x_test.shape[0]),
              "learning_rate": args.lr, "optimizer": args.optimizer, "seed": args.seed}
    tracker = None
    if args.tracking:
        try:
            if args.optimizer == "svrg":
                from hvdspar.tracking import make_tracker

                tracker = make_tracker(params, compressor, str(ckpt_dir) if ckpt_dir else None,
                                       variables=model.trainable_variables)
            else:
                from hvdspar.tracking import make_callbacks

                callbacks += list(make_callbacks(params=params, compressor=compressor, steps_per_epoch=steps,
                                                 checkpoint_dir=str(ckpt_dir) if ckpt_dir else None))
        except ImportError as exc:
            say(f"tracking off: the tracking package is not available ({exc})", rank=rank)

    # ---- train
    if initial_epoch >= args.epochs:
        say(f"nothing to do: the checkpoint is at epoch {initial_epoch} >= --epochs {args.epochs}", rank=rank)
    elif args.optimizer == "svrg":
        run_svrg(trainer, callbacks, tracker, args, x_shard, y_shard, steps, initial_epoch, rank, model)
    else:
        stream = batch_stream(x_shard, y_shard, args.seed, rank, range(initial_epoch, args.epochs), steps, args.batch_size)
        model.fit(stream, epochs=args.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=args.verbose if rank == 0 else 0)
    if tracker is not None:
        tracker.close()

    if args.save_weights and (rank == 0 or "{rank}" in args.save_weights):
        save_weights(args.save_weights.replace("{rank}", str(rank)), model)
    if rank == 0:
        if metrics_file is not None:
            metrics_file.write(total_seconds=time.time() - t_start)
        say(f"done in {time.time() - t_start:.1f} s", rank=rank)
    return 0


def run_svrg(trainer, callbacks, tracker, args, x_shard, y_shard, steps, initial_epoch, rank, model):
    """The SVRG epochs, driving the same callbacks as Keras' fit would."""
    import numpy as np

    from tensorflow.keras.callbacks import ProgbarLogger

    for cb in callbacks:
        cb.set_model(model)
    progress = None
    if rank == 0 and args.verbose == 1:
        progress = ProgbarLogger(count_mode="steps")
        progress.set_params({"verbose": 1, "epochs": args.epochs, "steps": steps})
        progress.set_model(model)
    global_step = steps * initial_epoch
    for epoch in range(initial_epoch, args.epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        if progress:
            progress.on_epoch_begin(epoch)
        trainer.full_gradient(x_shard, y_shard)
        order = data_mod.epoch_order(x_shard.shape[0], args.seed, epoch, rank)
        losses = []
        for t in range(steps):
            idx = order[t * args.batch_size:(t + 1) * args.batch_size]
            losses.append(float(trainer.step(x_shard[idx], y_shard[idx])))
            global_step += 1
            if progress:
                progress.on_train_batch_end(t, {"loss": float(np.mean(losses))})
            if tracker is not None and (t + 1) % 50 == 0:
                tracker.log_step(global_step, {"loss": losses[-1]})
        logs = {"loss": float(np.mean(losses))}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if progress:
            progress.on_epoch_end(epoch, {})
        if tracker is not None:
            tracker.log_epoch(epoch, dict(logs))


if __name__ == "__main__":
    sys.exit(main())
