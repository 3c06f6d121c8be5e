"""Scaling model: bytes and time per step against the number of ranks M, with the dense fallback.

    python -m benchmarks.scaling                 # table, out/scaling.png, MLflow
    python -m benchmarks.scaling --bandwidth 1e9 --alpha 50e-6

Message sizes are measured, not assumed: each compressor's own ``encode``
(the bytes hvdspar would hand to the allgather) runs, without Horovod, on
real gradients: of the paper's CNN (3 conv layers, 64 channels, CIFAR-10
shapes; a gradient of a random batch at initialisation), of the paper's
logistic regression (synthetic data, d = 2048) and of the wide softmax
regression of benchmarks/time_to_accuracy.py (16384 x 32). Then, per rank
and step, for M in 2, 4, ..., 1024 (ring algorithms, as in hvdspar.exchange):

    sparse path    allgather of m bytes:      (M - 1) m      (+ a 4-byte placeholder allreduce)
    dense path     ring allreduce of D bytes: 2 (M - 1) / M D
    fallback       per tensor, what the compressor decides: dense when
                   M * expected_nbytes >= 2 D (fallback.prefer_dense), else sparse

    time = bytes / bandwidth + latency, latency = (M - 1) alpha per allgather
           and 2 (M - 1) alpha per ring allreduce (one collective per tensor;
           Horovod's tensor fusion would merge the dense ones: not modelled).

The switch point of a tensor is the smallest M with M m >= 2 D, i.e.
M >= 2 D / m: the sparse path's bytes grow linearly in M while the
allreduce's stay below 2 D.

Nodes (``--per-node L``, N = 1 .. 128 nodes, M = N L): the bytes one node puts on its link to the
other nodes per step, for the model's gradient as one bucket (m: its message, m_L: the message of a
1/L share, both measured), rings laid out node by node:

    none           2 (M - 1) / M D         fp16: half
    flat GSpar     (M - 1) m               every rank's message passes every node's link
    hierarchical   L (N - 1) m_L           L shares, each allgathered across the N nodes
                   (+ 3 (L - 1) / L D inside the node, at --intra-bandwidth)

each sent dense instead where the byte rule says so (flat: M m >= 2 D; hierarchical: N m >= 2 D).
Prints markdown tables, writes out/scaling.png (matplotlib Agg) and out/scaling.json, and logs to
MLflow (experiment "hvdspar-benchmarks").
"""

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import hvdspar  # noqa: E402
from hvdspar import exchange, fallback, hierarchy  # noqa: E402
from benchmarks.common import metric_key, mlflow_run, stamp  # noqa: E402

RANKS = [2**i for i in range(1, 11)]
COMPRESSORS = ["gspar:rho=0.01", "unisp:rho=0.01", "topk:ratio=0.01", "randomk:ratio=0.01", "qsgd:levels=4",
               "terngrad"]


# --- gradients ------------------------------------------------------------------------------


def _cnn(channels=64, num_classes=10):
    try:
        from hvdspar.training.models import cnn

        return cnn((32, 32, 3), channels, num_classes)
    except Exception:  # pragma: no cover - the same architecture, if training/ is absent
        k = tf.keras
        inputs = k.Input(shape=(32, 32, 3), dtype="uint8")
        x = k.layers.Rescaling(1.0 / 255)(inputs)
        for i in range(3):
            x = k.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
            x = k.layers.BatchNormalization()(x)
            x = k.layers.ReLU()(x)
            if i < 2:
                x = k.layers.MaxPooling2D(2)(x)
        x = k.layers.GlobalAveragePooling2D()(x)
        return k.Model(inputs, k.layers.Dense(num_classes)(x))


def cnn_gradients(seed=0, batch=32):
    tf.keras.utils.set_random_seed(seed)
    model = _cnn()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=batch)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return [(v.name, g) for v, g in zip(model.trainable_variables, grads)]


def logreg_gradients(d=2048, n=1024, batch=8, seed=0):
    """The paper's synthetic data (sec. 4, C1=0.9, C2=1/16), a minibatch gradient at w = 0."""
    try:
        from hvdspar.training.data import synthetic

        s = synthetic(n=n, d=d, seed=seed)
        a, b = s.a[:batch].astype(np.float32), s.b[:batch].astype(np.float32)
    except Exception:  # pragma: no cover
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((batch, d)).astype(np.float32)
        b = np.sign(rng.standard_normal(batch)).astype(np.float32)
    w = tf.Variable(tf.zeros([d, 1]))
    with tf.GradientTape() as tape:
        margin = tf.squeeze(tf.matmul(a, w), 1) * b
        loss = tf.reduce_mean(tf.math.softplus(-margin)) + 0.5 / n * tf.reduce_sum(w * w)
    return [("w", tape.gradient(loss, w))]


def softmax_gradients(features=16384, classes=32, batch=32, seed=0):
    from hvdspar.training.data import wide_softmax_draw, wide_softmax_problem

    problem = wide_softmax_problem(features, classes, 32, 0.05, seed)
    x, y = wide_softmax_draw(batch, problem, seed + 1)
    w, b = tf.Variable(tf.zeros([features, classes])), tf.Variable(tf.zeros([classes]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.matmul(x, w) + b))
    gw, gb = tape.gradient(loss, [w, b])
    return [("kernel", gw), ("bias", gb)]


MODELS = {"cnn": cnn_gradients, "logreg": logreg_gradients, "softmax": softmax_gradients}


# --- measured message sizes -----------------------------------------------------------------


def measure(spec, grads, seed=0):
    """[(name, d, D bytes, measured m bytes, expected m bytes)] for one compressor."""
    comp = hvdspar.from_spec(spec)
    out = []
    for i, (name, g) in enumerate(grads):
        x = tf.reshape(tf.convert_to_tensor(g), [-1])
        d = int(x.shape[0])
        enc = comp.feedback.encode(x, tf.constant([seed, i], tf.int64), x.dtype)
        out.append({"tensor": name, "d": d, "D": d * x.dtype.size, "m": int(enc.message.shape[0]),
                    "m_expected": int(comp.codec.expected_nbytes(d, x.dtype))})
    return out


def measure_bucket(spec, grads, per_node, seed=0):
    """{d, D, m, m_share, m_expected}: the model's gradient as one message, and a 1/L share of it."""
    comp = hvdspar.from_spec(spec)
    x = tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for _, g in grads], 0)
    d = int(x.shape[0])
    share = x[:hierarchy.shares(d, per_node)[0]]
    seed = tf.constant([seed, 0], tf.int64)
    return {"d": d, "D": 4 * d, "m": int(tf.size(comp.feedback.encode(x, seed, tf.float32).message)),
            "m_share": int(tf.size(comp.feedback.encode(share, seed, tf.float32).message)),
            "m_expected": int(comp.codec.expected_nbytes(d, tf.float32))}


# --- the model ------------------------------------------------------------------------------


def node_cost(b, nodes, per_node, bandwidth, alpha, intra_bandwidth, mode):
    """(bytes on one node's link to the others, seconds, dense?) per step for bucket ``b`` (``measure_bucket``);
    mode: none | fp16 | flat | hierarchical."""
    ranks = nodes * per_node
    dense = (mode == "none" or mode == "fp16"
             or mode == "flat" and fallback.prefer_dense(b["m_expected"], b["D"], ranks)
             or mode == "hierarchical" and fallback.prefer_dense(b["m_expected"], b["D"], nodes))
    if nodes == 1:  # nothing crosses: a dense ring inside the node
        return 0, 2 * (per_node - 1) / per_node * b["D"] / intra_bandwidth, dense
    if dense:
        nbytes = fallback.allreduce_bytes_moved(b["D"] // (2 if mode == "fp16" else 1), ranks)
        return nbytes, nbytes / bandwidth + 2 * (ranks - 1) * alpha, True
    placeholder = 2 * (ranks - 1) * alpha  # Horovod's allreduce of the placeholder, latency only
    if mode == "flat":
        nbytes = (ranks - 1) * b["m"]
        return nbytes, nbytes / bandwidth + (ranks - 1) * alpha + placeholder, False
    nbytes = per_node * (nodes - 1) * b["m_share"]
    inside = 3 * (per_node - 1) * b["D"] / per_node / intra_bandwidth
    return nbytes, nbytes / bandwidth + (nodes - 1) * alpha + inside + placeholder, False


def node_rows(buckets, per_node, bandwidth, alpha, intra_bandwidth, nodes_list=(1, 2, 4, 8, 16, 32, 64, 128)):
    """buckets: {(model, spec): measure_bucket} -> rows per node count: MB and ms of the four modes."""
    rows = []
    for (model, spec), b in buckets.items():
        for nodes in nodes_list:
            row = {"model": model, "compressor": spec, "nodes": nodes, "ranks": nodes * per_node}
            for mode in ("none", "fp16", "flat", "hierarchical"):
                nbytes, seconds, dense = node_cost(b, nodes, per_node, bandwidth, alpha, intra_bandwidth, mode)
                row.update({f"{mode}_bytes": nbytes, f"{mode}_s": seconds, f"{mode}_dense": dense})
            rows.append(row)
    return rows


def node_markdown(rows, per_node):
    lines = [f"| model | compressor | nodes x {per_node} | none MB | fp16 MB | flat MB | hierarchical MB | none ms | "
             "fp16 ms | flat ms | hierarchical ms | fastest |", "|" + "---|" * 12]
    for r in rows:
        modes = ("none", "fp16", "flat", "hierarchical")
        fastest = min(modes, key=lambda m: r[f"{m}_s"])
        cells = [f"{r[f'{m}_bytes'] / 1e6:.3f}{' (dense)' if m in ('flat', 'hierarchical') and r[f'{m}_dense'] else ''}"
                 for m in modes]
        lines.append(f"| {r['model']} | {r['compressor']} | {r['nodes']} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{r[f'{m}_s'] * 1e3:.2f}" for m in modes) + f" | {fastest} |")
    return "\n".join(lines)




def tensor_cost(t, ranks, bandwidth, alpha, mode):
    """(bytes, seconds, dense?) a rank spends on one tensor per step. mode: dense|fp16|sparse|fallback."""
    if mode in ("dense", "fp16"):
        nbytes = fallback.allreduce_bytes_moved(t["D"] // (2 if mode == "fp16" else 1), ranks)
        return nbytes, nbytes / bandwidth + 2 * (ranks - 1) * alpha, True
    dense = mode == "fallback" and fallback.prefer_dense(t["m_expected"], t["D"], ranks)
    if dense:
        nbytes = fallback.allreduce_bytes_moved(t["D"], ranks)
        return nbytes, nbytes / bandwidth + 2 * (ranks - 1) * alpha, True
    ph = fallback.allreduce_bytes_moved(exchange.PLACEHOLDER_NBYTES, ranks)
    nbytes = fallback.allgather_bytes_moved(t["m"], ranks) + ph
    return nbytes, nbytes / bandwidth + (ranks - 1) * alpha + 2 * (ranks - 1) * alpha, False


def step_cost(tensors, ranks, bandwidth, alpha, mode):
    costs = [tensor_cost(t, ranks, bandwidth, alpha, mode) for t in tensors]
    return sum(c[0] for c in costs), sum(c[1] for c in costs), sum(c[2] for c in costs)


def switch_point(t):
    """Smallest integer M >= 2 at which the fallback sends this tensor dense (M m_exp >= 2 D)."""
    m = t["m_expected"]
    return max(2, math.ceil(2 * t["D"] / m)) if m > 0 else math.inf


def build_rows(measured, bandwidth, alpha, ranks_list=RANKS):
    """measured: {(model, spec): [tensor dicts]} -> table rows."""
    rows = []
    for (model, spec), tensors in measured.items():
        for ranks in ranks_list:
            db, dt, _ = step_cost(tensors, ranks, bandwidth, alpha, "dense")
            sb, st, _ = step_cost(tensors, ranks, bandwidth, alpha, "sparse")
            fb, ft, nd = step_cost(tensors, ranks, bandwidth, alpha, "fallback")
            rows.append({"model": model, "compressor": spec, "ranks": ranks,
                         "dense_bytes": db, "sparse_bytes": sb, "fallback_bytes": fb,
                         "dense_s": dt, "sparse_s": st, "fallback_s": ft,
                         "dense_tensors": nd, "tensors": len(tensors)})
    return rows


def switch_table(measured):
    out = []
    for (model, spec), tensors in measured.items():
        big = max(tensors, key=lambda t: t["D"])
        pts = [switch_point(t) for t in tensors]
        out.append({"model": model, "compressor": spec, "D_total": sum(t["D"] for t in tensors),
                    "m_total": sum(t["m"] for t in tensors), "largest_tensor": big["tensor"],
                    "switch_largest": switch_point(big), "first_switch": min(pts), "all_dense_from": max(pts)})
    return out


def plot(rows, measured, path, bandwidth, alpha):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({m for m, _ in measured})
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8.5), squeeze=False)
    for j, model in enumerate(models):
        specs = [s for m, s in measured if m == model]
        for i, (kind, unit) in enumerate((("bytes", 1e6), ("s", 1e-3))):
            ax = axes[i][j]
            for k, spec in enumerate(specs):
                rs = [r for r in rows if r["model"] == model and r["compressor"] == spec]
                ms = [r["ranks"] for r in rs]
                color = f"C{k}"
                ax.plot(ms, [r[f"sparse_{kind}"] / unit for r in rs], ":", color=color)
                ax.plot(ms, [r[f"fallback_{kind}"] / unit for r in rs], "-o", ms=3, color=color, label=spec)
                big = max(measured[(model, spec)], key=lambda t: t["D"])
                sp = switch_point(big)
                if sp <= ms[-1]:
                    ax.axvline(sp, color=color, alpha=0.3, lw=1)
            rs = [r for r in rows if r["model"] == model and r["compressor"] == specs[0]]
            ax.plot([r["ranks"] for r in rs], [r[f"dense_{kind}"] / unit for r in rs], "k--", lw=2, label="dense allreduce")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("ranks M")
            ax.set_ylabel("MB per rank and step" if kind == "bytes" else "ms per step")
            ax.set_title(f"{model}: {'bytes' if kind == 'bytes' else f'time at {bandwidth * 8 / 1e9:g} Gbit/s, alpha={alpha * 1e6:g} us'}")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("hvdspar scaling model: solid = with dense fallback, dotted = sparse only; "
                 f"vertical lines: fallback switch of the largest tensor (M m = 2 D)\n({stamp()})", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows, switches, ranks_shown):
    lines = ["| model | compressor | M | dense MB | sparse MB | fallback MB | dense ms | sparse ms | fallback ms | dense tensors |",
             "|" + "---|" * 10]
    for r in rows:
        if r["ranks"] in ranks_shown:
            lines.append(f"| {r['model']} | {r['compressor']} | {r['ranks']} | {r['dense_bytes'] / 1e6:.3f} | "
                         f"{r['sparse_bytes'] / 1e6:.3f} | {r['fallback_bytes'] / 1e6:.3f} | {r['dense_s'] * 1e3:.2f} | "
                         f"{r['sparse_s'] * 1e3:.2f} | {r['fallback_s'] * 1e3:.2f} | {r['dense_tensors']}/{r['tensors']} |")
    lines += ["", "| model | compressor | D bytes | m bytes (measured) | largest tensor | its switch M (M m = 2D) | "
              "first tensor dense at M | all dense from M |", "|" + "---|" * 8]
    for s in switches:
        lines.append(f"| {s['model']} | {s['compressor']} | {s['D_total']} | {s['m_total']} | {s['largest_tensor']} | "
                     f"{s['switch_largest']} | {s['first_switch']} | {s['all_dense_from']} |")
    return "\n".join(lines)


def log_mlflow(rows, switches, params, text, png):
    with mlflow_run("scaling") as mlflow:
        if mlflow is None:
            return
        mlflow.log_params(params)
        metrics = {}
        for r in rows:
            key = metric_key(f"{r['model']}.{r['compressor']}.M{r['ranks']}")
            for m in ("dense_bytes", "sparse_bytes", "fallback_bytes", "dense_s", "sparse_s", "fallback_s", "dense_tensors"):
                metrics[f"{key}.{m}"] = float(r[m])
        for s in switches:
            key = metric_key(f"{s['model']}.{s['compressor']}")
            metrics[f"{key}.switch_largest"] = float(s["switch_largest"])
        mlflow.log_metrics(metrics)
        mlflow.log_text(text, "scaling.md")
        if png and Path(png).exists():
            mlflow.log_artifact(str(png))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--compressors", nargs="+", default=COMPRESSORS)
    p.add_argument("--bandwidth", type=float, default=1e9 / 8, help="bytes/s (default 1 Gbit/s)")
    p.add_argument("--alpha", type=float, default=50e-6, help="latency per ring hop, seconds")
    p.add_argument("--show", nargs="+", type=int, default=[2, 8, 32, 128, 1024], help="M shown in the table")
    p.add_argument("--per-node", type=int, default=8, help="ranks per node in the nodes table (L)")
    p.add_argument("--intra-bandwidth", type=float, default=100e9, help="bytes/s inside a node (NVLink: 100 GB/s)")
    p.add_argument("--out", default="out")
    p.add_argument("--figure", default=None, help="where the PNG goes (default OUT/scaling.png), e.g. docs/scaling.png")
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)
    measured = {}
    for model in args.models:
        grads = MODELS[model]()
        for spec in args.compressors:
            measured[(model, spec)] = measure(spec, grads)
    rows = build_rows(measured, args.bandwidth, args.alpha)
    switches = switch_table(measured)
    buckets = {(model, spec): measure_bucket(spec, MODELS[model](), args.per_node)
               for model in args.models for spec in args.compressors if spec.startswith("gspar")}
    nodes = node_rows(buckets, args.per_node, args.bandwidth, args.alpha, args.intra_bandwidth)
    text = markdown(rows, switches, args.show) + "\n\n" + node_markdown(nodes, args.per_node)
    print(text)
    print(f"\n(bandwidth {args.bandwidth * 8 / 1e9:g} Gbit/s, alpha {args.alpha * 1e6:g} us per hop; "
          "MB = 1e6 bytes per rank and step; sparse = always allgather, fallback = per-tensor rule)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = Path(args.figure) if args.figure else out / "scaling.png"
    plot(rows, measured, png, args.bandwidth, args.alpha)
    (out / "scaling.md").write_text(text + "\n")
    (out / "scaling.json").write_text(json.dumps({"rows": rows, "switches": switches, "nodes": nodes,
                                                  "measured": {f"{m}|{s}": v for (m, s), v in measured.items()}},
                                                 indent=1, default=str))
    print(f"wrote {png}")
    if not args.no_mlflow:
        log_mlflow(rows, switches, {"bandwidth": args.bandwidth, "alpha": args.alpha, "models": args.models,
                                    "compressors": args.compressors}, text, png)
    return rows, switches


if __name__ == "__main__":
    main()
