"""MindTheStep-AsyncSGD's step-size table: alpha(tau) from a staleness model P and a target Q.

Host-side numpy only (no JAX, no config): ``table`` computes the capped and
renormalised alpha Q(tau)/P(tau) for tau = 0..K, ``uniform`` and
``geometric`` build the target profiles, and ``uniform_horizon`` is the one
rule that derives a uniform target's T from a model. ``asgd.stepsize``
wraps the table in an optax transform; ``asgd.rules`` picks P and Q from a
run's step-size spec.
"""

from __future__ import annotations

import math

import numpy as np

from asgd import staleness as st

MAX_STALENESS = st.MAX_STALENESS
HORIZON_QUANTILE = 0.99


def check_alpha(alpha) -> float:
    """A step size: a finite number > 0."""
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"step size alpha must be a finite number > 0, got {alpha!r}")
    return alpha


def check_int(name: str, value, low: int) -> int:
    """An integer >= low (bools refused)."""
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def uniform(T: int) -> st.Empirical:
    """Target profile Q(tau) = 1/(T+1) for tau <= T, 0 beyond."""
    T = check_int("uniform target T", T, 0)
    return st.Empirical(np.ones(T + 1), smoothing=0.0)


def geometric(mu: float) -> st.Geometric:
    """Target profile Q(tau) = (1-mu) mu^tau: the expected update of momentum SGD
    with momentum mu ("asynchrony begets momentum")."""
    mu = float(mu)
    if not (0.0 < mu < 1.0):
        raise ValueError(f"geometric target mu must be in (0, 1), got {mu!r}")
    return st.Geometric(1.0 - mu)


def uniform_horizon(model, quantile: float = HORIZON_QUANTILE,
                    max_staleness: int = MAX_STALENESS) -> int:
    """The uniform target's T derived from P: P's ``quantile``-quantile, capped at K."""
    cdf = model.cdf(np.arange(max_staleness + 1))
    return int(np.argmax(cdf >= quantile)) if cdf[-1] >= quantile else max_staleness


def as_target(target):
    """A staleness model, or a pmf array indexed by tau wrapped as one."""
    if hasattr(target, "logpmf"):
        return target
    q = np.asarray(target, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any(q < 0) or not np.all(np.isfinite(q)) or q.sum() <= 0:
        raise ValueError("a target pmf must be a non-empty 1-D array of finite values >= 0 "
                         "with a positive sum")
    return st.Empirical(q, smoothing=0.0)


def table(alpha: float, model, target, cap: float = 10.0,
          max_staleness: int = MAX_STALENESS) -> np.ndarray:
    """MindTheStep-AsyncSGD step sizes alpha(tau) for tau = 0..K.

    With P the staleness model and Q the target profile,

        alpha(tau) = alpha * min(k Q(tau)/P(tau), cap),

    where k >= 1 is chosen (water-filling) so that sum_tau P(tau) alpha(tau) = alpha:
    clipping at cap * alpha removes step mass, k puts it back on the unclipped
    tau. k = 1 when nothing is clipped, i.e. the plain alpha Q/P. The ratio is
    taken in log space, so tau where P underflows give the cap, never inf/NaN.
    Beyond the supports:
      * Q(tau) = 0 (beyond the target, e.g. tau > T for uniform(T)): alpha(tau) = 0;
      * P(tau) = 0 < Q(tau) (beyond the model, or underflow): alpha(tau) = cap * alpha.
    The last entry, tau = K, stands for all tau >= K: it uses the tail masses
    P(T >= K) and Q(T >= K), so the identity holds for ``table[min(tau, K)]``.

    Args:
      alpha: expected step size, > 0.
      model: staleness model P (``asgd.staleness``).
      target: profile Q: ``uniform(T)``, ``geometric(mu)``, any staleness model,
        or a pmf array indexed by tau.
      cap: finite c >= 1; alpha(tau) <= c alpha.
      max_staleness: K >= 1.

    Returns:
      float64 array [K+1] of alpha(tau).

    Raises:
      ValueError: bad arguments, or a cap too small for P to reach alpha on
        Q's support (c P(Q > 0) < 1).

    Example (Poisson(lam) and uniform(T): alpha e^lam tau! / ((T+1) lam^tau)):
      >>> table(0.1, st.Poisson(1.0), uniform(1), max_staleness=3)
      array([0.13591409, 0.13591409, 0.        , 0.        ])
    """
    alpha = check_alpha(alpha)
    cap = float(cap)
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"mindthestep cap must be a finite number >= 1, got {cap!r}")
    k_max = check_int("max_staleness", max_staleness, 1)
    target = as_target(target)
    tau = np.arange(k_max)
    log_p = np.append(model.logpmf(tau), model.logsf(k_max - 1))
    log_q = np.append(target.logpmf(tau), target.logsf(k_max - 1))
    with np.errstate(invalid="ignore", over="ignore"):  # inf ratios are clipped
        ratio = np.where(np.isneginf(log_q), 0.0,
                         np.where(np.isneginf(log_p), np.inf, np.exp(log_q - log_p)))
        k = water_level(np.exp(log_p), np.exp(log_q), ratio, cap)
        return alpha * np.minimum(k * ratio, cap)


def water_level(p: np.ndarray, q: np.ndarray, ratio: np.ndarray, cap: float) -> float:
    """The k >= 1 with sum_tau p min(k ratio, cap) = 1 (water-filling).

    With S the clipped set {k ratio >= cap}, the sum is cap P(S) + k Q(not S),
    so k = (1 - cap P(S)) / Q(not S); iterate from k = 1, S only grows.
    """
    k = 1.0
    for _ in range(ratio.size + 2):
        clipped = k * ratio >= cap
        need = 1.0 - cap * p[clipped].sum()
        free = q[~clipped & (ratio > 0)].sum()
        if free <= 0.0:
            if need > 1e-9:
                on_q = p[ratio > 0].sum()
                raise ValueError(
                    f"mindthestep cap {cap} is too small: the model puts only {on_q:.4g} "
                    f"probability on the target's support, so the cap must be >= "
                    f"{1.0 / max(on_q, 1e-300):.4g}")
            return k
        k_new = max(need / free, k)
        if k_new <= k * (1.0 + 1e-13) and np.array_equal(clipped, k_new * ratio >= cap):
            return k_new
        k = k_new
    return k
