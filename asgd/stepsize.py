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
from asgd.mindthestep import (MAX_STALENESS, as_target, check_alpha, check_int, geometric,
                              table as mindthestep_table, uniform)

__all__ = ["scale_by_staleness", "constant", "inverse", "fleet", "fleet_beta", "tail_tau",
           "mindthestep", "mindthestep_table", "uniform", "geometric", "dc_asgd",
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
    alpha = check_alpha(alpha)
    beta = fleet_beta(check_int("fleet m", m, 1))
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
    alpha = check_alpha(alpha)
    amplitude = float(amplitude)
    if not (0.0 <= amplitude <= 1.0):
        raise ValueError(f"tail_tau amplitude must be in [0, 1], got {amplitude!r}")
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
    alpha = check_alpha(alpha)
    k = check_int("max_staleness", max_staleness, 1)
    window = check_int("mindthestep window", window, 0)
    target = as_target(target)
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
