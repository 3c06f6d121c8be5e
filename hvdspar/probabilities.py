"""Sampling probabilities p for unbiased sparsification (Wangni et al. 2018, sec. 2).

A coordinate i of g is kept with probability p_i and rescaled to g_i / p_i, so
Q(g) is unbiased with second moment sum_i g_i^2 / p_i and expected density
sum_i p_i. Every optimal p has the water-filling form of Proposition 1,

    p_i = min(lambda * |g_i|, 1),

so each method below computes the scalar ``lambda`` and derives p from it. The
coordinates with p_i = 1 form the top set S_k; every other kept coordinate
carries g_i / p_i = sign(g_i) / lambda, which is what makes the message of
sec. 2.3 compact (see ``hvdspar.coding``).

Conventions (no NaN anywhere):
- coordinates with g_i = 0 get p_i = 0 (they are never sent; Q(g)_i = 0);
- an all-zero g gives p = 0 and lambda = 0;
- computation runs in float32 for float16/bfloat16/float32 inputs and in
  float64 for float64 inputs; p is returned in that compute dtype.
"""

import tensorflow as tf

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert

METHODS = ("exact", "greedy")


def compute_dtype(dtype):
    """float64 stays float64; every narrower float is computed in float32."""
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"hvdspar: gradients must be floating point, got {dtype.name}")
    return tf.float64 if dtype == tf.float64 else tf.float32


def default_method(rho=None, epsilon=None):
    """Algorithm 3 ("greedy", O(d), the paper's choice) for rho; Algorithm 2 ("exact") for epsilon."""
    return "greedy" if rho is not None and epsilon is None else "exact"


def check_budget(rho=None, epsilon=None, method="exact", iterations=2):
    """Validate a budget; returns the method. Raises ValueError naming the problem."""
    if (rho is None) == (epsilon is None):
        raise ValueError(
            "hvdspar: give exactly one budget, rho (sparsity: sum(p) = rho*d) or epsilon "
            f"(variance: sum(g^2/p) <= (1+epsilon) sum(g^2)); got rho={rho!r}, epsilon={epsilon!r}"
        )
    if method not in METHODS:
        raise ValueError(f"hvdspar: unknown method {method!r}; expected one of {METHODS}")
    if rho is not None:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 < float(rho) <= 1.0:
            raise ValueError(f"hvdspar: rho must be a number in (0, 1], got {rho!r}")
    if epsilon is not None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not float(epsilon) >= 0.0:
            raise ValueError(f"hvdspar: epsilon must be a number >= 0, got {epsilon!r}")
        if method == "greedy":
            raise ValueError("hvdspar: method='greedy' (Algorithm 3) takes a sparsity budget rho, not epsilon")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"hvdspar: iterations must be an integer >= 1, got {iterations!r}")
    return method


def _safe_div(num, den):
    """num / den, and 0 where den == 0 (never NaN or Inf)."""
    return tf.math.divide_no_nan(num, den)


def lambda_epsilon(a, epsilon):
    """Algorithm 2 (closed form) for the variance budget of problem (3).

    With a = |g| sorted descending, a_(1) >= ... >= a_(d), find the smallest k with

        a_(k+1) * sum_{i>k} a_(i) <= epsilon * sum_i a_i^2 + sum_{i>k} a_(i)^2     (4)

    and set lambda = sum_{i>k} a_(i) / (epsilon * sum_i a_i^2 + sum_{i>k} a_(i)^2).

    Args:
      a: 1-D tensor of magnitudes |g|.
      epsilon: variance budget, >= 0.
    Returns:
      scalar lambda (0 for an all-zero vector).
    """
    a = tf.sort(a, direction="DESCENDING")
    eps = tf.cast(epsilon, a.dtype)
    total_sq = tf.reduce_sum(a * a)
    # tail_l1[k] = sum_{i>k} a_(i) and tail_l2[k] = sum_{i>k} a_(i)^2, for k = 0..d-1
    # (1-based ranks: the tail after the top k starts at index k, 0-based).
    tail_l1 = tf.math.cumsum(a, reverse=True)
    tail_l2 = tf.math.cumsum(a * a, reverse=True)
    ok = a * tail_l1 <= eps * total_sq + tail_l2
    # The condition always holds at k = d-1 (a_d^2 <= eps*S + a_d^2), so argmax finds a k.
    k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    return _safe_div(tail_l1[k], eps * total_sq + tail_l2[k])


def lambda_rho_exact(a, rho):
    """Exact water-filling for the sparsity budget: sum_i min(lambda a_i, 1) = rho * d.

    With a sorted descending and k coordinates saturated at p = 1,
    lambda = (rho d - k) / sum_{i>k} a_(i); the solution takes the smallest k
    for which lambda * a_(k+1) <= 1, i.e. (rho d - k) * a_(k+1) <= sum_{i>k} a_(i).
    If g has fewer than rho*d non-zeros, all of them get p = 1.
    """
    d = tf.size(a)
    a = tf.sort(a, direction="DESCENDING")
    budget = tf.cast(rho, a.dtype) * tf.cast(d, a.dtype)
    tail_l1 = tf.math.cumsum(a, reverse=True)
    k = tf.range(d, dtype=a.dtype)
    # a_(k+1) > 0: a tail of zeros cannot absorb any budget.
    ok = tf.logical_and((budget - k) * a <= tail_l1, a > 0)
    k_star = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    lam = _safe_div(budget - tf.cast(k_star, a.dtype), tail_l1[k_star])
    # When no k satisfies the condition (g has at most rho*d non-zeros), every
    # non-zero coordinate is kept: lambda = 1/min(a > 0) gives them all p = 1.
    nonzero_min = tf.reduce_min(tf.where(a > 0, a, tf.fill(tf.shape(a), a.dtype.max)))
    lam_all = _safe_div(tf.ones([], a.dtype), nonzero_min)
    return tf.where(tf.reduce_any(ok), lam, tf.where(tf.reduce_any(a > 0), lam_all, tf.zeros([], a.dtype)))


def lambda_rho_greedy(a, rho, iterations=2):
    """Algorithm 3 (greedy), returned as the equivalent scalar lambda.

    Start from p_i = min(rho d a_i / sum_j a_j, 1), i.e. lambda_0 = rho d / sum(a).
    Each iteration rescales the active set I = {i : p_i < 1} by
    c = (rho d - d + |I|) / sum_{i in I} p_i and clips at 1; since every active
    p_i equals lambda * a_i, this is lambda <- c * lambda. Stop when c <= 1 or
    after ``iterations`` rescalings (the paper uses 2). Zero coordinates are
    never active (p_i = 0 stays 0), so |I| counts non-zero unsaturated ones.
    """
    d = tf.cast(tf.size(a), a.dtype)
    budget = tf.cast(rho, a.dtype) * d
    lam = _safe_div(budget, tf.reduce_sum(a))
    for _ in range(iterations):
        scaled = lam * a
        active = tf.logical_and(scaled < 1, a > 0)
        n_saturated = tf.reduce_sum(tf.cast(scaled >= 1, a.dtype))
        active_sum = tf.reduce_sum(tf.where(active, scaled, tf.zeros_like(scaled)))
        c = _safe_div(budget - n_saturated, active_sum)
        lam = tf.where(c > 1, lam * c, lam)
    return lam


@_no_autograph
def water_level(g, rho=None, epsilon=None, method="exact", iterations=2):
    """The scalar lambda of p_i = min(lambda |g_i|, 1) for g (any shape).

    Returns lambda in the compute dtype (float32, or float64 for float64 g).
    """
    check_budget(rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    g = tf.convert_to_tensor(g)
    a = tf.abs(tf.reshape(tf.cast(g, compute_dtype(g.dtype)), [-1]))
    if epsilon is not None:
        return lambda_epsilon(a, epsilon)
    if method == "exact":
        return lambda_rho_exact(a, rho)
    return lambda_rho_greedy(a, rho, iterations)


@_no_autograph
def probabilities_from_lambda(g, lam):
    """p_i = min(lambda |g_i|, 1) with g's shape, in the compute dtype."""
    g = tf.convert_to_tensor(g)
    a = tf.abs(tf.cast(g, compute_dtype(g.dtype)))
    return tf.minimum(tf.cast(lam, a.dtype) * a, 1)


@_no_autograph
def probabilities(g, rho=None, epsilon=None, method="exact", iterations=2):
    """Variance-optimal keep probabilities for GSpar, with g's shape.

    Exactly one budget:
      epsilon: Algorithm 2, min sum(p) s.t. sum(g^2/p) <= (1+epsilon) sum(g^2)  (problem 3);
      rho, method="exact": min sum(g^2/p) s.t. sum(p) = rho*d, solved exactly;
      rho, method="greedy": Algorithm 3 with ``iterations`` rescalings.

    Example:
      >>> p = probabilities(tf.constant([4.0, 2.0, 1.0, 1.0]), rho=0.5)
      >>> float(tf.reduce_sum(p))  # 0.5 * 4
      2.0
    """
    lam = water_level(g, rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    return probabilities_from_lambda(g, lam)


@_no_autograph
def uniform_probabilities(g, rho):
    """UniSp, the paper's baseline: p_i = rho for every coordinate (zeros included)."""
    check_budget(rho=rho)
    g = tf.convert_to_tensor(g)
    return tf.fill(tf.shape(g), tf.cast(rho, compute_dtype(g.dtype)))


@_no_autograph
def atom_probabilities(sigma, budget):
    """ATOMO's variance-optimal probabilities over atoms with weights sigma.

    Solves min sum_i sigma_i^2 / p_i s.t. sum_i p_i = budget, 0 < p_i <= 1,
    whose solution is the same water-filling p_i = min(c |sigma_i|, 1)
    (Wang et al. 2018) -- not the one-shot clip of public ATOMO code, which
    spends fewer than ``budget`` atoms. ``budget`` is an expected atom count
    (clipped to the number of atoms).
    """
    sigma = tf.convert_to_tensor(sigma)
    n = tf.cast(tf.size(sigma), sigma.dtype)
    a = tf.abs(tf.reshape(sigma, [-1]))
    rho = tf.minimum(tf.cast(budget, a.dtype) / tf.maximum(n, 1), 1)
    lam = lambda_rho_exact(a, rho)
    return tf.reshape(tf.minimum(lam * a, 1), tf.shape(sigma))
