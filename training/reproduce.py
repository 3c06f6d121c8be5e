"""Reproduce Wangni et al. (2018), sec. 4: one command per experiment.

    python -m hvdspar.training.reproduce fig1|fig2|fig3|topk|cnn [--quick] [--out DIR]

Each experiment logs one MLflow run per curve under experiment "reproduce-<exp>"
(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory), plus a
"summary" run holding the figures, and writes PNGs to --out (default
out/reproduce/<exp>). The M = 4 workers are simulated in one process with
hvdspar's own encode/decode_sum (training/reproduce_sim.py; see REPRODUCTION.md).
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

N, D, C1, M, BATCH = 1024, 2048, 0.9, 4, 8
EXPERIMENTS = ("fig1", "fig2", "fig3", "topk", "cnn")


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


# --------------------------------------------------------------------------------------------
# convex experiments (fig1, fig2, fig3, topk)
# --------------------------------------------------------------------------------------------


def run_convex_experiment(exp, args):
    from hvdspar.training.data import load_synthetic
    from hvdspar.training.fstar import cached_fstar
    from hvdspar.training.reproduce_sim import run_convex

    mlflow = mlflow_setup(exp)
    optimizer = "svrg" if exp == "fig2" else "sgd"
    quick_passes = {"fig1": 2, "fig2": 1, "fig3": 1, "topk": 1.5}[exp]
    passes = args.passes or (quick_passes if args.quick else (30 if optimizer == "svrg" else 20))
    probs = problems(args.quick, (4, 16) if exp == "fig3" else (4, 16, 64))
    results = []
    for c2, lam in probs:
        ds = load_synthetic(N, D, C1, c2, args.seed)
        fs = cached_fstar("logreg", ds.x_train, ds.y_train, lam, log=log)["fstar"]
        x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
        for label, spec in curves(exp, args.quick):
            t0 = time.time()
            r = run_convex(x, y, lam, spec, optimizer=optimizer, lr=args.lr, passes=passes, num_workers=M,
                           batch=BATCH, seed=args.seed, comp_seed=args.seed + 1234, fstar=fs)
            secs = time.time() - t0
            row = {"exp": exp, "C2": c2, "lambda2": lam, "label": label, "spec": spec, "optimizer": optimizer,
                   "variance": float(r["variance"]), "density": float(r["density"]),
                   "bits_per_element": float(r["bits_per_element"]), "final_subopt": float(r["subopt"][-1]),
                   "min_subopt": float(np.min(r["subopt"])), "seconds": secs}
            params = {"exp": exp, "C1": C1, "C2": c2, "lambda2": lam, "N": N, "d": D, "M": M, "batch": BATCH,
                      "optimizer": optimizer, "lr": args.lr, "passes": passes, "compressor": spec,
                      "simulated_workers": True, "fstar": fs, "quick": args.quick}
            summary = {k: row[k] for k in ("variance", "density", "bits_per_element", "final_subopt", "min_subopt", "seconds")}
            row["run_id"] = log_run(mlflow, f"{label} C2=1/{round(1 / c2)} lam={lam * N:g}/N", params,
                                    {"subopt": r["subopt"], "data_passes": r["passes"], "bits": r["bits"]}, summary)
            row["curve"] = {k: r[k].tolist() for k in ("passes", "subopt", "bits")}
            results.append(row)
            log(f"{exp} C2=1/{round(1 / c2)} lam={lam * N:g}/N {label:22s} var={row['variance']:.3f} "
                f"spa={row['density']:.4f} bits/elem={row['bits_per_element']:.2f} "
                f"final f-f*={row['final_subopt']:.3e} ({secs:.1f}s)")
    return results, probs


def plot_convex(exp, results, probs, out):
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
                            label=f"{row['label']} var={row['variance']:.2f} spa={row['density']:.3f}{extra}")
            ax.set_title(f"C2=1/{round(1 / c2)}, lambda={lam * N:g}/N")
            ax.set_xlabel("total coded bits (all workers)" if xkey == "bits" else "data passes")
            ax.set_ylabel("f(w) - f*")
            ax.legend(fontsize=7)
    titles = {"fig1": "Figure 1: SGD, GSpar vs UniSp", "fig2": "Figure 2: SVRG, GSpar vs UniSp",
              "fig3": "Figure 3: GSpar vs QSGD by coding length", "topk": "Top-k with memory vs GSpar (SGD)"}
    fig.suptitle(titles[exp] + "\n(l2-logreg, synthetic, M=4 simulated workers)", fontsize=9)
    fig.tight_layout()
    path = out / f"{exp}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------------------------
# CNN on CIFAR-10 (Adam)
# --------------------------------------------------------------------------------------------


def run_cnn_experiment(args):
    import tensorflow as tf

    from hvdspar.training.data import CIFAR10_MEAN, CIFAR10_STD
    from hvdspar.training.models import cnn
    from hvdspar.training.reproduce_sim import SimExchange

    mlflow = mlflow_setup("cnn")
    z = np.load(args.cifar)
    x_all, y_all = z["x_train"], z["y_train"].astype(np.int32)
    n_imgs = 1024 if args.quick else x_all.shape[0]
    x_all, y_all = x_all[:n_imgs], y_all[:n_imgs]
    epochs = args.passes or (1 if args.quick else 10)
    channels = 24 if args.quick else 64
    batch = 16 if args.quick else 32
    rhos = (0.004,) if args.quick else (0.1, 0.02, 0.004)
    specs = [("baseline", "none")] + [(f"GSpar rho={r:g}", f"gspar:rho={r:g}") for r in rhos]
    steps_per_epoch = n_imgs // (M * batch)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for label, spec in specs:
        tf.keras.utils.set_random_seed(args.seed)
        model = cnn((32, 32, 3), channels, 10, CIFAR10_MEAN, CIFAR10_STD)
        opt = tf.keras.optimizers.Adam(args.cnn_lr)
        opt.build(model.trainable_variables)
        shapes = [v.shape for v in model.trainable_variables]
        sizes = [int(np.prod(sh)) for sh in shapes]
        # One flat vector per worker (all tensors concatenated): one budget rho for the whole model.
        ex = SimExchange(spec, M, [(sum(sizes),)], seed=args.seed + 1234)

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

        t0 = time.time()
        series = {"loss": [], "epoch": [], "comm_bits": []}
        tot = {"bytes": 0.0, "kept": 0.0, "sq_g": 0.0, "sq_q": 0.0}
        step = 0
        for ep in range(epochs):
            perm = np.random.default_rng([args.seed, ep]).permutation(n_imgs)
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
        d = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        row = {"exp": "cnn", "label": label, "spec": spec, "variance": tot["sq_q"] / tot["sq_g"],
               "density": tot["kept"] / (step * M * d), "first_loss": float(np.mean(series["loss"][:5])),
               "final_loss": float(np.mean(series["loss"][-5:])), "seconds": time.time() - t0,
               "bits_per_element": 8.0 * tot["bytes"] / (step * M * d)}
        params = {"exp": "cnn", "compressor": spec, "channels": channels, "images": n_imgs, "epochs": epochs,
                  "batch_per_worker": batch, "M": M, "optimizer": "adam", "lr": args.cnn_lr, "simulated_workers": True}
        row["run_id"] = log_run(mlflow, label, params, series,
                                {k: row[k] for k in ("variance", "density", "first_loss", "final_loss", "seconds", "bits_per_element")})
        row["curve"] = series
        results.append(row)
        log(f"cnn {label:18s} var={row['variance']:.2f} spa={row['density']:.4f} loss {row['first_loss']:.3f} -> "
            f"{row['final_loss']:.3f} ({row['seconds']:.1f}s)")
    return results


def plot_cnn(results, out):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for row in results:
        cv = row["curve"]
        lab = f"{row['label']} var={row['variance']:.1f} spa={row['density']:.4f}"
        a.plot(cv["epoch"], cv["loss"], label=lab)
        b.semilogx(np.maximum(cv["comm_bits"], 1), cv["loss"], label=lab)
    a.set_xlabel("epochs"), b.set_xlabel("total coded bits (all workers)")
    for ax in (a, b):
        ax.set_ylabel("training loss (minibatch)")
        ax.legend(fontsize=7)
    fig.suptitle("CNN on CIFAR-10 (exact subset), Adam, M=4 simulated workers", fontsize=9)
    fig.tight_layout()
    path = out / "cnn.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# --------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hvdspar.training.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--quick", action="store_true", help="one problem, few passes, same code path (minutes)")
    p.add_argument("--out", type=Path, default=None, help="figure folder (default out/reproduce/<exp>)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD/SVRG step size, the same for every curve")
    p.add_argument("--cnn-lr", type=float, default=0.02, help="Adam step size of the CNN (paper: 0.02)")
    p.add_argument("--passes", type=float, default=None, help="data passes (epochs for cnn); default by mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/cifar10/cifar10_exact_subset.npz"))
    args = p.parse_args(argv)
    out = args.out or Path("out/reproduce") / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.experiment == "cnn":
        results = run_cnn_experiment(args)
        figs = plot_cnn(results, out)
    else:
        results, probs = run_convex_experiment(args.experiment, args)
        figs = plot_convex(args.experiment, results, probs, out)
    secs = time.time() - t0
    table = [{k: v for k, v in r.items() if k != "curve"} for r in results]
    (out / "results.json").write_text(json.dumps({"experiment": args.experiment, "quick": args.quick,
                                                  "seconds": secs, "curves": table}, indent=1))
    mlflow = mlflow_setup(args.experiment)
    with mlflow.start_run(run_name="summary"):
        mlflow.log_params({"exp": args.experiment, "quick": args.quick, "kind": "summary"})
        mlflow.log_metric("seconds", secs)
        for f in figs + [out / "results.json"]:
            mlflow.log_artifact(str(f))
    log(f"{args.experiment}: {len(results)} curves, figures {', '.join(map(str, figs))}, {secs:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
