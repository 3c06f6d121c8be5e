"""How many encoders and decoders a model's messages trace (``Compressor.encoder``/``decoder``).

Per-tensor compression (``bucket_mb=0``) of a real model meets dozens of sizes (Keras ResNet-50:
22 sizes, 28 shapes; MobileNetV2: 35 sizes, 30 of them under ``kernels.XLA_MIN_ELEMENTS``), and
each traced encoder and decoder costs about a second to build. A codec that takes d at run time
(``Codec.sizes_at_run_time``: GSpar, UniSp, TopK, RandomK) shares one function among all small sizes, and every
codec that buckets shares one per size, not per shape. The functions give the same bits as those
traced for one size.
"""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar
from hvdspar import topk
from hvdspar.gspar import GSparCodec, UniSpCodec
from hvdspar.kernels import XLA_MIN_ELEMENTS

pytestmark = pytest.mark.quick  # no Horovod, one process

SEED = tf.constant([3, 4], tf.int64)
CODECS = {"gspar-greedy": GSparCodec(rho=0.1), "gspar-exact": GSparCodec(rho=0.1, method="exact"),
          "gspar-epsilon": GSparCodec(epsilon=1.0), "unisp": UniSpCodec(0.1), "topk": topk.TopKCodec(0.1),
          "randomk-rescaled": topk.RandomKCodec(0.1, rescale=True)}


@pytest.mark.parametrize("name, dtype, contract", [
    ("gspar-greedy", tf.float32, False), ("gspar-greedy", tf.float32, True), ("gspar-greedy", tf.float16, True),
    ("gspar-greedy", tf.float64, False), ("gspar-exact", tf.float32, True), ("gspar-epsilon", tf.float32, False),
    ("unisp", tf.float32, True), ("unisp", tf.float16, False), ("topk", tf.float32, True),
    ("randomk-rescaled", tf.float16, False)])
def test_a_codec_traced_for_every_small_size_gives_the_bits_of_one_traced_for_the_size(name, dtype, contract):
    codec = CODECS[name]
    any_size = tf.function(lambda x: codec.encode(x, SEED, dtype, contract=contract), autograph=False,
                           input_signature=[tf.TensorSpec([None], dtype)])
    decode_any = tf.function(lambda data, d: codec.decode_sum(data, tf.constant(2), d, dtype), autograph=False,
                             input_signature=[tf.TensorSpec([None], tf.uint8), tf.TensorSpec([], tf.int64)])
    for d in (1, 1000, XLA_MIN_ELEMENTS - 1):
        x = tf.constant(np.random.default_rng(d).standard_t(3, size=d), dtype)
        one_size = tf.function(lambda x: codec.encode(x, SEED, dtype, contract=contract), autograph=False)
        got, want = any_size(x), one_size(x)
        for field, a, b in zip(want._fields, got, want):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{field}, d = {d}")
        data = tf.concat([want.message, one_size(-x).message], 0)
        total, finite = decode_any(data, tf.constant(d, tf.int64))
        want_total, want_finite = tf.function(lambda data: codec.decode_sum(data, tf.constant(2), d, dtype),
                                              autograph=False)(data)
        np.testing.assert_array_equal(total.numpy(), want_total.numpy(), err_msg=f"decoded sum, d = {d}")
        assert bool(finite) == bool(want_finite)


def test_top_k_counts_k_at_run_time_as_in_python():
    """k = max(1, round(ratio d)) <= d, half to even, for d known only at run time."""
    k_of = tf.function(lambda d, ratio: topk.num_kept(d, ratio), autograph=False,
                       input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.float64)])
    for ratio in (0.1, 0.25, 0.5, 0.015, 1.0):
        got = [int(k_of(d, ratio)) for d in range(0, 401)]
        assert got == [topk.num_kept(d, ratio) for d in range(0, 401)], ratio


def traced_keys(comp, shapes):
    """Send one tensor of each shape through ``comp`` (one rank, inside a tf.function) -> the keys of
    the functions it traced, and whether every result equals the input (rho = 1: exact)."""
    tensors = [tf.random.stateless_normal(s, seed=[i, 1]) for i, s in enumerate(shapes)]

    @tf.function
    def step():
        return [comp.decompress(*comp.compress(t)) for t in tensors]

    exact = all(np.allclose(a.numpy(), t.numpy(), rtol=1e-6) for a, t in zip(step(), tensors))
    return set(comp._traced_fns), exact


SHAPES = [[3], [64], [7, 7], [3, 3, 8, 16], [1, 1, 16, 72], [1, 1, 72, 16], [300, 256], [256, 300], [70000]]


@pytest.mark.parametrize("memory", [False, True])
def test_per_tensor_gspar_traces_one_encoder_for_the_small_sizes_and_one_per_large_size(memory):
    comp = hvdspar.GSpar(rho=1.0, method="exact", fallback=False, memory=memory, bucket_mb=0, seed=1)
    keys, exact = traced_keys(comp, SHAPES)
    assert exact
    small = {k for k in keys if "small" in k}
    assert {k[0] for k in small} == {"encode", "decode"} and len(small) == 2, keys
    large = keys - small  # [300, 256] and [256, 300] share one size; [70000] is its own
    assert sorted(k[2] for k in large if k[0] == "encode") == [(70000,), (76800,)], keys
    assert len(large) == 4
    for slot in comp.slots:  # the memory keeps its static shape through the shared function
        if memory:
            assert slot.memory.shape.is_fully_defined()


def test_a_codec_that_needs_d_in_python_traces_one_function_per_size_not_per_shape():
    comp = hvdspar.QSGD(levels=4, fallback=False, bucket_mb=0, seed=1)
    keys, _ = traced_keys(comp, [[1, 1, 16, 72], [1, 1, 72, 16], [64], [8, 8]])
    assert sorted(k[2] for k in keys if k[0] == "encode") == [(64,), (1152,)], keys


class RunTimeSize(hvdspar.exchange.InProcess):
    """InProcess with the number of ranks read at run time, as Horovod's ``size_op`` is."""

    def __init__(self, num_ranks):
        super().__init__(num_ranks)
        self.size = tf.Variable(num_ranks, dtype=tf.int32, trainable=False)

    def size_op(self, process_set=None):
        return self.size.read_value()


def test_no_traced_encoder_or_decoder_is_called_with_a_constant():
    """Grappler's function specialization copies a called function once per call site that hands
    it a Const: with d as a constant, every tensor of a per-tensor model got its own copy of the
    small-size decoder, optimised one by one (MobileNetV2 at 32 px under 2 ranks: first step 80 s,
    51 s without the copies). Every call of a traced function takes only values made at run time."""
    comp = hvdspar.GSpar(rho=1.0, method="exact", fallback=False, bucket_mb=0, seed=1)
    comp.exchange = RunTimeSize(2)
    tensors = [tf.random.stateless_normal(s, seed=[i, 1]) for i, s in enumerate(SHAPES)]
    step = tf.function(lambda: [comp.decompress(*comp.compress(t)) for t in tensors], autograph=False)
    graph_def = step.get_concrete_function().graph.as_graph_def()
    traced = {f.function_def.signature.name for fn in comp._traced_fns.values() for f in fn._list_all_concrete_functions()}
    bodies = [graph_def.node] + [f.node_def for f in graph_def.library.function]
    calls = 0
    for nodes in bodies:
        ops = {n.name: n.op for n in nodes}
        for n in nodes:
            if n.op in ("PartitionedCall", "StatefulPartitionedCall") and n.attr["f"].func.name in traced:
                calls += 1
                consts = [i for i in n.input if not i.startswith("^") and ops.get(i.split(":")[0]) == "Const"]
                assert not consts, f"{n.attr['f'].func.name} called with constants {consts}"
    assert calls == 2 * len(SHAPES)
