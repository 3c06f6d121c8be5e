"""Communication counters summed over ranks.

An hvdspar compressor counts its own bytes (``compressor.traffic()``, this rank). Horovod's
``Compression.none`` / ``.fp16`` count nothing, so here a step moves every trainable variable:
``sum(size * itemsize)`` bytes dense, half of that (floating tensors) with fp16. With one rank
nothing is communicated (Horovod skips the allreduce), so both counts stay 0, as hvdspar's do.

``TrafficMeter.totals(steps)`` is a COLLECTIVE when Horovod runs more than one rank: one
``hvd.allreduce(op=hvd.Sum)`` of a small float64 vector. Every rank must call it at the same
points (the Keras callback does, on step counts that are equal on all ranks).
"""

import warnings

from hvdspar.tracking.params import compressor_spec

# order of the vector exchanged between ranks
FIELDS = (
    "bytes_sent", "dense_bytes", "last_step_bytes_sent", "last_step_dense_bytes",
    "kept", "elements", "sq_norm", "sq_norm_sent", "ranks", "within_node_bytes",
)


class TrafficMeter:
    """This rank's counters and their sum over ranks, for any compressor."""

    def __init__(self, compressor, num_ranks=1, hvd=None, variables=None):
        self.compressor = compressor
        self.num_ranks = int(num_ranks)
        self.hvd = hvd
        self.spec = compressor_spec(compressor)
        self.own_counters = hasattr(compressor, "traffic")
        self._step_bytes = None
        if not self.own_counters and self.spec not in ("none", "fp16"):
            warnings.warn(
                f"hvdspar.tracking: compressor {self.spec!r} has no traffic(); counting dense bytes for it",
                stacklevel=2,
            )
        if variables is not None:
            self.set_variables(variables)

    def set_variables(self, variables, gradients=None):
        """The trainable variables whose gradients are exchanged (for none/fp16 accounting), with one
        step's gradients where some are ``IndexedSlices`` (``hvdspar.state.horovod_step_bytes``)."""
        from hvdspar.state import horovod_step_bytes

        self._step_bytes = horovod_step_bytes(list(variables), self.spec, gradients)

    def local(self, steps):
        """This rank's vector (see FIELDS) after ``steps`` optimizer steps."""
        if self.own_counters:
            t = self.compressor.traffic()
            if "kept" in t:  # raw sums pool exactly across ranks; the ratios are the fallback
                kept, elements = float(t["kept"]), float(t["elements"])
                sq, sq_sent = float(t["sq_norm"]), float(t["sq_norm_sent"])
            else:
                kept, elements = float(t.get("density", 0.0)), 1.0
                sq, sq_sent = 1.0, float(t.get("variance_ratio", 0.0))
            return [
                float(t["bytes_sent"]), float(t["dense_bytes"]),
                float(t.get("last_step_bytes_sent", 0)), float(t.get("last_step_dense_bytes", 0)),
                kept, elements, sq, sq_sent, 1.0, float(t.get("within_node_bytes", 0)),
            ]
        if self._step_bytes is None:
            raise RuntimeError("hvdspar.tracking: call set_variables(model.trainable_variables) for none/fp16")
        sent, dense = self._step_bytes if self.num_ranks > 1 else (0, 0)
        steps = max(int(steps), 0)
        last = (sent, dense) if steps else (0, 0)
        return [float(sent * steps), float(dense * steps), float(last[0]), float(last[1]), 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]

    def allreduce(self, vector):
        if self.hvd is None or self.num_ranks <= 1:
            return vector
        import tensorflow as tf

        total = self.hvd.allreduce(
            tf.constant(vector, dtype=tf.float64), op=self.hvd.Sum, name="hvdspar_tracking_traffic"
        )
        return [float(x) for x in total.numpy()]

    def totals(self, steps):
        """Metrics summed over ranks (collective; see the module docstring)."""
        return summarize(self.allreduce(self.local(steps)))


def summarize(vector):
    v = dict(zip(FIELDS, vector))
    sent, dense = v["bytes_sent"], v["dense_bytes"]
    return {
        "bytes_sent": sent,
        "dense_bytes": dense,
        "compression_ratio": sent / dense if dense else 1.0,
        "bits_communicated": 8.0 * sent,
        "dense_bits": 8.0 * dense,
        "bits_saved": 8.0 * (dense - sent),
        "last_step_bytes_sent": v["last_step_bytes_sent"],
        "last_step_dense_bytes": v["last_step_dense_bytes"],
        "density": v["kept"] / v["elements"] if v["elements"] else 1.0,
        "variance_ratio": v["sq_norm_sent"] / v["sq_norm"] if v["sq_norm"] else 1.0,
        # the hierarchical exchange's dense bytes inside the nodes (bytes_sent: what crossed them)
        "within_node_bytes": v["within_node_bytes"],
    }
