"""Compute cost of GSpar: compress + encode (+ decode) against a reduce_sum(abs) pass and top_k.

    python -m benchmarks.compute [--sizes 1e6 1e7 1e8] [--rho 0.01] [--device CPU:0|GPU:0]

All timings are the median of several calls of a tf.function in the same
process, on a float32 heavy-tailed (Student t, 2 dof) tensor. "passes" is the
time divided by one ``tf.reduce_sum(tf.abs(g))`` pass: the issue's target is
GSpar compress + encode <= 4 passes at 10M elements.
"""

import argparse

import numpy as np
import tensorflow as tf

from benchmarks.common import best_time, log_to_mlflow, markdown
from hvdspar import sparse_message
from hvdspar.sparsify import gspar_message


def run(sizes, rho, method, device, repeat):
    rows = []
    for d in sizes:
        with tf.device(device):
            g = tf.constant(np.random.default_rng(0).standard_t(2, size=d).astype(np.float32))
            seed = tf.constant([1, 2], tf.int64)
            k = max(1, int(rho * d))

            reduce_pass = tf.function(lambda: tf.reduce_sum(tf.abs(g)))
            top_k = tf.function(lambda: tf.math.top_k(tf.abs(g), k=k).indices)
            compress = tf.function(lambda: gspar_message(g, seed, rho=rho, method=method)[0])
            compress_encode = tf.function(lambda: sparse_message.to_bytes(gspar_message(g, seed, rho=rho, method=method)[0], d, tf.float32))
            message = compress_encode()
            decode = tf.function(lambda: sparse_message.sum_messages(message, 1, d, tf.float32, tf.float32)[0])

            t_pass = best_time(reduce_pass, repeat)
            t_topk = best_time(top_k, max(1, repeat // 2))
            t_comp = best_time(lambda: compress().idx_b, repeat)
            t_ce = best_time(compress_encode, repeat)
            t_dec = best_time(decode, repeat)
        rows.append(
            {
                "elements": d,
                "reduce_abs_ms": 1e3 * t_pass,
                "compress_ms": 1e3 * t_comp,
                "compress_encode_ms": 1e3 * t_ce,
                "decode_ms": 1e3 * t_dec,
                "topk_ms": 1e3 * t_topk,
                "ce_passes": t_ce / t_pass,
                "topk_passes": t_topk / t_pass,
                "message_bytes": int(tf.size(message)),
            }
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--method", default="greedy", choices=["greedy", "exact"])
    p.add_argument("--device", default="CPU:0")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    rows = run([int(s) for s in args.sizes], args.rho, args.method, args.device, args.repeat)
    table = markdown(
        rows,
        [
            ("elements", "{:,}"),
            ("reduce_abs_ms", "{:.2f}"),
            ("compress_ms", "{:.2f}"),
            ("compress_encode_ms", "{:.2f}"),
            ("decode_ms", "{:.2f}"),
            ("topk_ms", "{:.2f}"),
            ("ce_passes", "{:.2f}"),
            ("topk_passes", "{:.2f}"),
        ],
    )
    print(f"GSpar(rho={args.rho}, {args.method}) on {args.device}, float32, medians of {args.repeat} calls\n")
    print(table)
    print("\nce_passes = (compress + encode) / one reduce_sum(abs) pass; topk_passes = top_k at k = rho*d / one pass")
    log_to_mlflow(
        "compute",
        {"rho": args.rho, "method": args.method, "device": args.device},
        rows,
        ["elements"],
        ["reduce_abs_ms", "compress_encode_ms", "decode_ms", "topk_ms", "ce_passes", "topk_passes"],
        table,
    )


if __name__ == "__main__":
    main()
