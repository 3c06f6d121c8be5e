"""The wire format: exact round trip, exact sizes, near the entropy bound, Theorem 4."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from hvdspar import bits, kernels, sparse_message, wire
from hvdspar.sparsify import gspar_message, uniform_message

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def roundtrip(msg, d, dtype):
    data = sparse_message.to_bytes(msg._replace(val_a=tf.cast(msg.val_a, dtype)), d, dtype)
    back = sparse_message.from_bytes(data, d, dtype)
    return data, back


@settings(max_examples=60, deadline=None)
@given(
    d=st.sampled_from([1, 2, 3, 8, 63, 1000, 4099]),  # few shapes: each traces its own graph
    rho=st.sampled_from([1e-3, 0.01, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
    heavy=st.booleans(),
)
def test_decode_encode_is_exact(d, rho, dtype, seed, heavy):
    rng = np.random.default_rng(seed)
    g = rng.standard_cauchy(d) if heavy else rng.normal(size=d)
    g = tf.cast(tf.constant(g), dtype)
    msg, _ = gspar_message(g, tf.constant([seed, 1], tf.int64), rho=rho)
    msg = msg._replace(val_a=tf.cast(msg.val_a, dtype))
    data, back = roundtrip(msg, d, dtype)
    np.testing.assert_array_equal(
        sparse_message.to_dense(back, d, dtype).numpy().astype(np.float64),
        sparse_message.to_dense(msg, d, dtype).numpy().astype(np.float64),
    )
    # the byte count is the real size, and the planning twin agrees
    n_a, n_b = int(tf.size(msg.idx_a)), int(tf.size(msg.idx_b))
    assert int(tf.size(data)) == sparse_message.expected_nbytes(n_a, n_b, d, dtype)
    _, _, total = wire.read_at(data, 0, d, dtype, sparse_message.body_size(d, dtype))
    assert int(total) == int(tf.size(data))


def test_decoded_values_equal_g_over_p():
    g = tf.constant(np.random.default_rng(0).standard_cauchy(3000), tf.float64)
    msg, lam = gspar_message(g, tf.constant([5, 5], tf.int64), rho=0.05)
    q = sparse_message.to_dense(sparse_message.from_bytes(sparse_message.to_bytes(msg, 3000, tf.float64), 3000, tf.float64), 3000, tf.float64)
    p = np.minimum(float(lam) * np.abs(g.numpy()), 1)
    kept = q.numpy() != 0
    np.testing.assert_allclose(q.numpy()[kept], g.numpy()[kept] / p[kept], rtol=1e-12)


def test_several_messages_sum_in_order():
    d = 777
    msgs, dense = [], []
    for r in range(3):
        g = tf.constant(np.random.default_rng(r).normal(size=d), tf.float32)
        msg, _ = gspar_message(g, tf.constant([r, 0], tf.int64), rho=0.1 * (r + 1))
        msgs.append(sparse_message.to_bytes(msg, d, tf.float32))
        dense.append(sparse_message.to_dense(msg, d, tf.float32).numpy())
    total, finite = sparse_message.sum_messages(tf.concat(msgs, 0), 3, d, tf.float32, tf.float32)
    assert bool(finite)
    np.testing.assert_allclose(total.numpy(), np.sum(dense, axis=0), rtol=1e-6)
    bad = tf.concat([msgs[0], wire.nonfinite(d, tf.float32), msgs[2]], 0)
    _, finite = sparse_message.sum_messages(bad, 3, d, tf.float32, tf.float32)
    assert not bool(finite)


def _three_messages(d, dtype, accumulate):
    """Three ranks' GSpar messages of d elements (rho 0.3, 0.01, 0.05: different lengths) and their
    Q as numpy arrays of the accumulate dtype."""
    msgs, dense = [], []
    for r, rho in enumerate([0.3, 0.01, 0.05]):
        g = tf.constant(np.random.default_rng(r).standard_t(2, size=d), dtype)
        msg, _ = gspar_message(g, tf.constant([r, 7], tf.int64), rho=rho)
        msgs.append(sparse_message.to_bytes(msg, d, dtype))
        dense.append(sparse_message.to_dense(msg, d, dtype, accumulate).numpy())
    return msgs, dense


def _rank_order_sum(arrays):
    """0 + a_0 + a_1 + ..., added in that order (what every rank's decoding must give bit for bit)."""
    total = np.zeros_like(arrays[0])
    for a in arrays:
        total = total + a
    return total


@pytest.mark.parametrize("dtype, accumulate", [(tf.float32, tf.float32), (tf.float16, tf.float32), (tf.float64, tf.float64)])
@pytest.mark.parametrize("d", [777, kernels.XLA_MIN_ELEMENTS + 3])
def test_the_sum_of_messages_is_rank_order_bit_for_bit_and_skips_a_nonfinite_one(d, dtype, accumulate):
    """Small tensors fold one scatter-add per message; large ones build one [M, P] table summed by
    one XLA computation: both equal sum_r Q_r added in rank order, bit for bit, with a non-finite
    message adding nothing and clearing the flag, and with messages of different lengths."""
    msgs, dense = _three_messages(d, dtype, accumulate)
    expected = _rank_order_sum(dense)
    total, finite = tf.function(lambda m: sparse_message.sum_messages(m, 3, d, dtype, accumulate))(tf.concat(msgs, 0))
    assert bool(finite) and total.dtype == accumulate
    np.testing.assert_array_equal(total.numpy(), expected)
    bad = tf.concat([msgs[0], wire.nonfinite(d, dtype), msgs[2]], 0)
    total, finite = sparse_message.sum_messages(bad, 3, d, dtype, accumulate)
    assert not bool(finite)
    np.testing.assert_array_equal(total.numpy(), dense[0] + dense[2])
    nothing, finite = sparse_message.sum_messages(wire.nonfinite(d, dtype), 1, d, dtype, accumulate)
    assert not bool(finite) and not np.any(nothing.numpy())


@pytest.mark.parametrize("dtype, accumulate", [(tf.float32, tf.float32), (tf.float16, tf.float32), (tf.float64, tf.float64)])
@pytest.mark.parametrize("d", [777, kernels.XLA_MIN_ELEMENTS + 3])
def test_the_sum_with_horovods_factor_is_the_factor_applied_to_each_entry_or_nan_everywhere(d, dtype, accumulate):
    """decode_sum with Horovod's factor (what decompress returns): large tensors multiply the table's
    entries by the factor before the one write of the output, so the result is sum_r factor Q_r in
    rank order, bit for bit (small tensors: factor x the sum); it equals factor x sum_r Q_r to
    rounding, exactly for 1/2. A non-finite message makes it NaN everywhere, as Horovod's sum."""
    msgs, dense = _three_messages(d, dtype, accumulate)
    np_acc = accumulate.as_numpy_dtype
    decode = tf.function(lambda m, n, f: sparse_message.sum_messages(m, n, d, dtype, accumulate, f))
    for factor in (1 / 3, 0.5, 1.7):
        f = np_acc(factor)
        total, finite = decode(tf.concat(msgs, 0), 3, tf.constant(f))
        assert bool(finite) and total.dtype == accumulate
        plain = _rank_order_sum(dense)
        expected = _rank_order_sum([q * f for q in dense]) if d >= kernels.XLA_MIN_ELEMENTS else plain * f
        np.testing.assert_array_equal(total.numpy(), expected)
        if factor == 0.5:
            np.testing.assert_array_equal(total.numpy(), plain * f)
        np.testing.assert_allclose(total.numpy(), plain * f, rtol=1e-6 if np_acc == np.float32 else 1e-14,
                                   atol=1e-30)
    bad = tf.concat([msgs[0], wire.nonfinite(d, dtype), msgs[2]], 0)
    total, finite = decode(bad, 3, tf.constant(np_acc(0.5)))
    assert not bool(finite) and np.all(np.isnan(total.numpy()))


@pytest.mark.parametrize("rho", [0.1, 0.01, 0.001])
def test_bytes_track_the_entropy_bound(rho):
    d = 1_000_000
    g = tf.constant(np.random.default_rng(1).standard_t(2, size=d), tf.float32)  # heavy-tailed
    msg, _ = gspar_message(g, tf.constant([1, 1], tf.int64), rho=rho)
    nbytes = int(tf.size(sparse_message.to_bytes(msg, d, tf.float32)))
    n_a, n_b = int(tf.size(msg.idx_a)), int(tf.size(msg.idx_b))
    n_minus = int(tf.reduce_sum(tf.cast(msg.neg_b, tf.int32)))
    bound = sparse_message.entropy_bits(n_a, n_b - n_minus, n_minus, d) / 8
    assert nbytes <= 1.25 * bound, (nbytes, bound)
    assert nbytes < 0.05 * 4 * d * rho * 10  # far below dense


def test_dense_symbols_are_chosen_when_cheaper():
    d = 1000
    g = tf.constant(np.random.default_rng(2).normal(size=d), tf.float32)
    msg, _ = gspar_message(g, tf.constant([1, 1], tf.int64), rho=0.7)
    data = sparse_message.to_bytes(msg, d, tf.float32)
    assert int(data[0]) == sparse_message.SCHEME_DENSE
    n_a, n_b = int(tf.size(msg.idx_a)), int(tf.size(msg.idx_b))
    sparse = wire.header_nbytes(d, tf.float32) + int(sparse_message.body_nbytes(sparse_message.SCHEME_SPARSE, n_a, n_b, d, tf.float32))
    assert int(tf.size(data)) < sparse


@pytest.mark.parametrize("seed", range(5))
def test_theorem4_coding_length(seed):
    """(rho, s)-approximately sparse g, epsilon = rho: bits <= s(b + log2 d) + min(rho s log2 d, d) + b.

    Our header carries two counts and a scheme byte that the theorem does not
    count (it counts only the scale): those 8 * (1 + 2w) bits are added.
    """
    rng = np.random.default_rng(seed)
    d, s, rho, b = 100_000, 100, 0.1, 32
    g = rng.normal(size=d)
    support = rng.choice(d, s, replace=False)
    g[support] = rng.uniform(1, 2, s) * rng.choice([-1, 1], s)
    tail = np.setdiff1d(np.arange(d), support)
    g[tail] *= rho * np.abs(g[support]).sum() / np.abs(g[tail]).sum()
    gt = tf.constant(g, tf.float32)
    msg, _ = gspar_message(gt, tf.constant([seed, 0], tf.int64), epsilon=rho)
    nbits = 8 * int(tf.size(sparse_message.to_bytes(msg, d, tf.float32)))
    bound = s * (b + math.log2(d)) + min(rho * s * math.log2(d), d) + b
    assert nbits <= bound + 8 * (1 + 2 * wire.count_width(d)), (nbits, bound)


def test_elias_fano_roundtrip_edge_cases():
    for d, idx in [(1, [0]), (10, []), (10, list(range(10))), (2**20, [0, 5, 2**20 - 1]), (17, [16])]:
        enc = sparse_message.ef_encode(tf.constant(idx, tf.int64), d)
        assert int(tf.size(enc)) == int(sparse_message.ef_nbytes(len(idx), d))
        np.testing.assert_array_equal(sparse_message.ef_decode(enc, len(idx), d).numpy(), idx)


def test_indices_beyond_int32_are_coded():
    d = 2**33 + 5  # a tensor over 2^31 elements: counts take 8 bytes, indices stay int64
    idx = tf.constant([3, 2**31 + 7, 2**33 + 4], tf.int64)
    enc = sparse_message.ef_encode(idx, d)
    np.testing.assert_array_equal(sparse_message.ef_decode(enc, 3, d).numpy(), idx.numpy())
    assert wire.count_width(d) == 8


def test_bit_packing_roundtrip():
    v = tf.constant([0, 1, 5, 7, 3], tf.int64)
    np.testing.assert_array_equal(bits.unpack_uints(bits.pack_uints(v, 3), 5, 3).numpy(), v.numpy())
    np.testing.assert_array_equal(bits.floor_log2(tf.constant([1, 2, 3, 4, 1023, 1024], tf.int64)).numpy(), [0, 1, 1, 2, 9, 10])


@pytest.mark.parametrize("xla", [False, True])
def test_unpack_uints_reads_every_width_from_64_bit_words(xla):
    """bits.unpack_uints reads each value from the two 64-bit words that hold it: every width 0..63,
    values across word boundaries, the top bit of width 63, counts not a multiple of anything; in
    plain TF ops and in XLA (the count padded to a power of two: 1500 pads to 2048)."""
    rng = np.random.default_rng(11)
    for width in range(64):
        for count in (0, 1, 3, 8, 17, 100) + ((1500,) if xla else ()):
            top = min(width, 62)
            v = rng.integers(0, 2**top, size=count, dtype=np.int64) if width else np.zeros(count, np.int64)
            if width == 63:
                v = v * 2 + 1  # 63 bits set to the top
            packed = bits.pack_uints(tf.constant(v), width)
            assert int(tf.size(packed)) == -(-count * width // 8)
            np.testing.assert_array_equal(bits.unpack_uints(packed, count, width, xla=xla).numpy(), v,
                                          err_msg=f"width {width}")


def _stream_of(values, width):
    """The documented stream in numpy: value j's bit k is bit j w + k, bytes least significant bit first."""
    bits_ = np.zeros(len(values) * width, np.uint8)
    for j, v in enumerate(values):
        for k in range(width):
            bits_[j * width + k] = (int(v) >> k) & 1
    return np.packbits(bits_, bitorder="little")


def test_pack_uints_writes_the_documented_stream_for_every_width():
    """bits.pack_uints routes each value's three pieces into 32-bit words: the bytes equal the bit-by-bit
    definition for every width 0..63 (a value across two or three words, the top bit of width 63),
    counts that end mid-byte, mid-word and mid-group, with the width known when the graph is built
    (the always-zero pieces dropped) and as a traced tensor (every piece, as in the Elias-Fano code)."""
    traced = tf.function(bits.pack_uints, input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int64)])
    rng = np.random.default_rng(14)
    for width in range(64):
        for count in (0, 1, 3, 17, 70):
            v = rng.integers(0, 2**min(width, 62), size=count, dtype=np.int64) if width else np.zeros(count, np.int64)
            if width == 63:
                v = v * 2 + 1
            want = _stream_of(v, width)
            np.testing.assert_array_equal(bits.pack_uints(tf.constant(v), width).numpy(), want,
                                          err_msg=f"static width {width}, {count} values")
            np.testing.assert_array_equal(traced(tf.constant(v), tf.constant(width, tf.int64)).numpy(), want,
                                          err_msg=f"traced width {width}, {count} values")


def test_pack_positions_sets_exactly_the_given_bits():
    """bits.pack_positions (the Elias-Fano unary bits): the stream of nbits bits set at the sorted positions,
    against numpy; empty, first and last bit, every bit, random sets."""
    rng = np.random.default_rng(15)
    for nbits in (0, 1, 8, 13, 64, 1000):
        sets = [[], [0], [nbits - 1], list(range(nbits)), np.sort(rng.choice(nbits, nbits // 3, replace=False))]
        for positions in sets if nbits else [[]]:
            positions = np.asarray(positions, np.int64)
            want = np.zeros(nbits, np.uint8)
            want[positions] = 1
            got = bits.pack_positions(tf.constant(positions, tf.int64), nbits).numpy()
            np.testing.assert_array_equal(got, np.packbits(want, bitorder="little"), err_msg=f"{nbits} bits")


@pytest.mark.parametrize("xla", [False, True])
def test_set_bit_positions_ignore_bits_past_nbits(xla):
    """bits.set_bit_positions, plain and in XLA (padded to a power of two): the set bits among the
    first nbits, against numpy's little-endian unpacking; bits set past nbits are not reported."""
    rng = np.random.default_rng(12)
    for nbytes in (0, 1, 5, 1024, 1025, 3000):
        data = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
        for nbits in sorted({0, max(8 * nbytes - 5, 0), 8 * nbytes}):
            want = np.flatnonzero(np.unpackbits(data, bitorder="little")[:nbits])
            got = bits.set_bit_positions(tf.constant(data), nbits, xla=xla).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{nbytes} bytes, {nbits} bits")


def test_elias_fano_roundtrip_on_both_paths():
    """ef_decode unpacks the unary high bits in XLA from d = kernels.XLA_MIN_ELEMENTS on: the same
    indices as below it, for empty, single, full and random index sets."""
    rng = np.random.default_rng(13)
    for d in (kernels.XLA_MIN_ELEMENTS - 1, kernels.XLA_MIN_ELEMENTS, 1_000_003):
        for idx in ([], [0], [d - 1], list(range(0, d, max(1, d // 1000))), np.sort(rng.choice(d, 5000, replace=False))):
            idx = np.asarray(idx, np.int64)
            enc = sparse_message.ef_encode(tf.constant(idx, tf.int64), d)
            np.testing.assert_array_equal(sparse_message.ef_decode(enc, len(idx), d).numpy(), idx)
    d = kernels.XLA_MIN_ELEMENTS
    every = np.arange(d, dtype=np.int64)  # n = d: low width 0, every unary bit set
    np.testing.assert_array_equal(sparse_message.ef_decode(sparse_message.ef_encode(tf.constant(every), d), d, d).numpy(), every)


def test_unisp_messages_roundtrip():
    g = tf.constant(np.random.default_rng(3).normal(size=500), tf.float32)
    msg = uniform_message(g, tf.constant([1, 1], tf.int64), 0.1)
    data, back = roundtrip(msg, 500, tf.float32)
    np.testing.assert_array_equal(sparse_message.to_dense(back, 500, tf.float32), sparse_message.to_dense(msg, 500, tf.float32))
