"""How many hvdspar functions and files one gradient's trip runs through at trace time.

One ``hvd.allreduce(g, compression=...)`` traced in a ``tf.function`` (one rank, 2^18
elements), counted with ``sys.setprofile``: distinct (file, function) pairs inside the
hvdspar package, the files, and the moves (a call whose file differs from the previous
call's). Then a second tensor of the same shape (encoder and decoder cached).

    .venv/bin/python -m benchmarks.trip_shape
"""

import argparse
import os
import sys

import tensorflow as tf


def count(fn):
    """(functions, files, moves) of hvdspar code run by ``fn()``."""
    root = os.path.dirname(os.path.abspath(__import__("hvdspar").__file__)) + os.sep
    seen, files, last, moves = set(), set(), None, 0

    def profile(frame, event, arg):
        nonlocal last, moves
        if event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(root):
            return
        rel = path[len(root):]
        seen.add((rel, frame.f_code.co_name))
        files.add(rel)
        if last is not None and rel != last:
            moves += 1
        last = rel

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(seen), len(files), moves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=2**18)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    import horovod.tensorflow as hvd

    import hvdspar

    hvd.init()
    comp = hvdspar.GSpar(rho=0.01, memory=args.memory, seed=1)
    g = tf.random.normal([args.elements], seed=1)
    h = tf.random.normal([args.elements], seed=2)
    first = count(lambda: tf.function(lambda: hvd.allreduce(g, compression=comp, name="g")).get_concrete_function())
    second = count(lambda: tf.function(lambda: hvd.allreduce(h, compression=comp, name="h")).get_concrete_function())
    print("| tensor | hvdspar functions | files | moves between files |\n|---|---|---|---|")
    print(f"| first (encoder, decoder traced) | {first[0]} | {first[1]} | {first[2]} |")
    print(f"| second of that shape (cached) | {second[0]} | {second[1]} | {second[2]} |")


if __name__ == "__main__":
    main()
