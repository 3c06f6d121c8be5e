"""Final accuracy over several seeds: is a compressor's model as accurate as none's at the target?

    python -m benchmarks.final_accuracy                       # none vs GSpar(0.01) by bytes, softmax, 4 ranks, seeds 0-5
    python -m benchmarks.final_accuracy --after-target 100    # and keep training 100 steps past the target
    python -m benchmarks.final_accuracy --task cnn-cifar10 --seeds 0 1 2
    sudo python -m benchmarks.final_accuracy --network 100mbit --compressors none gspar:rho=0.02,fallback=auto   # the timed fallback, as it decides there

The time-to-accuracy table stops every run at the target loss and reports
the test accuracy there; one run cannot tell a 0.5-point difference from
noise (a 4096-row test set alone has a standard error of about 0.75 points
at 63%, though much of it is shared by two models scored on the same rows). Here each seed (data, initial weights and compressor streams all
change with it) is one horovodrun of benchmarks/workers/tta_worker.py, on the
unshaped loopback unless --network says otherwise (the network changes the
time, and with fallback="auto" which tensors go sparse, hence the model), every
compressor trained to the same target loss and evaluated on the same test
set. The comparison is paired: for seed s, diff_s = acc_s(compressor) - acc_s(none),
reported as mean +- standard error and a 95% t-interval over the seeds.
Two accuracies are compared: at the target (the first evaluation, every 10
steps, whose loss is <= the target) and final, after --after-target more
steps (the same step budget past the target for every compressor; with the
default 0 the two are the same model).
Prints a markdown table, writes out/final_accuracy.{md,json} and logs to
MLflow (experiment "hvdspar-benchmarks").
"""

import argparse
import json
import math
import tempfile
from pathlib import Path

from scipy import stats

from benchmarks.common import log_to_mlflow, markdown
from benchmarks.time_to_accuracy import NETWORKS, TASKS, run_launch

ROOT = Path(__file__).resolve().parent.parent
# the default fallback (by bytes) compresses the kernel on the loopback too; add others with
# --compressors (each costs ~1 min a seed)
COMPRESSORS = ["none", "gspar:rho=0.01"]


def run_seed(task_args, compressors, ranks, seed, tmp, network="loopback"):
    """One horovodrun on ``network`` -> {spec: the worker's result} for ``seed``."""
    results = run_launch(network, NETWORKS[network], ranks, compressors, ["--seed", str(seed), *task_args], tmp,
                         timeout=7200)
    return {r["spec"]: r for r in results}


def paired(diffs):
    """(mean, standard error, half-width of the 95% t-interval) of a list of paired differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    return mean, se, float(stats.t.ppf(0.975, n - 1)) * se


def accuracy(result, at):
    """The test accuracy of one run ``at`` "target" or "final" (a run that never reached the
    target is scored on its last model)."""
    if at == "target" and result.get("acc_at_target") is not None:
        return result["acc_at_target"]
    return result["final_acc"]


def summarize(per_seed, compressors, at="final"):
    """per_seed: {seed: {spec: result}} -> one row per compressor (accuracies in points)."""
    rows = []
    for spec in compressors:
        accs, diffs, reached = [], [], 0
        for results in per_seed.values():
            r, base = results[spec], results[compressors[0]]
            if r["steps_to_target"] is not None:
                reached += 1
            accs.append(100 * accuracy(r, at))
            diffs.append(100 * (accuracy(r, at) - accuracy(base, at)))
        mean, se, half = paired(diffs)
        rows.append({
            "spec": spec, "at": at, "seeds": len(accs), "reached": reached, "acc": sum(accs) / len(accs),
            "diff": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half,
            "within_half_point": bool(abs(mean) + half <= 0.5) if not math.isnan(half) else False,
        })
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="softmax", choices=["softmax", "logreg-synthetic", "logreg-a9a", "cnn-cifar10"])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--compressors", nargs="+", default=COMPRESSORS, help="the first is the baseline")
    p.add_argument("--test-rows", type=int, default=4096, help="test rows (softmax: drawn; others: at most)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="training seconds per run before giving up")
    p.add_argument("--after-target", type=int, default=0,
                   help="steps every run keeps training after it reached the target loss")
    p.add_argument("--network", default="loopback", choices=list(NETWORKS),
                   help="shaped networks need root (a network namespace, see benchmarks/netns.py)")
    p.add_argument("--out", default=str(ROOT / "out"))
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: give at least two seeds (the comparison is a paired t-interval)")
    cfg = TASKS[args.task]
    task_args = ["--task", args.task, "--target-loss", str(cfg["target_loss"]), "--lr", str(cfg["lr"]),
                 "--test-rows", str(args.test_rows), "--max-seconds", str(args.max_seconds),
                 "--after-target", str(args.after_target)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            per_seed[seed] = run_seed(task_args, args.compressors, args.ranks, seed, tmp, args.network)
            # every finished seed is kept, also if a later one fails or is interrupted
            (out / "final_accuracy.partial.json").write_text(json.dumps(
                {"args": vars(args), "per_seed": {str(s): r for s, r in per_seed.items()}}))
            print(f"seed {seed}: " + ", ".join(
                f"{spec} {100 * accuracy(r, 'target'):.2f}% at the target, {100 * r['final_acc']:.2f}% final"
                for spec, r in per_seed[seed].items()), flush=True)
    rows = summarize(per_seed, args.compressors, "target")
    if args.after_target:
        rows += summarize(per_seed, args.compressors, "final")
    text = (f"{args.task}, {args.ranks} ranks, {args.network}, seeds {args.seeds}, test rows {args.test_rows}; at = test accuracy "
            f"at the target loss {cfg['target_loss']}"
            + (f" and final, {args.after_target} steps later" if args.after_target else "")
            + f"; diff = paired difference to {args.compressors[0]} (points), mean +- s.e., 95% t-interval\n\n")
    text += markdown(rows, [("spec", "{}"), ("at", "{}"), ("reached", "{}"), ("acc", "{:.2f}"), ("diff", "{:+.2f}"),
                            ("se", "{:.2f}"), ("ci_low", "{:+.2f}"), ("ci_high", "{:+.2f}"),
                            ("within_half_point", "{}")])
    print(text)
    (out / "final_accuracy.md").write_text(text + "\n")
    (out / "final_accuracy.json").write_text(json.dumps({"args": vars(args), "rows": rows, "per_seed": {
        str(s): {spec: {k: r[k] for k in ("acc_at_target", "final_acc", "final_loss", "steps_to_target",
                                          "time_to_target_s", "steps")}
                 for spec, r in res.items()} for s, res in per_seed.items()}}, indent=1))
    log_to_mlflow("final_accuracy", {k: str(v)[:500] for k, v in vars(args).items()},
                  [{**r, "task": args.task} for r in rows], ["task", "spec", "at"],
                  ["acc", "diff", "se", "ci_low", "ci_high"], table=text)


if __name__ == "__main__":
    main()
