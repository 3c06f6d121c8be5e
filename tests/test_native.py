"""hvdspar.native's compiled kernels against the XLA computations they stand in for (``hvdspar.kernels``),
bit for bit: the kept indices, the decode's sum, and so a compressor's messages."""

import numpy as np
import pytest
import tensorflow as tf

from hvdspar import kernels, native, rng
from tests.conftest import require_native

pytestmark = pytest.mark.quick  # no Horovod, one process


@pytest.fixture(autouse=True)
def built():
    require_native(native)


def xla_keep(x, lam, seed):
    """The XLA path's sampling pass: chunk by chunk, {i : u_i < lam |x_i|}."""
    parts, offsets = kernels.chunks(x)
    kept = [tf.where(kernels._chunk_keep(p, lam, seed, tf.constant(o, tf.int64)))[:, 0] + o
            for p, o in zip(parts, offsets)]
    return tf.concat(kept, 0)


@pytest.mark.parametrize("d", [1 << 16, (1 << 16) + 1, 3 * (1 << 18) + 4321, 1_000_003])
@pytest.mark.parametrize("lam_scale", [0.0, 0.3, 1.34, None])  # none kept; a few; GSpar's candidates; all non-zero
def test_keep_is_the_xla_sampling_pass_bit_for_bit(d, lam_scale):
    x = np.random.default_rng(d).standard_t(2, size=d).astype(np.float32)
    x[::97] = 0  # zeros are never kept
    big = np.finfo(np.float32).max  # lam |x_i| >= 1 > u_i for every x_i != 0 (inf where it overflows)
    lam = tf.constant(big if lam_scale is None else lam_scale * 0.01 * d / np.abs(x).sum(), tf.float32)
    for seed in ([0, 0], [7, 123456789], [-3, 2**40 + 5]):
        seed = tf.constant(seed, tf.int64)
        got = native.keep(tf.constant(x), lam, seed).numpy()
        np.testing.assert_array_equal(got, xla_keep(tf.constant(x), lam, seed).numpy())
        with np.errstate(over="ignore"):  # lam |x_i| = inf, as float32 computes it in the kernel
            np.testing.assert_array_equal(got, np.flatnonzero(rng.uniform(d, seed).numpy() < lam.numpy() * np.abs(x)))
        if lam_scale is None:
            np.testing.assert_array_equal(got, np.flatnonzero(x))


def test_keep_rejects_a_malformed_seed_and_lambda():
    x = tf.ones([1 << 16])
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must have 2 elements"):
        native.keep(x, 1.0, tf.constant([1, 2, 3], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="lam must be a scalar"):
        native.keep(x, tf.constant([1.0, 2.0]), tf.constant([1, 2], tf.int64))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("m", [1, 3])
def test_scatter_rows_is_the_xla_sum_bit_for_bit(dtype, m):
    d = 1_000_003
    gen = np.random.default_rng(m)
    width = 1 << 15
    idx = np.zeros((m, width), np.int64)
    val = np.zeros((m, width), dtype.as_numpy_dtype)
    for r in range(m):  # rows of different lengths, padded with (0, 0.0) as wire.fold_entries pads them
        n = width - 100 * r
        idx[r, :n] = gen.permutation(gen.choice(d, n, replace=False))  # unique within a row, any order
        val[r, :n] = gen.standard_t(2, size=n)
    got = native.scatter_rows(tf.constant(idx), tf.constant(val), d).numpy()
    want = kernels._scatter_rows_fn(d)(tf.constant(idx), tf.constant(val)).numpy()
    assert got.tobytes() == want.tobytes()
    dense = np.zeros(d)
    for r in range(m):
        np.add.at(dense, idx[r], val[r].astype(np.float64))
    np.testing.assert_allclose(got, dense, rtol=1e-6 if dtype == tf.float32 else 1e-15, atol=1e-6)


def test_scatter_rows_names_an_index_outside_the_output():
    with pytest.raises(tf.errors.InvalidArgumentError, match="index 70000 of entry 1 is outside"):
        native.scatter_rows(tf.constant([[3, 70_000]], tf.int64), tf.constant([[1.0, 2.0]]), 70_000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be \\[M, P\\] alike"):
        native.scatter_rows(tf.constant([[1, 2]], tf.int64), tf.constant([1.0, 2.0]), 10)


def test_the_library_is_rebuilt_when_its_source_changes(tmp_path, monkeypatch):
    """A library built from another kernels.cc (or for another TensorFlow) is stale: not loaded."""
    assert native.is_current()
    changed = tmp_path / "kernels.cc"
    changed.write_text(native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    assert not native.is_current()


def test_hvdspar_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("HVDSPAR_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {})
    assert native.why_not() == "HVDSPAR_NATIVE=0"
    assert not native.usable(tf.zeros([1 << 16]))
    with pytest.raises(RuntimeError, match="not in use: HVDSPAR_NATIVE=0"):
        native.keep(tf.zeros([1 << 16]), 1.0, tf.constant([1, 2], tf.int64))


@pytest.mark.parametrize("memory", [False, True])
def test_a_compressor_sends_the_same_bits_with_and_without_the_kernels(memory, monkeypatch):
    """The model trained must not depend on whether g++ was present: GSpar's message (lambda, the kept
    set, the values, error feedback's gamma) and the decoded sum, with the kernels and without
    (HVDSPAR_NATIVE=0's path), bit for bit, on heavy-tailed gradients of several sizes."""
    import hvdspar

    def round_trip(x, seed):
        comp = hvdspar.GSpar(rho=0.01, memory=memory, seed=1)
        enc = comp.feedback.encode(tf.constant(x), tf.constant([seed, 0], tf.int64), tf.float32)
        total, _ = comp.codec.decode_sum(tf.tile(enc.message, [2]), 2, x.size, tf.float32)
        return enc.message.numpy().tobytes(), total.numpy().tobytes()

    cases = [(np.random.default_rng(d).standard_t(2, size=d).astype(np.float32) * 1e-3, d)
             for d in (1 << 16, 3 * (1 << 18) + 4321, 2_000_003)]
    with_kernels = [round_trip(x, seed) for x, seed in cases]
    monkeypatch.setitem(native._state, "why_not", "HVDSPAR_NATIVE=0")
    without = [round_trip(x, seed) for x, seed in cases]
    for (d_msg, d_sum), (x_msg, x_sum), (x, _) in zip(with_kernels, without, cases):
        assert d_msg == x_msg, f"the message of {x.size} elements differs with and without hvdspar.native"
        assert d_sum == x_sum, f"the decoded sum of {x.size} elements differs with and without hvdspar.native"
