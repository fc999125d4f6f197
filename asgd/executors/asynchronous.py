"""The asynchronous worker loop shared by sequential, lock, hogwild and leashed.

The algorithms differ only in the store's synchronisation (see asgd.store):
each worker repeats
  1. take a minibatch ticket,
  2. acquire a snapshot (version t_read) and compute the gradient on it,
  3. release the snapshot once the gradient is ready (JAX reads zero-copy
     inputs asynchronously, so the snapshot must outlive the computation),
  4. ``store.update(gradient leaves, scales, t_read, persistence)``, which
     applies ``x <- x + scales[tau] * g`` with the staleness tau of each
     attempt, retrying a failed CAS up to ``persistence`` times (leashed).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from asgd.executors.base import Tickets, WorkerLog


class LiveScales:
    """The step-size table the workers read, refreshed from observed staleness.

    ``array[tau]`` is the signed multiplier of the raw gradient (``-alpha(tau)``);
    workers read the attribute once per update, and the monitor swaps in a new
    array when the schedule's state changes (online TAIL-tau, fitted models),
    so a refresh lags by at most one logging interval.
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self.array = np.ascontiguousarray(schedule.table(), np.float32)

    def observe(self, staleness: np.ndarray) -> None:
        if self.schedule.observe(staleness):
            self.array = np.ascontiguousarray(self.schedule.table(), np.float32)

    def alpha_table(self) -> list[float]:
        return self.schedule.alpha_table()


def worker_loop(problem, batches, store, tickets: Tickets, log: WorkerLog,
                scales: LiveScales, persistence: int, dc_lambda: float = 0.0) -> None:
    """Run one asynchronous worker until ``tickets`` says stop.

    With ``dc_lambda > 0`` (DC-ASGD, leashed store only) the worker keeps its
    snapshot theta_read through the update and each CAS attempt applies
    ``-alpha(tau) * (g + lambda * g*g*(theta_now - theta_read))`` with that
    attempt's theta_now, through the store's two-phase API.
    """
    grad_fn = problem.grad_fn
    clock = time.perf_counter
    while (i := tickets.take()) is not None:
        x, y = batches.get(i)
        began = clock()
        snapshot = store.acquire()
        try:
            acquired = clock()
            loss, grads = grad_fn(snapshot.array, x, y)
            leaves = jax.block_until_ready(jax.tree.leaves(grads))
            t_read = snapshot.version
            computed = clock()
            if not log.gradient(tickets, float(loss), acquired - began, computed - acquired):
                return
            if dc_lambda:
                result = store.update_with(
                    delay_compensated(leaves, snapshot.array, scales.array, dc_lambda),
                    t_read, persistence)
            else:
                snapshot.release()
                result = store.update(leaves, scales.array, t_read, persistence)
        finally:
            if not snapshot.released:
                snapshot.release()
        log.update(tickets, result, clock() - computed)


def delay_compensated(leaves, theta_read: np.ndarray, scales: np.ndarray, lam: float):
    """The per-attempt DC-ASGD rule for ``store.update_with`` (Zheng et al. 2017).

    ``out`` arrives holding theta_now (the version this attempt builds on);
    it becomes ``theta_now + scales[tau] * (g + lam * g*g*(theta_now - theta_read))``.
    """
    g = np.concatenate([np.asarray(leaf).reshape(-1) for leaf in leaves])
    work = np.empty_like(g)

    def apply(out: np.ndarray, staleness: int) -> None:
        np.subtract(out, theta_read, out=work)
        np.multiply(work, g, out=work)
        np.multiply(work, g, out=work)
        np.multiply(work, lam, out=work)
        np.add(work, g, out=work)
        np.multiply(work, scales[min(staleness, len(scales) - 1)], out=work)
        np.add(out, work, out=out)

    return apply


def run_async(cfg, problem, writer, store, schedule, threads: int, persistence: int,
              dc_lambda: float = 0.0) -> dict:
    """Run ``threads`` asynchronous workers over ``store``; returns the summary."""
    from functools import partial

    from asgd.data import Batches
    from asgd.executors.base import Monitor, StopConfig, run_threads

    batches = Batches(problem.train, cfg.batch_size, cfg.seed)
    stop = StopConfig.of(cfg, batches.per_epoch)
    tickets = Tickets(stop.num_updates, stop.max_batches)
    logs = [WorkerLog() for _ in range(threads)]
    scales = LiveScales(schedule)
    monitor = Monitor(cfg, problem, store, tickets, logs, writer, stop, scales)
    run_threads([partial(worker_loop, problem, batches, store, tickets, log, scales, persistence,
                         dc_lambda) for log in logs], monitor)
    return monitor.summary()
