"""How one message meets the other ranks: the communicators of a compressor's trip.

    Dense            x as it is, through Horovod's own allreduce (the plan sent it dense)
    Allgather        encode x, allgather every rank's message, decode their sum
    Allreduce        a codec that sums by allreduce itself (PowerSGD's P and Q: ``Codec.reduce_sum``)
    ChosenAtRunTime  elastic training: dense or Allgather's, by the byte rule at every step
    Hierarchical     nodes of several ranks: dense inside the node, one compressed share per rank
                     across the nodes (``hvdspar.hierarchy``)

``send(x, message)`` runs once per message, where every member's Horovod branch can
reach it, and returns a ``Sent``: what each member hands Horovod and, when compressed,
each member's part of sum_r Q(x_r). ``receive(sent, j, reduced)`` is member j's result
from Horovod's reduction of what it handed. A compressed message hands Horovod one
placeholder per member, whose reduction is Horovod's factor f (op, scale factors, 1/M:
``hvdspar.exchange``), so member j's result is f x its part, NaN everywhere where a rank
was not finite (as Horovod's own sum of a NaN).
"""

import collections

import tensorflow as tf

from hvdspar import exchange, fallback, hierarchy, wire
from hvdspar.dtypes import compute_dtype, reduced_is_finite
from hvdspar.scan import scan


class Sent(collections.namedtuple("Sent", ["communicator", "message", "handed", "parts"])):
    """What ``compress`` hands ``decompress`` (immutable): per member, what it hands Horovod
    (``handed``) and its part of the decoded sum (``parts``, NaN everywhere where a rank's
    message was not finite; () when dense)."""

    def receive(self, j, reduced):
        return self.communicator.receive(self, j, reduced)


class Sum(collections.namedtuple("Sum", ["total", "finite", "used", "norms", "new_memory", "codec_state"],
                                 defaults=[None])):
    """A compressed send's outcome on this rank: sum_r Q(x_r) [d]; every rank finite?; whether the
    step used a random-stream step (compressed and finite); [||x||^2, ||Q(x)||^2] (float64);
    a function giving the new memory; the codec's new state values {name: tensor}, if any."""


class Communicator:
    """Base class: ``send`` and ``receive`` (see the module docstring). ``comp``: the compressor
    (its exchange, error feedback, encoders and state)."""

    def __init__(self, comp):
        self.comp = comp

    def send(self, x, message):
        raise NotImplementedError

    def receive(self, sent, j, reduced):
        raise NotImplementedError


class Dense(Communicator):
    """x cast back to the gradients' dtype, each member's part through Horovod's allreduce; the
    memory keeps this rank's cast residual x - cast(x) (zero in float32) where it is finite."""

    def send(self, x, message):
        slot, dtype, d = message.slot, message.dtype, message.d
        sent = tf.cast(x, dtype)
        slot.record(d * dtype.size, d * dtype.size, d, d, dense=True)
        residual = x - tf.cast(sent, x.dtype)
        self.comp.feedback.keep(slot, tf.math.is_finite(tf.reduce_sum(residual)), lambda: residual)
        return Sent(self, message, message.split(sent), ())

    def receive(self, sent, j, reduced):
        """Horovod's result as it is (checked under nonfinite='raise')."""
        if self.comp.nonfinite != "raise":
            return reduced
        message = sent.message
        check = tf.debugging.Assert(reduced_is_finite(reduced), [
            self.comp.nonfinite_message(message.slot, [message.shapes[j]], message.dtype)])
        with tf.control_dependencies([check]):
            return tf.identity(reduced)


class Compressed(Communicator):
    """Base of the compressed sends: ``sum`` gives this rank's ``Sum``; the state is kept from
    steps where every rank was finite; the sum is split into the members' parts."""

    def sum(self, x, message):
        raise NotImplementedError

    def send(self, x, message):
        comp, slot = self.comp, message.slot
        s = self.sum(x, message)
        comp.feedback.keep(slot, s.finite, s.new_memory)
        slot.keep(s.finite, s.used, s.norms, s.codec_state)
        checks = []
        if comp.nonfinite == "raise":
            checks.append(tf.debugging.Assert(s.finite, [comp.nonfinite_message(slot, message.shapes, message.dtype)]))
        with tf.control_dependencies(checks):
            parts = message.split(wire.nan_unless_finite(s.total, s.finite))
        placeholder = comp.placeholder(message.dtype, message.site.process_set)
        return Sent(self, message, (placeholder,) * len(parts), parts)

    def receive(self, sent, j, reduced):
        """f x member j's part (f: Horovod's reduction of the placeholder, [1], broadcast): one
        multiply in the member's Horovod branch."""
        part = sent.parts[j]
        factor = tf.cast(reduced if part.shape.rank else tf.reshape(reduced, []), part.dtype)
        return tf.cast(part * factor, sent.message.dtype)


class Allgather(Compressed):
    """Encode x (this rank's seed), allgather the messages, decode their sum (traced functions
    shared by every message of one shape: ``Compressor.encoder``, ``Compressor.decoder``)."""

    def sum(self, x, message):
        comp, slot, dtype, shape = self.comp, message.slot, message.dtype, message.shape
        ps = message.site.process_set
        enc = comp.encoder(dtype, shape)(x, comp.seed_of(slot))
        gathered = comp.exchange.allgather(enc.message, ps)
        slot.record(message_nbytes(enc, len(message.tensors), dtype), message.d * dtype.size, message.d, enc.kept,
                    dense=False)
        total, finite = comp.decoder(dtype, shape)(gathered, comp.size_op(ps))
        return Sum(total, finite, finite, norms(enc), lambda: comp.feedback.residual(x, enc.q))


class Allreduce(Compressed):
    """A codec that sums through allreduce itself (``Codec.reduce_sum``: PowerSGD), with hvdspar's
    own op=Sum allreduces; Horovod reduces the placeholders, for its factor."""

    def sum(self, x, message):
        comp, slot, dtype, d = self.comp, message.slot, message.dtype, message.d
        ps = message.site.process_set
        x = tf.cast(x, compute_dtype(dtype))

        def allreduce_sum(t, tag):
            return comp.exchange.allreduce_sum(t, ps, exchange.collective_name("HorovodAllreduce", x, tag))

        red = comp.codec.reduce_sum(x, slot.codec_state, allreduce_sum, dtype, message.shape,
                                    comp.size_op(ps), comp.stream_seed(0, slot.index))
        slot.record(red.nbytes + exchange.placeholder_nbytes(dtype), d * dtype.size, d, red.kept, dense=red.dense)
        new_memory = comp.feedback.residual(x, red.q)
        sq_norms = tf.stack([scan(x).sq_norm, tf.cast(red.q_sq_norm, tf.float64)])
        return Sum(red.total, red.finite, tf.logical_and(red.finite, tf.logical_not(red.dense)), sq_norms,
                   lambda: new_memory, red.state)


class ChosenAtRunTime(Compressed):
    """Elastic training: the byte rule (``fallback.prefer_dense_op``) at every step, from the world
    size at run time. Horovod does not retrace its allreduce after an elastic reset, so a plan taken
    at trace time would stay that of the first world; here one graph serves every size: a
    ``tf.cond`` runs hvdspar's own dense allreduce (op=Sum) or ``Allgather``'s sum."""

    def __init__(self, comp):
        super().__init__(comp)
        self.allgather = Allgather(comp)

    def sum(self, x, message):
        comp, slot, dtype, d, shape = self.comp, message.slot, message.dtype, message.d, message.shape
        ps = message.site.process_set
        cdt = compute_dtype(dtype)
        dense_nbytes = d * dtype.size
        go_dense = fallback.prefer_dense_op(comp.codec.expected_nbytes(d, dtype, shape), dense_nbytes,
                                            comp.size_op(ps))

        def dense():
            sent = tf.cast(x, dtype)
            name = exchange.collective_name("HorovodAllreduce", x, "dense")
            total = tf.cast(comp.exchange.allreduce_sum(sent, ps, name), cdt)
            memory = comp.feedback.residual(x, sent)
            return (total, reduced_is_finite(total), memory, tf.constant(dense_nbytes, tf.int64),
                    tf.constant(d, tf.int64), tf.zeros([2], tf.float64))

        def compressed():
            enc = comp.encoder(dtype, shape)(x, comp.seed_of(slot))
            name = exchange.collective_name("HorovodAllgather", x, "gather")
            total, finite = comp.decoder(dtype, shape)(comp.exchange.allgather(enc.message, ps, name),
                                                       comp.size_op(ps))
            memory = comp.feedback.residual(x, enc.q)
            return (tf.cast(total, cdt), finite, memory, message_nbytes(enc, len(message.tensors), dtype),
                    tf.cast(enc.kept, tf.int64), norms(enc))

        total, finite, memory, nbytes, kept, sq_norms = tf.cond(go_dense, dense, compressed)
        slot.record(nbytes, dense_nbytes, d, kept, dense=go_dense)
        return Sum(total, finite, tf.logical_and(finite, tf.logical_not(go_dense)), sq_norms, lambda: memory)


class Hierarchical(Compressed):
    """``hvdspar.hierarchy``'s exchange: s = the node's dense sum of x; this rank compresses its share
    s[l] (its own seed and memory), allgathers it across the nodes' rank l and decodes the N
    messages into t[l]; the node allgathers the shares t[l] into t (NaN where a share was not
    finite). Error feedback keeps s[l] - C(s[l]) in this rank's memory at the share's place: the
    memories of a node's ranks cover disjoint shares, so the node's sum of them is its residual."""

    def __init__(self, comp, topology):
        super().__init__(comp)
        self.topology = topology

    def sum(self, x, message):
        comp, slot, dtype, d, topo = self.comp, message.slot, message.dtype, message.d, self.topology
        sizes = hierarchy.shares(d, topo.local_size)
        start, size = sum(sizes[:topo.local_rank]), sizes[topo.local_rank]
        name = exchange.collective_name("HorovodAllreduce", x, "node")
        node_sum = comp.exchange.allreduce_sum(x, topo.node, name)  # (x's dtype: memory and casts stay exact)
        share = node_sum[start:start + size]
        enc = comp.encoder(dtype, tf.TensorShape([size]))(share, comp.seed_of(slot))
        gathered = comp.exchange.allgather(enc.message, topo.cross,
                                           exchange.collective_name("HorovodAllgather", x, "cross"))
        decode = comp.decoder(dtype, tf.TensorShape([size]))
        share_total, share_finite = decode(gathered, comp.size_op(topo.cross))
        share_total = wire.nan_unless_finite(share_total, share_finite)
        total = comp.exchange.allgather(share_total, topo.node, exchange.collective_name("HorovodAllgather", x, "node"))
        finite = reduced_is_finite(total)
        # bytes_sent: what crosses the nodes (the share's message, and the placeholders); inside the node
        # a ring allreduce of x and an allgather of the shares' sums: 3 (L - 1) / L D in float32
        within = (2 * x.dtype.size + total.dtype.size) * (topo.local_size - 1) * d // topo.local_size
        slot.record(message_nbytes(enc, len(message.tensors), dtype), d * dtype.size, size, enc.kept, dense=False,
                    within_node=within)  # (the density: of the share this rank compressed)
        residual = comp.feedback.residual(share, enc.q)
        new_memory = tf.pad(residual, [[start, d - start - size]]) if residual.shape[0] else residual
        return Sum(total, finite, finite, norms(enc), lambda: new_memory)


def message_nbytes(enc, n_members, dtype):
    """Bytes a compressed message puts on the wire: the message and one placeholder per member."""
    return tf.size(enc.message, out_type=tf.int64) + n_members * exchange.placeholder_nbytes(dtype)


def norms(enc):
    """[||x||^2, ||Q(x)||^2] (float64) of a message sent compressed, for the variance figures."""
    return tf.stack([tf.cast(enc.x_sq_norm, tf.float64), tf.cast(enc.q_sq_norm, tf.float64)])
