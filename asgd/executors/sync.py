"""Synchronous parallel SGD with m threads: the rounds of ``sync_round``.

Each thread k repeats: ask ``SyncRounds`` for its minibatch of the open
round, compute the gradient on the round's version (nothing is applied while
a round is open, so every thread reads the same parameters), submit it.
"""

from __future__ import annotations

from functools import partial

from asgd.data import Batches
from asgd.executors.asynchronous import gradient
from asgd.executors.base import Monitor, Tickets, WorkerLog, run_threads
from asgd.executors.scales import ScaleController, schedule
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
    batches = Batches(problem.train, spec.batch_size, spec.seed)
    stop = run_spec.stop
    max_batches = stop.epochs * batches.per_epoch
    tickets = Tickets(stop.num_updates, max_batches)
    logs = [WorkerLog() for _ in range(spec.threads)]
    scales = ScaleController(schedule(rule.transform), logs)
    rounds = SyncRounds(store, tickets, logs, lambda: scales.array)
    monitor = Monitor(run_spec, {"algorithm": spec.algorithm, "threads": spec.threads},
                      problem.evaluate, store, tickets, logs, writer, max_batches,
                      parts=[scales.summary])
    run_threads([partial(worker, k, rounds, problem.grad_fn, batches, store)
                 for k in range(spec.threads)], monitor, pollers=[scales.poll],
                on_error=rounds.stop)
    return monitor.summary()
