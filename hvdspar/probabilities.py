"""Sampling probabilities p for unbiased sparsification (Wangni et al. 2018, sec. 2).

A coordinate i of g is kept with probability p_i and rescaled to g_i / p_i, so
Q(g) is unbiased with second moment sum_i g_i^2 / p_i and expected density
sum_i p_i. Every optimal p has the water-filling form of Proposition 1,

    p_i = min(lambda * |g_i|, 1),

so each method below computes the scalar ``lambda`` and derives p from it. The
coordinates with p_i = 1 form the top set S_k; every other kept coordinate
carries g_i / p_i = sign(g_i) / lambda, which is what makes the message of
sec. 2.3 compact (see ``hvdspar.sparse_message``).

Conventions (no NaN anywhere):
- coordinates with g_i = 0 get p_i = 0 (they are never sent; Q(g)_i = 0 = g_i);
- an all-zero g gives p = 0 and lambda = 0;
- rho = 1 (a budget of every coordinate) keeps everything: p_i = 1 for every
  g_i != 0, by both methods, so Q(g) = g exactly. The water level is then any
  lambda >= 1 / min |g_i|; ``full_lambda`` returns 1 / min |g_i|, nudged so
  that fl(lambda |g_i|) >= 1 for all i (Algorithm 3's rescalings only approach
  that level, and 1/min |g_i| rounded can leave lambda min |g_i| just below 1);
- computation runs in float32 for float16/bfloat16/float32 inputs and in
  float64 for float64 inputs; p is returned in that compute dtype.
"""

import tensorflow as tf

from hvdspar.dtypes import compute_dtype

# Plain TF ops with explicit tf.cond/tf.while_loop: AutoGraph has nothing to convert,
# and converting recursively made every trace seconds slower.
_no_autograph = tf.autograph.experimental.do_not_convert

METHODS = ("exact", "greedy")


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


def full_budget(rho):
    """True for a Python-number rho >= 1: every non-zero coordinate gets p = 1."""
    return isinstance(rho, (int, float)) and not isinstance(rho, bool) and rho >= 1


def full_lambda(a):
    """A lambda with fl(lambda * a_i) >= 1 for every a_i > 0 (0 for an all-zero a).

    lambda = 1 / min_{a_i > 0} a_i, moved up by one ulp where rounding left
    lambda * min a < 1 (multiplication by lambda > 0 is monotone in floating
    point, so then every larger a_i saturates too). Capped at the dtype's
    largest finite value so that lambda * 0 stays 0: only a minimum below
    1 / max (float32: subnormals under 2.9e-39) cannot saturate, which is why
    the rho >= 1 paths of ``probabilities`` and ``gspar_message`` test g_i != 0
    instead of lambda |g_i| >= 1.
    """
    a = tf.convert_to_tensor(a)
    big = tf.constant(a.dtype.max, a.dtype)
    positive = a > 0
    m = tf.reduce_min(tf.where(positive, a, tf.fill(tf.shape(a), big)))
    lam = tf.math.reciprocal(m)
    inf = tf.constant(float("inf"), a.dtype)
    for _ in range(2):  # one step suffices (round-to-nearest); the second is a guard
        lam = tf.where(lam * m < 1, tf.math.nextafter(lam, inf), lam)
    lam = tf.minimum(lam, big)
    return tf.where(tf.reduce_any(positive), lam, tf.zeros([], a.dtype))


def _keeps_all(a, rho):
    """rho * d >= #{i : a_i > 0}, counted exactly (float64 budget, int64 count)."""
    d = tf.cast(tf.size(a), tf.float64)
    nnz = tf.cast(tf.math.count_nonzero(a > 0, dtype=tf.int64), tf.float64)
    return tf.cast(rho, tf.float64) * d >= nnz


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
    k = tf.argmax(ok, output_type=tf.int64)  # (bool: a GPU kernel; int64: any d)
    return _safe_div(tail_l1[k], eps * total_sq + tail_l2[k])


def lambda_rho_exact(a, rho):
    """Exact water-filling for the sparsity budget: sum_i min(lambda a_i, 1) = rho * d.

    With a sorted descending and k coordinates saturated at p = 1,
    lambda = (rho d - k) / sum_{i>k} a_(i); the solution takes the smallest k
    for which lambda * a_(k+1) <= 1, i.e. (rho d - k) * a_(k+1) <= sum_{i>k} a_(i).
    If g has fewer than rho*d non-zeros, all of them get p = 1.
    """
    d = tf.size(a, out_type=tf.int64)  # (int64: tensors past 2^31 elements)
    a = tf.sort(a, direction="DESCENDING")
    budget = tf.cast(rho, a.dtype) * tf.cast(d, a.dtype)
    tail_l1 = tf.math.cumsum(a, reverse=True)
    k = tf.range(d, dtype=a.dtype)
    # a_(k+1) > 0: a tail of zeros cannot absorb any budget.
    ok = tf.logical_and((budget - k) * a <= tail_l1, a > 0)
    k_star = tf.argmax(ok, output_type=tf.int64)
    lam = _safe_div(budget - tf.cast(k_star, a.dtype), tail_l1[k_star])
    # When g has at most rho*d non-zeros (always at rho = 1) every non-zero coordinate
    # is kept. Decided by counting, not by ``ok``: rounding in the cumulative sums can
    # make ``ok`` hold at some k < d-1 for a nearly flat tail, and then p < 1 there.
    return tf.where(_keeps_all(a, rho), full_lambda(a), tf.where(tf.reduce_any(ok), lam, tf.zeros([], a.dtype)))


def lambda_rho_greedy(a, rho, iterations=2):
    """Algorithm 3 (greedy), returned as the equivalent scalar lambda.

    Start from p_i = min(rho d a_i / sum_j a_j, 1), i.e. lambda_0 = rho d / sum(a).
    Each iteration rescales the active set I = {i : p_i < 1} by
    c = (rho d - d + |I|) / sum_{i in I} p_i and clips at 1; since every active
    p_i equals lambda * a_i, this is lambda <- c * lambda. Stop when c <= 1 or
    after ``iterations`` rescalings (the paper uses 2). Zero coordinates are
    never active (p_i = 0 stays 0), so |I| counts non-zero unsaturated ones.

    rho >= 1 returns ``full_lambda(a)`` (p = 1 for every non-zero coordinate):
    the rescalings only approach that level geometrically -- after 2 of them a
    Gaussian g still had p_i < 1 on its smallest coordinates, a density of
    about 0.93 instead of 1.
    """
    if full_budget(rho):
        return full_lambda(a)
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


def water_level_bound(l1, sq_norm, budget):
    """An upper bound Lambda on the water level, from ||a||_1 and ||a||_2^2 alone (float64).

    The water level lambda* solves f(lambda) = sum_i min(lambda a_i, 1) = B (B = rho d). Since
    min(x, 1) >= x - x^2/4 for every x >= 0 (equality at x = 0 and x = 2),

        f(lambda) >= lambda ||a||_1 - lambda^2 ||a||_2^2 / 4,

    and the right side reaches B at

        Lambda = 2B / (||a||_1 + sqrt(||a||_1^2 - B ||a||_2^2)),   when r = B ||a||_2^2 / ||a||_1^2 <= 1;

    f does not decrease, so lambda* <= Lambda. Algorithm 3 never passes lambda*: each rescaling
    sets lambda to the root of f's linearisation at the current active set, which lies above f
    from there on. So every lambda it visits is <= Lambda, every coordinate it saturates has
    a_i >= 1 / Lambda, and every coordinate it keeps has u_i < Lambda a_i. Lambda / lambda_0
    = 2 / (1 + sqrt(1 - r)) with lambda_0 = B / ||a||_1: 1 + r/4 + ... for spread-out a (a
    Gaussian has r = rho pi / 2), growing to 2 at r = 1.

    Returns (Lambda, r); Lambda is +inf where r > 1 (no bound from these two moments) or ||a||_1 = 0.
    """
    # (a Python number straight to float64: tf.cast would round it to float32 first)
    l1, sq_norm, budget = (tf.cast(v, tf.float64) if tf.is_tensor(v) else tf.constant(v, tf.float64)
                           for v in (l1, sq_norm, budget))
    r = tf.math.divide_no_nan(budget * sq_norm, l1 * l1)
    root = tf.sqrt(tf.maximum(l1 * l1 - budget * sq_norm, 0))
    inf = tf.constant(float("inf"), tf.float64)
    bound = tf.where(tf.logical_and(r <= 1, l1 > 0), 2 * budget / (l1 + root), inf)
    return bound, tf.where(l1 > 0, r, inf)


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
    if full_budget(rho) and epsilon is None:
        # Every coordinate kept: p_i = 1 wherever g_i != 0 (0 where g_i = 0: nothing to send).
        check_budget(rho=rho, epsilon=epsilon, method=method, iterations=iterations)
        g = tf.convert_to_tensor(g)
        return tf.cast(tf.abs(tf.cast(g, compute_dtype(g.dtype))) > 0, compute_dtype(g.dtype))
    lam = water_level(g, rho=rho, epsilon=epsilon, method=method, iterations=iterations)
    return probabilities_from_lambda(g, lam)


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
