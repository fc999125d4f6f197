"""Staleness-adaptive step sizes as optax transforms.

Each factory returns an ``optax.GradientTransformationExtraArgs`` whose update
takes the staleness tau of the gradient as a keyword-only extra argument:

    updates, state = tx.update(grads, state, params, staleness=tau)
    params = optax.apply_updates(params, updates)

Sign convention (as ``optax.sgd`` / ``optax.scale_by_learning_rate``): the
step-size transforms return ``-alpha(tau) * g``, so ``optax.apply_updates``
(which adds) performs SGD descent. They therefore end a chain; transforms
that reshape the gradient (clipping, ``dc_asgd``) come before them:

    tx = optax.chain(optax.clip_by_global_norm(1.0), inverse(0.1))
    updates, state = tx.update(grads, state, params, staleness=tau)

``optax.chain`` hands every extra argument to every member that accepts extra
args, so ``staleness`` (and ``params_read`` for ``dc_asgd``) pass through.

tau is a (traced) integer scalar: every transform jits once and serves every
tau. tau < 0 is treated as 0. Transforms with a table (tail_tau, mindthestep)
index it with min(tau, max_staleness), its last entry standing for all
tau >= max_staleness. Per update they cost a table lookup or a few flops on
a scalar, plus one multiply per gradient element.

Transforms:
  constant(alpha)             alpha
  inverse(alpha)              alpha / (tau + 1)
  fleet(alpha, m)             alpha exp(-beta tau), beta = 2/(m+1) ln(1 + (m+1)/2)
  tail_tau(alpha, amplitude)  alpha (1 + A (1 - 2 F(tau))), F the online empirical CDF
  mindthestep(alpha, P, Q)    alpha Q(tau)/P(tau), capped and renormalised
  dc_asgd(lam)                g + lam g*g*(theta_now - theta_read) (not a step size)

Host side, for executors whose hot path is C: ``schedule(tx)`` turns a
transform into a float32 table ``scales[tau] = -alpha(tau)`` that the
parameter store applies as ``x <- x + scales[min(tau, len-1)] * g``, and
``from_config(cfg)`` builds the transform from ``train.py`` config fields.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd import staleness as st

MAX_STALENESS = 1024


# ----------------------------------------------------------------- helpers ----

def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"step size alpha must be a finite number > 0, got {alpha!r}")
    return alpha


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _tau(staleness, max_staleness: int | None = None) -> jax.Array:
    """tau as int32, clamped to [0, max_staleness]."""
    tau = jnp.maximum(jnp.asarray(staleness, jnp.int32), 0)
    return tau if max_staleness is None else jnp.minimum(tau, max_staleness)


def _descend(updates, step: jax.Array):
    """-step * g for every leaf, in the leaf's dtype."""
    return jax.tree.map(lambda g: (-step).astype(g.dtype) * g, updates)


def scale_by_staleness(step_fn: Callable[[jax.Array], jax.Array]
                       ) -> optax.GradientTransformationExtraArgs:
    """The stateless building block: updates = -step_fn(tau) * g.

    Args:
      step_fn: maps the int32 scalar tau (>= 0) to the float32 step alpha(tau);
        must be jnp-traceable.

    Returns:
      A transform whose update requires ``staleness=`` (keyword-only).

    Example:
      >>> tx = scale_by_staleness(lambda tau: 0.1 / (tau + 1.0))
      >>> u, _ = tx.update(jnp.ones(2), tx.init(None), staleness=1)  # [-0.05, -0.05]
    """

    def update(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        step = jnp.asarray(step_fn(_tau(staleness)), jnp.float32)
        return _descend(updates, step), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


# ---------------------------------------------------- closed-form step sizes ----

def constant(alpha: float) -> optax.GradientTransformationExtraArgs:
    """Plain SGD step: updates = -alpha * g, whatever tau is.

    ``staleness`` is optional here (ignored), so this also drops into code
    without staleness.

    Args:
      alpha: step size > 0.

    Example:
      >>> tx = constant(0.1)
      >>> u, _ = tx.update(jnp.ones(2), tx.init(None), staleness=5)  # [-0.1, -0.1]
    """
    alpha = _check_alpha(alpha)

    def update(updates, state, params=None, *, staleness=None, **extra_args):
        del params, staleness, extra_args
        return _descend(updates, jnp.float32(alpha)), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def inverse(alpha: float) -> optax.GradientTransformationExtraArgs:
    """Staleness-aware ASGD: alpha(tau) = alpha / (tau + 1).

    Divides the step by the staleness (Zhang et al., IJCAI'16), so a gradient
    computed tau updates ago moves the parameters (tau+1) times less.

    Args:
      alpha: step size at tau = 0, > 0.

    Example:
      >>> tx = inverse(0.3)
      >>> u, _ = tx.update(jnp.ones(1), tx.init(None), staleness=2)  # [-0.1]
    """
    alpha = _check_alpha(alpha)
    return scale_by_staleness(lambda tau: alpha / (tau.astype(jnp.float32) + 1.0))


def fleet_beta(m: int) -> float:
    """FLeet's decay rate beta = 2/(m+1) ln(1 + (m+1)/2) for m workers."""
    return 2.0 / (m + 1) * math.log1p((m + 1) / 2.0)


def fleet(alpha: float, m: int) -> optax.GradientTransformationExtraArgs:
    """FLeet's exponential staleness damping: alpha(tau) = alpha exp(-beta tau).

    beta = 2/(m+1) ln(1 + (m+1)/2) (Damaskinos et al., Middleware'20), so the
    damping is gentler with more workers m, whose staleness is larger anyway.

    Args:
      alpha: step size at tau = 0, > 0.
      m: number of workers (threads), >= 1.

    Example:
      >>> tx = fleet(0.1, m=4)  # beta = 0.4 ln 3.5 = 0.50110
      >>> u, _ = tx.update(jnp.ones(1), tx.init(None), staleness=2)  # [-0.1 e^-1.0022]
    """
    alpha = _check_alpha(alpha)
    beta = fleet_beta(_check_int("fleet m", m, 1))
    return scale_by_staleness(lambda tau: alpha * jnp.exp(-beta * tau.astype(jnp.float32)))


# ------------------------------------------------------------------ TAIL-tau ----

class TailTauState(NamedTuple):
    """hist[tau]: staleness counts seen so far (last bin: tau >= max_staleness);
    count: updates observed (stops at window); window: the warm-up length."""

    hist: jax.Array
    count: jax.Array
    window: jax.Array


def tail_tau(alpha: float, amplitude: float = 0.5, window: int = 1000,
             max_staleness: int = MAX_STALENESS) -> optax.GradientTransformationExtraArgs:
    """TAIL-tau (ASAP.SGD): alpha(tau) = alpha (1 + A (1 - 2 F(tau))).

    F(tau) = P(T <= tau) is the empirical CDF of the staleness seen so far:
    updates staler than most get up to (1-A) alpha, fresher ones up to
    (1+A) alpha. F is estimated online from the first ``window`` updates, then
    frozen; the histogram and the window are part of the state. Each update
    is scaled with F *before* its own tau is counted; before any tau is seen
    F is taken as 1/2, i.e. the step is alpha.

    Args:
      alpha: base step size, > 0.
      amplitude: A in [0, 1], so that steps stay in [(1-A) alpha, (1+A) alpha].
      window: number of updates to estimate F from, >= 1.
      max_staleness: histogram size - 1; larger tau share the last bin.

    Example:
      >>> tx = tail_tau(0.1, amplitude=0.5, window=2)
      >>> s = tx.init(None)
      >>> _, s = tx.update(jnp.ones(1), s, staleness=0)  # -0.1 (F = 1/2), counts tau=0
      >>> _, s = tx.update(jnp.ones(1), s, staleness=4)  # F(4) = 1: -0.05, counts tau=4
      >>> u, s = tx.update(jnp.ones(1), s, staleness=0)  # F(0) = 1/2: -0.1, frozen
    """
    alpha = _check_alpha(alpha)
    amplitude = float(amplitude)
    if not (0.0 <= amplitude <= 1.0):
        raise ValueError(f"tail_tau amplitude must be in [0, 1], got {amplitude!r}")
    window = _check_int("tail_tau window", window, 1)
    k = _check_int("max_staleness", max_staleness, 1)

    def init(params):
        del params
        return TailTauState(jnp.zeros(k + 1, jnp.int32), jnp.int32(0), jnp.int32(window))

    def update(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        tau = _tau(staleness, k)
        below = jnp.sum(jnp.where(jnp.arange(k + 1) <= tau, state.hist, 0))
        cdf = jnp.where(state.count > 0, below / jnp.maximum(state.count, 1), 0.5)
        step = alpha * (1.0 + amplitude * (1.0 - 2.0 * cdf.astype(jnp.float32)))
        learning = state.count < state.window
        hist = state.hist.at[tau].add(learning.astype(jnp.int32))
        count = state.count + learning.astype(jnp.int32)
        return _descend(updates, step), TailTauState(hist, count, state.window)

    return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------- MindTheStep ----

def uniform(T: int) -> st.Empirical:
    """Target profile Q(tau) = 1/(T+1) for tau <= T, 0 beyond."""
    T = _check_int("uniform target T", T, 0)
    return st.Empirical(np.ones(T + 1), smoothing=0.0)


def geometric(mu: float) -> st.Geometric:
    """Target profile Q(tau) = (1-mu) mu^tau: the expected update of momentum SGD
    with momentum mu ("asynchrony begets momentum")."""
    mu = float(mu)
    if not (0.0 < mu < 1.0):
        raise ValueError(f"geometric target mu must be in (0, 1), got {mu!r}")
    return st.Geometric(1.0 - mu)


def _as_target(target):
    if hasattr(target, "logpmf"):
        return target
    q = np.asarray(target, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.any(q < 0) or not np.all(np.isfinite(q)) or q.sum() <= 0:
        raise ValueError("a target pmf must be a non-empty 1-D array of finite values >= 0 "
                         "with a positive sum")
    return st.Empirical(q, smoothing=0.0)


def mindthestep_table(alpha: float, model, target, cap: float = 10.0,
                      max_staleness: int = MAX_STALENESS) -> np.ndarray:
    """MindTheStep-AsyncSGD step sizes alpha(tau) for tau = 0..K (host side, numpy).

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
      >>> mindthestep_table(0.1, st.Poisson(1.0), uniform(1), max_staleness=3)
      array([0.13591409, 0.13591409, 0.        , 0.        ])
    """
    alpha = _check_alpha(alpha)
    cap = float(cap)
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"mindthestep cap must be a finite number >= 1, got {cap!r}")
    k_max = _check_int("max_staleness", max_staleness, 1)
    target = _as_target(target)
    tau = np.arange(k_max)
    log_p = np.append(model.logpmf(tau), model.logsf(k_max - 1))
    log_q = np.append(target.logpmf(tau), target.logsf(k_max - 1))
    with np.errstate(invalid="ignore", over="ignore"):  # inf ratios are clipped
        ratio = np.where(np.isneginf(log_q), 0.0,
                         np.where(np.isneginf(log_p), np.inf, np.exp(log_q - log_p)))
        k = _water_level(np.exp(log_p), np.exp(log_q), ratio, cap)
        return alpha * np.minimum(k * ratio, cap)


def _water_level(p: np.ndarray, q: np.ndarray, ratio: np.ndarray, cap: float) -> float:
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


class MindTheStepState(NamedTuple):
    """table[tau]: alpha(tau) in use; hist, count, window: the online warm-up
    (as in TailTauState); fitted: whether the table is final (always True
    without online fitting)."""

    table: jax.Array
    hist: jax.Array
    count: jax.Array
    window: jax.Array
    fitted: jax.Array


def mindthestep(alpha: float, model, target, cap: float = 10.0,
                max_staleness: int = MAX_STALENESS, window: int = 0,
                fit: Callable[[np.ndarray], Any] | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """MindTheStep-AsyncSGD: alpha(tau) = alpha Q(tau) / P(tau), capped, renormalised.

    With staleness model P and target profile Q, a gradient of staleness tau
    is scaled by alpha Q(tau)/P(tau): in expectation over tau, gradients of
    each staleness level then contribute according to Q, and the expected
    step sum_tau P(tau) alpha(tau) is alpha. Steps are clipped at cap * alpha
    and renormalised so that the expectation stays alpha; see
    ``mindthestep_table`` for the exact rule, including beyond the supports
    (0 where Q = 0, the cap where P = 0 < Q).

    Online fitting (window > 0): the first ``window`` updates use ``model``
    as a prior while their tau are counted (tau >= max_staleness in the last
    bin, i.e. censored at max_staleness); at the next update the model is
    refitted by maximum likelihood (``fit(hist)``, by default
    ``type(model).fit_hist``) and the table recomputed, once, on the host
    through ``jax.pure_callback``. If that fails (e.g. the cap is too small for
    the fitted model) the prior table is kept, with a warning.

    Args:
      alpha: expected step size, > 0.
      model: staleness model P from ``asgd.staleness`` (given, or the prior).
      target: ``uniform(T)``, ``geometric(mu)``, a staleness model or a pmf array.
      cap: finite c >= 1.
      max_staleness: K; the table covers tau = 0..K, K meaning tau >= K.
      window: warm-up updates for online fitting; 0 = use ``model`` as given.
      fit: host function hist -> model for online fitting.

    Example:
      >>> tx = mindthestep(0.1, st.Poisson(3.0), uniform(6))
      >>> u, _ = tx.update(jnp.ones(1), tx.init(None), staleness=2)
      >>> # u = -0.1 e^3 2! / (7 * 3^2), when nothing is clipped
    """
    alpha = _check_alpha(alpha)
    k = _check_int("max_staleness", max_staleness, 1)
    window = _check_int("mindthestep window", window, 0)
    target = _as_target(target)
    table0 = np.asarray(mindthestep_table(alpha, model, target, cap, k), np.float32)
    fit = type(model).fit_hist if fit is None else fit

    def refit(hist, table):
        try:
            new = mindthestep_table(alpha, fit(np.asarray(hist)), target, cap, k)
            return np.asarray(new, np.float32)
        except ValueError as err:
            warnings.warn(f"mindthestep: online fit failed, keeping the prior table: {err}")
            return np.asarray(table, np.float32)

    def refit_in_jax(state):
        shape = jax.ShapeDtypeStruct((k + 1,), jnp.float32)
        return jax.pure_callback(refit, shape, state.hist, state.table,
                                 vmap_method="sequential")

    def init(params):
        del params
        return MindTheStepState(jnp.asarray(table0), jnp.zeros(k + 1, jnp.int32),
                                jnp.int32(0), jnp.int32(window), jnp.asarray(window == 0))

    def update(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        tau = _tau(staleness, k)
        if window == 0:
            return _descend(updates, state.table[tau]), state
        due = (state.count >= state.window) & ~state.fitted
        table = jax.lax.cond(due, refit_in_jax, lambda s: s.table, state)
        learning = (state.count < state.window).astype(jnp.int32)
        new_state = MindTheStepState(table, state.hist.at[tau].add(learning),
                                     state.count + learning, state.window,
                                     state.fitted | due)
        return _descend(updates, table[tau]), new_state

    return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------ DC-ASGD ----

def dc_asgd(lam: float) -> optax.GradientTransformationExtraArgs:
    """Delay compensation (Zheng et al., ICML'17): g + lam g*g*(theta_now - theta_read).

    A first-order Taylor correction of a gradient computed at theta_read to
    the current theta_now, with g*g as a cheap Hessian approximation. Not a
    step size: it returns a corrected *gradient*, so chain a step-size
    transform after it. theta_now is ``params``; theta_read is the keyword
    extra argument ``params_read`` (same pytree structure). ``staleness`` is
    accepted and ignored.

    Args:
      lam: lambda >= 0 (0 is plain SGD).

    Example:
      >>> tx = optax.chain(dc_asgd(0.5), constant(0.1))
      >>> u, _ = tx.update(jnp.array([2.]), tx.init(None), jnp.array([1.]),
      ...                  params_read=jnp.array([0.]), staleness=3)
      >>> # g' = 2 + 0.5 * 4 * 1 = 4, u = -0.4
    """
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"dc_asgd lambda must be finite and >= 0, got {lam!r}")

    def update(updates, state, params=None, *, params_read=None, **extra_args):
        del extra_args
        if params is None or params_read is None:
            raise ValueError("dc_asgd needs params (theta_now) and params_read=(theta_read)")
        out = jax.tree.map(lambda g, now, read: g + lam * g * g * (now - read),
                           updates, params, params_read)
        return out, state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


# ------------------------------------------------------ host-side schedule ----

def _online_states(state) -> list:
    leaves = jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, (TailTauState, MindTheStepState)))
    return [s for s in leaves if isinstance(s, (TailTauState, MindTheStepState))]


def _frozen(state) -> bool:
    """True when observing more staleness can no longer change the transform."""
    for s in _online_states(state):
        if isinstance(s, TailTauState) and int(s.count) < int(s.window):
            return False
        if isinstance(s, MindTheStepState) and not bool(s.fitted):
            return False
    return True


class StalenessSchedule:
    """A transform's step sizes as a table, for parameter stores applying
    ``x <- x + scales[min(tau, len-1)] * g`` in C.

    The table is the transform evaluated on a unit scalar gradient for every
    tau = 0..T (one vmapped call), so it assumes the transform maps g to
    s(tau) g (true of the step-size transforms here, and of dc_asgd chained
    before one, whose compensation is then left to the caller: it is
    evaluated with params == params_read). ``observe`` advances the
    transform's state with the tau of applied updates, exactly as if each had
    gone through ``tx.update``. Use T equal to the transform's max_staleness
    so that the last entry means tau >= T for both.
    """

    _CHUNK = 256

    def __init__(self, tx: optax.GradientTransformationExtraArgs, max_staleness: int):
        self.max_staleness = _check_int("max_staleness", max_staleness, 1)
        one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
        tx = optax.with_extra_args_support(tx)

        def step(state, tau):
            return tx.update(one, state, zero, staleness=tau, params_read=zero)

        def evaluate(state):
            taus = jnp.arange(self.max_staleness + 1, dtype=jnp.int32)
            return jax.vmap(lambda tau: step(state, tau)[0])(taus)

        def advance(state, taus, valid):
            def body(s, x):
                tau, ok = x
                return jax.lax.cond(ok, lambda s: step(s, tau)[1], lambda s: s, s), None
            return jax.lax.scan(body, state, (taus, valid))[0]

        self._evaluate = jax.jit(evaluate)
        self._advance = jax.jit(advance)
        self.state = tx.init(zero)
        self._table = np.asarray(self._evaluate(self.state), np.float32)

    def table(self) -> np.ndarray:
        """float32 [T+1]: the signed multiplier -alpha(tau) of the raw gradient."""
        return self._table.copy()

    def alpha_table(self) -> list[float]:
        """alpha(tau) for tau = 0..T as Python floats (for summary.json)."""
        return [float(-x) for x in self._table]

    def observe(self, staleness) -> bool:
        """Feeds the tau of applied updates; True when table() changed."""
        taus = np.asarray(staleness, dtype=np.int32).ravel()
        if taus.size == 0 or _frozen(self.state):
            return False
        for start in range(0, taus.size, self._CHUNK):
            chunk = taus[start:start + self._CHUNK]
            valid = np.arange(self._CHUNK) < chunk.size
            chunk = np.pad(chunk, (0, self._CHUNK - chunk.size))
            self.state = self._advance(self.state, chunk, valid)
            if _frozen(self.state):
                break
        new = np.asarray(self._evaluate(self.state), np.float32)
        changed = not np.array_equal(new, self._table)
        self._table = new
        return changed


def schedule(tx, max_staleness: int = MAX_STALENESS) -> StalenessSchedule:
    """The host-side step-size table of ``tx`` (see ``StalenessSchedule``).

    Example:
      >>> s = schedule(inverse(0.1), max_staleness=3)
      >>> s.table()  # [-0.1, -0.05, -0.0333, -0.025]
    """
    return StalenessSchedule(tx, max_staleness)


# ------------------------------------------------------------------ config ----

STEPSIZES = ("constant", "inverse", "fleet", "tail_tau", "mindthestep", "dc_asgd")
TARGETS = ("uniform", "geometric")

# Config fields read by from_config, with their defaults:
#   learning_rate          alpha, the (expected) step size; required.
#   stepsize               one of STEPSIZES.
#   threads                m: FLeet's worker count, and the derived model parameters.
#   stepsize_model         mindthestep's P: poisson | geometric | cmp | empirical.
#   stepsize_model_param   poisson lam, geometric p, cmp lam (nu = 1); <= 0 derives
#                          it from threads: lam = m-1, p = 1/m (mean m-1).
#                          empirical has no parameter: it needs stepsize_window > 0
#                          and uses Poisson(m-1) until the window is full.
#   stepsize_target        mindthestep's Q: uniform | geometric.
#   stepsize_target_param  uniform T or geometric mu; <= 0 derives it: T = the
#                          model's 0.99-quantile, mu = 1 - 1/m (the implicit
#                          momentum of m asynchronous workers).
#   stepsize_cap           c: mindthestep steps are at most c * alpha.
#   tail_amplitude         TAIL-tau's A in [0, 1].
#   stepsize_window        updates of warm-up: TAIL-tau's CDF window (<= 0 uses
#                          1000), mindthestep's online fit (0 = off).
#   dc_lambda              DC-ASGD's lambda (untuned default).
CONFIG_DEFAULTS = {
    "stepsize": "constant",
    "threads": 1,
    "stepsize_model": "poisson",
    "stepsize_model_param": 0.0,
    "stepsize_target": "uniform",
    "stepsize_target_param": 0.0,
    "stepsize_cap": 10.0,
    "tail_amplitude": 0.5,
    "stepsize_window": 0,
    "dc_lambda": 0.1,
}


def _field(cfg, name: str):
    getter = cfg.get if hasattr(cfg, "get") else (lambda n, d: getattr(cfg, n, d))
    value = getter(name, CONFIG_DEFAULTS.get(name))
    if value is None:
        raise ValueError(f"config field {name!r} is required")
    return value


def _config_model(name: str, param: float, m: int):
    if name not in st.MODELS:
        raise ValueError(f"unknown stepsize_model {name!r}; valid: {sorted(st.MODELS)}")
    if name == "geometric":
        if param <= 0 and m < 2:
            raise ValueError("stepsize_model=geometric needs threads >= 2 or stepsize_model_param > 0")
        return st.Geometric(param if param > 0 else 1.0 / m)
    if param <= 0 and m < 2:
        raise ValueError(f"stepsize_model={name} needs threads >= 2 or stepsize_model_param > 0")
    lam = param if param > 0 else float(m - 1)
    return st.ConwayMaxwellPoisson(lam, 1.0) if name == "cmp" else st.Poisson(lam)


def from_config(cfg) -> optax.GradientTransformationExtraArgs:
    """Builds the step-size transform named by ``cfg.stepsize`` (fields above).

    Works with an ``ml_collections.ConfigDict``, a dict or any object with
    the fields as attributes; missing fields take ``CONFIG_DEFAULTS``.

    Example:
      >>> tx = from_config({"learning_rate": 0.1, "stepsize": "mindthestep",
      ...                   "threads": 8, "stepsize_target": "geometric"})
    """
    name = _field(cfg, "stepsize")
    if name not in STEPSIZES:
        raise ValueError(f"unknown stepsize {name!r}; valid: {list(STEPSIZES)}")
    alpha = float(_field(cfg, "learning_rate"))
    m = _check_int("threads", _field(cfg, "threads"), 1)
    window = int(_field(cfg, "stepsize_window"))
    if name == "constant":
        return constant(alpha)
    if name == "inverse":
        return inverse(alpha)
    if name == "fleet":
        return fleet(alpha, m)
    if name == "tail_tau":
        return tail_tau(alpha, float(_field(cfg, "tail_amplitude")),
                        window if window > 0 else 1000)
    if name == "dc_asgd":
        return optax.chain(dc_asgd(float(_field(cfg, "dc_lambda"))), constant(alpha))

    model_name = _field(cfg, "stepsize_model")
    if m == 1 and float(_field(cfg, "stepsize_model_param")) <= 0 and model_name != "empirical":
        # One worker: staleness is always 0, P is a point mass at 0, and
        # alpha(0) = alpha is the whole MindTheStep table.
        return constant(alpha)
    model = _config_model("poisson" if model_name == "empirical" else model_name,
                          float(_field(cfg, "stepsize_model_param")), m)
    fit = None
    if model_name == "empirical":
        if window <= 0:
            raise ValueError("stepsize_model=empirical needs stepsize_window > 0 "
                             "(it is fitted online from the run's staleness)")
        fit = st.Empirical.fit_hist
    target_name = _field(cfg, "stepsize_target")
    target_param = float(_field(cfg, "stepsize_target_param"))
    if target_name == "uniform":
        if target_param > 0:
            T = int(round(target_param))
        else:
            cdf = model.cdf(np.arange(MAX_STALENESS + 1))
            T = int(np.argmax(cdf >= 0.99)) if cdf[-1] >= 0.99 else MAX_STALENESS
        target = uniform(T)
    elif target_name == "geometric":
        target = geometric(target_param if target_param > 0 else 1.0 - 1.0 / max(m, 2))
    else:
        raise ValueError(f"unknown stepsize_target {target_name!r}; valid: {list(TARGETS)}")
    return mindthestep(alpha, model, target, float(_field(cfg, "stepsize_cap")),
                       window=max(window, 0), fit=fit)
