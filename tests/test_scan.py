"""The first pass over a message's input (hvdspar.scan): finite?, ||x||^2 and ||x||_1 in one read."""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar
from hvdspar import scan
from hvdspar.sparsify import gspar_message
from hvdspar.kernels import XLA_MIN_ELEMENTS

# no Horovod, one process; every test on hvdspar.native's kernels and on the XLA path (tests/conftest.py)
pytestmark = [pytest.mark.quick, pytest.mark.usefixtures("kernels")]


CHUNK = 1 << 18  # a size of several chunks: 3 * CHUNK + 4321 is four chunks of 2^18, the last padded
SIZES = [1000, 1 << 16, 3 * CHUNK + 4321]  # plain TF; one XLA chunk; several chunks, padded


@pytest.mark.parametrize("dtype", [tf.float16, tf.float32, tf.float64])
@pytest.mark.parametrize("d", SIZES)
def test_scan_gives_the_norms_of_x(d, dtype):
    x = np.random.default_rng(d).standard_t(3, size=d).astype(dtype.as_numpy_dtype)
    s = scan.scan(tf.constant(x))
    assert bool(s.finite)
    x64 = x.astype(np.float64)
    assert s.sq_norm.dtype == tf.float64
    # float64 throughout for float64 x and small x; float32 rows of 1024 squares for large narrow x
    precise = dtype == tf.float64 or d < XLA_MIN_ELEMENTS
    assert float(s.sq_norm) == pytest.approx(float(np.dot(x64, x64)), rel=1e-12 if precise else 1e-6)
    if d < XLA_MIN_ELEMENTS:
        assert s.l1 is None  # GSpar's plain path computes its own
    else:
        # the compute dtype, summed per chunk: float32 rounding for narrow dtypes
        assert float(s.l1) == pytest.approx(float(np.abs(x64).sum()), rel=1e-5 if dtype != tf.float64 else 1e-12)


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "last"])
def test_scan_sees_a_non_finite_element_in_any_chunk(d, bad, where):
    x = np.random.default_rng(1).normal(size=d).astype(np.float32)
    x[0 if where == "first" else d - 1] = bad  # the last element lies in the zero-padded chunk
    assert not bool(scan.scan(tf.constant(x)).finite)


def test_scan_is_the_same_bits_on_every_call():
    """Chunk results are combined in a fixed order, whatever order the chunks ran in."""
    x = tf.constant(np.random.default_rng(3).standard_t(2, size=5 * CHUNK + 77), tf.float32)
    first = [t.numpy() for t in scan.scan(x)]
    for _ in range(3):
        again = [t.numpy() for t in scan.scan(x)]
        assert [a.tobytes() for a in again] == [a.tobytes() for a in first]


def test_gspar_from_the_scan_sends_the_message_it_computes_alone():
    """Encode hands the scan's ||x||_1 to GSpar (Algorithm 3's lambda_0 = rho d / ||x||_1) instead of
    summing |x| again: the message is bit for bit the one gspar_message computes on its own."""
    d = 2 * CHUNK + 999
    g = tf.constant(np.random.default_rng(4).standard_t(2, size=d), tf.float32)
    seed = tf.constant([7, 8], tf.int64)
    alone, lam_alone = gspar_message(g, seed, rho=0.01)
    given, lam_given = gspar_message(g, seed, rho=0.01, moments=scan.scan(g))
    assert float(lam_alone) == float(lam_given)
    for a, b in zip(alone, given):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    codec = hvdspar.GSpar(rho=0.01).codec
    enc = codec.encode(g, seed, tf.float32, g.shape)
    from hvdspar import sparse_message

    np.testing.assert_array_equal(enc.message.numpy(), sparse_message.to_bytes(alone, d, tf.float32).numpy())


@pytest.mark.parametrize("make", [lambda: hvdspar.GSpar(rho=0.05), lambda: hvdspar.UniSp(rho=0.05),
                                  lambda: hvdspar.QSGD(levels=4), lambda: hvdspar.TopK(ratio=0.05)])
@pytest.mark.parametrize("d", [3000, 1 << 17])
def test_encode_reports_the_norm_of_x_and_nothing_for_a_non_finite_x(make, d):
    codec = make().codec
    x = np.random.default_rng(5).normal(size=d).astype(np.float32)
    seed = tf.constant([1, 1], tf.int64)
    enc = codec.encode(tf.constant(x), seed, tf.float32, tf.TensorShape([d]))
    # float64 for small x; float32 rows of 1024 squares, summed in float64, for large float32 x
    rel = 1e-12 if d < XLA_MIN_ELEMENTS else 1e-6
    assert float(enc.x_sq_norm) == pytest.approx(float(np.dot(x.astype(np.float64), x)), rel=rel)
    x[d // 2] = np.nan
    enc = codec.encode(tf.constant(x), seed, tf.float32, tf.TensorShape([d]))
    assert float(enc.x_sq_norm) == 0.0 and float(enc.q_sq_norm) == 0.0 and int(enc.kept) == 0


@pytest.mark.parametrize("dtype", [tf.float16, tf.float32])
@pytest.mark.parametrize("kind", ["huge", "tiny", "zero"])
def test_scan_takes_float64_where_float32_squares_cannot_hold_x(kind, dtype):
    """Large narrow x sum their squares in float32 rows: where a square overflows (|x_i| >= 1.8e19, a finite
    float32), where they flush to zero (all |x_i| ~ 1e-25), the pass runs again in float64, so x is
    still finite and ||x||^2 exact; all zeros stay 0."""
    if dtype == tf.float16 and kind != "zero":
        pytest.skip("float16 holds neither 1e20 nor 1e-25")
    d = 3 * CHUNK + 4321
    x = np.random.default_rng(5).normal(size=d)
    x = {"huge": x * 1e20, "tiny": x * 1e-25, "zero": x * 0}[kind].astype(dtype.as_numpy_dtype)
    s = scan.scan(tf.constant(x))
    assert bool(s.finite)
    x64 = x.astype(np.float64)
    assert float(s.sq_norm) == pytest.approx(float(np.dot(x64, x64)), rel=1e-12)
    assert (float(s.sq_norm) > 0) == (kind != "zero")
