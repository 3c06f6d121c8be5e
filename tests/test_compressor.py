"""The base Compressor's trip in one process (before hvd.init(): a world of one rank).

compress() encodes and gathers (one message here), decompress() decodes and multiplies by
the reduced placeholder: Horovod's factor. The 2-rank versions are in tests/test_dropin.py.
"""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar


def exact():
    return hvdspar.GSpar(rho=1.0, method="exact", fallback=False, seed=1)


@pytest.mark.parametrize("factor", [1.0, 0.5, 3.0, 0.0])
def test_decompress_multiplies_the_decoded_sum_by_the_reduced_placeholder(factor):
    comp = exact()
    g = tf.random.stateless_normal([6, 7], seed=[1, 2])
    placeholder, ctx = comp.compress(g)
    assert placeholder.shape == [1] and float(placeholder[0]) == 1.0  # rank 0: the root
    out = comp.decompress(placeholder * factor, ctx)
    np.testing.assert_allclose(out.numpy(), factor * g.numpy(), rtol=1e-6)


def test_float64_gradients_get_a_float64_placeholder():
    comp = exact()
    placeholder, ctx = comp.compress(tf.ones([5], tf.float64))
    assert placeholder.dtype == tf.float64
    assert comp.decompress(placeholder, ctx).dtype == tf.float64


def test_a_nonfinite_gradient_gives_nan_everywhere_and_leaves_memory_and_stream():
    comp = hvdspar.GSpar(rho=0.5, memory=True, fallback=False, seed=1)
    g = tf.random.stateless_normal([100], seed=[1, 2])
    comp.decompress(*comp.compress(g))
    memory, calls = comp.slots[0].memory.numpy().copy(), int(comp.slots[0].calls.numpy())
    norms = comp.traffic()["sq_norm"]
    bad = tf.tensor_scatter_nd_update(g, [[5]], [np.inf])
    out = comp.decompress(*comp.compress(bad))
    assert np.isnan(out.numpy()).all()
    assert (comp.slots[0].memory.numpy() == memory).all()
    assert int(comp.slots[0].calls.numpy()) == calls
    assert comp.traffic()["sq_norm"] == norms


def test_nonfinite_raise_stops_with_a_clear_error():
    comp = hvdspar.GSpar(rho=0.5, fallback=False, nonfinite="raise", seed=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        comp.decompress(*comp.compress(tf.constant([1.0, np.nan, 2.0])))


def test_nonfinite_argument_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        hvdspar.TopK(ratio=0.1, nonfinite="skip")
    comp = hvdspar.from_spec("topk:ratio=0.1,nonfinite=raise")
    assert comp.nonfinite == "raise" and hvdspar.from_spec(comp.spec()).nonfinite == "raise"
    assert "nonfinite" not in hvdspar.from_spec("topk:ratio=0.1").spec()  # the default is not spelled out


def test_eager_calls_share_one_state_per_shape():
    comp = hvdspar.TopK(ratio=0.1, memory=True, seed=1)
    for t in range(5):
        comp.decompress(*comp.compress(tf.fill([50], float(t))))
        comp.decompress(*comp.compress(tf.fill([3, 4], float(t))))
    assert len(comp.slots) == 2
    assert [int(s.calls.numpy()) for s in comp.slots] == [5, 5]
