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
