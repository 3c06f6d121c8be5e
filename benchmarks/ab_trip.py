"""GSpar's round trip at two commits, interleaved in one process: the fair before/after on a noisy machine.

    git worktree add /tmp/before <commit>
    python -m benchmarks.ab_trip --before /tmp/before [--sizes 1e7] [--repeat 21] [--rho 0.01]

Runs on one CPU process with Horovod initialised for one rank (as ``benchmarks.round_trip``). The
``hvdspar`` package of ``--before`` is copied to a temporary directory as ``hvdspar_before`` (its
imports rewritten), so both versions load side by side. Each repetition calls, in turn: the
codec's ``encode`` of each version (g -> its message), ``hvd.allreduce(g, compression=GSpar(rho))``
of each version, with ``--ranks M`` each version's decode of M messages into the average (what
every rank does at M ranks; the messages of M seeds, coded by this version: the wire format must
be the same at both commits), and one ``tf.reduce_sum(tf.abs(g))`` pass; medians and quartiles are printed in
milliseconds and the trips also in passes. Interleaving puts both versions under the same machine
load, which changes by more than the differences measured here from one minute to the next.
"""

import argparse
import importlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_before(checkout):
    """Import the ``hvdspar`` package of another checkout as ``hvdspar_before``."""
    src = Path(checkout) / "hvdspar"
    root = Path(tempfile.mkdtemp(prefix="hvdspar_before_"))
    dst = root / "hvdspar_before"
    shutil.copytree(src, dst)
    for path in dst.glob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bfrom hvdspar\b", "from hvdspar_before", text)
        text = re.sub(r"\bimport hvdspar\b", "import hvdspar_before", text)
        path.write_text(text)
    sys.path.insert(0, str(root))
    import hvdspar_before

    return hvdspar_before


def _sparse_message_module(pkg):
    """The module of GSpar's sparse message in ``pkg`` (``coding`` before it was renamed)."""
    try:
        return importlib.import_module(f"{pkg.__name__}.sparse_message")
    except ImportError:
        return importlib.import_module(f"{pkg.__name__}.coding")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a checkout of the commit to compare with")
    p.add_argument("--sizes", type=float, nargs="+", default=[1e7])
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--ranks", type=int, default=0, help="also time the decode of this many messages (0: not)")
    args = p.parse_args(argv)
    if not (Path(args.before) / "hvdspar" / "__init__.py").is_file():
        raise SystemExit(f"ab_trip: {args.before} has no hvdspar/ package (give a checkout of another commit)")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    import hvdspar
    from benchmarks.common import ready
    from benchmarks.round_trip import decode_of_ranks

    hvd.init()
    if hvd.size() != 1:
        raise SystemExit("ab_trip: run it as one process, not under horovodrun")
    before = load_before(args.before)
    for d in (int(s) for s in args.sizes):
        g = tf.constant(np.random.default_rng(0).standard_t(2, size=d).astype(np.float32))
        seed = tf.constant([1, 2], tf.int64)
        fns = {}
        for tag, pkg in (("before", before), ("after", hvdspar)):
            comp = pkg.GSpar(rho=args.rho, seed=0)
            fns[f"encode {tag}"] = tf.function(lambda c=comp.codec: c.encode(g, seed, tf.float32, g.shape).message)
            fns[f"trip {tag}"] = tf.function(lambda c=comp, t=tag: hvd.allreduce(g, compression=c, name=f"ab_{t}_{d}"))
            if args.ranks:
                fns[f"decode {args.ranks} {tag}"] = decode_of_ranks(_sparse_message_module(pkg), g, args.ranks,
                                                                    args.rho, hvdspar)
        fns["pass"] = tf.function(lambda: tf.reduce_sum(tf.abs(g)))
        for fn in fns.values():  # trace, compile, warm up
            ready(fn())
            ready(fn())
        times = {k: [] for k in fns}
        for _ in range(args.repeat):
            for k, fn in fns.items():
                start = time.perf_counter()
                ready(fn())
                times[k].append(time.perf_counter() - start)
        one_pass = np.median(times["pass"])
        print(f"\n{d:,} float32 elements, GSpar(rho={args.rho}), medians of {args.repeat} interleaved calls\n")
        print("| call | median ms | q25 | q75 | passes |\n|---|---|---|---|---|")
        for k, ts in times.items():
            q25, med, q75 = (1e3 * np.quantile(ts, q) for q in (0.25, 0.5, 0.75))
            print(f"| {k} | {med:.2f} | {q25:.2f} | {q75:.2f} | {np.median(ts) / one_pass:.2f} |")


if __name__ == "__main__":
    main()
