"""Staleness models: distributions over the staleness tau in {0, 1, 2, ...}.

In asynchronous SGD the staleness tau of an update is the number of updates
other workers applied between this worker's read of the parameters and its
write. A model of tau is what MindTheStep-AsyncSGD (``asgd.stepsize``) divides
by; this module provides the models, their maximum-likelihood fits, and
goodness-of-fit scores so that a run can report which one matches the
staleness it measured.

Models (each an immutable object; invalid parameters raise ``ValueError``):

  Geometric(p)                 P(tau) = p (1-p)^tau             mean (1-p)/p
  Poisson(lam)                 P(tau) = e^-lam lam^tau / tau!   mean lam
  ConwayMaxwellPoisson(lam,nu) P(tau) = lam^tau / (tau!)^nu / Z(lam, nu)
  Empirical(hist, smoothing)   P(tau) = (hist[tau] + s) / (sum(hist) + s*len(hist))

Every model has ``logpmf(tau)``, ``pmf(tau)``, ``cdf(tau)`` (P(T <= tau)),
``logsf(tau)`` (log P(T > tau)), ``mean()``, ``sample(rng, n)`` and the
class methods ``fit(samples)`` / ``fit_hist(hist)`` (maximum likelihood from
observed tau values, or from a histogram ``hist[tau] = count``).
Everything is host-side numpy/scipy, computed in log space, so that e.g.
``Poisson(3.).pmf(10**6)`` is 0.0 rather than NaN or an overflow.

Every model also has ``tilt(theta)``: itself reweighted by e^(-theta tau),
which stays in the family (MindTheStep's tilted target).

Goodness of fit against a measured histogram: ``total_variation``,
``kl_divergence``, and ``best_fit``, which fits every family by maximum
likelihood and ranks them by AIC (or BIC) on that same likelihood;
``fit_best`` is its model alone (MindTheStep's online fit).

Example:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> tau = Poisson(3.0).sample(rng, 10_000)
  >>> hist = np.bincount(tau)
  >>> name, model, scores = best_fit(hist)
  >>> round(Poisson.fit_hist(hist).lam, 1)
  3.0
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from scipy import special

# Step-size tables and their online histograms distinguish tau = 0..MAX_STALENESS,
# the last entry standing for every tau >= MAX_STALENESS.
MAX_STALENESS = 1024
# Largest support the Conway-Maxwell-Poisson normaliser will sum over.
_CMP_MAX_SUPPORT = 5_000_000
# Terms more than this many nats below the largest are dropped from Z.
_CMP_LOG_TOL = 45.0
# Newton steps of the CMP maximum-likelihood fit (it converges in ~5-20).
_CMP_FIT_STEPS = 100
# Parameters fitted to degenerate data (e.g. every tau == 0) are kept this far
# inside the open parameter range instead of failing.
_EPS = 1e-12


# ----------------------------------------------------------------- helpers ----

def _tau(tau) -> np.ndarray:
    """Staleness values as an integer-valued float64 array (negative allowed)."""
    return np.asarray(tau, dtype=np.float64)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _samples_to_hist(samples) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError("samples must be a non-empty 1-D array of staleness values")
    if np.any(samples < 0) or np.any(samples != np.round(samples)):
        raise ValueError("staleness samples must be non-negative integers")
    return np.bincount(samples.astype(np.int64))


def _check_hist(hist, allow_zero_total: bool = False) -> np.ndarray:
    """A histogram of counts indexed by tau, as float64; validated."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 1 or hist.size == 0:
        raise ValueError("hist must be a non-empty 1-D array of counts indexed by tau")
    if not np.all(np.isfinite(hist)) or np.any(hist < 0):
        raise ValueError("hist counts must be finite and >= 0")
    if not allow_zero_total and hist.sum() <= 0:
        raise ValueError("hist has no observations (all counts are 0)")
    return hist


def _hist_mean(hist: np.ndarray) -> float:
    return float(np.dot(np.arange(hist.size), hist) / hist.sum())


def generator(rng) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed, or a JAX PRNG key.

    A JAX key (raw ``PRNGKey`` or typed ``jax.random.key``) is turned into a
    seed with ``jax.random.bits``, so sampling stays reproducible from keys.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    import jax  # local import: the models themselves are pure numpy
    import jax.numpy as jnp

    bits = np.asarray(jax.random.bits(rng, (4,), jnp.uint32))
    return np.random.default_rng(bits)


class _Model:
    """Shared methods; subclasses define logpmf, cdf, logsf, mean, sample, fit_hist."""

    name: str = ""
    num_params: int = 0

    def pmf(self, tau) -> np.ndarray:
        """P(T = tau); 0 for negative tau."""
        return np.exp(self.logpmf(tau))

    def sf(self, tau) -> np.ndarray:
        """P(T > tau)."""
        return np.exp(self.logsf(tau))

    @classmethod
    def fit(cls, samples):
        """Maximum-likelihood fit from observed staleness values (ints >= 0)."""
        return cls.fit_hist(_samples_to_hist(samples))

    def log_likelihood(self, hist) -> float:
        """sum_tau hist[tau] * log P(tau)."""
        hist = _check_hist(hist)
        seen = hist > 0
        return float(np.dot(hist[seen], self.logpmf(np.flatnonzero(seen))))


# ---------------------------------------------------------------- models ----

@dataclasses.dataclass(frozen=True)
class Geometric(_Model):
    """Geometric staleness: P(tau) = p (1-p)^tau, tau = 0, 1, ...

    The queueing model behind "asynchrony begets momentum" (Mitliagkas et al.,
    2016): each update is delayed one more step with probability 1-p.
    p is the "success" probability, as in ``scipy.stats.geom(p, loc=-1)``;
    mean (1-p)/p. The target ``asgd.stepsize.geometric(mu)`` is Geometric(1-mu).

    Args:
      p: in (0, 1).

    Example:
      >>> Geometric(0.5).pmf([0, 1, 2])
      array([0.5  , 0.25 , 0.125])
    """

    p: float
    name = "geometric"
    num_params = 1

    def __post_init__(self):
        p = float(self.p)
        if not (0.0 < p < 1.0):
            raise ValueError(f"Geometric p must be in (0, 1), got {self.p!r}")
        object.__setattr__(self, "p", p)

    def logpmf(self, tau) -> np.ndarray:
        tau = _tau(tau)
        out = math.log(self.p) + np.maximum(tau, 0) * math.log1p(-self.p)
        return np.where(tau < 0, -np.inf, out)

    def cdf(self, tau) -> np.ndarray:
        tau = np.floor(_tau(tau))
        return np.where(tau < 0, 0.0, -np.expm1((np.maximum(tau, -1) + 1) * math.log1p(-self.p)))

    def logsf(self, tau) -> np.ndarray:
        tau = np.floor(_tau(tau))
        return np.where(tau < 0, 0.0, (np.maximum(tau, -1) + 1) * math.log1p(-self.p))

    def mean(self) -> float:
        return (1.0 - self.p) / self.p

    def sample(self, rng, n: int) -> np.ndarray:
        return generator(rng).geometric(self.p, size=n).astype(np.int64) - 1

    def tilt(self, theta: float) -> "Geometric":
        """The model reweighted by e^(-theta tau): Geometric(1 - (1-p) e^-theta)."""
        return type(self)(-math.expm1(math.log1p(-self.p) - theta))

    @classmethod
    def fit_hist(cls, hist) -> "Geometric":
        """MLE p = 1 / (1 + mean), kept inside (0, 1)."""
        hist = _check_hist(hist)
        return cls(min(max(1.0 / (1.0 + _hist_mean(hist)), _EPS), 1.0 - _EPS))


@dataclasses.dataclass(frozen=True)
class Poisson(_Model):
    """Poisson staleness: P(tau) = e^-lam lam^tau / tau!.

    With m threads each update typically sees about m-1 others land between
    its read and its write, so lam ~ m-1 (MindTheStep-AsyncSGD).

    Args:
      lam: > 0.

    Example:
      >>> float(Poisson(2.0).pmf(1))  # 2 e^-2
      0.2706705664732254
    """

    lam: float
    name = "poisson"
    num_params = 1

    def __post_init__(self):
        object.__setattr__(self, "lam", _positive("Poisson lam", self.lam))

    def logpmf(self, tau) -> np.ndarray:
        tau = _tau(tau)
        t = np.maximum(tau, 0)
        out = t * math.log(self.lam) - self.lam - special.gammaln(t + 1)
        return np.where(tau < 0, -np.inf, out)

    def cdf(self, tau) -> np.ndarray:
        tau = np.floor(_tau(tau))
        return np.where(tau < 0, 0.0, special.pdtr(np.maximum(tau, 0), self.lam))

    def logsf(self, tau) -> np.ndarray:
        tau = np.floor(_tau(tau))
        with np.errstate(divide="ignore"):
            out = np.log(special.pdtrc(np.maximum(tau, 0), self.lam))
        return np.where(tau < 0, 0.0, out)

    def mean(self) -> float:
        return self.lam

    def sample(self, rng, n: int) -> np.ndarray:
        return generator(rng).poisson(self.lam, size=n).astype(np.int64)

    def tilt(self, theta: float) -> "Poisson":
        """The model reweighted by e^(-theta tau): Poisson(lam e^-theta)."""
        return type(self)(self.lam * math.exp(-theta))

    @classmethod
    def fit_hist(cls, hist) -> "Poisson":
        """MLE lam = mean (at least 1e-12, so all-zero data still fits)."""
        hist = _check_hist(hist)
        return cls(max(_hist_mean(hist), _EPS))


def cmp_log_normalizer(lam: float, nu: float) -> tuple[float, int]:
    """log Z(lam, nu) = log sum_tau lam^tau / (tau!)^nu, and the support used.

    The terms t(tau) = tau log(lam) - nu log(tau!) are log-concave with their
    peak near lam^(1/nu). The sum runs over tau = 0..K, where K is doubled
    until the term ratio r = t(K+1)/t(K) = lam/(K+1)^nu is < 1 and the
    dropped tail, at most t(K) r / (1 - r) since the ratios only shrink, is
    45 nats below the peak (< e^-45 relative); it is then a log-sum-exp,
    which cannot overflow. (Near-geometric shapes, nu -> 0 with lam < 1,
    thus need a few hundred terms, not millions.)

    Returns:
      (log Z, K).

    Raises:
      ValueError: invalid parameters, or a peak beyond 5e6 (nu too small for lam).
    """
    lam = _positive("ConwayMaxwellPoisson lam", lam)
    nu = _positive("ConwayMaxwellPoisson nu", nu)
    log_lam = math.log(lam)
    log_mode = log_lam / nu
    if log_mode > math.log(_CMP_MAX_SUPPORT / 4):
        raise ValueError(
            f"ConwayMaxwellPoisson(lam={lam}, nu={nu}) peaks near tau = lam**(1/nu) = "
            f"e^{log_mode:.1f}; more than the supported {_CMP_MAX_SUPPORT // 4} "
            "(increase nu or decrease lam)")
    mode = math.floor(math.exp(log_mode))
    peak = mode * log_lam - nu * special.gammaln(mode + 1)
    k = max(32, 2 * mode + 2)
    while True:
        log_t_k = k * log_lam - nu * special.gammaln(k + 1)
        log_ratio = log_lam - nu * math.log(k + 1)
        if log_ratio < 0 and (log_t_k + log_ratio - math.log(-math.expm1(log_ratio))
                              <= peak - _CMP_LOG_TOL):
            break
        k *= 2
        if k > _CMP_MAX_SUPPORT:
            raise ValueError(f"ConwayMaxwellPoisson(lam={lam}, nu={nu}) needs a support "
                             f"beyond {_CMP_MAX_SUPPORT}")
    tau = np.arange(k + 1, dtype=np.float64)
    log_terms = tau * log_lam - nu * special.gammaln(tau + 1)
    return float(special.logsumexp(log_terms)), int(k)


@dataclasses.dataclass(frozen=True)
class ConwayMaxwellPoisson(_Model):
    """Conway-Maxwell-Poisson: P(tau) = lam^tau / (tau!)^nu / Z(lam, nu).

    nu = 1 is Poisson(lam); nu < 1 is over-dispersed (variance > mean), nu > 1
    under-dispersed, so it covers both kinds of measured staleness.
    Z is computed stably by ``cmp_log_normalizer``.

    Args:
      lam: > 0.
      nu: > 0 (with lam**(1/nu) at most ~1e6, the supported support).

    Example:
      >>> m = ConwayMaxwellPoisson(3.0, 1.0)  # == Poisson(3)
      >>> bool(np.isclose(m.pmf(2), Poisson(3.0).pmf(2)))
      True
    """

    lam: float
    nu: float
    name = "cmp"
    num_params = 2

    def __post_init__(self):
        object.__setattr__(self, "lam", _positive("ConwayMaxwellPoisson lam", self.lam))
        object.__setattr__(self, "nu", _positive("ConwayMaxwellPoisson nu", self.nu))
        self._support  # validate that Z is computable now, not at first use

    @functools.cached_property
    def _support(self) -> tuple[float, int, np.ndarray]:
        """(log Z, K, pmf over 0..K)."""
        log_z, k = cmp_log_normalizer(self.lam, self.nu)
        tau = np.arange(k + 1, dtype=np.float64)
        pmf = np.exp(tau * math.log(self.lam) - self.nu * special.gammaln(tau + 1) - log_z)
        return log_z, k, pmf

    def logpmf(self, tau) -> np.ndarray:
        tau = _tau(tau)
        t = np.maximum(tau, 0)
        out = t * math.log(self.lam) - self.nu * special.gammaln(t + 1) - self._support[0]
        return np.where(tau < 0, -np.inf, out)

    def cdf(self, tau) -> np.ndarray:
        _, k, pmf = self._support
        cum = np.minimum(np.cumsum(pmf), 1.0)
        tau = np.floor(_tau(tau))
        idx = np.clip(tau, 0, k).astype(np.int64)
        return np.where(tau < 0, 0.0, np.where(tau >= k, 1.0, cum[idx]))

    def logsf(self, tau) -> np.ndarray:
        """log P(T > tau), summed over tau+1 .. max(K, tau) + 64 in log space."""
        k = self._support[1]
        tau = np.floor(_tau(tau))
        out = np.empty(tau.shape)
        for i, t in np.ndenumerate(tau):
            if t < 0:
                out[i] = 0.0
                continue
            rest = np.arange(t + 1, max(k, t) + 65)
            out[i] = special.logsumexp(self.logpmf(rest))
        return out if out.ndim else out[()]

    def mean(self) -> float:
        _, k, pmf = self._support
        return float(np.dot(np.arange(k + 1), pmf))

    def sample(self, rng, n: int) -> np.ndarray:
        _, k, pmf = self._support
        return generator(rng).choice(k + 1, size=n, p=pmf / pmf.sum()).astype(np.int64)

    @classmethod
    def with_mean(cls, mean: float, nu: float) -> "ConwayMaxwellPoisson":
        """The CMP(lam, nu) whose mean is ``mean`` (lam by bisection on log lam;
        the mean increases with lam)."""
        mean, nu = _positive("CMP mean", mean), _positive("ConwayMaxwellPoisson nu", nu)
        low, high = math.log(1e-8), nu * math.log(mean + 2.0) + 2.0
        while cls(math.exp(high), nu).mean() < mean:
            high += 1.0
        for _ in range(100):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if cls(math.exp(mid), nu).mean() < mean else (low, mid)
        return cls(math.exp(0.5 * (low + high)), nu)

    def tilt(self, theta: float) -> "ConwayMaxwellPoisson":
        """The model reweighted by e^(-theta tau): CMP(lam e^-theta, nu)."""
        return type(self)(self.lam * math.exp(-theta), self.nu)

    def _moments(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(log Z, E[s], Cov[s]) of the sufficient statistics s = (tau, log tau!)."""
        log_z, k, pmf = self._support
        t = np.arange(k + 1, dtype=np.float64)
        stats = np.stack([t, special.gammaln(t + 1)])
        mean = stats @ pmf
        centred = stats - mean[:, None]
        return log_z, mean, (centred * pmf) @ centred.T

    @classmethod
    def fit_hist(cls, hist) -> "ConwayMaxwellPoisson":
        """Maximum likelihood by damped Newton steps on (log lam, nu), from the Poisson fit.

        CMP is an exponential family with natural parameters (log lam, -nu) and
        sufficient statistics s = (tau, log tau!): the mean negative
        log-likelihood log Z - (log lam, -nu) . mean(s) is convex in them, its
        gradient is E[s] - mean(s) and its Hessian Cov[s] (with the sign of
        the nu row and column flipped in (log lam, nu)). Each Newton step is
        cut to the bounds (nu in [0.01, 50], lam in [1e-8, e^50]; a
        coordinate at a bound that the gradient pushes beyond is held there)
        and halved until Z is computable and the likelihood decreases enough
        (Armijo), so it converges from the Poisson start on long-tailed
        (nu < 1) and under-dispersed (nu > 1) histograms alike, and stops at
        the bound when the data are a point mass; a quasi-Newton method with
        a fixed first step leaves the valid region there and gives up.
        """
        hist = _check_hist(hist)
        n = hist.sum()
        tau = np.arange(hist.size, dtype=np.float64)
        s = np.array([np.dot(hist, tau), np.dot(hist, special.gammaln(tau + 1))]) / n
        low, high = np.array([math.log(1e-8), 1e-2]), np.array([50.0, 50.0])
        flip = np.array([1.0, -1.0])  # d/dnu = -d/d(natural parameter)

        def objective(x):
            """(mean NLL, gradient, Hessian) at x = (log lam, nu); None where invalid."""
            if np.any(x < low) or np.any(x > high):
                return None
            try:
                log_z, mean, cov = cls(math.exp(x[0]), float(x[1]))._moments()
            except ValueError:
                return None
            value = log_z - x[0] * s[0] + x[1] * s[1]
            return value, flip * (mean - s), cov * np.outer(flip, flip)

        x = np.array([math.log(max(s[0], 1e-6)), 1.0])
        current = objective(x)
        for _ in range(_CMP_FIT_STEPS):
            value, grad, hess = current
            # coordinates held at a bound that the gradient pushes beyond stay there
            free = ~(((x <= low) & (grad > 0)) | ((x >= high) & (grad < 0)))
            step = np.zeros(2)
            if free.all():
                try:
                    step = -np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
                except np.linalg.LinAlgError:
                    step = -grad
            elif free.any():
                i = int(np.flatnonzero(free)[0])
                step[i] = -grad[i] / max(hess[i, i], 1e-12)
            if not np.all(np.isfinite(step)) or -grad @ step <= 1e-14:
                break  # the Newton decrement is ~0: converged (or at the bounds)
            with np.errstate(divide="ignore", invalid="ignore"):
                room = np.where(step > 0, (high - x) / step, np.where(step < 0, (low - x) / step,
                                                                      np.inf))
            t = min(1.0, float(room.min()))  # the longest step inside the bounds
            for _ in range(60):
                trial = objective(np.clip(x + t * step, low, high))
                if trial is not None and trial[0] <= value + 1e-4 * t * (grad @ step):
                    break
                t *= 0.5
            else:
                break  # no valid decrease along the step
            x, current = np.clip(x + t * step, low, high), trial
        return cls(math.exp(x[0]), float(x[1]))


@dataclasses.dataclass(frozen=True, eq=False)
class Empirical(_Model):
    """The measured histogram itself, additively smoothed for unseen tau.

    P(tau) = (hist[tau] + s) / (sum(hist) + s * len(hist)) for 0 <= tau < len(hist)
    and 0 beyond: the support is the histogram's range, so pad ``hist`` with
    zeros to give unseen larger tau some mass. smoothing = 0 is the plain
    normalised histogram (used for user-given target pmfs).

    Args:
      hist: counts (or weights) indexed by tau, >= 0, not all 0 unless s > 0.
      smoothing: s >= 0, the pseudo-count added to every tau in the range.

    Example:
      >>> Empirical([3, 0, 1], smoothing=1.0).pmf([0, 1, 2, 3])
      array([0.57142857, 0.14285714, 0.28571429, 0.        ])
    """

    hist: Any
    smoothing: float = 0.5
    name = "empirical"

    def __post_init__(self):
        s = float(self.smoothing)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"Empirical smoothing must be finite and >= 0, got {self.smoothing!r}")
        hist = _check_hist(self.hist, allow_zero_total=s > 0)
        hist = hist.copy()
        hist.setflags(write=False)
        object.__setattr__(self, "hist", hist)
        object.__setattr__(self, "smoothing", s)

    @property
    def num_params(self) -> int:
        return self.hist.size - 1

    @functools.cached_property
    def _pmf(self) -> np.ndarray:
        weights = self.hist + self.smoothing
        return weights / weights.sum()

    def logpmf(self, tau) -> np.ndarray:
        tau = _tau(tau)
        inside = (tau >= 0) & (tau < self.hist.size)
        idx = np.where(inside, tau, 0).astype(np.int64)
        with np.errstate(divide="ignore"):
            return np.where(inside, np.log(self._pmf[idx]), -np.inf)

    def cdf(self, tau) -> np.ndarray:
        cum = np.minimum(np.cumsum(self._pmf), 1.0)
        tau = np.floor(_tau(tau))
        idx = np.clip(tau, 0, self.hist.size - 1).astype(np.int64)
        return np.where(tau < 0, 0.0, cum[idx])

    def logsf(self, tau) -> np.ndarray:
        tail = np.concatenate([np.cumsum(self._pmf[::-1])[::-1][1:], [0.0]])
        tau = np.floor(_tau(tau))
        idx = np.clip(tau, 0, self.hist.size - 1).astype(np.int64)
        with np.errstate(divide="ignore"):
            return np.where(tau < 0, 0.0, np.log(tail[idx]))

    def mean(self) -> float:
        return float(np.dot(np.arange(self.hist.size), self._pmf))

    def sample(self, rng, n: int) -> np.ndarray:
        return generator(rng).choice(self.hist.size, size=n, p=self._pmf).astype(np.int64)

    def tilt(self, theta: float) -> "Empirical":
        """The model reweighted by e^(-theta tau) (smoothing included, then 0)."""
        with np.errstate(divide="ignore"):
            weights = np.log(self.hist + self.smoothing) - theta * np.arange(self.hist.size)
        return type(self)(np.exp(weights - weights.max()), smoothing=0.0)

    @classmethod
    def fit(cls, samples, smoothing: float = 0.5) -> "Empirical":
        return cls(_samples_to_hist(samples), smoothing)

    @classmethod
    def fit_hist(cls, hist, smoothing: float = 0.5) -> "Empirical":
        """The smoothed histogram (the MLE when smoothing = 0)."""
        return cls(hist, smoothing)


MODELS = {"geometric": Geometric, "poisson": Poisson, "cmp": ConwayMaxwellPoisson,
          "empirical": Empirical}
# The parametric families that best_fit compares, and its ranking criteria.
FAMILIES = ("geometric", "poisson", "cmp")
CRITERIA = ("aic", "bic", "kl", "tv")


# ---------------------------------------------------------- goodness of fit ----

def _model_pmf(model_or_pmf, size: int) -> tuple[np.ndarray, float]:
    """(pmf over 0..size-1, mass beyond) of a model or an explicit pmf array."""
    if hasattr(model_or_pmf, "logpmf"):
        p = model_or_pmf.pmf(np.arange(size))
    else:
        p = np.asarray(model_or_pmf, dtype=np.float64)
        if p.ndim != 1 or np.any(p < 0) or not np.all(np.isfinite(p)):
            raise ValueError("a pmf must be a 1-D array of finite probabilities >= 0")
        p = np.pad(p, (0, max(0, size - p.size)))
        beyond = float(p[size:].sum())
        return p[:size], beyond
    return p, max(0.0, 1.0 - float(p.sum()))


def total_variation(model_or_pmf, hist) -> float:
    """Total-variation distance between a model and a measured histogram.

    TV = 1/2 sum_tau |P(tau) - hist[tau]/N|, including the model's mass
    beyond the histogram's range (where the histogram has none). In [0, 1].
    """
    hist = _check_hist(hist)
    p, beyond = _model_pmf(model_or_pmf, hist.size)
    return float(0.5 * (np.abs(p - hist / hist.sum()).sum() + beyond))


def kl_divergence(model_or_pmf, hist) -> float:
    """KL(empirical || model) = sum_tau e(tau) log(e(tau) / P(tau)), e = hist/N.

    This direction is the one maximum likelihood minimises: it is infinite if
    the model gives 0 probability to a tau that was observed.
    """
    hist = _check_hist(hist)
    p, _ = _model_pmf(model_or_pmf, hist.size)
    e = hist / hist.sum()
    seen = e > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(e[seen] * (np.log(e[seen]) - np.log(p[seen]))))


def best_fit(hist, families=FAMILIES, criterion: str = "aic"):
    """Fits each family to ``hist`` by maximum likelihood and ranks them.

    The ranking uses one likelihood for every family, sum_tau hist[tau] log P(tau),
    penalised for the parameters it fitted: AIC = 2 k - 2 log L (default) or
    BIC = k log N - 2 log L (N = sum(hist)), so CMP's second parameter must
    earn its keep. "kl" and "tv" rank by a distance alone (no penalty).
    A histogram whose last bin is censored (tau >= K) is treated as tau = K.

    Args:
      hist: measured counts indexed by tau.
      families: names from ``MODELS``; Empirical is left out by default since
        it fits its own histogram trivially.
      criterion: "aic", "bic", "kl" or "tv".

    Returns:
      (name, model, scores) where scores[name] = {"nll", "aic", "bic", "tv", "kl",
      "params"} for every family that could be fitted.
    """
    hist = _check_hist(hist)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
    fitted, scores = {}, {}
    n = float(hist.sum())
    for name in families:
        if name not in MODELS:
            raise ValueError(f"unknown staleness model {name!r}; valid: {sorted(MODELS)}")
        try:
            model = MODELS[name].fit_hist(hist)
        except ValueError:
            continue
        nll = -model.log_likelihood(hist)
        params = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.name != "hist"}
        fitted[name] = model
        scores[name] = {"nll": nll, "aic": 2 * model.num_params + 2 * nll,
                        "bic": model.num_params * math.log(n) + 2 * nll,
                        "tv": total_variation(model, hist), "kl": kl_divergence(model, hist),
                        "params": params}
    if not scores:
        raise ValueError("no staleness model could be fitted to hist")
    best = min(scores, key=lambda k: scores[k][criterion])
    return best, fitted[best], scores


def fit_best(hist):
    """The best of ``FAMILIES`` for ``hist`` by AIC: MindTheStep's online fit."""
    return best_fit(hist)[1]
