"""The counter-based uniforms behind GSpar's sampling are uniform and independent enough."""

import numpy as np
import tensorflow as tf
import pytest
from scipy import stats

from hvdspar import rng

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")


def test_uniform_passes_kolmogorov_smirnov_and_moments():
    u = rng.uniform(200_000, tf.constant([3, 4], tf.int64)).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)


def test_neighbouring_coordinates_and_seeds_are_uncorrelated():
    n = 200_000
    a = rng.uniform(n, tf.constant([1, 0], tf.int64)).numpy()
    b = rng.uniform(n, tf.constant([1, 1], tf.int64)).numpy()  # next step
    c = rng.uniform(n, tf.constant([2, 0], tf.int64)).numpy()  # another rank/tensor
    bound = 5 / np.sqrt(n)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < bound
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    assert abs(np.corrcoef(a, c)[0, 1]) < bound
    # Bernoulli(0.01) counts per block behave like independent draws (chi-square on 100 blocks)
    hits = (a < 0.01).reshape(100, -1).sum(axis=1)
    expected = 0.01 * n / 100
    chi2 = np.sum((hits - expected) ** 2 / (expected * 0.99))
    assert stats.chi2.sf(chi2, df=99) > 1e-3


def test_same_seed_same_numbers():
    s = tf.constant([9, 9], tf.int64)
    np.testing.assert_array_equal(rng.uniform(1000, s).numpy(), rng.uniform(1000, s).numpy())


def test_offset_continues_the_same_stream():
    s = tf.constant([5, 6], tf.int64)
    whole = rng.uniform(3000, s).numpy()
    parts = np.concatenate([rng.uniform(1000, s, offset=0).numpy(), rng.uniform(2000, s, offset=1000).numpy()])
    np.testing.assert_array_equal(whole, parts)


def _fmix32_numpy(x):
    x = x.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & m
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & m
    return x ^ (x >> np.uint64(16))


@pytest.mark.parametrize("jit", [False, True])
def test_uniform_is_the_documented_hash_bit_for_bit(jit):
    """u_i = fmix(fmix(lo ^ key) + hi + key) >> 8 / 2^24 with key = fmix(fmix(s0) 0x9E3779B9 + s1), all
    mod 2^32, written again in numpy: pins the stream, so a change of the lanes (int64 -> uint32, for
    speed) or of XLA cannot change which coordinates a seed keeps, inside or outside XLA."""
    m = 0xFFFFFFFF
    for s0, s1 in ((0, 0), (3, 4), (2**31 - 1, 2**40 + 5), (12_345_678_901, 7)):
        for offset in (0, 2**32 - 3, 5 * 2**32 + 11):
            key = int(_fmix32_numpy(np.array([(int(_fmix32_numpy(np.array([s0 & m]))[0]) * 0x9E3779B9 + s1) & m]))[0])
            i = np.arange(offset, offset + 64, dtype=np.uint64)
            x = _fmix32_numpy((i & np.uint64(m)) ^ np.uint64(key))
            x = _fmix32_numpy((x + (i >> np.uint64(32)) + np.uint64(key)) & np.uint64(m))
            want = (x >> np.uint64(8)).astype(np.float64) / 2**24
            seed = tf.constant([s0, s1], tf.int64)
            fn = tf.function(lambda seed=seed, offset=offset: rng.uniform(64, seed, tf.float64, offset), jit_compile=jit)
            np.testing.assert_array_equal(fn().numpy(), want)
