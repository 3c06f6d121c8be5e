"""The figures of README.md and BENCHMARKS.md, drawn (matplotlib, Agg) from the benchmarks' own rows.

    python -m benchmarks.time_to_accuracy ... --figures docs     # run, then draw
    python -m benchmarks.figures --tta out/time_to_accuracy.json --out docs   # draw again from saved rows

From the time-to-accuracy rows (one per task, network, ranks and compressor, each with its
``curve`` of (step, seconds, loss, accuracy)), per task and rank count:

- ``time_to_target_<task>_np<R>.png``: seconds to the target loss per compressor, one group of
  bars per network (the README's figure); a hatched stub where the target was not reached.
- ``loss_vs_seconds_<task>_np<R>.png``: the loss against training seconds, one panel per network.
- ``bytes_vs_accuracy_<task>_np<R>.png``: bytes a rank sends per step against the test accuracy
  where the run stopped (at the target loss, or at the cap), one marker per network.
"""

import argparse
import json
from pathlib import Path

NETWORK_ORDER = ("loopback", "1gbit", "100mbit")
NETWORK_LABEL = {"loopback": "loopback (unshaped)", "1gbit": "1 Gbit/s", "100mbit": "100 Mbit/s"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(rows):
    """{(task, ranks): rows}, in a stable order."""
    out = {}
    for r in rows:
        out.setdefault((r.get("task", "softmax"), int(r["ranks"])), []).append(r)
    return dict(sorted(out.items()))


def _specs(rows):
    """Compressors in the order they were run (none and fp16 first)."""
    seen = []
    for r in rows:
        if r["spec"] not in seen:
            seen.append(r["spec"])
    return sorted(seen, key=lambda s: (s != "none", s != "fp16", seen.index(s)))


def _networks(rows):
    present = {r["network"] for r in rows}
    return [n for n in NETWORK_ORDER if n in present] + sorted(present - set(NETWORK_ORDER))


def time_to_target(rows, path, title):
    plt = _plt()
    specs, networks = _specs(rows), _networks(rows)
    cell = {(r["network"], r["spec"]): r for r in rows}
    width = 0.8 / len(specs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(networks) + 0.4 * len(specs)), 4.2))
    cap = max([r.get("train_seconds") or 0 for r in rows] + [1.0])
    for k, spec in enumerate(specs):
        xs, hs, missed = [], [], []
        for i, net in enumerate(networks):
            r = cell.get((net, spec))
            if r is None:
                continue
            x = i - 0.4 + width * (k + 0.5)
            if r.get("time_to_target_s"):
                xs.append(x)
                hs.append(r["time_to_target_s"])
            else:
                missed.append(x)
        ax.bar(xs, hs, width, color=f"C{k}", label=spec)
        if missed:
            ax.bar(missed, [cap] * len(missed), width, color="none", edgecolor=f"C{k}", hatch="//", lw=0.8)
    ax.set_xticks(range(len(networks)), [NETWORK_LABEL.get(n, n) for n in networks])
    ax.set_yscale("log")
    ax.set_ylabel("seconds of training to the target loss (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def loss_vs_seconds(rows, path, title):
    plt = _plt()
    specs, networks = _specs(rows), _networks(rows)
    fig, axes = plt.subplots(1, len(networks), figsize=(4.6 * len(networks), 3.8), squeeze=False, sharey=True)
    for ax, net in zip(axes[0], networks):
        for k, spec in enumerate(specs):
            r = next((r for r in rows if r["network"] == net and r["spec"] == spec), None)
            if r and r.get("curve"):
                points = [c for c in r["curve"] if c[1] > 0]  # log axis: from the first evaluation on
                ax.plot([c[1] for c in points], [c[2] for c in points], color=f"C{k}", lw=1.2, label=spec)
        target = rows[0].get("target_loss")
        if target:
            ax.axhline(target, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training seconds (log)")
        ax.set_title(NETWORK_LABEL.get(net, net), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test loss")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def bytes_vs_accuracy(rows, path, title):
    plt = _plt()
    specs, networks = _specs(rows), _networks(rows)
    markers = dict(zip(networks, "os^Dv"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, spec in enumerate(specs):
        for net in networks:
            r = next((r for r in rows if r["network"] == net and r["spec"] == spec), None)
            if r:
                ax.scatter(r["bytes_per_step"], 100 * r["final_acc"], color=f"C{k}", marker=markers[net],
                           label=spec if net == networks[0] else None, s=28)
    for net in networks:
        ax.scatter([], [], color="gray", marker=markers[net], label=NETWORK_LABEL.get(net, net))
    ax.set_xscale("log")
    ax.set_xlabel("bytes a rank sends per step (log)")
    ax.set_ylabel("test accuracy % where the run stopped")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def tta_figures(rows, out_dir, stamp=None):
    """Every time-to-accuracy figure for ``rows`` into ``out_dir``; returns the paths written.
    Titles carry ``stamp``, else the commit and machine the rows were measured on."""
    paths = []
    for (task, ranks), group in _groups(rows).items():
        measured = sorted({r["stamp"] for r in group if r.get("stamp")})
        head = f"{task}, {ranks} ranks" + (stamp if stamp is not None else f" ({'; '.join(measured)})" if measured else "")
        base = f"{task}_np{ranks}"
        paths.append(time_to_target(group, Path(out_dir) / f"time_to_target_{base}.png",
                                    f"time to the target loss: {head}"))
        paths.append(loss_vs_seconds(group, Path(out_dir) / f"loss_vs_seconds_{base}.png", f"loss against time: {head}"))
        paths.append(bytes_vs_accuracy(group, Path(out_dir) / f"bytes_vs_accuracy_{base}.png",
                                       f"bytes against accuracy: {head}"))
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tta", required=True, help="time_to_accuracy.json written by benchmarks.time_to_accuracy")
    p.add_argument("--out", default="docs")
    p.add_argument("--stamp", default=None,
                   help="appended to every title (default: the commit and machine stored with the rows)")
    args = p.parse_args(argv)
    for path in tta_figures(json.loads(Path(args.tta).read_text()), args.out, args.stamp):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
