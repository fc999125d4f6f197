"""Synchronous parallel SGD: m gradients per round, averaged, one update.

Each round, every one of the m threads computes a gradient on its own
minibatch (round r uses minibatches r*m .. r*m+m-1) from the same
parameters; a barrier then lets one thread sum them in a fixed order and
apply ``x <- x - alpha * mean(g)`` as one update. Summation order and
minibatches are fixed, so a run is deterministic for a given seed.
The store is LOCKED so the monitor's evaluation copies are consistent.
"""

from __future__ import annotations

import threading
import time
from functools import partial

import jax
import numpy as np

from asgd.data import Batches
from asgd.executors.base import Monitor, StopConfig, Tickets, WorkerLog, run_threads
from asgd.executors.asynchronous import LiveScales


class _Round:
    """State shared by the threads of one synchronous round."""

    def __init__(self, m: int):
        self.first: int | None = None   # first minibatch number of this round; None = stop
        self.t_read = 0
        self.grads: list = [None] * m
        self.finite = [True] * m


def run(cfg, problem, writer, schedule) -> dict:
    from asgd.store import ParameterStore

    m = int(cfg.threads)
    batches = Batches(problem.train, cfg.batch_size, cfg.seed)
    stop = StopConfig.of(cfg, batches.per_epoch)
    tickets = Tickets(stop.num_updates, stop.max_batches)
    logs = [WorkerLog() for _ in range(m)]
    scales = LiveScales(schedule)
    state = _Round(m)

    with ParameterStore(problem.layout.size, mode="locked", init=problem.init_flat) as store:
        def begin_round():
            state.first = tickets.take(count=m)
            state.t_read = store.version

        def end_round():
            if not all(state.finite):
                tickets.stop(f"diverged: non-finite minibatch loss at update {tickets.applied}")
            if tickets.stopped:
                tickets.finish(False)
                logs[0].discarded += m
                return
            total = [np.array(leaf, copy=True) for leaf in state.grads[0]]
            for grads in state.grads[1:]:
                for acc, leaf in zip(total, grads):
                    np.add(acc, leaf, out=acc)
            began = time.perf_counter()
            result = store.update(total, scales.array / m, state.t_read, -1)
            logs[0].update(tickets, result, time.perf_counter() - began)

        start_barrier = threading.Barrier(m, action=begin_round)
        end_barrier = threading.Barrier(m, action=end_round)

        def worker(k: int, log: WorkerLog):
            try:
                rounds(k, log)
            except BaseException:
                start_barrier.abort()  # release the other threads instead of deadlocking
                end_barrier.abort()
                raise

        def rounds(k: int, log: WorkerLog):
            while True:
                start_barrier.wait()
                if state.first is None:
                    return
                x, y = batches.get(state.first + k)
                began = time.perf_counter()
                with store.acquire() as snapshot:
                    acquired = time.perf_counter()
                    loss, grads = problem.grad_fn(snapshot.array, x, y)
                    state.grads[k] = [np.asarray(leaf) for leaf in
                                      jax.block_until_ready(jax.tree.leaves(grads))]
                    computed = time.perf_counter()
                loss = float(loss)
                log.read_s.append(acquired - began)
                log.compute_s.append(computed - acquired)
                log.loss.append(loss)
                state.finite[k] = np.isfinite(loss)
                end_barrier.wait()

        monitor = Monitor(cfg, problem, store, tickets, logs, writer, stop, scales)
        run_threads([partial(worker, k, log) for k, log in enumerate(logs)], monitor)
        return monitor.summary()
