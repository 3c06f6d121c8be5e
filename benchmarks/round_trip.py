"""GSpar's round trip, piece by piece, and the seconds it costs to build its graph.

    python -m benchmarks.round_trip [--sizes 1e6 1e7 1e8] [--rho 0.01] [--ranks 1 2 4 8] [--tensors 32]

In one process (Horovod initialised with one rank, so the collectives are local copies), on a
float32 heavy-tailed (Student t, 2 dof) gradient g, medians of --repeat calls of tf.functions
(each call waits for its result, which is not copied into NumPy: ``benchmarks.common.ready``):

  compress    g -> its coded message (``GSparCodec.encode``: the first pass over g, ``hvdspar.scan``,
              then ``gspar_message`` + ``sparse_message.to_bytes``)
  exchange    ``hvd.allgather`` of the message (M = 1 here: the copy it costs)
  decode      the gathered messages -> the dense average (``sparse_message.sum_messages`` with Horovod's
              factor: the average is applied to the entries inside the decoding, so that the dense
              output is written once; what ``decompress`` returns)
  round trip  ``hvd.allreduce(g, compression=GSpar(rho))``: the whole trip as a user runs it,
              placeholder allreduce, state and counters included
  none        ``hvd.allreduce(g)`` with Horovod's ``Compression.none``, the same call uncompressed
              (a copy into a freshly allocated [d] result at one rank)

each also as "passes": its time over one ``tf.reduce_sum(tf.abs(g))`` pass measured beside it
(the memory bound of a round trip is about 3 passes: read g, write the message, write the
result), and the round trip over none's. Then the decode at M ranks (--ranks): each rank
decodes all M messages (M different seeds' messages of g) into the dense average, so this is
the part of a rank's work that grows with the ranks. Then the graph building: the seconds of
the first call of a step that allreduces
--tensors gradients of 16384 elements (tracing and the plan), less a later call's, per
compressed tensor (Horovod's per-tensor allreduce) and for one bucket (``hvd.grouped_allreduce``,
which is what ``groups=`` does). Prints markdown, writes out/round_trip.json, logs to MLflow.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.common import best_time, log_to_mlflow, markdown, ready, stamp
from hvdspar import sparse_message

PIECES = ("compress", "exchange", "decode", "round_trip", "none")


def pieces(d, rho, repeat, hvd, hvdspar):
    g = tf.constant(np.random.default_rng(0).standard_t(2, size=d).astype(np.float32))
    seed = tf.constant([1, 2], tf.int64)
    one_pass = tf.function(lambda: tf.reduce_sum(tf.abs(g)))
    codec = hvdspar.GSpar(rho=rho).codec
    compress = tf.function(lambda: codec.encode(g, seed, tf.float32, g.shape).message)
    message = compress()
    exchange = tf.function(lambda: hvd.allgather(message, name=f"rt_gather_{d}"))
    gathered = exchange()
    factor = tf.constant(1.0, tf.float32)  # Horovod's 1/M for one rank
    decode = tf.function(lambda: sparse_message.sum_messages(gathered, 1, d, tf.float32, tf.float32, factor)[0])
    compressor = hvdspar.GSpar(rho=rho, seed=0)
    trip = tf.function(lambda: hvd.allreduce(g, compression=compressor, name=f"rt_trip_{d}"))
    none = tf.function(lambda: hvd.allreduce(g, name=f"rt_none_{d}"))
    t = {"pass": best_time(one_pass, repeat)}
    for name, fn in (("compress", compress), ("exchange", exchange), ("decode", decode), ("round_trip", trip),
                     ("none", none)):
        t[name] = best_time(fn, repeat)
    row = {"elements": d, "message_bytes": int(message.shape[0]), "reduce_abs_ms": 1e3 * t["pass"]}
    for name in PIECES:
        row[f"{name}_ms"] = 1e3 * t[name]
        row[f"{name}_passes"] = t[name] / t["pass"]
    row["pieces_passes"] = sum(row[f"{n}_passes"] for n in ("compress", "exchange", "decode"))
    row["trip_over_none"] = t["round_trip"] / t["none"]
    return row


def decode_of_ranks(coding_module, g, ranks, rho, hvdspar):
    """A tf.function: ``coding_module.sum_messages`` of ``ranks`` GSpar messages of g (seeds 0..M-1,
    coded by ``hvdspar``) with the factor 1/M, what every rank runs at M ranks."""
    d = g.shape.num_elements()
    codec = hvdspar.GSpar(rho=rho).codec
    data = tf.concat([codec.encode(g, tf.constant([r, 7], tf.int64), tf.float32, g.shape).message
                      for r in range(ranks)], 0)
    factor = tf.constant(1.0 / ranks, tf.float32)
    return tf.function(lambda: coding_module.sum_messages(data, ranks, d, tf.float32, tf.float32, factor)[0])


def decode_at_ranks(d, rho, ranks, repeat, hvdspar):
    """Rows (elements, ranks, ms, passes): ``decode_of_ranks`` timed for each M in ``ranks``."""
    g = tf.constant(np.random.default_rng(0).standard_t(2, size=d).astype(np.float32))
    one_pass = tf.function(lambda: tf.reduce_sum(tf.abs(g)))
    t_pass = best_time(one_pass, repeat)
    rows = []
    for m in ranks:
        decode = decode_of_ranks(sparse_message, g, m, rho, hvdspar)
        t = best_time(decode, repeat)
        rows.append({"elements": d, "ranks": m, "decode_ms": 1e3 * t, "decode_passes": t / t_pass,
                     "reduce_abs_ms": 1e3 * t_pass})
    return rows


def graph_building(tensors, rho, hvd, hvdspar):
    """Seconds of graph building per compressed tensor (per-tensor) and per bucket (grouped)."""
    grads = [tf.constant(np.random.default_rng(i).standard_normal(16384).astype(np.float32)) for i in range(tensors)]
    out = {}
    for mode in ("per_tensor", "bucket"):
        compressor = hvdspar.GSpar(rho=rho, seed=0)
        if mode == "per_tensor":
            step = tf.function(lambda: [hvd.allreduce(g, compression=compressor, name=f"gb_{i}") for i, g in enumerate(grads)])
        else:
            step = tf.function(lambda: hvd.grouped_allreduce(grads, compression=compressor, name="gb_group"))
        start = time.perf_counter()
        ready(step())
        first = time.perf_counter() - start
        later = best_time(step, 3)
        out[mode] = first - later
    return {"tensors": tensors, "per_tensor_s": out["per_tensor"], "per_compressed_tensor_s": out["per_tensor"] / tensors,
            "bucket_s": out["bucket"], "bucket_per_tensor_s": out["bucket"] / tensors}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="numbers of messages in the decode-at-M-ranks measurement")
    p.add_argument("--tensors", type=int, default=32, help="gradients in the graph-building measurement")
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    import horovod.tensorflow as hvd

    import hvdspar

    hvd.init()
    if hvd.size() != 1:
        raise SystemExit("round_trip: run it as one process (python -m benchmarks.round_trip), not under horovodrun")
    rows = [pieces(int(d), args.rho, args.repeat, hvd, hvdspar) for d in args.sizes]
    cols = [("elements", "{:,}"), ("reduce_abs_ms", "{:.2f}")]
    for name in PIECES:
        cols += [(f"{name}_ms", "{:.2f}"), (f"{name}_passes", "{:.2f}")]
    cols += [("pieces_passes", "{:.2f}"), ("trip_over_none", "{:.2f}")]
    table = markdown(rows, cols)
    ranks = [r for d in args.sizes for r in decode_at_ranks(int(d), args.rho, args.ranks, args.repeat, hvdspar)]
    ranks_table = markdown(ranks, [("elements", "{:,}"), ("ranks", "{}"), ("reduce_abs_ms", "{:.2f}"),
                                   ("decode_ms", "{:.2f}"), ("decode_passes", "{:.2f}")])
    build = graph_building(args.tensors, args.rho, hvd, hvdspar)
    build_table = markdown([build], [("tensors", "{}"), ("per_tensor_s", "{:.2f}"), ("per_compressed_tensor_s", "{:.3f}"),
                                     ("bucket_s", "{:.2f}"), ("bucket_per_tensor_s", "{:.3f}")])
    head = f"GSpar(rho={args.rho}) round trip, float32, one process, medians of {args.repeat} calls ({stamp()})"
    print(head + "\n\n" + table + "\n\n(passes: time / one reduce_sum(abs) pass of the same g; pieces = compress + "
          "exchange + decode, the average being inside the decode; none: Horovod's own allreduce of g, uncompressed)\n\n"
          "decode at M ranks: every rank decodes the M messages into the average\n\n" + ranks_table +
          "\n\ngraph building: seconds of the first step over a later one, "
          f"{args.tensors} gradients of 16384 elements\n\n" + build_table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_trip.json").write_text(json.dumps({"stamp": stamp(), "rows": rows, "decode_at_ranks": ranks,
                                                           "graph_building": build}, indent=1))
    at_ranks = [dict(r, elements=f"{r['elements']}.M{r['ranks']}") for r in ranks]  # metrics <d>.M<ranks>.decode_ms
    log_to_mlflow("round_trip", {"rho": args.rho, "repeat": args.repeat, "tensors": args.tensors, "ranks": args.ranks},
                  rows + at_ranks, ["elements"], [c for c, _ in cols[1:]], table + "\n\n" + ranks_table)
    return rows, ranks, build


if __name__ == "__main__":
    main()
