"""The reproduction's tables, from what ``training.reproduce`` wrote (docs/reproduction/<exp>/).

    python -m hvdspar.training.reproduce_report [--root docs/reproduction]

Prints Markdown: per experiment its wall time and state (complete or partial), one row
per curve with the tuned step beside the fixed one, and the figures behind the paper's
claims that need more than one curve:

* slow-down against variance (claim 3): at the fixed step, the data passes a curve
  needs to reach the baseline's f - f* at a quarter of its run, divided by the
  baseline's; a least-squares line slow-down = a + b * variance over every compressed
  curve of a problem, and its R^2;
* variance by C2 (claim 4): GSpar's measured variance per C2, paper generator and
  skewed variant;
* GSpar against QSGD at equal coded bits (claims 6 and 7): GSpar's f - f*
  interpolated at each QSGD curve's total bits, per C2 and generator;
* per experiment, how many curves of each method chose each step (a tuned step at
  the edge of the extension range is marked: a wider range might do better).

Nothing here runs an experiment; it reads results.json and curves.jsonl only.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def load(root, name):
    """(results.json as a dict, {(C2, lambda2, spec, lr, seed): store row}) of one experiment, or (None, {})."""
    folder = Path(root) / name
    if not (folder / "results.json").exists():
        return None, {}
    results = json.loads((folder / "results.json").read_text())
    rows = {}
    if (folder / "curves.jsonl").exists():
        for line in (folder / "curves.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            c = row["config"]
            rows[(c.get("C2"), c.get("lambda2"), c["spec"], c["lr"], c.get("seed"))] = row
    return results, rows


def problem(row, n=1024):
    return f"C2=1/{round(1 / row['C2'])}, lambda={row['lambda2'] * n:g}/N"


def fmt(v):
    return "diverged" if v is None or not np.isfinite(v) else f"{v:.3g}"


def curve_table(results):
    """One Markdown row per curve: tuned step and its f - f*, the fixed step's f - f*, the grid."""
    out = ["| problem | curve | var | density | bits/element | tuned step | f - f* (tuned) | f - f* (fixed step) | grid (step: f - f*) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in results["curves"]:
        fixed = r.get("fixed") or {}
        grid = ", ".join(f"{k}: {fmt(v)}" for k, v in r["grid"].items())
        out.append(f"| {problem(r)} | {r['label']} | {r['variance']:.3g} | {r['density']:.4f} | {r['bits_per_element']:.2f} | "
                   f"{tuned_step(r)} | {fmt(r['final_subopt'])} | {fmt(fixed.get('final_subopt'))} at {fixed.get('lr', '-')} | {grid} |")
    return out


def tuned_step(row):
    """The tuned step, marked when it is the largest or smallest tried (a wider grid might do better)."""
    steps = [float(k) for k in row["grid"]]
    edge = len(steps) > 1 and row["tuned_lr"] in (min(steps), max(steps))
    return f"{row['tuned_lr']:g}" + (" (edge)" if edge else "")


def step_counts(results):
    """How many curves chose each step of the grid (method family by the spec's name)."""
    family = lambda spec: spec.split(":")[0] + ("+mem" if "memory=true" in spec else "")  # noqa: E731
    counts = Counter((family(r["spec"]), r["tuned_lr"]) for r in results["curves"])
    families = dict.fromkeys(fam for fam, _ in counts)  # in the order the curves come
    return ["| method | curves per tuned step |", "|---|---|"] + [
        f"| {fam} | " + ", ".join(f"{lr:g}: {n}" for (f, lr), n in sorted(counts.items()) if f == fam) + " |" for fam in families]


def passes_to(curve, target):
    """The first data pass at which the curve is at or below ``target`` (linear in between); inf if never."""
    p, f = np.asarray(curve["passes"], float), np.asarray(curve["subopt"], float)
    hit = np.nonzero(f <= target)[0]
    if not len(hit):
        return np.inf
    i = hit[0]
    if i == 0:
        return p[0]
    lf0, lf1 = np.log(f[i - 1]), np.log(max(f[i], 1e-300))
    t = (lf0 - np.log(target)) / max(lf0 - lf1, 1e-300)
    return p[i - 1] + t * (p[i] - p[i - 1])


def slowdown(results, rows, lr):
    """Claim 3 at step ``lr``: per problem, (variance, slow-down) per compressed curve and the line's fit."""
    out = ["| problem | step | curves (var: slow-down) | fit slow-down = a + b var | R^2 |", "|---|---|---|---|---|"]
    for key in sorted({(r["C2"], r["lambda2"]) for r in results["curves"]}, reverse=True):
        base = rows.get((*key, "none", lr, 0))
        if base is None:
            continue
        cv = base["curve"]
        quarter = np.asarray(cv["passes"]) <= 0.25 * cv["passes"][-1]
        target = np.asarray(cv["subopt"])[quarter][-1]
        p_base = passes_to(cv, target)
        pts = []
        for r in results["curves"]:
            if (r["C2"], r["lambda2"]) != key or r["spec"] == "none":
                continue
            run = rows.get((*key, r["spec"], lr, 0))
            if run is not None:
                pts.append((run["variance"], passes_to(run["curve"], target) / p_base))
        ok = [(v, s) for v, s in pts if np.isfinite(s)]
        fit = "-"
        r2 = np.nan
        if len(ok) >= 3:
            v, s = np.array(ok).T
            b, a = np.polyfit(v, s, 1)
            r2 = 1 - np.sum((s - (a + b * v)) ** 2) / np.sum((s - s.mean()) ** 2)
            fit = f"{a:.2f} + {b:.3f} var"
        cells = ", ".join(f"{v:.1f}: {'never' if not np.isfinite(s) else f'{s:.2f}'}" for v, s in sorted(pts))
        out.append(f"| C2=1/{round(1 / key[0])}, lambda={key[1] * 1024:g}/N | {lr:g} | {cells} | {fit} | {r2:.2f} |")
    return out


def variance_by_c2(named):
    out = ["| data | curve | " + " | ".join(f"C2=1/{c}" for c in (4, 16, 64)) + " |", "|---|---|---|---|---|"]
    for name, results in named:
        if results is None:
            continue
        labels = sorted({r["label"] for r in results["curves"] if r["spec"].startswith("gspar")})
        for label in labels:
            cells = []
            for c in (4, 16, 64):
                v = [r["variance"] for r in results["curves"] if r["label"] == label and round(1 / r["C2"]) == c]
                cells.append(f"{np.mean(v):.2f}" if v else "-")
            out.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return out


def at_bits(curve, bits):
    """f - f* of a curve at ``bits`` total coded bits (log-linear interpolation; None past its end)."""
    b, f = np.asarray(curve["bits"], float), np.asarray(curve["subopt"], float)
    if bits > b[-1]:
        return None
    return float(np.exp(np.interp(bits, b, np.log(np.maximum(f, 1e-300)))))


def gspar_vs_qsgd(named, rows_of):
    """Claims 6 and 7: at each QSGD curve's total bits, the best GSpar curve (each at its tuned step)."""
    out = ["| data | problem | QSGD curve (tuned step) | its bits | its f - f* | best GSpar at those bits | GSpar / QSGD |",
           "|---|---|---|---|---|---|---|"]
    for name, results in named:
        if results is None:
            continue
        rows = rows_of[name]
        tuned = {(r["C2"], r["lambda2"], r["spec"]): rows.get((r["C2"], r["lambda2"], r["spec"], r["tuned_lr"], 0))
                 for r in results["curves"]}
        for (c2, lam, spec), q in sorted(tuned.items(), reverse=True):
            if not spec.startswith("qsgd") or q is None:
                continue
            bits, fq = q["curve"]["bits"][-1], q["curve"]["subopt"][-1]
            best = None
            for (c2g, lamg, specg), g in tuned.items():
                if (c2g, lamg) == (c2, lam) and specg.startswith("gspar") and g is not None:
                    fg = at_bits(g["curve"], bits)
                    if fg is not None and (best is None or fg < best[0]):
                        best = (fg, g["label"])
            cell = f"{best[0]:.3g} ({best[1]})" if best else "-"
            ratio = f"{best[0] / fq:.2f}" if best else "-"
            out.append(f"| {name} | C2=1/{round(1 / c2)}, lambda={lam * 1024:g}/N | {q['label']} ({q['lr']:g}) | {bits:.3g} | "
                       f"{fq:.3g} | {cell} | {ratio} |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hvdspar.training.reproduce_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="docs/reproduction")
    p.add_argument("--fixed-lr", type=float, default=0.1)
    args = p.parse_args(argv)
    names = ["fig1", "fig1-skewed", "fig2", "fig3", "fig3-skewed", "topk", "cnn"]
    loaded = {n: load(args.root, n) for n in names}
    lines = ["## Wall time", "", "| experiment | state | runs | seconds of runs |", "|---|---|---|---|"]
    for n in names:
        res, _ = loaded[n]
        if res is not None:
            lines.append(f"| {n} | {'complete' if res['complete'] else 'partial'} | {res['runs']} | {res['compute_seconds']:.0f} |")
    for n in names:
        res, rows = loaded[n]
        if res is None or n == "cnn":
            continue
        rng = res.get("step_extended_within")
        up = f", extended x2 or /2 within [{rng[0]:g}, {rng[1]:g}] while a curve's best step was its edge" if rng else ""
        lines += ["", f"## {n} (step grid {res['step_grid']}{up})", ""] + step_counts(res) + [""] + curve_table(res)
    for n in ("fig1", "fig1-skewed", "fig2"):
        res, rows = loaded[n]
        if res is not None:
            lines += ["", f"## Slow-down against variance, {n}", ""] + slowdown(res, rows, args.fixed_lr)
    lines += ["", "## GSpar's variance by C2", ""] + variance_by_c2([(n, loaded[n][0]) for n in ("fig1", "fig1-skewed")])
    lines += ["", "## GSpar against QSGD at equal bits", ""] + gspar_vs_qsgd(
        [(n, loaded[n][0]) for n in ("fig3", "fig3-skewed")], {n: loaded[n][1] for n in names})
    res, _ = loaded["cnn"]
    if res is not None:
        lines += ["", "## CNN", "", "| setting | tuned Adam step | final loss, mean (std) over seeds | seeds | var | density | grid |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["curves"]:
            grid = ", ".join(f"{k}: {fmt(v)}" for k, v in r["grid"].items())
            lines.append(f"| {r['label']} | {r['tuned_lr']:g} | {r['final_loss']:.3f} ({r['final_loss_std']:.3f}) | "
                         f"{len(r['seeds'])} | {r['variance']:.3g} | {r['density']:.4f} | {grid} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
