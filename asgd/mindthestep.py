"""MindTheStep-AsyncSGD's step-size table: alpha(tau) from a staleness model P and a target Q.

Host-side numpy only (no JAX, no config). With P the staleness model and Q
the target profile (the weights the expected update should give to the
gradients of each staleness), the rule is alpha(tau) = alpha Q(tau)/P(tau),
made safe in three documented ways (docs/mindthestep.md derives each):

  * pooled tails: where P is rare (below its ``TAIL_MASS`` quantile, above
    its 1 - ``TAIL_MASS`` quantile) the ratio of masses Q(pool)/P(pool) is
    used instead of the pointwise ratio, so no step rests on a tiny P(tau)
    and no tau, however far out, gets step 0;
  * the cap: alpha(tau) <= cap * alpha;
  * the normalisation: sum_tau P(tau) alpha(tau) = alpha exactly (water
    filling puts back the step mass the cap removes).

``table`` computes it for tau = 0..K. Targets: ``uniform(T)``,
``geometric(mu)``, any staleness model or pmf array, or a function of P
(``uniform_quantile()``, ``tilted(theta)``), resolved against the model the
table is built from, so an online refit re-derives it. ``TARGETS`` names the
three variants a run chooses from; ``asgd.stepsize`` wraps the table in an
optax transform and ``asgd.rules`` picks P and Q from a run's spec.
"""

from __future__ import annotations

import math

import numpy as np

from asgd import staleness as st

MAX_STALENESS = st.MAX_STALENESS
HORIZON_QUANTILE = 0.99
# P's mass below and above the bulk in which the pointwise ratio Q/P is used.
TAIL_MASS = 0.01
# alpha(tau) <= CAP * alpha: with alpha at or below 1/L (the stiffest
# curvature), one step of 2 alpha on a fresh gradient cannot expand the error.
CAP = 2.0
# Ratios below this fraction of the largest are raised to it: float32 would
# round such steps to 0, and the store counts every update as applied.
RATIO_FLOOR = 1e-30
# The variants: the target profile Q a run's spec names (docs/mindthestep.md).
TARGETS = ("uniform", "geometric", "tilted")


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


def check_cap(cap) -> float:
    """A cap: a finite number >= 1 (the cap * alpha must allow the constant alpha)."""
    cap = float(cap)
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"mindthestep cap must be a finite number >= 1, got {cap!r}")
    return cap


def uniform(T: int) -> st.Empirical:
    """Target profile Q(tau) = 1/(T+1) for tau <= T, 0 beyond: equal weight on
    the gradients of the last T+1 iterates."""
    T = check_int("uniform target T", T, 0)
    return st.Empirical(np.ones(T + 1), smoothing=0.0)


def geometric(mu: float) -> st.Geometric:
    """Target profile Q(tau) = (1-mu) mu^tau: the expected update of momentum SGD
    with momentum mu ("asynchrony begets momentum")."""
    mu = float(mu)
    if not (0.0 < mu < 1.0):
        raise ValueError(f"geometric target mu must be in (0, 1), got {mu!r}")
    return st.Geometric(1.0 - mu)


class Derived:
    """A target that is a function of the model P (re-derived at every refit)."""

    def __init__(self, name: str, make):
        self.name, self.make = name, make

    def __call__(self, model):
        return self.make(model)

    def __repr__(self) -> str:
        return self.name


def uniform_quantile(quantile: float = HORIZON_QUANTILE) -> Derived:
    """The uniform target whose T is P's ``quantile``-quantile (``uniform_horizon``)."""
    return Derived(f"uniform_quantile({quantile})",
                   lambda model: uniform(uniform_horizon(model, quantile)))


def tilted(theta: float) -> Derived:
    """Target Q(tau) proportional to P(tau) e^(-theta tau): P tilted towards fresh gradients.

    Among all Q with the same mean, the one closest to P in KL(Q || P), so it
    lowers the expected update's staleness (its implicit momentum) for the
    least change of the steps; then alpha(tau) is proportional to e^(-theta tau).
    """
    theta = float(theta)
    if not (math.isfinite(theta) and theta >= 0):
        raise ValueError(f"tilted target theta must be finite and >= 0, got {theta!r}")
    return Derived(f"tilted({theta:.4g})", lambda model: model.tilt(theta))


def uniform_horizon(model, quantile: float = HORIZON_QUANTILE,
                    max_staleness: int = MAX_STALENESS) -> int:
    """The uniform target's T derived from P: P's ``quantile``-quantile, capped at K."""
    cdf = model.cdf(np.arange(max_staleness + 1))
    return int(np.argmax(cdf >= quantile)) if cdf[-1] >= quantile else max_staleness


def as_target(target, model=None):
    """Q as a staleness model: a model, a pmf array indexed by tau, or a
    function of P (``Derived``) resolved against ``model``."""
    if isinstance(target, Derived):
        if model is None:
            raise ValueError(f"target {target!r} is derived from the model; give the model")
        return target(model)
    if hasattr(target, "logpmf"):
        return target
    q = np.asarray(target, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any(q < 0) or not np.all(np.isfinite(q)) or q.sum() <= 0:
        raise ValueError("a target pmf must be a non-empty 1-D array of finite values >= 0 "
                         "with a positive sum")
    return st.Empirical(q, smoothing=0.0)


def bulk(model, tail_mass: float = TAIL_MASS, max_staleness: int = MAX_STALENESS
         ) -> tuple[int, int]:
    """(lo, hi): P(T < lo) < tail_mass <= P(T <= lo) and the same for 1 - tail_mass at hi.

    tau < lo and tau > hi are P's rare tails; each is pooled into one bin
    with its edge ([0, lo] and [hi, inf)), so every bin holds at least
    ``tail_mass`` of P. hi is at most K.
    """
    cdf = model.cdf(np.arange(max_staleness + 1))
    lo = int(np.argmax(cdf >= tail_mass)) if cdf[-1] >= tail_mass else max_staleness
    hi = int(np.argmax(cdf >= 1.0 - tail_mass)) if cdf[-1] >= 1.0 - tail_mass else max_staleness
    return lo, max(lo, hi)


def masses(model, lo: int, hi: int, max_staleness: int = MAX_STALENESS) -> np.ndarray:
    """log P of the bins [0, lo], lo+1, ..., hi-1, [hi, inf), in log space."""
    inner = model.logpmf(np.arange(lo + 1, hi)) if hi > lo + 1 else np.zeros(0)
    with np.errstate(divide="ignore"):
        head = float(np.log(model.cdf(lo)))
    tail = float(model.logsf(hi - 1)) if hi > lo else None
    return np.concatenate([[head], inner] + ([[tail]] if tail is not None else []))


def ratios(model, target, lo: int, hi: int, max_staleness: int = MAX_STALENESS) -> np.ndarray:
    """Q(bin)/P(bin) for the bins of ``masses``, scaled so that the largest is 1,
    and at least RATIO_FLOOR.

    Raises ValueError if Q gives a bin no mass (a gap in its support inside
    P's bulk): the step there would be 0.
    """
    log_p = masses(model, lo, hi, max_staleness)
    log_q = masses(target, lo, hi, max_staleness)
    with np.errstate(invalid="ignore"):
        log_r = log_q - log_p
    if not np.all(np.isfinite(log_r)):
        raise ValueError(f"the target gives no mass to some staleness in P's bulk [{lo}, {hi}]: "
                         "its step would be 0; use a target without gaps in its support")
    return np.maximum(np.exp(log_r - log_r.max()), RATIO_FLOOR)


def table(alpha: float, model, target, cap: float = CAP,
          max_staleness: int = MAX_STALENESS, tail_mass: float = TAIL_MASS) -> np.ndarray:
    """MindTheStep-AsyncSGD step sizes alpha(tau) for tau = 0..K.

    With P the staleness model and Q the target profile, on bins that each
    hold at least ``tail_mass`` of P (single tau in P's bulk [lo, hi], the
    pooled tails [0, lo] and [hi, inf) beyond; see ``bulk``; a target that
    ends before hi, e.g. a short uniform, starts the upper pool at its end):

        alpha(bin) = alpha * min(k Q(bin)/P(bin), cap),

    where k is chosen (water filling) so that sum_tau P(tau) alpha(tau) = alpha:
    clipping at cap * alpha removes step mass, k puts it back on the unclipped
    bins. Without clipping the expected update is then -alpha sum_tau Q(tau)
    grad f(x_{t-tau}) on the bulk (docs/mindthestep.md). Every entry is
    positive and finite (ratios below RATIO_FLOOR times the largest are
    raised to it); the last, tau = K, stands for all tau >= K.

    Args:
      alpha: expected step size, > 0.
      model: staleness model P (``asgd.staleness``).
      target: profile Q: ``uniform(T)``, ``geometric(mu)``, any staleness model,
        a pmf array indexed by tau, or a function of P (``uniform_quantile()``,
        ``tilted(theta)``).
      cap: finite c >= 1; alpha(tau) <= c alpha.
      max_staleness: K >= 1.
      tail_mass: P's mass in each pooled tail, in (0, 0.5).

    Returns:
      float64 array [K+1] of alpha(tau).

    Raises:
      ValueError: bad arguments, or a target with no mass on some bin.

    Example (Poisson(1) and uniform(3), cap 10: P's bulk is [0, 4] and the
    target ends at 3, so the steps are alpha Q/P = alpha e tau! / 4 up to
    tau = 2 and the pooled tau >= 3 get alpha Q(3) / P(T >= 3)):
      >>> table(0.1, st.Poisson(1.0), uniform(3), cap=10.0, max_staleness=4)
      array([0.06795705, 0.06795705, 0.13591409, 0.31132709, 0.31132709])
    """
    alpha = check_alpha(alpha)
    cap = check_cap(cap)
    k_max = check_int("max_staleness", max_staleness, 1)
    if not 0.0 < tail_mass < 0.5:
        raise ValueError(f"tail_mass must be in (0, 0.5), got {tail_mass!r}")
    target = as_target(target, model)
    lo, hi = bulk(model, tail_mass, k_max)
    q_positive = np.flatnonzero(target.pmf(np.arange(hi + 1)) > 0)
    if q_positive.size:  # a target that ends inside P's bulk: the upper pool starts there
        hi = max(lo, min(hi, int(q_positive[-1])))
    r = ratios(model, target, lo, hi, k_max)
    p = np.exp(masses(model, lo, hi, k_max))
    k = water_level(p / p.sum(), r, cap)
    steps = alpha * np.minimum(k * r, cap)          # per bin
    bins = np.clip(np.arange(k_max + 1), lo, hi) - lo  # tau -> bin
    return steps[bins]


def water_level(p: np.ndarray, r: np.ndarray, cap: float) -> float:
    """The k > 0 with sum_b p_b min(k r_b, cap) = 1 (water filling), for r > 0 and cap >= 1.

    With S the clipped set {k r >= cap}, the sum is cap P(S) + k sum_{not S} p r,
    so k = (1 - cap P(S)) / sum_{not S} p r; starting from the unclipped k,
    S only grows, so this converges in at most len(r) + 1 rounds.
    """
    k = 1.0 / float(np.dot(p, r))
    for _ in range(r.size + 2):
        clipped = k * r >= cap
        free = float(np.dot(p[~clipped], r[~clipped]))
        if free <= 0.0:  # everything clipped: cap * sum(p) = cap >= 1; the sum is 1 at cap 1
            return cap / float(r.min())
        k_new = (1.0 - cap * float(p[clipped].sum())) / free
        if np.array_equal(clipped, k_new * r >= cap):
            return k_new
        k = max(k_new, k)
    return k


def expected_step(alpha_table: np.ndarray, model) -> float:
    """sum_tau P(tau) alpha(tau), the last entry standing for tau >= K."""
    alpha_table = np.asarray(alpha_table, np.float64)
    k_max = alpha_table.size - 1
    p = np.append(model.pmf(np.arange(k_max)), model.sf(k_max - 1))
    return float(np.dot(p, alpha_table))


def cap_share(alpha_table: np.ndarray, model, cap_step: float) -> float:
    """P's mass on the tau whose step is at the cap (within float32 rounding)."""
    alpha_table = np.asarray(alpha_table, np.float64)
    k_max = alpha_table.size - 1
    p = np.append(model.pmf(np.arange(k_max)), model.sf(k_max - 1))
    return float(p[alpha_table >= cap_step * (1 - 1e-6)].sum())
