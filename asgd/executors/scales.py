"""A step-size transform as the C store applies it: a per-tau scale table, kept current.

The parameter store applies ``x <- x + scales[min(tau, len-1)] * g`` in one C
call per update (all CAS retries included), so a step-size rule reaches it
as a table, not as a jitted call per attempt:

  ``schedule(tx)``     evaluates ``tx`` on a unit gradient for tau = 0..K into
                       a float32 table ``-alpha(tau)``, after checking that
                       ``tx`` really maps g to s(tau) g: anything else (a
                       stateful optimizer, clipping, weight decay, DC-ASGD's
                       correction) is refused with a one-line ``ValueError``.
  ``ScaleController``  observes the staleness of applied updates in the
                       workers' logs and swaps in a new table when an online
                       rule (TAIL-tau, a fitted MindTheStep) changes. It is
                       the control loop; the monitor only measures.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd import stepsize
from asgd.executors.base import LogCursor

SUPPORTED = ("asgd.stepsize's constant, inverse, fleet, tail_tau, mindthestep and "
             "scale_by_staleness, optax.scale, or a chain of them")


def check_scale_form(tx, taus: Sequence[int] = (0, 1, 7)) -> None:
    """Raise ValueError unless ``tx`` maps every gradient g to s(tau) g.

    Probed at a few tau with a gradient of mixed signs and magnitudes: the
    update must be one scalar times g, scale with g (linear), not depend on
    params or params_read, and leave a state that does not depend on g.
    """
    g = jnp.asarray([1e-3, -1.0, 250.0], jnp.float32)
    theta, other = jnp.asarray([0.5, -2.0, 7.0], jnp.float32), jnp.zeros(3, jnp.float32)
    tx = optax.with_extra_args_support(tx)
    try:
        state = tx.init(theta)
        for tau in taus:
            tau = jnp.int32(tau)
            u, s = tx.update(g, state, theta, staleness=tau, params_read=other)
            u_scaled, s_scaled = tx.update(-3.0 * g, state, theta, staleness=tau, params_read=other)
            u_moved, _ = tx.update(g, state, other, staleness=tau, params_read=theta)
            ratio = np.asarray(u, np.float64) / np.asarray(g, np.float64)
            if not np.allclose(u_moved, u, rtol=1e-5, atol=1e-30):
                raise ValueError("its update depends on the parameters")
            if not all(np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(s), jax.tree.leaves(s_scaled))):
                raise ValueError("its state depends on the gradient")
            if not np.allclose(ratio, ratio[0], rtol=1e-5, atol=0):
                raise ValueError("its update is not one scalar times the gradient")
            if not np.allclose(u_scaled, -3.0 * np.asarray(u), rtol=1e-5, atol=1e-30):
                raise ValueError("its update is not linear in the gradient")
            state = s
    except (TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the C store applies x <- x + s(tau) g, and this transform is not of "
                         f"that form ({reason}); it takes {SUPPORTED}") from None


class StalenessSchedule:
    """A transform's step sizes as a table, for stores applying
    ``x <- x + scales[min(tau, len-1)] * g`` in C.

    The table is the transform evaluated on a unit scalar gradient for every
    tau = 0..T (one vmapped call); ``check_scale_form`` has made sure that
    this is all of it. ``observe`` advances the transform's state with the tau
    of applied updates, exactly as if each had gone through ``tx.update``; it
    is compiled here, so that a run's first poll does not stall the driver
    (and its metrics) for the seconds that compiling takes.
    Use T equal to the transform's max_staleness so that the last entry means
    tau >= T for both.
    """

    _CHUNK = 256

    def __init__(self, tx: optax.GradientTransformationExtraArgs, max_staleness: int):
        self.max_staleness = stepsize.check_int("max_staleness", max_staleness, 1)
        check_scale_form(tx)
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
        if not _frozen(self.state):  # compile observe's scan now, not in a run's first poll
            idle = np.zeros(self._CHUNK, np.int32)
            jax.block_until_ready(self._advance(self.state, idle, idle.astype(bool)))

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


def _online_states(state) -> list:
    online = (stepsize.TailTauState, stepsize.MindTheStepState)
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, online))
    return [s for s in leaves if isinstance(s, online)]


def _frozen(state) -> bool:
    """True when observing more staleness can no longer change the transform."""
    for s in _online_states(state):
        if isinstance(s, stepsize.TailTauState) and int(s.count) < int(s.window):
            return False
        if isinstance(s, stepsize.MindTheStepState) and int(s.window) > 0:
            return False  # refitted every window updates, for the whole run
    return True


def schedule(tx, max_staleness: int = stepsize.MAX_STALENESS) -> StalenessSchedule:
    """The host-side step-size table of ``tx`` (see ``StalenessSchedule``).

    Raises:
      ValueError: ``tx`` does not map g to s(tau) g (one line, saying what is supported).

    Example:
      >>> s = schedule(stepsize.inverse(0.1), max_staleness=3)
      >>> s.table()  # [-0.1, -0.05, -0.0333, -0.025]
    """
    return StalenessSchedule(tx, max_staleness)


class ScaleController:
    """Keeps the scale table the workers read in step with the observed staleness.

    ``array[tau]`` is the signed multiplier of the raw gradient (``-alpha(tau)``).
    Workers read the attribute once per update; ``poll`` (called by the
    driver's loop) feeds the staleness that the workers' logs gained since the
    last poll to the schedule and swaps in a new array when the rule changed,
    so a refresh lags by at most one poll. It also counts, for a MindTheStep
    rule, the updates whose step was at the cap in the table of that poll.
    """

    def __init__(self, schedule: StalenessSchedule, logs: Sequence):
        self.schedule = schedule
        self._staleness = LogCursor(logs, "staleness")
        self.array = np.ascontiguousarray(schedule.table(), np.float32)
        self.observed = 0
        self.at_cap = 0

    def poll(self) -> bool:
        """Observe new staleness; True when ``array`` was replaced."""
        fresh = self._count(self._staleness.fresh())
        if fresh.size and self.schedule.observe(fresh):
            self.array = np.ascontiguousarray(self.schedule.table(), np.float32)
            return True
        return False

    def _count(self, staleness) -> np.ndarray:
        """Tally the applied tau against the table they were (at most a poll ago) applied with."""
        taus = np.asarray(staleness, np.int64).ravel()
        self.observed += taus.size
        cap = cap_step(self.schedule.state)
        if cap is not None and taus.size:
            steps = -self.array[np.minimum(np.maximum(taus, 0), self.array.size - 1)]
            self.at_cap += int(np.count_nonzero(steps >= cap * (1 - 1e-6)))
        return taus

    def summary(self) -> dict:
        """``alpha_table``; for MindTheStep also the share of updates at the cap and the fit.

        ``stepsize_at_cap_share``: applied updates whose step was cap * alpha,
        over all applied updates (null without a cap). ``stepsize_fit``: the
        histogram the table in use was fitted to, ranked by ``staleness.best_fit``:
        every family's parameters, NLL, AIC, BIC, total variation and KL, and
        the best by AIC, the model of ``stepsize_model=fitted``), or
        ``{"model": "prior"}`` before the first refit (``"given"`` for a fixed P).
        """
        self._count(self._staleness.fresh())  # updates applied since the last poll
        out = {"alpha_table": self.schedule.alpha_table()}
        cap = cap_step(self.schedule.state)
        if cap is not None:
            out["stepsize_cap_step"] = float(cap)
            out["stepsize_at_cap_share"] = self.at_cap / self.observed if self.observed else None
            out["stepsize_fit"] = fit_report(self.schedule.state)
        return out


def _mindthestep_state(state):
    states = [s for s in _online_states(state) if isinstance(s, stepsize.MindTheStepState)]
    return states[0] if states else None


def cap_step(state) -> float | None:
    """cap * alpha of a MindTheStep transform's state, None for other rules."""
    s = _mindthestep_state(state)
    return None if s is None else float(s.cap_step)


def fit_report(state) -> dict:
    """The fit behind a MindTheStep table in use (see ``ScaleController.summary``)."""
    from asgd import staleness
    s = _mindthestep_state(state)
    if s is None or int(s.window) == 0:
        return {"model": "given", "refits": 0}
    hist = np.asarray(s.fit_hist, np.float64)
    if int(s.refits) == 0 or hist.sum() <= 0:
        return {"model": "prior", "refits": 0}
    hist = np.trim_zeros(hist, "b")
    name, _, scores = staleness.best_fit(hist)
    return {"model": "fitted", "best_by_aic": name, "refits": int(s.refits),
            "weight": float(hist.sum()), "scores": scores}
