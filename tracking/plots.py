"""The paper's two views of a run (matplotlib, Agg): loss against epochs and against bits communicated.

``history`` is {metric key: [(step, value), ...]} as ``RunLogger.history()`` or
``MlflowClient.get_metric_history`` give it. Epoch metrics are logged with step = epochs done;
step metrics ("step/loss", "step/bits_communicated") with step = optimizer steps.
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# what to plot as "loss", first present wins for the second panel
OBJECTIVES = ("suboptimality", "loss")


def _series(history, key):
    """Sorted (steps, values) of one metric; the last value logged at a step wins (resumed runs)."""
    points = dict(history.get(key, ()))
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def _joined(history, x_key, y_key):
    """(x, y) of two metrics logged at the same steps."""
    xs = dict(history.get(x_key, ()))
    ys = dict(history.get(y_key, ()))
    steps = sorted(set(xs) & set(ys))
    return [xs[s] for s in steps], [ys[s] for s in steps]


def _finite_positive(values):
    return values and all(v is not None and math.isfinite(v) and v > 0 for v in values)


def _panels(history):
    return [k for k in ("loss", "suboptimality") if history.get(k) or history.get(f"step/{k}")]


def loss_vs_epochs(history, path, title=None):
    keys = _panels(history) or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = _series(history, key)
        ax.plot(steps, values, "o-", label=f"{key} (epoch)")
        for extra in ("val_loss",) if key == "loss" else ():
            s, v = _series(history, extra)
            if s:
                ax.plot(s, v, "s--", label=extra)
        ax.set_xlabel("epochs (data passes)")
        ax.set_ylabel(key)
        if _finite_positive(values) and key == "suboptimality":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "loss against epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_vs_bits(history, path, title=None):
    keys = _panels(history) or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        x, y = _joined(history, "step/bits_communicated", f"step/{key}")
        if x:
            ax.plot(x, y, "-", alpha=0.5, label=f"{key} (logged steps{'; Keras: mean over the epoch so far' if key == 'loss' else ''})")
        x, y = _joined(history, "bits_communicated", key)
        if x:
            ax.plot(x, y, "o-", label=f"{key} (epoch end)")
        ax.set_xlabel("bits communicated (all ranks, cumulative)")
        ax.set_ylabel(key)
        if key == "suboptimality" and _finite_positive(y):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title or "loss against bits communicated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_plots(history, directory, title=None):
    """Both plots of one run into ``directory``; returns their paths."""
    return [
        loss_vs_epochs(history, f"{directory}/loss_vs_epochs.png", title),
        loss_vs_bits(history, f"{directory}/loss_vs_bits.png", title),
    ]


def comparison(runs, path, title="sweep: loss against epochs and bits communicated"):
    """One figure for many runs: [(label, history)] -> objective against epochs and against bits.

    The objective is suboptimality when any run has it (convex models), else loss. Epoch values
    are markers; where step values exist (step/loss) they draw the line between them, with
    optimizer steps turned into epochs by the run's global_step per epoch.
    """
    key = next((k for k in OBJECTIVES if any(h.get(k) for _, h in runs)), "loss")
    fig, (ax_e, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, history in runs:
        steps, values = _series(history, key)
        if not steps:
            continue
        line = ax_e.plot(steps, values, "o", label=label)[0]
        color = line.get_color()
        x, y = _joined(history, "bits_communicated", key)
        ax_b.plot(x, y, "o", color=color, label=label)
        per_epoch = dict(history.get("global_step", ())).get(1)
        s_steps, s_values = _series(history, f"step/{key}")
        if s_steps and per_epoch:
            ax_e.plot([s / per_epoch for s in s_steps], s_values, "-", color=color, alpha=0.6)
            bx, by = _joined(history, "step/bits_communicated", f"step/{key}")
            ax_b.plot(bx, by, "-", color=color, alpha=0.6)
        else:
            ax_e.plot(steps, values, "-", color=color)
            ax_b.plot(x, y, "-", color=color)
    for ax, xlabel in ((ax_e, "epochs (data passes)"), (ax_b, "bits communicated (all ranks, cumulative)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        if key == "suboptimality":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    bits = [v for _, h in runs for _, v in h.get("bits_communicated", ())]
    if bits and min(bits) > 0:
        ax_b.set_xscale("log")
    if ax_e.lines:
        ax_e.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
