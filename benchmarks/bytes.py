"""Bytes on the wire per element for every compressor, against dense fp32 and GSpar's entropy bound.

    python -m benchmarks.bytes [--elements 1000000] [--rho 0.1 0.01 0.001]

One heavy-tailed (Student t, 2 dof) float32 gradient; each compressor's real
``encode`` produces the message whose bytes are counted (header included).
Budgets are matched: GSpar/UniSp rho, TopK/RandomK ratio = rho; QSGD and
TernGrad have no density knob (QSGD uses levels = 1, 4 and 16, listed once).
The entropy bound is sec. 2.3's sum_l d_l log2(d/d_l) plus 32 bits per exact
value and for 1/lambda, computed from the GSpar message actually drawn.
"""

import argparse

import numpy as np
import tensorflow as tf

import hvdspar
from benchmarks.common import log_to_mlflow, markdown
from hvdspar import sparse_message
from hvdspar.sparsify import gspar_message


def message_bytes(compressor, g, seed=0):
    enc = compressor.feedback.encode(g, tf.constant([seed, 0], tf.int64), g.dtype)
    return int(tf.size(enc.message))


def gspar_entropy_bytes(g, rho):
    d = int(tf.size(g))
    msg, _ = gspar_message(g, tf.constant([0, 0], tf.int64), rho=rho)
    n_a, n_b = int(tf.size(msg.idx_a)), int(tf.size(msg.idx_b))
    n_minus = int(tf.reduce_sum(tf.cast(msg.neg_b, tf.int32)))
    return sparse_message.entropy_bits(n_a, n_b - n_minus, n_minus, d) / 8, n_a, n_b


def run(d, rhos):
    g = tf.constant(np.random.default_rng(0).standard_t(2, size=d).astype(np.float32))
    dense = 4 * d
    rows = []
    for rho in rhos:
        bound, n_a, n_b = gspar_entropy_bytes(g, rho)
        specs = [f"gspar:rho={rho}", f"unisp:rho={rho}", f"topk:ratio={rho}", f"randomk:ratio={rho}"]
        for spec in specs:
            nbytes = message_bytes(hvdspar.from_spec(spec), g)
            rows.append(
                {
                    "compressor": spec,
                    "rho": rho,
                    "bytes": nbytes,
                    "bits_per_element": 8 * nbytes / d,
                    "ratio_to_fp32": nbytes / dense,
                    "gspar_entropy_bytes": bound,
                    "vs_entropy": nbytes / bound,
                }
            )
    for spec in ["qsgd:levels=1", "qsgd:levels=4", "qsgd:levels=16", "terngrad", "atomo:budget=1000"]:
        nbytes = message_bytes(hvdspar.from_spec(spec), g)
        rows.append(
            {
                "compressor": spec,
                "rho": float("nan"),
                "bytes": nbytes,
                "bits_per_element": 8 * nbytes / d,
                "ratio_to_fp32": nbytes / dense,
                "gspar_entropy_bytes": float("nan"),
                "vs_entropy": float("nan"),
            }
        )
    rows.append(
        {"compressor": "none (fp32)", "rho": 1.0, "bytes": dense, "bits_per_element": 32.0, "ratio_to_fp32": 1.0,
         "gspar_entropy_bytes": float("nan"), "vs_entropy": float("nan")}
    )
    rows.append(
        {"compressor": "fp16", "rho": 1.0, "bytes": dense // 2, "bits_per_element": 16.0, "ratio_to_fp32": 0.5,
         "gspar_entropy_bytes": float("nan"), "vs_entropy": float("nan")}
    )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elements", type=int, default=1_000_000)
    p.add_argument("--rho", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    args = p.parse_args(argv)
    rows = run(args.elements, args.rho)
    table = markdown(
        rows,
        [
            ("compressor", "{}"),
            ("bytes", "{:,}"),
            ("bits_per_element", "{:.4f}"),
            ("ratio_to_fp32", "{:.5f}"),
            ("gspar_entropy_bytes", "{:,.0f}"),
            ("vs_entropy", "{:.3f}"),
        ],
    )
    print(f"Message bytes for one {args.elements:,}-element float32 Student-t(2) gradient (one rank, one step)\n")
    print(table)
    log_to_mlflow("bytes", {"elements": args.elements}, rows, ["compressor"], ["bytes", "bits_per_element", "ratio_to_fp32"], table)


if __name__ == "__main__":
    main()
