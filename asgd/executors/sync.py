"""Synchronous parallel SGD with m threads: the rounds of ``sync_round``.

Each thread k repeats: ask ``SyncRounds`` for its minibatch of the open
round, compute the gradient on the round's version (nothing is applied while
a round is open, so every thread reads the same parameters), submit it.
"""

from __future__ import annotations

from functools import partial

from asgd.data import Batches
from asgd.executors.asynchronous import gradient, prepare
from asgd.executors.base import run_threads
from asgd.executors.sync_round import SyncRounds
from asgd.specs import ExecutorSpec, RunSpec


def worker(k: int, rounds: SyncRounds, grad_fn, batches: Batches, store) -> None:
    """Thread k of a synchronous run."""
    while (assignment := rounds.assignment(k)) is not None:
        batch, _ = assignment
        snapshot, loss, leaves, read_s, compute_s = gradient(store, grad_fn, *batches.get(batch))
        snapshot.release()
        rounds.submit(k, batch, leaves, loss, read_s, compute_s)


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule, store) -> dict:
    """``spec.threads`` threads in synchronous rounds over ``store``; returns the summary."""
    s = prepare(spec, run_spec, problem, writer, rule, store)
    rounds = SyncRounds(store, s.tickets, s.logs, lambda: s.scales.array)
    run_threads([partial(worker, k, rounds, problem.grad_fn, s.batches, store)
                 for k in range(spec.threads)], s.monitor, pollers=[s.scales.poll],
                on_error=rounds.stop)
    return s.monitor.summary()
