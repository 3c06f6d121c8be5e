"""ATOMO: atomic sparsification (Wang, Sievert, Charles, Liu, Wright, Papailiopoulos; NeurIPS 2018).

Write a gradient as g = sum_i lambda_i a_i over unit-norm atoms a_i and send
Q(g) = sum_i (t_i / p_i) lambda_i a_i, t_i ~ Bernoulli(p_i): E[Q(g)] = g and,
for orthonormal atoms, E||Q(g)||^2 = sum_i lambda_i^2 / p_i. The p minimising
that second moment for an expected atom count sum_i p_i = ``budget`` is the
water-filling p_i = min(c |lambda_i|, 1)
(``hvdspar.probabilities.atom_probabilities``) -- not the one-shot clip of the
public ATOMO code, which spends fewer atoms than the budget.

Atoms used here:

- spectral (``atoms="svd"``, tensors of rank >= 2 whose 2-D view has both
  sides >= 2): the tensor is viewed as a matrix, rows = product of all
  dimensions but the last, cols = the last one (so a conv kernel
  [h, w, in, out] is (h w in) x out), and g = sum_i sigma_i u_i v_i^T
  (``tf.linalg.svd``). Each kept atom sends sigma_i / p_i, u_i, v_i:
  rows + cols + 1 numbers.
- entry-wise (``atoms="entry"``, and always for vectors and for matrices with
  a side of 1): atoms are the coordinates, lambda_i = g_i, and the water
  filling is GSpar's exact sparsity-budget solution with rho = budget / d; the
  message is GSpar's hybrid message (``hvdspar.sparse_message``).

Wire format of a spectral message: hvdspar's one header (``hvdspar.wire``:
scheme 16 | n_a = n atoms | n_b = 0 | scale unused), then::

    n scales sigma_i / p_i (float32; float64 for float64 gradients)
    n x rows values of u_i, then n x cols values of v_i (the gradient's dtype)

rows and cols come from the tensor's shape, which both sides know. Entry-wise
messages are ``hvdspar.sparse_message`` messages (schemes 0 and 1); a non-finite
gradient sends the header-only scheme 255, as every method does.
"""

import collections
import math

import tensorflow as tf

from hvdspar import bits, error_feedback, sparse_message, wire
from hvdspar.codec import Codec, Encoded, matrix_layout
from hvdspar.compressor import Compressor
from hvdspar.dtypes import compute_dtype
from hvdspar.probabilities import atom_probabilities, lambda_rho_exact
from hvdspar.sparsify import bernoulli

# Plain TF ops with explicit tf.cond: nothing for AutoGraph to convert (and traces get faster).
_no_autograph = tf.autograph.experimental.do_not_convert

SCHEME_SPECTRAL = 16
ATOMS = ("svd", "entry")

SpectralMessage = collections.namedtuple("SpectralMessage", ["scale", "u", "v"])
SpectralMessage.__doc__ = """Kept spectral atoms: scale [n] (sigma_i / p_i), u [n, rows], v [n, cols].

Q(g) = sum_k scale_k u_k v_k^T = u^T diag(scale) v."""


def uses_svd(shape, atoms="svd"):
    """True when a tensor of ``shape`` gets spectral atoms (rank >= 2, both matrix sides >= 2)."""
    layout = matrix_layout(shape)
    return atoms == "svd" and layout is not None and min(layout) >= 2


@_no_autograph
def spectral_message(x, rows, cols, budget, seed, dtype=None):
    """Sample ATOMO's spectral atoms of x viewed as a rows x cols matrix.

    Returns (SpectralMessage with values as they travel, probabilities p of all
    min(rows, cols) singular values, the singular values sigma).
    """
    x = tf.convert_to_tensor(x)
    dtype = tf.as_dtype(dtype or x.dtype)
    cdt = compute_dtype(dtype)
    sigma, u, v = tf.linalg.svd(tf.reshape(tf.cast(x, cdt), [rows, cols]))
    p = atom_probabilities(sigma, budget)
    idx = tf.where(bernoulli(p, seed))[:, 0]
    scale = tf.gather(sigma, idx) / tf.gather(p, idx)
    msg = SpectralMessage(
        scale=tf.cast(scale, wire.scale_dtype(dtype)),
        u=tf.cast(tf.gather(tf.transpose(u), idx), dtype),
        v=tf.cast(tf.gather(tf.transpose(v), idx), dtype),
    )
    return msg, p, sigma


@_no_autograph
def entry_message(x, budget, seed):
    """Entry-wise ATOMO: (sparse_message.SparseMessage, p), GSpar's exact water-filling with rho = budget / d.

    p = atom_probabilities(x, budget) = min(lambda |x_i|, 1); kept entries with
    p_i = 1 go to Q_A with their exact value, the others all carry
    x_i / p_i = sign(x_i) / lambda and go to Q_B as signs with the scale 1/lambda.
    """
    x = tf.reshape(tf.convert_to_tensor(x), [-1])
    a = tf.abs(tf.cast(x, compute_dtype(x.dtype)))
    d = x.shape[0]
    lam = lambda_rho_exact(a, tf.minimum(tf.cast(budget, a.dtype) / max(1, d), 1))  # as atom_probabilities
    scaled = lam * a
    keep = bernoulli(tf.minimum(scaled, 1), seed)
    idx = tf.where(keep)[:, 0]
    top = tf.gather(scaled, idx) >= 1
    idx_a = tf.boolean_mask(idx, top)
    idx_b = tf.boolean_mask(idx, tf.logical_not(top))
    msg = sparse_message.SparseMessage(
        idx_a=idx_a,
        val_a=tf.gather(x, idx_a),
        idx_b=idx_b,
        neg_b=tf.gather(x, idx_b) < 0,
        scale=tf.math.reciprocal_no_nan(lam),
    )
    return msg, tf.minimum(scaled, 1)


@_no_autograph
def spectral_dense(msg, d, dtype):
    """Q(g) = u^T diag(scale) v, flattened to [d], in ``dtype`` (the one formula both sides use)."""
    scale = tf.cast(msg.scale, dtype)
    u = tf.cast(msg.u, dtype) * tf.expand_dims(scale, 1)
    return tf.reshape(tf.matmul(u, tf.cast(msg.v, dtype), transpose_a=True), [d])


@_no_autograph
def spectral_sq_norm(msg):
    """||Q(g)||^2 (float64), exact for orthonormal u_k, v_k: sum_k scale_k^2 ||u_k||^2 ||v_k||^2."""
    scale = tf.cast(msg.scale, tf.float64)
    un = tf.reduce_sum(tf.square(tf.cast(msg.u, tf.float64)), axis=1)
    vn = tf.reduce_sum(tf.square(tf.cast(msg.v, tf.float64)), axis=1)
    return tf.reduce_sum(tf.square(scale) * un * vn)


def spectral_nbytes(n, rows, cols, value_dtype):
    """Bytes of a spectral message with n atoms (Python or int64 tensor n)."""
    value_dtype = tf.as_dtype(value_dtype)
    return wire.header_nbytes(rows * cols, value_dtype) + n * spectral_atom_nbytes(rows, cols, value_dtype)


def spectral_atom_nbytes(rows, cols, value_dtype):
    value_dtype = tf.as_dtype(value_dtype)
    return wire.scale_dtype(value_dtype).size + (rows + cols) * value_dtype.size


@_no_autograph
def encode_spectral(msg, rows, cols, value_dtype):
    n = tf.shape(msg.scale, out_type=tf.int64)[0]
    return tf.concat(
        [
            wire.header(SCHEME_SPECTRAL, n, 0, 0.0, rows * cols, value_dtype),
            bits.to_bytes(tf.cast(msg.scale, wire.scale_dtype(value_dtype))),
            bits.to_bytes(tf.cast(msg.u, value_dtype)),
            bits.to_bytes(tf.cast(msg.v, value_dtype)),
        ],
        axis=0,
    )


@_no_autograph
def decode_spectral_body(head, body, rows, cols, value_dtype):
    """The SpectralMessage of a spectral message's header and body."""
    value_dtype = tf.as_dtype(value_dtype)
    sdt = wire.scale_dtype(value_dtype)
    n = head.n_a
    scale_end = n * sdt.size
    u_end = scale_end + n * rows * value_dtype.size
    scale = bits.from_bytes(body[:scale_end], sdt, n)
    u = tf.reshape(bits.from_bytes(body[scale_end:u_end], value_dtype, n * rows), tf.stack([n, rows]))
    v = tf.reshape(bits.from_bytes(body[u_end:], value_dtype, n * cols), tf.stack([n, cols]))
    return SpectralMessage(scale, u, v)


def body_size(d, value_dtype, layout):
    """Body bytes (header -> int64) of ATOMO's messages for a tensor of d elements and ``layout``
    ((rows, cols) for spectral atoms, None for entry-wise)."""
    if layout is None:
        return sparse_message.body_size(d, value_dtype)
    rows, cols = layout
    return lambda head: head.n_a * spectral_atom_nbytes(rows, cols, value_dtype)


@_no_autograph
def sum_messages(data, num_messages, d, value_dtype, accumulate_dtype, layout=None, factor=None):
    """Sum of the Q of ``num_messages`` concatenated ATOMO messages, in rank order; (sum [d], all_finite).

    ``layout``: (rows, cols) when the tensor gets spectral atoms, None when entry-wise; ``factor``:
    ``wire.fold``'s."""
    value_dtype = tf.as_dtype(value_dtype)
    if layout is None:
        return sparse_message.sum_messages(data, num_messages, d, value_dtype, accumulate_dtype, factor)

    def add(acc, head, body):
        return acc + spectral_dense(decode_spectral_body(head, body, *layout, value_dtype), d, accumulate_dtype)

    return wire.fold(data, num_messages, d, value_dtype, accumulate_dtype, body_size(d, value_dtype, layout), add, factor)


class AtomoCodec(Codec):
    """ATOMO's message: spectral atoms for the tensors ``uses_svd`` picks, entry-wise for the rest.

    Needs each tensor's own shape (its matrix view), so a Horovod group is compressed tensor by
    tensor (``buckets = False``). Arguments as ``Atomo``'s.
    """

    buckets = False

    def __init__(self, budget=2, atoms="svd"):
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < float(budget) < math.inf:
            raise ValueError(f"hvdspar: budget must be a positive number (expected atoms), got {budget!r}")
        if atoms not in ATOMS:
            raise ValueError(f"hvdspar: atoms must be one of {ATOMS}, got {atoms!r}")
        self.budget = float(budget)
        self.atoms = atoms

    def config(self):
        return {"budget": self.budget, "atoms": self.atoms}

    def layout(self, d, shape):
        """(rows, cols) when a tensor of ``shape`` gets spectral atoms, else None (entry-wise)."""
        if shape is None or tf.TensorShape(shape).num_elements() != d or not uses_svd(shape, self.atoms):
            return None
        return matrix_layout(shape)

    def timing_shape(self, shape):
        # fallback="auto" must time the encoder that will run: an SVD's cost depends on the matrix shape.
        return tuple(tf.TensorShape(shape).as_list()) if uses_svd(shape, self.atoms) else None

    def expected_nbytes(self, d, dtype, shape=None):
        layout = self.layout(d, shape)
        if layout is None:
            return sparse_message.expected_nbytes(0, min(self.budget, d), d, dtype)
        rows, cols = layout
        return spectral_nbytes(min(self.budget, min(rows, cols)), rows, cols, dtype)

    @_no_autograph
    def draw(self, x, seed, dtype, shape, scan):
        layout = self.layout(x.shape[0], shape)
        if layout is None:
            msg, p = entry_message(x, self.budget, seed)
            return msg, lambda: error_feedback.second_moment(x, p)
        msg, p, sigma = spectral_message(x, *layout, self.budget, seed, dtype)
        return msg, lambda: error_feedback.second_moment(sigma, p)

    def scaled(self, msg, gamma):
        if isinstance(msg, SpectralMessage):
            return msg._replace(scale=tf.cast(tf.cast(msg.scale, tf.float64) * gamma, msg.scale.dtype))
        return sparse_message.scaled(msg, gamma)

    @_no_autograph
    def pack(self, msg, d, dtype, shape, with_q):
        if not isinstance(msg, SpectralMessage):
            return sparse_message.pack(msg, d, dtype, with_q)
        rows, cols = self.layout(d, shape)
        cdt = compute_dtype(dtype)
        n = tf.shape(msg.scale, out_type=tf.int64)[0]
        q = spectral_dense(msg, d, cdt) if with_q else tf.zeros([0], cdt)
        return Encoded(encode_spectral(msg, rows, cols, dtype), q, n * (rows + cols + 1), spectral_sq_norm(msg))

    @_no_autograph
    def decode_sum(self, data, num_ranks, d, dtype, shape=None, factor=None):
        return sum_messages(data, num_ranks, d, dtype, compute_dtype(dtype), self.layout(d, shape), factor)


class Atomo(Compressor):
    """ATOMO with variance-optimal (water-filling) atom probabilities; unbiased.

    Args:
      budget: expected number of atoms sent per tensor (> 0; e.g. 2). Spectral atoms
        cost rows + cols + 1 numbers each, entry-wise atoms about one index + sign.
      atoms: "svd" (spectral atoms for matrices and conv kernels, entry-wise for the
        rest) or "entry" (entry-wise everywhere).
      memory: error feedback; then it sends C(e) = gamma Q(e), gamma = ||e||^2 / E||Q(e)||^2
        (= sum sigma_i^2 / sum sigma_i^2 / p_i), a contraction, and keeps m = e - C(e).
      fallback, seed: as for every hvdspar compressor.

    ``traffic()["density"]`` counts the numbers sent (n (rows + cols + 1) for n
    spectral atoms) over the tensor's elements. Every tensor travels alone (no ``bucket_mb``).
    """

    spec_name = "atomo"

    def __init__(self, budget=2, atoms="svd", memory=False, fallback=True, nonfinite="propagate", seed=None):
        super().__init__(AtomoCodec(budget, atoms), memory=memory, fallback=fallback, nonfinite=nonfinite,
                         seed=seed)
