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
  mindthestep(alpha, P, Q)    alpha Q(tau)/P(tau), tails pooled, capped, E_P = alpha
  dc_asgd(lam)                g + lam g*g*(theta_now - theta_read) (not a step size)

This module owns the transforms only: no config and no host code.
MindTheStep's table math lives in ``asgd.mindthestep``; the executors turn
a transform into the C store's per-tau scale table with ``schedule(tx)``
(``asgd.executors.scales``), which refuses any transform that is not
``g -> s(tau) g``; ``asgd.rules`` builds a transform from a run's spec.
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
from asgd.mindthestep import (CAP, MAX_STALENESS, check_alpha, check_int, geometric,
                              table as mindthestep_table, tilted, uniform)

__all__ = ["scale_by_staleness", "constant", "inverse", "fleet", "fleet_beta", "tail_tau",
           "mindthestep", "mindthestep_table", "uniform", "geometric", "tilted", "dc_asgd",
           "delay_compensation", "schedule", "MAX_STALENESS"]


# ----------------------------------------------------------------- helpers ----

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
    alpha = check_alpha(alpha)

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
    alpha = check_alpha(alpha)
    return scale_by_staleness(lambda tau: alpha / (tau.astype(jnp.float32) + 1.0))


# FLeet's factor e^(-beta tau) never goes below e^-69 ~ 1e-30 (see fleet).
FLEET_MIN_LOG_SCALE = 69.0


def fleet_beta(m: int) -> float:
    """FLeet's decay rate beta = 2/(m+1) ln(1 + (m+1)/2) for m workers."""
    return 2.0 / (m + 1) * math.log1p((m + 1) / 2.0)


def fleet(alpha: float, m: int) -> optax.GradientTransformationExtraArgs:
    """FLeet's exponential staleness damping: alpha(tau) = alpha exp(-beta tau).

    beta = 2/(m+1) ln(1 + (m+1)/2) (Damaskinos et al., Middleware'20), so the
    damping is gentler with more workers m, whose staleness is larger anyway.
    The exponent stops at -FLEET_MIN_LOG_SCALE (a factor 1e-30), where float32
    would otherwise round the step to 0 (e.g. m = 2 from tau ~ 150): the
    store counts every update as applied, so none may have step 0; updates
    that stale are, by FLeet's design, all but dropped either way.

    Args:
      alpha: step size at tau = 0, > 0.
      m: number of workers (threads), >= 1.

    Example:
      >>> tx = fleet(0.1, m=4)  # beta = 0.4 ln 3.5 = 0.50110
      >>> u, _ = tx.update(jnp.ones(1), tx.init(None), staleness=2)  # [-0.1 e^-1.0022]
    """
    alpha = check_alpha(alpha)
    beta = fleet_beta(check_int("fleet m", m, 1))
    return scale_by_staleness(lambda tau: alpha * jnp.exp(
        -jnp.minimum(beta * tau.astype(jnp.float32), FLEET_MIN_LOG_SCALE)))


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
      amplitude: A in [0, 1), so that steps stay in [(1-A) alpha, (1+A) alpha]
        and none is 0 (the store counts every update as applied).
      window: number of updates to estimate F from, >= 1.
      max_staleness: histogram size - 1; larger tau share the last bin.

    Example:
      >>> tx = tail_tau(0.1, amplitude=0.5, window=2)
      >>> s = tx.init(None)
      >>> _, s = tx.update(jnp.ones(1), s, staleness=0)  # -0.1 (F = 1/2), counts tau=0
      >>> _, s = tx.update(jnp.ones(1), s, staleness=4)  # F(4) = 1: -0.05, counts tau=4
      >>> u, s = tx.update(jnp.ones(1), s, staleness=0)  # F(0) = 1/2: -0.1, frozen
    """
    alpha = check_alpha(alpha)
    amplitude = float(amplitude)
    if not (0.0 <= amplitude < 1.0):
        raise ValueError(f"tail_tau amplitude must be in [0, 1), got {amplitude!r}")
    window = check_int("tail_tau window", window, 1)
    k = check_int("max_staleness", max_staleness, 1)

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

# Each refit halves the histogram it was fitted to, so the online fit weighs
# the last window 1, the one before 1/2, ...: it follows staleness that changes.
REFIT_DECAY = 0.5


class MindTheStepState(NamedTuple):
    """table[tau]: alpha(tau) in use. Online fitting (window > 0): hist holds the
    staleness counted since the last refit plus REFIT_DECAY times the histogram
    before it; count: updates since the last refit; refits: refits so far;
    fit_hist: the histogram the table in use was fitted to (zeros: the prior).
    cap_step: cap * alpha, the largest step the table may hold."""

    table: jax.Array
    hist: jax.Array
    count: jax.Array
    window: jax.Array
    refits: jax.Array
    fit_hist: jax.Array
    cap_step: jax.Array


def mindthestep(alpha: float, model, target, cap: float = CAP,
                max_staleness: int = MAX_STALENESS, window: int = 0,
                fit: Callable[[np.ndarray], Any] | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """MindTheStep-AsyncSGD: alpha(tau) = alpha Q(tau) / P(tau), pooled, capped, normalised.

    With staleness model P and target profile Q, a gradient of staleness tau
    is scaled by alpha Q(tau)/P(tau): in expectation over tau, the gradients
    of each staleness then enter the update with the weights Q, and the
    expected step sum_tau P(tau) alpha(tau) is alpha. P's rare tails are
    pooled, steps are capped at cap * alpha and renormalised so that the
    expectation stays alpha; see ``mindthestep_table`` (docs/mindthestep.md
    derives each part).

    Online fitting (window > 0): the first ``window`` updates use ``model`` as
    a prior while their tau are counted (tau >= max_staleness in the last
    bin); then the model is refitted by maximum likelihood (``fit(hist)`` on
    the histogram up to the largest tau seen, by default ``type(model).fit_hist``), the table recomputed on the host
    through ``jax.pure_callback``, and again every ``window`` updates on the
    counts since the last refit plus half the histogram before (REFIT_DECAY).
    A target that is a function of P (``tilted``, ``uniform_quantile``) is
    re-derived from each fit. If a refit fails the table in use is kept,
    with a warning.

    Args:
      alpha: expected step size, > 0.
      model: staleness model P from ``asgd.staleness`` (given, or the prior).
      target: ``uniform(T)``, ``geometric(mu)``, a staleness model, a pmf array,
        or a function of P (``mindthestep.tilted(theta)``, ``uniform_quantile()``).
      cap: finite c >= 1: alpha(tau) <= c alpha (default 2).
      max_staleness: K; the table covers tau = 0..K, K meaning tau >= K.
      window: updates between online refits (and before the first); 0 = use
        ``model`` as given.
      fit: host function hist -> model for online fitting.

    Example:
      >>> tx = mindthestep(0.1, st.Poisson(3.0), uniform(8), cap=10.0)
      >>> u, _ = tx.update(jnp.ones(1), tx.init(None), staleness=3)
      >>> # u = -0.1 e^3 3! / (9 * 3^3) (no clipping, tau = 3 in P's bulk [0, 8])
    """
    alpha = check_alpha(alpha)
    k = check_int("max_staleness", max_staleness, 1)
    window = check_int("mindthestep window", window, 0)
    table0 = np.asarray(mindthestep_table(alpha, model, target, cap, k), np.float32)
    cap_step = np.float32(alpha * float(cap))
    fit = type(model).fit_hist if fit is None else fit

    def refit(hist, table):
        try:
            counts = np.trim_zeros(np.asarray(hist, np.float64), "b")  # the observed range
            new = mindthestep_table(alpha, fit(counts), target, cap, k)
            return np.asarray(new, np.float32)
        except ValueError as err:
            warnings.warn(f"mindthestep: online fit failed, keeping the table in use: {err}")
            return np.asarray(table, np.float32)

    def refit_in_jax(state):
        shape = jax.ShapeDtypeStruct((k + 1,), jnp.float32)
        return jax.pure_callback(refit, shape, state.hist, state.table,
                                 vmap_method="sequential")

    def init(params):
        del params
        zeros = jnp.zeros(k + 1, jnp.float32)
        return MindTheStepState(jnp.asarray(table0), zeros, jnp.int32(0), jnp.int32(window),
                                jnp.int32(0), zeros, jnp.asarray(cap_step))

    def update(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        tau = _tau(staleness, k)
        if window == 0:
            return _descend(updates, state.table[tau]), state
        due = state.count >= state.window
        table = jax.lax.cond(due, refit_in_jax, lambda s: s.table, state)
        hist = jnp.where(due, state.hist * REFIT_DECAY, state.hist).at[tau].add(1.0)
        new_state = MindTheStepState(
            table, hist, jnp.where(due, 0, state.count) + 1, state.window,
            state.refits + due.astype(jnp.int32), jnp.where(due, state.hist, state.fit_hist),
            state.cap_step)
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
    lam = check_dc_lambda(lam)

    def update(updates, state, params=None, *, params_read=None, **extra_args):
        del extra_args
        if params is None or params_read is None:
            raise ValueError("dc_asgd needs params (theta_now) and params_read=(theta_read)")
        out = jax.tree.map(lambda g, now, read: delay_compensation(g, now, read, lam),
                           updates, params, params_read)
        return out, state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def check_dc_lambda(lam) -> float:
    """DC-ASGD's lambda: finite and >= 0."""
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"dc_asgd lambda must be finite and >= 0, got {lam!r}")
    return lam


def delay_compensation(g, theta_now, theta_read, lam: float):
    """DC-ASGD's corrected gradient g + lam g*g*(theta_now - theta_read).

    Plain array arithmetic, so the one formula serves the optax transform
    (on JAX leaves) and the executors' per-CAS-attempt rule (on numpy vectors).
    """
    return g + lam * g * g * (theta_now - theta_read)


def schedule(tx, max_staleness: int = MAX_STALENESS):
    """The C store's per-tau scale table of ``tx``: ``asgd.executors.scales.schedule``.

    Raises ``ValueError`` unless ``tx`` maps a gradient g to s(tau) g.

    Example:
      >>> schedule(inverse(0.1), max_staleness=3).table()  # [-0.1, -0.05, -0.0333, -0.025]
    """
    from asgd.executors.scales import schedule as tabulate  # host side, loaded on demand
    return tabulate(tx, max_staleness)
