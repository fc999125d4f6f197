"""The parameter server: one threaded actor per shard of the flat parameter vector.

``ray_servers = S`` splits the d parameters into S contiguous shards
(``shard_bounds``); shard s is a ``ParameterServer`` holding its slice in its
own C store in the algorithm's mode (``executors.STORE_MODES``), so each
shard's Leashed store is lock-free and consistent on its own. Concurrent
pushes run in the actors' threads and go through ``store.update`` exactly
as worker threads do locally: the same scale table ``-alpha(tau)``
(refreshed by the driver's ``ScaleController``), the same persistence bound.
Every shard counts its own versions, so each measures its own staleness
tau_s = versions applied to it between the worker's pull of it and the push.

Shard 0, the *primary*, also owns the ``Tickets`` that decide the stop, one
``WorkerLog`` per worker and the lost count. An asynchronous update of
ticket i: the worker sends its other pieces to shards 1..S-1 (``apply``),
and its first piece with the references of those calls' results to the
primary (``push``); Ray hands ``push`` the resolved results, so the primary
records one update whose staleness is the largest tau_s, applied only if
every shard applied its piece, and replies with the worker's next ticket.
Sync: every shard runs the shared ``SyncRounds`` on its slice with its own
tickets (the same rounds, so the shards stay at the same version).

Parameters are broadcast through the object store: a shard ``ray.put``s
each version at most once, when it is first pulled, and hands out the
reference, which every pull of that version shares.

Faults. When the driver declares worker k's incarnation lost, its tickets
(computing or being pushed) are released (counted in ``lost``; with
``num_updates`` other workers take them, so the count of applied updates
stays exact), a late push from the dead incarnation is ignored, and the
restarted actor rejoins. With S > 1 a piece already sent to another shard
(by a worker that died or a gradient discarded at a stop) may be applied
there: at most two pieces per worker, on the shards' own versions.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from asgd import metrics
from asgd.executors.base import Tickets, WorkerLog
from asgd.executors.sync_round import SyncRounds
from asgd.store import UpdateResult

LOG_FIELDS = ("loss", "staleness", "attempts", "read_s", "compute_s", "update_s")
TICKETS_HELD = 2  # an asynchronous worker computes one ticket while it pushes the previous one
TICKET_WAIT_S = 0.005  # how often a worker waiting for a free ticket asks again


def shard_bounds(d: int, shards: int) -> list[int]:
    """The S + 1 boundaries of S contiguous shards of d elements, sizes differing by at most 1."""
    return [s * d // shards for s in range(shards + 1)]


class ParameterServer:
    """One shard of the parameters; shard 0 also owns the tickets and the logs (a threaded actor)."""

    def __init__(self, init: np.ndarray, algorithm: str, m: int, scales: np.ndarray,
                 persistence: int, num_updates: int, max_batches: int, shard: int = 0):
        from asgd.executors import make_store
        self.store = make_store(algorithm, init)
        self.shard, self.m, self.persistence = shard, m, persistence
        self.scales = np.ascontiguousarray(scales, np.float32)
        self.tickets = Tickets(num_updates, max_batches)
        self.logs = [WorkerLog() for _ in range(m)]
        self.incarnation = [0] * m
        self.outstanding: list[set[int]] = [set() for _ in range(m)]  # async: tickets each worker holds
        self.worker_locks = [threading.Lock() for _ in range(m)]
        self.lost = 0
        self.taus: list[int] = []                          # async: tau_s of every piece applied here
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
        """A consistent copy of this shard's latest version (hogwild: racy), for eval."""
        return self.store.read_copy()

    def progress(self, seen: list[list[int]]) -> dict:
        """Log entries past ``seen[k][field]``, tickets and store statistics (the primary's)."""
        logs = []
        for log, counts in zip(self.logs, seen):
            fresh = {}
            for field, start in zip(LOG_FIELDS, counts):
                values = getattr(log, field)
                fresh[field] = values[start:len(values)]
            fresh["dropped"], fresh["discarded"] = log.dropped, log.discarded
            logs.append(fresh)
        t = self.tickets.state()
        return {"logs": logs, "applied": t.applied, "applied_after_stop": t.applied_after_stop,
                "taken": t.next_batch, "stop_reason": self.tickets.stop_reason, "lost": self.lost,
                "stats": self.store.stats()}

    def staleness_hist(self) -> list[int]:
        """Histogram of tau_s, in this shard's versions, over the updates applied to it."""
        taus = self.logs[0].staleness if self.rounds is not None else self.taus
        return metrics.histogram(np.asarray(taus, np.int64))

    def worker_lost(self, k: int, incarnation: int) -> None:
        """Worker k died: drop its gradients in flight; only ``incarnation`` may push now."""
        with self.worker_locks[k]:
            self.incarnation[k] = incarnation
            if self.rounds is not None:
                if self.rounds.missing(k) and self.shard == 0:
                    self.lost += 1  # its share of this round; the restarted worker recomputes it
            else:
                for _ in self.outstanding[k]:
                    self.lost += 1
                    self.tickets.finish(False)
                self.outstanding[k].clear()

    # -- the workers' calls: asynchronous ----------------------------------
    def start(self, k: int, incarnation: int) -> list[int]:
        """Tickets for worker k, which holds none (up to ``TICKETS_HELD``; [] to stop). Primary only.

        While no ticket is free but others are in flight, waits: one held by a
        worker that is then declared lost comes back, and the last worker to
        ask once none is in flight sets the stop.
        """
        while True:
            with self.worker_locks[k]:
                if incarnation != self.incarnation[k] or self.outstanding[k]:
                    return []
                tickets = [i for i in (self._take(k) for _ in range(TICKETS_HELD)) if i is not None]
            if tickets or self.tickets.stopped:
                return tickets
            time.sleep(TICKET_WAIT_S)

    def pull(self) -> tuple[int, list]:
        """The latest version of this shard and a one-element list holding its object-store ref.

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

    def apply(self, grad: np.ndarray, t_read: int) -> tuple[UpdateResult, float]:
        """Apply one piece of a gradient computed on this shard's version ``t_read``;
        returns the store's result and the seconds ``store.update`` took."""
        began = time.perf_counter()
        result = self.store.update(grad, self.scales, t_read, self.persistence)
        if result.applied:
            self.taus.append(result.staleness)
        return result, time.perf_counter() - began

    def push(self, k: int, incarnation: int, ticket: int, t_read: int, loss: float,
             read_s: float, compute_s: float, grad: np.ndarray,
             *others: tuple[UpdateResult, float]) -> tuple[int | None, int, list]:
        """Worker k's gradient of ``ticket`` (primary only).

        ``grad``: the primary's piece, computed on its version ``t_read``;
        ``others``: what shards 1..S-1 did with theirs (Ray resolves both
        references before this runs). Returns (the worker's next ticket or
        None to stop, and, as a pull riding on the reply, this shard's
        latest version and [its ref]).
        """
        with self.worker_locks[k]:
            if incarnation != self.incarnation[k] or ticket not in self.outstanding[k]:
                return None, -1, []  # from an incarnation declared lost
            self.outstanding[k].discard(ticket)
            log = self.logs[k]
            if not log.gradient(self.tickets, loss, read_s, compute_s):
                return None, -1, []
            result, update_s = self.apply(grad, t_read)
            if others:  # the update as a whole: applied on every shard, its largest tau_s
                results = [result, *(r for r, _ in others)]
                result = result._replace(applied=all(r.applied for r in results),
                                         staleness=max(r.staleness for r in results))
                update_s += sum(s for _, s in others)
            log.update(self.tickets, result, update_s)
            following = self._take(k)
        return (following, *self.pull())

    # -- the workers' calls: sync ------------------------------------------
    def join_round(self, k: int, incarnation: int):
        """Worker k's share of the open round: (minibatch, version, [params ref]) or None to stop."""
        assignment = self.rounds.assignment(k)
        if assignment is None or incarnation != self.incarnation[k]:
            return None
        batch, version = assignment
        _, refs = self.pull()  # no update lands while a round is open: this is ``version``
        return batch, version, refs

    def exchange(self, k: int, incarnation: int, batch: int, loss: float, read_s: float,
                 compute_s: float, grad: np.ndarray):
        """Submit worker k's piece of ``batch``'s gradient; returns its next round's share."""
        with self.worker_locks[k]:
            if incarnation != self.incarnation[k]:
                return None
            self.rounds.submit(k, batch, [grad], loss, read_s, compute_s)
        return self.join_round(k, incarnation)

    # -- internals ----------------------------------------------------------
    def _take(self, k: int) -> int | None:
        i = self.tickets.take()
        if i is not None:
            self.outstanding[k].add(i)
        return i
