"""Data sets for the training scripts: the paper's synthetic generator, LIBSVM
a9a / w8a, CIFAR-10 (full or the exact-pixel subset) and Fashion-MNIST.

Every loader returns a ``DataSet`` of NumPy arrays (binary labels in {-1, +1}
as float32, class labels as int32). Nothing here uses TensorFlow or Horovod,
so loaders are testable and usable from a plain Python shell.

Sharding (``shard_indices``): after one seeded shuffle of the training rows,
rank r of `size` takes rows r::size. Each epoch a rank visits its shard in an
order that depends only on (seed, epoch, rank) (``epoch_order``), so a resumed
run sees exactly the batches an uninterrupted one would.

No data is downloaded. Default locations (override with ``--data-dir``, or
point ``HVDSPAR_DATA_ROOT`` at a folder holding ``libsvm/`` and ``cifar10/``):

  a9a, w8a          <repo>/../shared/data/libsvm/{a9a, a9a.t, w8a}
  cifar10*          <repo>/../shared/data/cifar10/{cifar10-images.tgz, cifar10_exact_subset.npz};
                    the full set is read from Keras' own cache
                    ~/.keras/datasets/cifar-10-batches-py when that exists
  fashion-mnist     /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent.parent

#: data set name -> kind ("binary": labels +-1, for logreg/svm; "image": 10 classes, for the CNN)
DATASETS = {
    "synthetic": "binary",
    "a9a": "binary",
    "w8a": "binary",
    "cifar10": "image",
    "cifar10-subset": "image",
    "fashion-mnist": "image",
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)

#: the holdout used as the test set where a data set ships none (w8a here)
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 12345


@dataclass
class DataSet:
    """A loaded data set. ``x_*`` are float32 arrays or scipy CSR matrices (LIBSVM
    sets) or uint8 images (N, H, W, C); ``y_*`` are float32 in {-1, +1} (binary)
    or int32 class ids (image)."""

    name: str
    kind: str
    x_train: object
    y_train: np.ndarray
    x_test: object
    y_test: np.ndarray
    num_classes: int = 2
    mean: tuple = ()
    std: tuple = ()
    info: dict = field(default_factory=dict)

    @property
    def n_train(self):
        return self.x_train.shape[0]

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------------------------
# The paper's synthetic data (sec. 4)
# --------------------------------------------------------------------------------------------


@dataclass
class Synthetic:
    """The generator's output and its hidden variables (for tests and plots)."""

    a: np.ndarray  # (N, d) features a_n = a_bar_n * B
    b: np.ndarray  # (N,) labels sign(a_bar_n^T w_bar) in {-1, +1}
    a_bar: np.ndarray  # (N, d) dense draws
    B_uniform: np.ndarray  # (d,) B before shrinking, ~ U[0, 1]
    B: np.ndarray  # (d,) B after B_i <- C1 B_i where B_i <= C2
    shrunk: np.ndarray  # (d,) bool, the coordinates that were shrunk
    w_bar: np.ndarray  # (d,)


GENERATORS = ("paper", "skewed")


def synthetic(n=1024, d=2048, c1=0.9, c2=1.0 / 16, seed=0, generator="paper"):
    """The synthetic data of Wangni et al. (2018), sec. 4, exactly as written there::

        a_bar_ni ~ N(0, 1)            i in [d], n in [N]
        B ~ Uniform[0, 1]^d;  B_i <- C1 * B_i  if B_i <= C2
        a_n = a_bar_n (elementwise *) B
        w_bar ~ N(0, I_d);    b_n = sign(a_bar_n^T w_bar)

    Note that the labels come from the *dense* draws a_bar_n, as the paper
    writes it, not from a_n. sign(0) is taken as +1 (probability zero).
    C2 is the expected fraction of shrunk coordinates, C1 their shrink factor;
    the smaller both, the sparser (more skewed) the gradients. The paper uses
    N=1024, d=2048, C1=0.9, C2 in {1/4, 1/16, 1/64}.

    Draw order (one ``np.random.default_rng(seed)``, float64): a_bar (N x d,
    row-major), B (d), w_bar (d). Returns ``Synthetic``.

    ``generator="skewed"`` is our labelled variant, not the paper's text: it shrinks
    every coordinate *but* the largest C2 fraction, B_i <- C1 * B_i if B_i <= 1 - C2,
    so that about C2 d coordinates keep their scale (B_i in (1 - C2, 1]) and smaller
    C2 means sparser data (the paper's reading of C2). Use it with a strong shrink,
    C1 = 0.01.
    """
    if generator not in GENERATORS:
        raise ValueError(f"synthetic: generator must be one of {GENERATORS}, got {generator!r}")
    if n < 1 or d < 1:
        raise ValueError(f"synthetic: need N >= 1 and d >= 1, got N={n}, d={d}")
    if not 0.0 <= c2 <= 1.0:
        raise ValueError(f"synthetic: C2 must be in [0, 1], got {c2}")
    rng = np.random.default_rng(seed)
    a_bar = rng.standard_normal((n, d))
    b_uniform = rng.uniform(0.0, 1.0, size=d)
    shrunk = b_uniform <= c2 if generator == "paper" else b_uniform <= 1.0 - c2
    b_vec = np.where(shrunk, c1 * b_uniform, b_uniform)
    w_bar = rng.standard_normal(d)
    a = a_bar * b_vec
    labels = np.where(a_bar @ w_bar >= 0, 1.0, -1.0)
    return Synthetic(a=a, b=labels, a_bar=a_bar, B_uniform=b_uniform, B=b_vec, shrunk=shrunk, w_bar=w_bar)


def load_synthetic(n=1024, d=2048, c1=0.9, c2=1.0 / 16, seed=0, n_test=None, generator="paper"):
    """The synthetic set as a ``DataSet``: the N rows of ``synthetic(...)`` for
    training, and ``n_test`` (default N // 4) test rows from the same
    distribution: the same B and w_bar, fresh a_bar rows drawn from
    ``default_rng([seed, 1])`` (so the training rows do not depend on n_test).
    Features are stored as float32.
    """
    n_test = n // 4 if n_test is None else n_test
    s = synthetic(n, d, c1, c2, seed, generator)
    rng = np.random.default_rng([seed, 1])
    a_bar_t = rng.standard_normal((n_test, d))
    x_test = (a_bar_t * s.B).astype(np.float32)
    y_test = np.where(a_bar_t @ s.w_bar >= 0, 1.0, -1.0).astype(np.float32)
    info = {"N": n, "d": d, "C1": c1, "C2": c2, "seed": seed, "generator": generator, "n_test": n_test, "shrunk_fraction": float(s.shrunk.mean())}
    return DataSet("synthetic", "binary", s.a.astype(np.float32), s.b.astype(np.float32), x_test, y_test, info=info)


# --------------------------------------------------------------------------------------------
# A wide softmax problem (the main job and the time-to-accuracy benchmark)
# --------------------------------------------------------------------------------------------


def wide_softmax_problem(features=16384, classes=32, informative=32, noise_scale=0.05, seed=0):
    """The fixed part of ``wide_softmax``: (S, B, W_bar).

    S: ``informative`` feature indices drawn without replacement; B_i = 1 on S and
    ``noise_scale`` * U[0, 1] elsewhere; W_bar ~ N(0, 1)^(|S| x classes). One
    ``np.random.default_rng(seed)`` in that order."""
    if features < 1 or classes < 2 or informative < 1:
        raise ValueError(f"wide_softmax: need features >= 1, classes >= 2, informative >= 1, got "
                         f"{features}, {classes}, {informative}")
    rng = np.random.default_rng(seed)
    s = np.sort(rng.choice(features, size=min(informative, features), replace=False))
    b = (noise_scale * rng.uniform(0.0, 1.0, size=features)).astype(np.float32)
    b[s] = 1.0
    w_bar = rng.standard_normal((len(s), classes)).astype(np.float32)
    return s, b, w_bar


def wide_softmax_draw(n, problem, seed):
    """n rows of a problem: a_bar ~ N(0, I) (float32, ``default_rng(seed)``), a = a_bar * B,
    label = argmax(a_bar[:, S] W_bar). Returns (a, labels int32)."""
    s, b, w_bar = problem
    a_bar = np.random.default_rng(seed).standard_normal((n, len(b)), dtype=np.float32)
    labels = np.argmax(a_bar[:, s] @ w_bar, axis=1).astype(np.int32)
    a_bar *= b
    return a_bar, labels


def wide_softmax(rows=1024, test_rows=4096, rank=0, seed=0, **problem):
    """A wide multinomial logistic regression in the spirit of the paper's sec. 4 generator
    (skewed feature scales, so the gradient is large on few coordinates: GSpar's regime).

    With the defaults (16384 features, 32 classes) the kernel's fp32 gradient is 2 MiB a
    step. Rank ``rank`` trains on its own ``rows`` rows (seed + 1 + rank); the ``test_rows``
    test rows (seed) are the same on every rank. Returns (x, y, x_test, y_test)."""
    p = wide_softmax_problem(seed=seed, **problem)
    x, y = wide_softmax_draw(rows, p, seed + 1 + rank)
    xt, yt = wide_softmax_draw(test_rows, p, seed)
    return x, y, xt, yt


# --------------------------------------------------------------------------------------------
# LIBSVM text format (a9a, w8a)
# --------------------------------------------------------------------------------------------


def read_libsvm(path, n_features=None, dtype=np.float32):
    """Parse a LIBSVM file: lines ``label idx:value ...`` with 1-based indices.

    Returns (X as scipy.sparse CSR [rows, n_features], labels float64).
    ``n_features`` fixes the width (a9a.t has no row using feature 123);
    otherwise the largest index seen. Blank lines and ``#`` comments are skipped.
    """
    labels, indptr, indices, values = [], [0], [], []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            try:
                labels.append(float(parts[0]))
                for item in parts[1:]:
                    idx, _, val = item.partition(":")
                    indices.append(int(idx) - 1)
                    values.append(float(val))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not LIBSVM format ({exc}): {line[:80]!r}") from None
            indptr.append(len(indices))
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and indices.min() < 0:
        raise ValueError(f"{path}: LIBSVM feature indices start at 1, found 0")
    width = int(indices.max()) + 1 if indices.size else 0
    if n_features is not None:
        if width > n_features:
            raise ValueError(f"{path}: feature index {width} exceeds n_features={n_features}")
        width = n_features
    x = sp.csr_matrix((np.asarray(values, dtype=dtype), indices, np.asarray(indptr, dtype=np.int64)), shape=(len(labels), width))
    x.sum_duplicates()
    return x, np.asarray(labels, dtype=np.float64)


def binary_labels(y, path="labels"):
    """Map two distinct label values to -1/+1 (smaller -> -1); float32."""
    values = np.unique(y)
    if values.size > 2:
        raise ValueError(f"{path}: expected binary labels, found {values.size} distinct values")
    return np.where(y == values.max(), 1.0, -1.0).astype(np.float32) if values.size == 2 else np.sign(y).astype(np.float32)


LIBSVM_FILES = {"a9a": ("a9a", "a9a.t", 123), "w8a": ("w8a", "w8a.t", 300)}


def load_libsvm_set(name, data_dir):
    """a9a (official train/test) or w8a (train; its test file w8a.t is used if
    present, else a fixed 20% holdout of the training file, seed 12345)."""
    train_file, test_file, width = LIBSVM_FILES[name]
    data_dir = Path(data_dir)
    x, y = read_libsvm(data_dir / train_file, n_features=width)
    y = binary_labels(y, data_dir / train_file)
    info = {"path": str(data_dir / train_file)}
    if (data_dir / test_file).exists():
        xt, yt = read_libsvm(data_dir / test_file, n_features=width)
        yt = binary_labels(yt, data_dir / test_file)
        info["test"] = str(data_dir / test_file)
    else:
        perm = np.random.default_rng(HOLDOUT_SEED).permutation(x.shape[0])
        n_test = int(round(HOLDOUT_FRACTION * x.shape[0]))
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        xt, yt, x, y = x[test], y[test], x[train], y[train]
        info["test"] = f"holdout {HOLDOUT_FRACTION:.0%} of {train_file} (seed {HOLDOUT_SEED})"
    return DataSet(name, "binary", x, y, xt, yt, info=info)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def default_cache_dir():
    return Path(os.environ.get("HVDSPAR_CACHE", Path.home() / ".cache" / "hvdspar"))


def keras_cifar10_dir():
    return Path.home() / ".keras" / "datasets" / "cifar-10-batches-py"


def _read_keras_cifar10(folder):
    def batch(name):
        with open(folder / name, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        x = d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x.astype(np.uint8), np.asarray(d[b"labels"], dtype=np.int32)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test


def _decode_cifar10_tgz(tgz, subset_npz=None):
    """Decode the image-folder archive (train|test/<class>/NNNN.jpg) straight from
    the tar file. With the subset .npz (which holds all 60,000 official labels)
    the images are put back in the official order (NNNN = the image's rank among
    its class in the official batches); otherwise class-major order."""
    from PIL import Image

    images = {"train": {}, "test": {}}
    with tarfile.open(tgz, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[-3] not in images or parts[-2] not in CIFAR10_CLASSES:
                continue
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            images[parts[-3]][(CIFAR10_CLASSES.index(parts[-2]), int(Path(parts[-1]).stem))] = np.asarray(img, np.uint8)
    official = None
    if subset_npz is not None and Path(subset_npz).exists():
        with np.load(subset_npz) as z:
            official = {"train": z["y_train_all"].astype(np.int32), "test": z["y_test_all"].astype(np.int32)}
    out = []
    for split in ("train", "test"):
        imgs = images[split]
        if not imgs:
            raise ValueError(f"{tgz}: no {split}/<class>/*.jpg images found")
        if official is not None and len(official[split]) == len(imgs):
            labels = official[split]
            rank = np.zeros_like(labels)
            for c in range(10):
                where = labels == c
                rank[where] = np.arange(where.sum())
            keys = list(zip(labels.tolist(), rank.tolist()))
        else:
            keys, labels = sorted(imgs), np.asarray([k[0] for k in sorted(imgs)], np.int32)
        out += [np.stack([imgs[k] for k in keys]), labels]
    return tuple(out)


def load_cifar10(data_dir, cache_dir=None):
    """All 60,000 CIFAR-10 images (uint8 NHWC) in the official order.

    Source, first found: Keras' cache ~/.keras/datasets/cifar-10-batches-py;
    a decoded copy in <cache_dir>/cifar10-<hash of the archive>.npz; the
    archive <data_dir>/cifar10-images.tgz, decoded once (about a minute) and
    written to that cache (atomically, so concurrent ranks are safe).
    """
    keras_dir = keras_cifar10_dir()
    if (keras_dir / "data_batch_1").exists() and (keras_dir / "test_batch").exists():
        x, y, xt, yt = _read_keras_cifar10(keras_dir)
        source = str(keras_dir)
    else:
        x, y, xt, yt = _cifar10_from_archive(Path(data_dir), cache_dir)
        source = str(Path(data_dir) / "cifar10-images.tgz")
    return DataSet("cifar10", "image", x, y, xt, yt, 10, CIFAR10_MEAN, CIFAR10_STD, {"source": source})


def cifar10_cache_path(data_dir, cache_dir=None):
    tgz = Path(data_dir) / "cifar10-images.tgz"
    st = tgz.stat()
    tag = hashlib.sha256(f"{tgz.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"cifar10-{tag}.npz"


def _cifar10_from_archive(data_dir, cache_dir=None):
    cache = cifar10_cache_path(data_dir, cache_dir)
    if not cache.exists():
        arrays = _decode_cifar10_tgz(data_dir / "cifar10-images.tgz", data_dir / "cifar10_exact_subset.npz")
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        os.replace(tmp, cache)
    with np.load(cache) as z:
        return z["x_train"], z["y_train"].astype(np.int32), z["x_test"], z["y_test"].astype(np.int32)


def load_cifar10_subset(data_dir):
    """The 5,482 train / 1,017 test CIFAR-10 images with exact original pixels."""
    path = Path(data_dir) / "cifar10_exact_subset.npz"
    with np.load(path) as z:
        x, y, xt, yt = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    return DataSet(
        "cifar10-subset", "image", x, y.astype(np.int32), xt, yt.astype(np.int32), 10, CIFAR10_MEAN, CIFAR10_STD, {"source": str(path)}
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------

FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path):
    """An IDX file (gzip or raw) as a NumPy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code {raw[2]:#x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape} but holds {data.size} values (truncated file?)")
    return data.reshape(shape)


def idx_path(data_dir, stem):
    for name in (stem + ".gz", stem):
        if (Path(data_dir) / name).exists():
            return Path(data_dir) / name
    return None


def load_fashion_mnist(data_dir):
    arrays = {}
    for key, stem in FASHION_FILES.items():
        path = idx_path(data_dir, stem)
        if path is None:
            raise FileNotFoundError(f"{data_dir}: missing {stem}(.gz)")
        arrays[key] = read_idx(path)
    for key in ("x_train", "x_test"):
        arrays[key] = arrays[key].reshape(-1, 28, 28, 1).astype(np.uint8)
    return DataSet(
        "fashion-mnist",
        "image",
        arrays["x_train"],
        arrays["y_train"].astype(np.int32),
        arrays["x_test"],
        arrays["y_test"].astype(np.int32),
        10,
        FASHION_MEAN,
        FASHION_STD,
        {"source": str(data_dir)},
    )


# --------------------------------------------------------------------------------------------
# Locations and validation (no heavy work: used while parsing the command line)
# --------------------------------------------------------------------------------------------


def shared_data_root():
    env = os.environ.get("HVDSPAR_DATA_ROOT")
    return Path(env) if env else REPO.parent / "shared" / "data"


def default_data_dir(name):
    if name in ("a9a", "w8a"):
        return shared_data_root() / "libsvm"
    if name in ("cifar10", "cifar10-subset"):
        return shared_data_root() / "cifar10"
    if name == "fashion-mnist":
        return Path("/usr/share/datasets/fashion-mnist")
    return None


def check_data(name, data_dir):
    """None if the files ``name`` needs are in ``data_dir``, else a message saying what is missing."""
    if name == "synthetic":
        return None
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        hint = ""
        if name == "fashion-mnist":
            hint = " (install Debian's package: apt-get install dataset-fashion-mnist, or pass --data-dir)"
        return f"data directory {data_dir} for {name!r} does not exist{hint}"
    if name in LIBSVM_FILES:
        need = data_dir / LIBSVM_FILES[name][0]
        return None if need.is_file() else f"{need} not found (LIBSVM file for {name!r})"
    if name == "cifar10-subset":
        need = data_dir / "cifar10_exact_subset.npz"
        return None if need.is_file() else f"{need} not found"
    if name == "cifar10":
        if (keras_cifar10_dir() / "data_batch_1").exists():
            return None
        need = data_dir / "cifar10-images.tgz"
        return None if need.is_file() else f"{need} not found (and no Keras cache in {keras_cifar10_dir()})"
    if name == "fashion-mnist":
        missing = [stem for stem in FASHION_FILES.values() if idx_path(data_dir, stem) is None]
        return f"{data_dir} lacks {', '.join(m + '(.gz)' for m in missing)}" if missing else None
    return f"unknown data set {name!r}"


def load(name, data_dir=None, synthetic_args=None, cache_dir=None):
    """Load a data set by name (see ``DATASETS``)."""
    if name == "synthetic":
        return load_synthetic(**(synthetic_args or {}))
    data_dir = Path(data_dir) if data_dir else default_data_dir(name)
    problem = check_data(name, data_dir)
    if problem:
        raise FileNotFoundError(problem)
    if name in LIBSVM_FILES:
        return load_libsvm_set(name, data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir, cache_dir)
    if name == "cifar10-subset":
        return load_cifar10_subset(data_dir)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# Subsets, shards and epoch orders
# --------------------------------------------------------------------------------------------


def _rows(x, idx):
    return x[idx]


def limit(ds, n, seed):
    """A seeded random subset of at most n training rows and n test rows (order kept)."""
    if n is None:
        return ds
    out = DataSet(**{**ds.__dict__})
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x.shape[0] > n:
            keep = np.sort(np.random.default_rng([seed, 7 if split == "train" else 8]).permutation(x.shape[0])[:n])
            setattr(out, f"x_{split}", _rows(x, keep))
            setattr(out, f"y_{split}", y[keep])
    out.info = {**ds.info, "limit": n}
    return out


def shard_indices(n, rank, size, seed):
    """Rank ``rank``'s rows: a seeded shuffle of range(n), then every size-th from ``rank``."""
    return np.random.default_rng([seed, 3]).permutation(n)[rank::size]


def epoch_order(n_shard, seed, epoch, rank):
    """The order in which a rank visits its shard in ``epoch`` (positions into the shard)."""
    return np.random.default_rng([seed, 5, epoch, rank]).permutation(n_shard)


def to_dense(x):
    """Float32 dense rows (CSR -> ndarray); images are left as they are."""
    if sp.issparse(x):
        return np.asarray(x.todense(), dtype=np.float32)
    return x


def fingerprint(*arrays):
    """A sha256 over arrays (dense or CSR), their dtypes and shapes."""
    h = hashlib.sha256()
    for a in arrays:
        if sp.issparse(a):
            a = a.tocsr()
            parts = [a.data, a.indices.astype(np.int64), a.indptr.astype(np.int64)]
            h.update(f"csr{a.shape}".encode())
        else:
            parts = [np.ascontiguousarray(a)]
        for p in parts:
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()
