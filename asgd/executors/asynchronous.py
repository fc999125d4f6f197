"""The asynchronous worker loop shared by sequential, lock, hogwild and leashed.

The algorithms differ only in the store's synchronisation (see asgd.store
and ``executors.STORE_MODES``): each worker repeats
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
from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from asgd import stepsize
from asgd.data import Batches
from asgd.executors.base import Monitor, Tickets, WorkerLog, run_threads
from asgd.executors.scales import ScaleController, schedule
from asgd.specs import ExecutorSpec, RunSpec


def worker_loop(grad_fn, batches, store, tickets: Tickets, log: WorkerLog,
                scales: ScaleController, persistence: int, dc_lambda: float = 0.0) -> None:
    """Run one asynchronous worker until ``tickets`` says stop.

    With ``dc_lambda > 0`` (DC-ASGD, leashed store only) the worker keeps its
    snapshot theta_read through the update and each CAS attempt applies
    ``-alpha(tau) * delay_compensation(g, theta_now, theta_read)`` with that
    attempt's theta_now, through the store's two-phase API.
    """
    while (i := tickets.take()) is not None:
        snapshot, loss, leaves, read_s, compute_s = gradient(store, grad_fn, *batches.get(i))
        computed = time.perf_counter()
        try:
            t_read = snapshot.version
            if not log.gradient(tickets, loss, read_s, compute_s):
                return
            if dc_lambda:
                rule = delay_compensated(leaves, snapshot.array, scales.array, dc_lambda)
                result = store.update_with(rule, t_read, persistence)
            else:
                snapshot.release()
                result = store.update(leaves, scales.array, t_read, persistence)
        finally:
            if not snapshot.released:
                snapshot.release()
        log.update(tickets, result, time.perf_counter() - computed)


def gradient(store, grad_fn, x, y):
    """Acquire a snapshot and compute the minibatch gradient on it.

    Returns (snapshot, loss, gradient leaves, read_s, compute_s); the
    snapshot is still held (the caller releases it), the leaves are ready.
    """
    began = time.perf_counter()
    snapshot = store.acquire()
    try:
        acquired = time.perf_counter()
        loss, grads = grad_fn(snapshot.array, x, y)
        leaves = jax.block_until_ready(jax.tree.leaves(grads))
        loss = float(loss)
    except BaseException:
        snapshot.release()
        raise
    return snapshot, loss, leaves, acquired - began, time.perf_counter() - acquired


def delay_compensated(leaves, theta_read: np.ndarray, scales: np.ndarray, lam: float):
    """The per-attempt DC-ASGD rule for ``store.update_with`` (Zheng et al. 2017).

    ``out`` arrives holding theta_now (the version this attempt builds on);
    it becomes ``theta_now + scales[tau] * delay_compensation(g, theta_now, theta_read)``,
    the formula of the optax ``stepsize.dc_asgd`` transform.
    """
    g = np.concatenate([np.asarray(leaf).reshape(-1) for leaf in leaves])

    def apply(out: np.ndarray, staleness: int) -> None:
        corrected = stepsize.delay_compensation(g, out, theta_read, lam)
        out += scales[min(staleness, len(scales) - 1)] * corrected

    return apply


class Setup(NamedTuple):
    """What one local run's threads share (``prepare``)."""

    batches: Batches
    tickets: Tickets
    logs: list
    scales: ScaleController
    monitor: Monitor


def prepare(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule, store,
            versioned=None) -> Setup:
    """The minibatch stream, tickets, logs, scale table and monitor of a local run.

    With ``versioned`` the store holds the parameters followed by an
    optimizer's state: the monitor evaluates the parameters only."""
    batches = Batches(problem.train, spec.batch_size, spec.seed)
    stop = run_spec.stop
    max_batches = stop.epochs * batches.per_epoch
    tickets = Tickets(stop.num_updates, max_batches)
    logs = [WorkerLog() for _ in range(spec.threads)]
    scales = ScaleController(schedule(rule.transform), logs)
    d = problem.layout.size
    evaluate = problem.evaluate if versioned is None else (lambda flat: problem.evaluate(flat[:d]))
    monitor = Monitor(run_spec, {"algorithm": spec.algorithm, "threads": spec.threads},
                      evaluate, store, tickets, logs, writer, max_batches,
                      parts=[scales.summary])
    return Setup(batches, tickets, logs, scales, monitor)


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule, store) -> dict:
    """Run ``spec.threads`` asynchronous workers over ``store``; returns the summary."""
    s = prepare(spec, run_spec, problem, writer, rule, store)
    run_threads([partial(worker_loop, problem.grad_fn, s.batches, store, s.tickets, log, s.scales,
                         spec.persistence, rule.dc_lambda) for log in s.logs],
                s.monitor, pollers=[s.scales.poll])
    return s.monitor.summary()
