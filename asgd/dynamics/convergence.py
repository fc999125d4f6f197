"""Updates to a training-loss level under injected staleness, on a run's real model and data.

``asgd.dynamics.penalty`` measures the statistical cost of staleness on small
objectives. This module measures it on the problem a train config describes
(its data, model, batch size, step-size rule and minibatch order), with the
criterion the runs report: a run reaches loss epsilon at the first log event
whose running-mean training loss (the mean minibatch loss since the previous
event) is <= epsilon. One sequential loop runs

    theta_{t+1} = theta_t + s(tau_t) * grad f_{B_t}(theta_{t - tau_t}),  tau_t ~ P i.i.d.,

with the run's jitted gradient, its minibatch sequence (batch t is the
run's minibatch number t), the step-size table the C store would use
(``asgd.stepsize.schedule``; adaptive rules keep their initial table) and
the last K iterates in a ring buffer (tau is clamped to t and to K - 1). The
loss of step t is the minibatch loss at theta_{t - tau_t}, as a worker
records it. Staleness is drawn independently per step from the histogram:
the order in which real workers' staleness values follow each other is lost.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from asgd import staleness as st

MAX_RING = 512  # iterates kept (512 x d floats); larger tau are clamped to 511


def draw_staleness(hist, steps: int, rng) -> np.ndarray:
    """int64 [steps]: tau drawn i.i.d. from a staleness histogram (counts indexed by tau)."""
    hist = np.asarray(hist, np.float64)
    if hist.size == 0 or hist.sum() <= 0:
        return np.zeros(steps, np.int64)
    return np.asarray(st.Empirical(hist, smoothing=0.0).sample(rng, steps), np.int64)


class Injected(NamedTuple):
    """One injected-staleness run: ``updates`` to epsilon (inf if not reached),
    whether it ``diverged`` (a non-finite loss), and the minibatch ``losses`` run."""

    updates: float
    diverged: bool
    losses: np.ndarray


def run(grad_fn, init_flat: np.ndarray, batches, scales: np.ndarray, taus,
        epsilon: float, window: int) -> Injected:
    """Injected-staleness SGD until the windowed mean minibatch loss is <= epsilon.

    Args:
      grad_fn: the problem's jitted (flat, x, y) -> (loss, gradient leaves pytree).
      init_flat: float32 [d] initial parameters.
      batches: ``asgd.data.Batches`` (the run's minibatch sequence).
      scales: float32 table, ``scales[min(tau, len - 1)]`` multiplies the gradient.
      taus: int staleness of each step; its length is the most updates tried.
      epsilon: the loss level.
      window: updates per running-mean window (the runs' log interval).

    Returns:
      ``Injected``: updates = the number of updates at the end of the first
      window whose mean loss is <= epsilon.
    """
    import jax
    taus = np.asarray(taus, np.int64)
    steps = taus.size
    ring = min(MAX_RING, 1 << int(max(int(taus.max(initial=0)), 0)).bit_length())
    buf = np.empty((ring, init_flat.size), np.float32)
    buf[0] = init_flat
    scales = np.asarray(scales, np.float32)
    losses = np.empty(steps, np.float64)
    for t in range(steps):
        tau = min(int(taus[t]), t, ring - 1)
        loss, grads = grad_fn(buf[(t - tau) % ring], *batches.get(t))
        leaves = jax.block_until_ready(jax.tree.leaves(grads))
        losses[t] = float(loss)
        nxt = buf[(t + 1) % ring]
        nxt[:] = buf[t % ring]
        scale = scales[min(tau, scales.size - 1)]
        offset = 0
        for leaf in leaves:
            g = np.asarray(leaf).reshape(-1)
            nxt[offset:offset + g.size] += scale * g
            offset += g.size
        if (t + 1) % window == 0:
            recent = losses[t + 1 - window:t + 1].mean()
            if recent <= epsilon:
                return Injected(float(t + 1), False, losses[:t + 1])
            if not math.isfinite(recent):
                return Injected(math.inf, True, losses[:t + 1])
    return Injected(math.inf, False, losses)
