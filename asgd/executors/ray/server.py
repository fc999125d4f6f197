"""The parameter server: a threaded actor that owns the parameters, the tickets and the logs.

It holds the C store in the algorithm's mode (``executors.STORE_MODES``),
the ``Tickets`` that decide the stop, and one ``WorkerLog`` per worker.
Concurrent pushes run in the actor's threads and go through ``store.update``
exactly as worker threads do locally: the same scale table ``-alpha(tau)``
(refreshed by the driver's ``ScaleController``), the same persistence bound,
tau = versions applied since the worker's pull. Sync runs the shared
``SyncRounds``.

Parameters are broadcast through the object store: the server ``ray.put``s
each version at most once and hands out the reference, which every worker
pulling that version shares (in sync, all m workers of a round).

Faults. When the driver declares worker k's incarnation lost, its in-flight
ticket is released (counted in ``lost``; with ``num_updates`` another worker
takes it, so the count of applied updates stays exact), a late push from the
dead incarnation is ignored, and the restarted actor rejoins.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from asgd.executors.base import Tickets, WorkerLog
from asgd.executors.sync_round import SyncRounds

LOG_FIELDS = ("loss", "staleness", "attempts", "read_s", "compute_s", "update_s")


class ParameterServer:
    """Owns the parameters, the tickets and the per-worker logs (a threaded actor)."""

    def __init__(self, init: np.ndarray, algorithm: str, m: int, scales: np.ndarray,
                 persistence: int, num_updates: int, max_batches: int):
        from asgd.executors import make_store
        self.store = make_store(algorithm, init)
        self.m, self.persistence = m, persistence
        self.scales = np.ascontiguousarray(scales, np.float32)
        self.tickets = Tickets(num_updates, max_batches)
        self.logs = [WorkerLog() for _ in range(m)]
        self.incarnation = [0] * m
        self.outstanding: list[int | None] = [None] * m   # async: the ticket each worker computes
        self.worker_locks = [threading.Lock() for _ in range(m)]
        self.lost = 0
        self._broadcast: tuple[int, list] = (-1, [])      # (version, [ref]) of the last ray.put
        self._put_lock = threading.Lock()
        self.rounds = (SyncRounds(self.store, self.tickets, self.logs, lambda: self.scales)
                       if algorithm == "sync" else None)

    # -- the driver's calls -------------------------------------------------
    def set_scales(self, scales: np.ndarray) -> None:
        self.scales = np.ascontiguousarray(scales, np.float32)

    def stop(self, reason: str) -> None:
        self.tickets.stop(reason)
        if self.rounds is not None:
            self.rounds.stop()

    def read(self) -> np.ndarray:
        """A consistent copy of the latest version (hogwild: racy), for eval."""
        return self.store.read_copy()

    def progress(self, seen: list[list[int]]) -> dict:
        """Log entries past ``seen[k][field]``, tickets and store statistics."""
        logs = []
        for log, counts in zip(self.logs, seen):
            fresh = {}
            for field, start in zip(LOG_FIELDS, counts):
                values = getattr(log, field)
                fresh[field] = values[start:len(values)]
            fresh["dropped"], fresh["discarded"] = log.dropped, log.discarded
            logs.append(fresh)
        t = self.tickets
        return {"logs": logs, "applied": t.applied, "applied_after_stop": t.applied_after_stop,
                "stop_reason": t.stop_reason, "lost": self.lost, "stats": self.store.stats()}

    def worker_lost(self, k: int, incarnation: int) -> None:
        """Worker k died: drop its in-flight gradient; only ``incarnation`` may push now."""
        with self.worker_locks[k]:
            self.incarnation[k] = incarnation
            if self.rounds is not None:
                if self.rounds.missing(k):
                    self.lost += 1  # its share of this round; the restarted worker recomputes it
            elif self.outstanding[k] is not None:
                self.outstanding[k] = None
                self.lost += 1
                self.tickets.finish(False)

    # -- the workers' calls -------------------------------------------------
    def start(self, k: int, incarnation: int):
        """The first assignment of worker k: (ticket, version, [params ref]) or None to stop."""
        if self.rounds is not None:
            return self._round_assignment(k, incarnation)
        with self.worker_locks[k]:
            if incarnation != self.incarnation[k] or self.outstanding[k] is not None:
                return None
            return self._assign(k)

    def exchange(self, k: int, incarnation: int, ticket: int, grad: np.ndarray, t_read: int,
                 loss: float, read_s: float, compute_s: float):
        """Push one gradient computed on version ``t_read``; returns the next assignment."""
        if self.rounds is not None:
            with self.worker_locks[k]:
                if incarnation != self.incarnation[k]:
                    return None
                self.rounds.submit(k, ticket, [grad], loss, read_s, compute_s)
            return self._round_assignment(k, incarnation)
        with self.worker_locks[k]:
            if incarnation != self.incarnation[k] or self.outstanding[k] != ticket:
                return None  # from an incarnation declared lost
            self.outstanding[k] = None
            log = self.logs[k]
            if not log.gradient(self.tickets, loss, read_s, compute_s):
                return None
            began = time.perf_counter()
            result = self.store.update(grad, self.scales, t_read, self.persistence)
            log.update(self.tickets, result, time.perf_counter() - began)
            return self._assign(k)

    # -- internals ----------------------------------------------------------
    def _round_assignment(self, k: int, incarnation: int):
        assignment = self.rounds.assignment(k)
        if assignment is None or incarnation != self.incarnation[k]:
            return None
        batch, version = assignment
        _, refs = self._pull()  # no update lands while a round is open: this is ``version``
        return batch, version, refs

    def _assign(self, k: int):
        i = self.tickets.take()
        if i is None:
            return None
        self.outstanding[k] = i
        version, refs = self._pull()
        return i, version, refs

    def _pull(self) -> tuple[int, list]:
        """The latest version and a one-element list holding its object-store ref.

        The list makes Ray hand the reference (not the array) to the worker;
        a version is put at most once and shared by every pull of it.
        """
        import ray
        version, refs = self._broadcast
        if version == self.store.version:
            return version, refs
        with self._put_lock:
            version, refs = self._broadcast
            if version != self.store.version:
                with self.store.acquire() as snapshot:  # leashed: zero-copy, put copies once
                    refs = [ray.put(snapshot.array)]
                    version = snapshot.version
                self._broadcast = (version, refs)
        return version, refs
