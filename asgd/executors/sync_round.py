"""Synchronous rounds: m gradients from one version, summed in a fixed order, one update.

One implementation serves the local sync executor (m threads) and the Ray
parameter server (m worker actors calling in concurrently). Round r uses
minibatches r*m .. r*m+m-1, taken as one ticket of m minibatches. Worker k
asks for its ``assignment`` (minibatch r*m+k and the version to read),
computes, and ``submit``s; the last submission of a round sums the m
gradients in worker order and applies ``x <- x + (s(0)/m) * sum_k g_k`` as
one update, so a run is deterministic for a given seed. Every gradient is
recorded through its worker's ``WorkerLog``; a stop discards the round in
progress (its m gradients counted as discarded, its ticket returned).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from asgd.executors.base import Tickets, WorkerLog


class SyncRounds:
    """The rounds of one synchronous run. Thread-safe.

    Args:
      store: the parameter store (LOCKED, so evaluation copies are consistent).
      tickets: the run's tickets (one per round).
      logs: one ``WorkerLog`` per worker; the update of a round is logged on worker 0's.
      scales: returns the current scale table (``-alpha(tau)``); rounds use tau = 0.
      apply: (mean gradient segments, version) -> UpdateResult, to apply a
        round some other way than ``store.update`` (a stateful optimizer).
    """

    def __init__(self, store, tickets: Tickets, logs: Sequence[WorkerLog],
                 scales: Callable[[], np.ndarray], apply: Callable | None = None):
        self.store, self.tickets, self.logs, self.scales = store, tickets, logs, scales
        self.apply = apply
        self.m = len(logs)
        self._cv = threading.Condition()
        self.first: int | None = None     # first minibatch of the open round; None = stopped
        self.version = 0                  # the version every gradient of the round reads
        self.grads: list = [None] * self.m
        with self._cv:
            self._open()

    def assignment(self, k: int) -> tuple[int, int] | None:
        """(minibatch, version) for worker k in the open round, or None to stop.

        Waits while worker k has already submitted to the open round.
        """
        with self._cv:
            while self.first is not None and self.grads[k] is not None:
                self._cv.wait()
            if self.first is None:
                return None
            return self.first + k, self.version

    def submit(self, k: int, batch: int, grad: Sequence[np.ndarray], loss: float,
               read_s: float, compute_s: float) -> bool:
        """Worker k's gradient (segments concatenating to d) of ``batch``.

        False (and nothing recorded) when it is not for the open round, e.g.
        from a worker that was declared lost.
        """
        with self._cv:
            if self.first is None or batch != self.first + k or self.grads[k] is not None:
                return False
            self.logs[k].record(self.tickets, loss, read_s, compute_s)
            self.grads[k] = [np.asarray(g) for g in grad]
            if all(g is not None for g in self.grads):
                self._close()
                self._open()
            return True

    def missing(self, k: int) -> bool:
        """True if the open round still waits for worker k's gradient."""
        with self._cv:
            return self.first is not None and self.grads[k] is None

    def stop(self) -> None:
        """Discard the round in progress and release every waiting worker."""
        with self._cv:
            if self.first is not None:
                self._discard()
                self.first = None
            self._cv.notify_all()

    # -- internals (hold self._cv) -------------------------------------------
    def _open(self) -> None:
        self.first = self.tickets.take(count=self.m)
        self.grads = [None] * self.m
        if self.first is not None:
            self.version = self.store.version
        self._cv.notify_all()

    def _discard(self) -> None:
        for log in self.logs:
            log.discarded += 1
        self.tickets.finish(False)

    def _close(self) -> None:
        """Sum the m gradients in worker order and apply one update of their mean."""
        if self.tickets.stopped:  # a stop (or a non-finite loss) during the round
            self._discard()
            return
        total = [np.array(segment, copy=True) for segment in self.grads[0]]
        for grads in self.grads[1:]:
            for acc, segment in zip(total, grads):
                np.add(acc, segment, out=acc)
        began = time.perf_counter()
        if self.apply is not None:
            result = self.apply([segment / self.m for segment in total], self.version)
        else:
            result = self.store.update(total, self.scales() / self.m, self.version, -1)
        self.logs[0].update(self.tickets, result, time.perf_counter() - began)
