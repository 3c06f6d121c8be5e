"""Reproduce Wangni et al. (2018), sec. 4: one command per experiment.

    python -m hvdspar.training.reproduce fig1|fig2|fig3|topk|cnn [--quick] [--out DIR]

Each experiment logs one MLflow run per curve under experiment "reproduce-<exp>"
(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory), plus a
"summary" run holding the figures, and writes PNGs, results.json and the resumable
curves.jsonl to --out (default docs/reproduction/<exp>; out/reproduce/<exp> with
--quick). The M = 4 workers are simulated in one process with hvdspar's own
encode/decode_sum (training/reproduce_sim.py; see REPRODUCTION.md).
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hvdspar.tracking.progress import bar  # noqa: E402

N, D, C1, M, BATCH = 1024, 2048, 0.9, 4, 8
SKEWED_C1 = 0.01  # the shrink factor of the skewed generator variant (training/data.py)
EXPERIMENTS = ("fig1", "fig2", "fig3", "topk", "cnn")
LRS = (0.05, 0.1, 0.2, 0.4)  # SGD/SVRG step-size grid of each curve in full mode; the fixed step (--lr) is in it
LR_RANGE = (0.0125, 1.6)  # full mode: while a curve's best step is the grid's edge, the grid goes on (x2 or /2) within this
CNN_LRS = (0.02, 0.005, 0.001)  # Adam step-size grid of the CNN (the paper's 0.02 first)


def log(msg):
    print(f"[reproduce] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------


def problems(quick, c2s=(4, 16, 64)):
    """(C2, lambda2) pairs: rows lambda in {1/(10N), 1/N}, columns C2 in {1/4, 1/16, 1/64}."""
    if quick:
        return [(1.0 / 64, 1.0 / N)]
    return [(1.0 / c, lam) for lam in (1.0 / (10 * N), 1.0 / N) for c in c2s]


def curves(exp, quick):
    """(label, spec) per curve."""
    rhos = (0.1,) if quick else (0.05, 0.1, 0.25)
    if exp in ("fig1", "fig2"):
        out = [("baseline", "none")]
        for rho in rhos:
            out += [(f"GSpar rho={rho:g}", f"gspar:rho={rho:g}"), (f"UniSp rho={rho:g}", f"unisp:rho={rho:g}")]
        return out
    if exp == "fig3":
        out = [(f"GSpar rho={rho:g}", f"gspar:rho={rho:g}") for rho in rhos]
        return out + [(f"QSGD s={s}", f"qsgd:levels={s}") for s in ((4,) if quick else (2, 4, 16))]
    if exp == "topk":
        out = [("baseline", "none")]
        for rho in rhos:
            out += [(f"TopK+mem ratio={rho:g}", f"topk:ratio={rho:g},memory=true"),
                    (f"GSpar rho={rho:g}", f"gspar:rho={rho:g}"),
                    (f"GSpar+mem rho={rho:g}", f"gspar:rho={rho:g},memory=true")]
        return out
    raise ValueError(exp)


# --------------------------------------------------------------------------------------------
# the curve store: what makes a full run resumable
# --------------------------------------------------------------------------------------------


class CurveStore:
    """The finished runs of one experiment, one JSON line each, in ``<out>/curves.jsonl``.

    A run (one curve at one step size and seed) is appended, flushed and fsynced as
    soon as it finishes, and its MLflow run is logged then. Started again with the
    same arguments, the experiment skips every run whose configuration is already in
    the file, so a stopped full run picks up where it was and finishes. A line cut
    short by a kill is ignored (and its run done again).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.rows = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log(f"{self.path}: ignoring a line cut short ({len(line)} characters)")
                    continue
                self.rows[self.key(row["config"])] = row

    @staticmethod
    def key(config):
        return json.dumps(config, sort_keys=True)

    def get(self, config):
        return self.rows.get(self.key(config))

    def put(self, row):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[self.key(row["config"])] = row


def compact(values, digits=5):
    """A curve as a short list: floats to ``digits`` significant digits (inf stays inf)."""
    return [float(f"{v:.{digits}g}") if np.isfinite(v) else float(v) for v in np.asarray(values, float)]


class Budget:
    """Stop starting new runs after ``minutes`` of wall time (None: no limit)."""

    def __init__(self, minutes):
        self.t0, self.minutes = time.time(), minutes
        self.stopped = False

    def spent(self):
        if self.minutes is not None and time.time() - self.t0 > 60.0 * self.minutes:
            self.stopped = True
        return self.stopped


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


def mlflow_setup(exp):
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    mlflow.set_experiment(f"reproduce-{exp}")
    return mlflow


def log_run(mlflow, name, params, series, summary):
    """One run: params, final summary metrics, and the curve as step metrics (one batch call)."""
    from mlflow.entities import Metric

    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if np.isfinite(v)})
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(v), now, i) for key, vals in series.items() for i, v in enumerate(vals) if np.isfinite(v)]
        client = mlflow.tracking.MlflowClient()
        for k in range(0, len(metrics), 900):
            client.log_batch(run.info.run_id, metrics=metrics[k : k + 900])
    return run.info.run_id


def step_grid(given, fixed, default, quick):
    """A step-size grid: the comma-separated ``given`` if set, else only the fixed step in quick
    mode and ``default`` plus the fixed step in full mode."""
    if given:
        return sorted({float(v) for v in given.split(",")})
    return [fixed] if quick else sorted(set(default) | {fixed})


def step_sizes(args):
    """The SGD/SVRG grid of each curve: --lrs, or LRS and --lr."""
    return step_grid(args.lrs, args.lr, LRS, args.quick)


def extends_grid(args):
    """Whether the SGD/SVRG grid is extended past its edge (``next_step``): full mode with the
    default grid only, not in --quick and not for a grid given with --lrs."""
    return args.experiment != "cnn" and not args.quick and args.lrs is None


def pick(rows, key, fixed_lr):
    """(tuned, fixed) of one curve's runs over the grid: the run with the smallest ``key``
    (a diverged run counts as +inf), and the run at the fixed step ``fixed_lr`` (or None)."""
    score = lambda r: r[key] if np.isfinite(r[key]) else np.inf  # noqa: E731
    tuned = min(rows, key=score)
    fixed = next((r for r in rows if r["lr"] == fixed_lr), None)
    return tuned, fixed


def next_step(rows, key, lo, hi):
    """The next step to try past the grid's edge: twice the largest step tried when that step has
    the best ``key`` (smallest; a diverged run is +inf), half the smallest when that one has it,
    as long as the new step stays within [lo, hi]; else None. A grid whose best step is at its
    edge has not found the best step: this extends it until the best is inside (or at lo / hi)."""
    steps = [r["lr"] for r in rows]
    best = pick(rows, key, None)[0]["lr"]
    if len(steps) > 1 and best == max(steps) and 2 * best <= hi:
        return 2 * best
    if len(steps) > 1 and best == min(steps) and best / 2 >= lo:
        return best / 2
    return None


# --------------------------------------------------------------------------------------------
# convex experiments (fig1, fig2, fig3, topk)
# --------------------------------------------------------------------------------------------


def equal_bytes_topk_ratio(gspar_row, d=D):
    """The top-k ratio k/d whose planned message (``codec.expected_nbytes``) is closest to
    GSpar's measured bytes per message (``bits_per_element`` * d / 8): top-k at equal bytes."""
    import tensorflow as tf

    import hvdspar

    target = gspar_row["bits_per_element"] * d / 8.0
    size = lambda k: hvdspar.from_spec(f"topk:ratio={k / d!r},fallback=false").codec.expected_nbytes(d, tf.float32)  # noqa: E731
    lo, hi = 1, d
    while lo < hi:  # the smallest k whose message is at least GSpar's
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) < target else (lo, mid)
    k = min((lo, max(1, lo - 1)), key=lambda k: abs(size(k) - target))
    return k / d


def run_convex_experiment(exp, args, store, budget):
    from hvdspar.training.data import load_synthetic
    from hvdspar.training.fstar import cached_fstar
    from hvdspar.training.reproduce_sim import run_convex

    mlflow = mlflow_setup(args.mlflow_experiment)
    optimizer = "svrg" if exp == "fig2" else "sgd"
    quick_passes = {"fig1": 2, "fig2": 1, "fig3": 1, "topk": 1.5}[exp]
    passes = args.passes or (quick_passes if args.quick else (30 if optimizer == "svrg" else 20))
    probs = problems(args.quick, (4, 16) if exp == "fig3" else (4, 16, 64))
    c1 = C1 if args.generator == "paper" else SKEWED_C1
    lrs = step_sizes(args)
    extend = extends_grid(args)
    results = []
    total = len(probs) * len(curves(exp, args.quick)) * len(lrs)
    progress = bar(total, f"reproduce {exp}", done=min(len(store.rows), total))
    for c2, lam in probs:
        ds = load_synthetic(N, D, c1, c2, args.seed, generator=args.generator)
        fs = cached_fstar("logreg", ds.x_train, ds.y_train, lam, log=log)["fstar"]
        x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
        todo = list(curves(exp, args.quick))
        while todo:
            label, spec = todo.pop(0)
            runs = []
            grid, stopped = list(lrs), False
            while grid:
                lr = grid.pop(0)
                config = {"exp": exp, "generator": args.generator, "C1": c1, "C2": c2, "lambda2": lam, "spec": spec,
                          "optimizer": optimizer, "lr": lr, "passes": passes, "seed": args.seed, "quick": args.quick}
                row = store.get(config)
                if row is None:
                    if budget.spent():
                        stopped = True
                        break
                    t0 = time.time()
                    r = run_convex(x, y, lam, spec, optimizer=optimizer, lr=lr, passes=passes, num_workers=M,
                                   batch=BATCH, seed=args.seed, comp_seed=args.seed + 1234, fstar=fs)
                    secs = time.time() - t0
                    row = {"config": config, "exp": exp, "C2": c2, "lambda2": lam, "label": label, "spec": spec,
                           "optimizer": optimizer, "lr": lr, "variance": float(r["variance"]),
                           "density": float(r["density"]), "bits_per_element": float(r["bits_per_element"]),
                           "final_subopt": float(r["subopt"][-1]), "min_subopt": float(np.min(r["subopt"])),
                           "seconds": secs}
                    params = {**config, "N": N, "d": D, "M": M, "batch": BATCH, "compressor": spec,
                              "simulated_workers": True, "fstar": fs}
                    summary = {k: row[k] for k in ("variance", "density", "bits_per_element", "final_subopt", "min_subopt", "seconds")}
                    row["run_id"] = log_run(mlflow, f"{label} C2=1/{round(1 / c2)} lam={lam * N:g}/N lr={lr:g}", params,
                                            {"subopt": r["subopt"], "data_passes": r["passes"], "bits": r["bits"]}, summary)
                    row["curve"] = {k: compact(r[k]) for k in ("passes", "subopt", "bits")}
                    store.put(row)
                    log(f"{exp} C2=1/{round(1 / c2)} lam={lam * N:g}/N {label:24s} lr={lr:<6g} var={row['variance']:.3f} "
                        f"spa={row['density']:.4f} bits/elem={row['bits_per_element']:.2f} "
                        f"final f-f*={row['final_subopt']:.3e} ({secs:.1f}s)")
                    progress.update()
                runs.append(row)
                more = next_step(runs, "final_subopt", *LR_RANGE) if not grid and extend else None
                if more is not None:
                    grid.append(more)
                    progress.total += 1  # a curve whose best step was the grid's edge goes on
            if stopped:
                break  # out of budget: this curve is not complete
            tuned, fixed = pick(runs, "final_subopt", args.lr)
            results.append({**tuned, "tuned_lr": tuned["lr"], "grid": {f"{r['lr']:g}": r["final_subopt"] for r in runs},
                            "fixed": {k: v for k, v in (fixed or {}).items() if k != "config"}})
            if exp == "topk" and spec.startswith("gspar:") and spec.endswith(",memory=true") and not args.quick:
                # Top-k with memory at GSpar+memory's bytes (issue: report them at equal bytes).
                ratio = equal_bytes_topk_ratio(tuned)
                todo.insert(0, (f"TopK+mem ratio={ratio:.4g} (GSpar+mem bytes)", f"topk:ratio={ratio!r},memory=true"))
                progress.total += len(lrs)
    progress.close()
    return results, probs


def plot_convex(exp, results, probs, out, fixed=False, generator="paper"):
    """One panel per problem; each curve at its tuned step (``fixed``: at the fixed step)."""
    if fixed:
        results = [{**r["fixed"], "label": r["label"]} for r in results if r.get("fixed")]
    xkey = "bits" if exp == "fig3" else "passes"
    lams = sorted({lam for _, lam in probs})
    c2s = sorted({c for c, _ in probs}, reverse=True)
    fig, axes = plt.subplots(len(lams), len(c2s), figsize=(max(7, 5 * len(c2s)), 4 * len(lams)), squeeze=False)
    for i, lam in enumerate(lams):
        for j, c2 in enumerate(c2s):
            ax = axes[i][j]
            for row in results:
                if row["C2"] != c2 or row["lambda2"] != lam:
                    continue
                cv = row["curve"]
                extra = f" b/el={row['bits_per_element']:.2f}" if exp == "fig3" else ""
                ax.semilogy(cv[xkey], np.maximum(cv["subopt"], 1e-12),
                            label=f"{row['label']} lr={row['lr']:g} var={row['variance']:.2f} spa={row['density']:.3f}{extra}")
            ax.set_title(f"C2=1/{round(1 / c2)}, lambda={lam * N:g}/N")
            ax.set_xlabel("total coded bits (all workers)" if xkey == "bits" else "data passes")
            ax.set_ylabel("f(w) - f*")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    titles = {"fig1": "Figure 1: SGD, GSpar vs UniSp", "fig2": "Figure 2: SVRG, GSpar vs UniSp",
              "fig3": "Figure 3: GSpar vs QSGD by coding length", "topk": "Top-k with memory vs GSpar (SGD)"}
    how = f"fixed step {results[0]['lr']:g} for every curve" if fixed and results else "step tuned per curve"
    data = "paper's generator" if generator == "paper" else f"skewed generator variant (C1={SKEWED_C1:g})"
    fig.suptitle(titles[exp] + f"\n(l2-logreg, synthetic, {data}, M=4 simulated workers, {how})", fontsize=9)
    fig.tight_layout()
    path = out / f"{exp}{'-skewed' if generator != 'paper' else ''}{'_fixed' if fixed else ''}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------------------------
# CNN on CIFAR-10 (Adam)
# --------------------------------------------------------------------------------------------


def cnn_run(args, spec, lr, seed, x_all, y_all):
    """One CNN training run of the simulated workers: (series, byte and norm totals, d, steps,
    the run's shape as MLflow params)."""
    import tensorflow as tf

    from hvdspar.training.data import CIFAR10_MEAN, CIFAR10_STD
    from hvdspar.training.models import cnn
    from hvdspar.training.reproduce_sim import SimExchange

    n_imgs = x_all.shape[0]
    epochs = args.passes or (1 if args.quick else 10)
    channels = 24 if args.quick else 64
    batch = 16 if args.quick else 32
    steps_per_epoch = n_imgs // (M * batch)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    tf.keras.utils.set_random_seed(seed)
    model = cnn((32, 32, 3), channels, 10, CIFAR10_MEAN, CIFAR10_STD)
    opt = tf.keras.optimizers.Adam(lr)
    opt.build(model.trainable_variables)
    shapes = [v.shape for v in model.trainable_variables]
    sizes = [int(np.prod(sh)) for sh in shapes]
    # One flat vector per worker (all tensors concatenated): one budget rho for the whole model.
    ex = SimExchange(spec, M, [(sum(sizes),)], seed=seed + 1234)

    @tf.function
    def worker_grads(xb, yb):
        grads, losses = [], []
        for r in range(M):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb[r], model(xb[r], training=True))
            grads.append(tape.gradient(loss, model.trainable_variables))
            losses.append(loss)
        flat = tf.stack([tf.concat([tf.reshape(t, [-1]) for t in g], 0) for g in grads])
        return flat, tf.reduce_mean(losses)

    series = {"loss": [], "epoch": [], "comm_bits": []}
    tot = {"bytes": 0.0, "kept": 0.0, "sq_g": 0.0, "sq_q": 0.0}
    step = 0
    for ep in range(epochs):
        perm = np.random.default_rng([seed, ep]).permutation(n_imgs)
        for j in range(steps_per_epoch):
            idx = perm[j * M * batch : (j + 1) * M * batch].reshape(M, batch)
            g, loss = worker_grads(tf.constant(x_all[idx]), tf.constant(y_all[idx]))
            (avg,), st = ex([g], step)
            parts = tf.split(avg, sizes)
            opt.apply_gradients([(tf.reshape(p, sh), v) for p, sh, v in zip(parts, shapes, model.trainable_variables)])
            for k in tot:
                tot[k] += float(np.sum(st[k]))
            step += 1
            series["loss"].append(float(loss))
            series["epoch"].append(step / steps_per_epoch)
            series["comm_bits"].append(8.0 * tot["bytes"])
    return series, tot, sum(sizes), step, {"channels": channels, "images": n_imgs, "epochs": epochs, "batch_per_worker": batch}


def cnn_step_sizes(args):
    """The CNN's Adam grid: --cnn-lrs, or CNN_LRS and --cnn-lr."""
    return step_grid(args.cnn_lrs, args.cnn_lr, CNN_LRS, args.quick)


def cnn_settings(quick):
    """The baseline, then GSpar from the paper's smallest budget up (the order they are run in)."""
    rhos = (0.004,) if quick else (0.004, 0.02, 0.1)
    return [("baseline", "none")] + [(f"GSpar rho={r:g}", f"gspar:rho={r:g}") for r in rhos]


def run_cnn_experiment(args, store, budget):
    """Every setting at every Adam step of the grid and every seed; per setting, the step with
    the smallest mean final loss over the seeds (its seeds' mean and spread are reported)."""
    mlflow = mlflow_setup(args.mlflow_experiment)
    z = np.load(args.cifar)
    x_all, y_all = z["x_train"], z["y_train"].astype(np.int32)
    n_imgs = 1024 if args.quick else x_all.shape[0]
    x_all, y_all = x_all[:n_imgs], y_all[:n_imgs]
    lrs = cnn_step_sizes(args)
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else ([args.seed] if args.quick else [0, 1, 2])
    results = []
    settings = cnn_settings(args.quick)
    total = len(settings) * len(lrs) * len(seeds)
    progress = bar(total, "reproduce cnn", done=min(len(store.rows), total))
    for label, spec in settings:
        per_lr = {}
        for lr in lrs:
            for seed in seeds:
                config = {"exp": "cnn", "spec": spec, "lr": lr, "seed": seed, "passes": args.passes, "quick": args.quick}
                row = store.get(config)
                if row is None:
                    if budget.spent():
                        break
                    t0 = time.time()
                    series, tot, d, steps, shape = cnn_run(args, spec, lr, seed, x_all, y_all)
                    row = {"config": config, "exp": "cnn", "label": label, "spec": spec, "lr": lr, "seed": seed,
                           "variance": tot["sq_q"] / tot["sq_g"], "density": tot["kept"] / (steps * M * d),
                           "first_loss": float(np.mean(series["loss"][:5])), "final_loss": float(np.mean(series["loss"][-5:])),
                           "seconds": time.time() - t0, "bits_per_element": 8.0 * tot["bytes"] / (steps * M * d)}
                    if not np.isfinite(row["final_loss"]):
                        row["final_loss"] = float("inf")
                    params = {**config, **shape, "compressor": spec, "M": M, "optimizer": "adam", "simulated_workers": True}
                    row["run_id"] = log_run(mlflow, f"{label} lr={lr:g} seed={seed}", params, series,
                                            {k: row[k] for k in ("variance", "density", "first_loss", "final_loss", "seconds", "bits_per_element")})
                    row["curve"] = {k: compact(v) for k, v in series.items()}
                    store.put(row)
                    log(f"cnn {label:18s} lr={lr:<6g} seed={seed} var={row['variance']:.2f} spa={row['density']:.4f} "
                        f"loss {row['first_loss']:.3f} -> {row['final_loss']:.3f} ({row['seconds']:.1f}s)")
                    progress.update()
                per_lr.setdefault(lr, []).append(row)
        done = {lr: rows for lr, rows in per_lr.items() if len(rows) == len(seeds)}
        if len(done) < len(lrs):
            break  # out of budget
        summaries = []
        for lr, rows in done.items():
            finals = np.array([r["final_loss"] for r in rows])
            summaries.append({**rows[0], "seeds": seeds, "final_loss": float(np.mean(finals)),
                              "final_loss_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                              "final_losses": finals.tolist(),
                              "variance": float(np.mean([r["variance"] for r in rows])),
                              "density": float(np.mean([r["density"] for r in rows])),
                              "seconds": float(sum(r["seconds"] for r in rows)), "runs": rows})
        tuned, fixed = pick(summaries, "final_loss", args.cnn_lr)
        results.append({**tuned, "tuned_lr": tuned["lr"], "grid": {f"{s['lr']:g}": s["final_loss"] for s in summaries},
                        "fixed": {k: v for k, v in (fixed or {}).items() if k not in ("config", "runs")}})
    progress.close()
    return results


def plot_cnn(results, out):
    """Loss by epoch and by coded bits: each setting at its tuned Adam step, one line per seed."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(results):
        for j, run in enumerate(row["runs"]):
            cv = run["curve"]
            lab = (f"{row['label']} lr={row['lr']:g} var={row['variance']:.1f} spa={row['density']:.4f} "
                   f"({len(row['runs'])} seeds)") if j == 0 else None
            a.plot(cv["epoch"], cv["loss"], color=colors[i % len(colors)], alpha=0.8, lw=1, label=lab)
            b.semilogx(np.maximum(cv["comm_bits"], 1), cv["loss"], color=colors[i % len(colors)], alpha=0.8, lw=1, label=lab)
    a.set_xlabel("epochs"), b.set_xlabel("total coded bits (all workers)")
    for ax in (a, b):
        ax.set_ylabel("training loss (minibatch)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("CNN on CIFAR-10 (exact subset), Adam step tuned per setting, M=4 simulated workers", fontsize=9)
    fig.tight_layout()
    path = out / "cnn.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------------------------


def summary_run(mlflow, name):
    """The experiment's one "summary" run: the existing one when a run is resumed, else a new one."""
    found = mlflow.search_runs(experiment_names=[f"reproduce-{name}"], filter_string="tags.mlflow.runName = 'summary'")
    if len(found):
        return mlflow.start_run(run_id=found["run_id"].iloc[0])
    return mlflow.start_run(run_name="summary")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hvdspar.training.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--quick", action="store_true", help="one problem, few passes, one step size, same code path (minutes)")
    p.add_argument("--out", type=Path, default=None,
                   help="result folder (default docs/reproduction/<exp>, or out/reproduce/<exp> with --quick)")
    p.add_argument("--generator", choices=("paper", "skewed"), default="paper",
                   help="synthetic data: the paper's text (C1=0.9), or the skewed variant (C1=0.01 on all but the largest C2 fraction)")
    p.add_argument("--lr", type=float, default=0.1, help="the fixed SGD/SVRG step size, one for every curve (in the grid)")
    p.add_argument("--lrs", default=None, help=f"comma-separated SGD/SVRG step grid tuned per curve (full default {LRS}, extended x2 or "
                   f"/2 while a curve's best step is its edge, within {LR_RANGE}; a grid given here is not extended)")
    p.add_argument("--cnn-lr", type=float, default=0.02, help="the fixed Adam step of the CNN (paper: 0.02; in the grid)")
    p.add_argument("--cnn-lrs", default=None, help=f"comma-separated Adam step grid of the CNN (full default {CNN_LRS})")
    p.add_argument("--seeds", default=None, help="comma-separated CNN seeds (full default 0,1,2)")
    p.add_argument("--passes", type=float, default=None, help="data passes (epochs for cnn); default by mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no new run after this many minutes; rerun the same command to go on")
    p.add_argument("--cifar", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/cifar10/cifar10_exact_subset.npz"))
    args = p.parse_args(argv)
    if args.experiment == "cnn" and args.generator != "paper":
        p.error("--generator applies to the synthetic experiments, not cnn")
    name = args.experiment + ("-skewed" if args.generator == "skewed" else "")
    args.mlflow_experiment = name
    out = args.out or (Path("out/reproduce") if args.quick else Path("docs/reproduction")) / name
    out.mkdir(parents=True, exist_ok=True)
    store, budget = CurveStore(out / "curves.jsonl"), Budget(args.budget_minutes)
    if store.rows:
        log(f"resuming from {store.path}")  # (the progress bar says how many runs are done)
    t0 = time.time()
    if args.experiment == "cnn":
        results = run_cnn_experiment(args, store, budget)
        figs = plot_cnn(results, out) if results else []
    else:
        results, probs = run_convex_experiment(args.experiment, args, store, budget)
        figs = []
        if results:
            figs = plot_convex(args.experiment, results, probs, out, generator=args.generator)
            if len(step_sizes(args)) > 1:
                figs += plot_convex(args.experiment, results, probs, out, fixed=True, generator=args.generator)
    secs = time.time() - t0
    complete = not budget.stopped
    table = [{k: v for k, v in r.items() if k not in ("curve", "runs", "config")} for r in results]
    compute = sum(r["seconds"] for r in store.rows.values())
    (out / "results.json").write_text(json.dumps({
        "experiment": name, "quick": args.quick, "complete": complete, "runs": len(store.rows),
        "compute_seconds": compute, "seconds_this_invocation": secs,
        "step_grid": cnn_step_sizes(args) if args.experiment == "cnn" else step_sizes(args),
        "step_extended_within": LR_RANGE if extends_grid(args) else None,
        "curves": table}, indent=1))
    mlflow = mlflow_setup(name)
    with summary_run(mlflow, name):
        mlflow.log_params({"exp": name, "quick": args.quick, "kind": "summary"})
        mlflow.log_metrics({"compute_seconds": compute, "complete": float(complete)})
        for f in figs + [out / "results.json"]:
            mlflow.log_artifact(str(f))
    log(f"{name}: {len(results)} curves{'' if complete else ' so far (budget spent: rerun to go on)'}, "
        f"figures {', '.join(map(str, figs)) or 'none yet'}, {secs:.0f}s now, {compute:.0f}s of runs in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
