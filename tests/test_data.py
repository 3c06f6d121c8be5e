"""hvdspar.training.data and training.fstar: generator, parsers, shards, f* (no Horovod, fast)."""

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from hvdspar.training import data, fstar

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")

SHARED = data.shared_data_root()
needs_libsvm = pytest.mark.skipif(not (SHARED / "libsvm" / "a9a").exists(), reason="shared LIBSVM data not present")
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar10" / "cifar10_exact_subset.npz").exists(), reason="CIFAR-10 subset not present")
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").exists(), reason="MNIST not present")


# ---------------------------------------------------------------------------------------------
# the paper's synthetic generator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c2", [1 / 4, 1 / 16, 1 / 64])
def test_synthetic_follows_the_papers_definition(c2):
    n, d, c1 = 1024, 2048, 0.9
    s = data.synthetic(n, d, c1, c2, seed=3)
    # B ~ U[0,1]^d; exactly the coordinates with B_i <= C2 are shrunk, by the factor C1.
    assert np.array_equal(s.shrunk, s.B_uniform <= c2)
    np.testing.assert_array_equal(s.B[s.shrunk], c1 * s.B_uniform[s.shrunk])
    np.testing.assert_array_equal(s.B[~s.shrunk], s.B_uniform[~s.shrunk])
    # Fraction shrunk ~ C2: binomial(d, C2), 4 standard deviations.
    assert abs(s.shrunk.mean() - c2) <= 4 * np.sqrt(c2 * (1 - c2) / d)
    # a_n = a_bar_n * B, labels = sign(a_bar_n^T w_bar) (the dense draws, as the paper writes it).
    np.testing.assert_array_equal(s.a, s.a_bar * s.B)
    np.testing.assert_array_equal(s.b, np.where(s.a_bar @ s.w_bar >= 0, 1.0, -1.0))
    assert set(np.unique(s.b)) == {-1.0, 1.0}
    # a_bar ~ N(0, 1): so each feature column's spread is B_i (scale C1 B_i on shrunk ones).
    col_std = s.a.std(axis=0)
    ratio = col_std / s.B
    assert abs(np.median(ratio) - 1.0) < 0.01
    assert np.all(np.abs(ratio - 1.0) < 0.15)  # each column: 1024 draws, sd of the ratio ~ 0.022
    # Shrunk columns lie below C1*C2 in scale; unshrunk ones above C2.
    assert s.B[s.shrunk].max() <= c1 * c2 and s.B[~s.shrunk].min() > c2


def test_skewed_variant_keeps_the_largest_c2_fraction_so_smaller_c2_is_sparser():
    # The labelled variant (not the paper's text): every coordinate but the largest C2
    # fraction is shrunk by C1, so about C2 d columns keep a scale in (1 - C2, 1].
    d, c1 = 2048, 0.01
    eff = []
    for c2 in (1 / 4, 1 / 16, 1 / 64):
        s = data.synthetic(256, d, c1, c2, seed=3, generator="skewed")
        kept = ~s.shrunk
        assert abs(kept.mean() - c2) <= 4 * np.sqrt(c2 * (1 - c2) / d)
        assert s.B[kept].min() > 1 - c2 and s.B[s.shrunk].max() <= c1
        np.testing.assert_array_equal(s.B[s.shrunk], c1 * s.B_uniform[s.shrunk])
        # Effective density of the column scales, (sum B)^2 / (d sum B^2): 1 for equal
        # scales, ~C2 when C2 d columns carry the scale. It must fall with C2.
        eff.append(s.B.sum() ** 2 / (d * np.sum(s.B**2)))
    assert eff[0] > eff[1] > eff[2], eff
    assert eff[2] < 0.1, eff


def test_synthetic_is_reproducible_by_seed():
    a, b = data.synthetic(64, 32, seed=5), data.synthetic(64, 32, seed=5)
    c = data.synthetic(64, 32, seed=6)
    for name in ("a", "b", "B", "w_bar"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.a, c.a)
    ds = data.load_synthetic(n=64, d=32, seed=5)
    np.testing.assert_array_equal(ds.x_train, a.a.astype(np.float32))
    assert ds.x_test.shape == (16, 32) and ds.x_train.dtype == np.float32
    # Test rows share B and w_bar: their column spread follows the same B.
    big = data.load_synthetic(n=64, d=32, seed=5, n_test=4000)
    assert abs(np.median(big.x_test.std(axis=0) / a.B) - 1.0) < 0.05
    # The training rows do not depend on the size of the test set.
    np.testing.assert_array_equal(big.x_train, ds.x_train)


# ---------------------------------------------------------------------------------------------
# LIBSVM, IDX, CIFAR-10
# ---------------------------------------------------------------------------------------------


def test_read_libsvm_small_file(tmp_path):
    f = tmp_path / "toy"
    f.write_text("+1 1:0.5 3:2\n# a comment line\n\n-1 2:1.5 # trailing comment\n+1\n")
    x, y = data.read_libsvm(f, n_features=4)
    assert sp.issparse(x) and x.shape == (3, 4)
    np.testing.assert_array_equal(x.toarray(), [[0.5, 0, 2, 0], [0, 1.5, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(data.binary_labels(y), [1, -1, 1])
    with pytest.raises(ValueError, match="exceeds n_features"):
        data.read_libsvm(f, n_features=2)
    (tmp_path / "bad").write_text("+1 1:x\n")
    with pytest.raises(ValueError, match="bad:1"):
        data.read_libsvm(tmp_path / "bad")


@needs_libsvm
def test_a9a_and_w8a_match_their_published_sizes():
    a9a = data.load("a9a")
    assert a9a.x_train.shape == (32561, 123) and a9a.x_test.shape == (16281, 123)
    assert (a9a.y_train > 0).sum() == 7841 and set(np.unique(a9a.y_train)) == {-1.0, 1.0}
    w8a = data.load("w8a")
    assert w8a.x_train.shape[1] == 300
    assert w8a.n_train + w8a.x_test.shape[0] == 49749
    assert (w8a.y_train > 0).sum() + (w8a.y_test > 0).sum() == 1479
    assert "holdout" in w8a.info["test"]


@needs_mnist
def test_fashion_mnist_reader_on_real_idx_files(tmp_path):
    # Fashion-MNIST uses MNIST's IDX layout: stand it in with the real MNIST test files.
    for split in ("train", "t10k"):
        shutil.copy(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz", tmp_path / f"{split}-images-idx3-ubyte.gz")
        shutil.copy(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / f"{split}-labels-idx1-ubyte.gz")
    assert data.check_data("fashion-mnist", tmp_path) is None
    ds = data.load("fashion-mnist", tmp_path)
    assert ds.x_train.shape == (10000, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9 and ds.num_classes == 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert "t10k-labels-idx1-ubyte" in data.check_data("fashion-mnist", tmp_path)
    assert "does not exist" in data.check_data("fashion-mnist", tmp_path / "nowhere")
    with gzip.open(tmp_path / "trunc.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "trunc.gz")


@needs_cifar
def test_cifar10_subset_loader():
    ds = data.load("cifar10-subset")
    assert ds.x_train.shape == (5482, 32, 32, 3) and ds.x_test.shape == (1017, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    assert ds.y_train.max() == 9


def test_cifar10_archive_decoding_restores_official_order(tmp_path):
    """A tiny archive in the shared layout: images come back in the order that the
    official labels (y_train_all / y_test_all) imply, whatever the order in the tar."""
    from PIL import Image

    labels = {"train": np.array([3, 0, 3, 1, 0], np.uint8), "test": np.array([1, 1, 0], np.uint8)}
    tgz = tmp_path / "cifar10-images.tgz"
    members = []
    for split, ys in labels.items():
        rank = {}
        for pos, c in enumerate(ys):
            k = rank.get(c, 0)
            rank[c] = k + 1
            buf = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), pos * 40 + 10, np.uint8)).save(buf, format="JPEG", quality=100)
            members.append((f"{split}/{data.CIFAR10_CLASSES[c]}/{k:04d}.jpg", buf.getvalue()))
    with tarfile.open(tgz, "w:gz") as tar:
        for name, blob in reversed(members):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    np.savez(tmp_path / "cifar10_exact_subset.npz", y_train_all=labels["train"], y_test_all=labels["test"])
    x, y, xt, yt = data._cifar10_from_archive(tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(y, labels["train"])
    np.testing.assert_array_equal(yt, labels["test"])
    # Pixel value encodes the official position (JPEG is near-lossless on flat images).
    assert np.all(np.abs(x.reshape(5, -1).mean(axis=1) - (np.arange(5) * 40 + 10)) < 2)
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))  # decoded once, cached


# ---------------------------------------------------------------------------------------------
# shards and orders
# ---------------------------------------------------------------------------------------------


def test_shards_partition_rows_and_orders_are_seeded():
    n, size = 103, 4
    shards = [data.shard_indices(n, r, size, seed=9) for r in range(size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    np.testing.assert_array_equal(shards[1], data.shard_indices(n, 1, size, seed=9))
    assert not np.array_equal(shards[1], data.shard_indices(n, 1, size, seed=10))
    o = data.epoch_order(25, seed=1, epoch=3, rank=0)
    np.testing.assert_array_equal(o, data.epoch_order(25, seed=1, epoch=3, rank=0))
    assert sorted(o.tolist()) == list(range(25))
    assert not np.array_equal(o, data.epoch_order(25, seed=1, epoch=4, rank=0))


def test_limit_takes_a_seeded_subset():
    ds = data.load_synthetic(n=100, d=8, seed=0)
    a, b = data.limit(ds, 30, seed=1), data.limit(ds, 30, seed=1)
    assert a.n_train == 30 and a.x_test.shape[0] == 25  # test has 25 rows: untouched
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, data.limit(ds, 30, seed=2).x_train)
    assert data.limit(ds, None, seed=1) is ds


# ---------------------------------------------------------------------------------------------
# f*
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_problem():
    ds = data.load_synthetic(n=300, d=40, c2=1 / 4, seed=2)
    return ds.x_train, ds.y_train, 1.0 / 300


def test_logreg_fstar_is_the_minimum(small_problem):
    x, y, lam = small_problem
    out = fstar.solve("logreg", x, y, lam)
    assert out["certificate"] < 1e-20 and out["grad_norm"] < 1e-10
    w = out["w"]
    rng = np.random.default_rng(0)
    for scale in (1e-1, 1e-3, 1e-5):
        for _ in range(5):
            assert fstar.objective("logreg", x, y, w + scale * rng.standard_normal(w.shape), lam) > out["fstar"]
    # natural log: the objective at w = 0 is log 2
    assert fstar.objective("logreg", x, y, np.zeros(x.shape[1]), lam) == pytest.approx(np.log(2.0))


def test_svm_fstar_is_certified_by_the_dual(small_problem):
    x, y, lam = small_problem
    out = fstar.solve("svm", x, y, lam)
    assert out["certificate"] < 1e-12
    assert out["dual"] <= out["fstar"] <= out["dual"] + 1e-12
    w = out["w"]
    rng = np.random.default_rng(1)
    for scale in (1e-1, 1e-3, 1e-5):
        for _ in range(5):
            assert fstar.objective("svm", x, y, w + scale * rng.standard_normal(w.shape), lam) >= out["fstar"] - 1e-12
    # The other path (dual L-BFGS-B when N > d is not the default) reaches the same value.
    wide = fstar.solve_svm(x[:30], y[:30], lam)  # N < d: dual path
    narrow = fstar.solve_svm(x[:30], y[:30], lam, dual_max_n=0)  # forced primal path
    assert wide["fstar"] == pytest.approx(narrow["fstar"], abs=1e-10)


def test_fstar_cache(tmp_path, small_problem):
    x, y, lam = small_problem
    first = fstar.cached_fstar("logreg", x, y, lam, cache_dir=tmp_path)
    again = fstar.cached_fstar("logreg", x, y, lam, cache_dir=tmp_path)
    assert first["cached"] is None and again["cached"] and again["fstar"] == first["fstar"]
    other = fstar.cached_fstar("logreg", x, y, 2 * lam, cache_dir=tmp_path)
    assert other["cached"] is None and other["fstar"] != first["fstar"]
    assert len(list((tmp_path / "fstar").glob("*.json"))) == 2


def test_fashion_mnist_from_debian_package():
    """The complete data set from Debian's dataset-fashion-mnist (installed by scripts/setup.sh --test)."""
    root = Path("/usr/share/datasets/fashion-mnist")
    assert root.is_dir(), "Debian's dataset-fashion-mnist is missing: scripts/setup.sh --test installs it"
    ds = data.load("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)


def test_wide_softmax_is_skewed_seeded_and_shares_its_test_rows():
    x0, y0, xt0, yt0 = data.wide_softmax(rows=64, test_rows=32, rank=0, seed=5, features=256, classes=4, informative=8)
    x1, y1, xt1, yt1 = data.wide_softmax(rows=64, test_rows=32, rank=1, seed=5, features=256, classes=4, informative=8)
    assert x0.shape == (64, 256) and x0.dtype == np.float32 and y0.dtype == np.int32
    np.testing.assert_array_equal(xt0, xt1)  # one test set for every rank
    np.testing.assert_array_equal(yt0, yt1)
    assert not np.array_equal(x0, x1)  # each rank its own rows
    again = data.wide_softmax(rows=64, test_rows=32, rank=0, seed=5, features=256, classes=4, informative=8)
    np.testing.assert_array_equal(again[0], x0)
    s, b, _ = data.wide_softmax_problem(features=256, classes=4, informative=8, seed=5)
    assert len(s) == 8 and np.all(b[s] == 1.0) and np.all(np.delete(b, s) <= 0.05)  # skewed feature scales
    assert set(np.unique(y0)) <= set(range(4)) and len(np.unique(np.concatenate([y0, yt0]))) > 1
    with pytest.raises(ValueError, match="classes >= 2"):
        data.wide_softmax_problem(classes=1)
