"""Synchronous parallel SGD with m threads: the rounds of ``sync_round``.

Each thread k repeats: ask ``SyncRounds`` for its minibatch of the open
round, compute the gradient on the round's version (nothing is applied while
a round is open, so every thread reads the same parameters), submit it.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from asgd.data import Batches
from asgd.executors.asynchronous import gradient, prepare
from asgd.executors.base import run_threads
from asgd.executors.sync_round import SyncRounds
from asgd.store import UpdateResult
from asgd.specs import ExecutorSpec, RunSpec


def worker(k: int, rounds: SyncRounds, grad_fn, batches: Batches, store) -> None:
    """Thread k of a synchronous run."""
    while (assignment := rounds.assignment(k)) is not None:
        batch, _ = assignment
        snapshot, loss, leaves, read_s, compute_s = gradient(store, grad_fn, *batches.get(batch))
        snapshot.release()
        rounds.submit(k, batch, leaves, loss, read_s, compute_s)


def stateful_apply(store, versioned, layout, scales):
    """A round's update as a stateful optimizer's step (``asgd.optimizers``):
    read the version (parameters and state), step in JAX, commit both."""
    step = jax.jit(versioned.step)

    def apply(mean_segments, version):
        grads = jax.tree.unflatten(layout.treedef, mean_segments)
        attempt = store.begin(version, prefill=False)   # LOCKED: holds the writer lock
        try:
            leaves = [np.asarray(leaf) for leaf in step(attempt.base, grads, scales()[0])]
            attempt.commit_segments(leaves)
        except BaseException:
            if attempt.is_open:
                attempt.abort()
            raise
        return UpdateResult(True, attempt.attempts, attempt.staleness, version + 1)

    return apply


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule, store,
        versioned=None) -> dict:
    """``spec.threads`` threads in synchronous rounds over ``store``; returns the summary.

    With ``versioned`` the store holds parameters and optimizer state, and a
    round applies the optimizer's step to the mean gradient.
    """
    s = prepare(spec, run_spec, problem, writer, rule, store, versioned)
    apply = None if versioned is None else stateful_apply(store, versioned, problem.layout,
                                                            lambda: s.scales.array)
    rounds = SyncRounds(store, s.tickets, s.logs, lambda: s.scales.array, apply)
    run_threads([partial(worker, k, rounds, problem.grad_fn, s.batches, store)
                 for k in range(spec.threads)], s.monitor, pollers=[s.scales.poll],
                on_error=rounds.stop)
    return s.monitor.summary()
