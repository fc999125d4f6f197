"""The same algorithms on a Ray cluster: a parameter-server actor and m worker actors.

Selected by ``config.backend = "ray"``; ``config.threads`` is the number of
worker actors. See docs/ray.md for the cluster commands.

Parameter server (``ParameterServer``, a threaded actor). It owns the C
``ParameterStore`` (lock -> LOCKED, hogwild -> HOGWILD, leashed -> LEASHED,
sync -> LOCKED), the ``Tickets`` that decide the stop, and one ``WorkerLog``
per worker. Concurrent pushes run in the actor's threads and go through
``store.update`` exactly as worker threads do locally: the same scale table
``-alpha(tau)`` (refreshed by the driver's ``LiveScales``), the same
persistence bound, tau = versions applied since the worker's pull.

Workers (``Worker``). Each holds the training set (one object-store copy per
node) and the seeded minibatch stream of ``asgd.data.Batches``, so ticket i
is the same minibatch as in a local run, and jits ``make_grad_fn``. One round
trip per update: ``exchange`` pushes (flat float32 gradient, t_read) and
returns the next assignment (ticket, version, [params ref]). Parameters are
broadcast through the object store: the server ``ray.put``s each version at
most once and hands out the reference, which every worker pulling that
version shares (in sync, all m workers of a round).

Driver. Runs the local ``Monitor`` unchanged over a mirror of the server's
tickets and logs (``Mirror``, refreshed every poll) and a store-like adapter
(``RemoteStore``) whose ``read_copy`` pulls the latest version for eval.

Faults. Workers are restartable actors (``ray_max_restarts``). When one dies
the driver declares its incarnation lost: its in-flight ticket is released
(counted in ``lost_gradients``; with ``num_updates`` another worker takes it,
so the count of applied updates stays exact), a late push from the dead
incarnation is ignored, and the restarted actor rejoins. The server is not
restartable: its state lives as long as it does; if it dies, the run ends
with ``ParameterServerDied`` after summary.json records what was measured.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import numpy as np

from asgd.executors.base import Monitor, RunAborted, StopConfig, Tickets, WorkerLog, POLL_S

ALGORITHMS = {"lock": "locked", "hogwild": "hogwild", "leashed": "leashed", "sync": "locked"}
LOG_FIELDS = ("loss", "staleness", "attempts", "read_s", "compute_s", "update_s")
READY_TIMEOUT_S = 600.0  # worker actors start, load JAX and compile before this
RAY_POLL_S = 5 * POLL_S  # the driver's poll: one progress call to the server each


class RayBackendError(ValueError):
    """Bad input for the Ray backend (Ray missing, address unreachable, too few CPUs)."""


class ParameterServerDied(RunAborted):
    """The parameter-server actor died; the results folder holds what was measured."""


# --------------------------------------------------------------- input checks

def check(cfg) -> None:
    """Fail fast, in one line, before any data is loaded or Ray is started."""
    import importlib.util
    if cfg.algorithm not in ALGORITHMS:
        raise RayBackendError(f"backend 'ray' runs {sorted(ALGORITHMS)}, not {cfg.algorithm!r}")
    if cfg.stepsize == "dc_asgd":
        raise RayBackendError("stepsize 'dc_asgd' is not available with backend 'ray' "
                              "(it needs theta_read at every CAS attempt)")
    if not cfg.ray_connect_timeout_s > 0:
        raise RayBackendError(f"ray_connect_timeout_s must be positive, got {cfg.ray_connect_timeout_s}")
    if not cfg.ray_worker_cpus >= 0:
        raise RayBackendError(f"ray_worker_cpus must be >= 0, got {cfg.ray_worker_cpus}")
    if cfg.ray_max_restarts < -1:
        raise RayBackendError(f"ray_max_restarts must be -1 (unlimited) or >= 0, got {cfg.ray_max_restarts}")
    if importlib.util.find_spec("ray") is None:
        raise RayBackendError("backend 'ray' needs Ray, which is not installed: pip install -e '.[ray]'")
    check_address(cfg.ray_address, float(cfg.ray_connect_timeout_s))


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str, timeout_s: float) -> None:
    """Probe a Ray address: TCP connect, then the gRPC (HTTP/2) handshake.

    ``ray.init`` retries an unreachable or silent GCS for minutes; this fails
    within about ``timeout_s``: a closed port, a black hole, or a listener
    that does not answer an HTTP/2 preface with a SETTINGS frame (Ray's GCS
    and Ray Client servers are gRPC). "" (local) and "auto" (Ray finds the
    local cluster, or fails at once) need no probe.
    """
    if address in ("", "auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(HTTP2_PREFACE)
            head = conn.recv(9)
    except OSError as e:
        raise RayBackendError(f"cannot reach the Ray cluster at ray_address={address!r} "
                              f"({type(e).__name__}: {e or 'timed out'}, within {timeout_s:g} s); "
                              f"is 'ray start --head' running there?") from None
    if len(head) < 4 or head[3] != 4:  # frame type 4: SETTINGS
        raise RayBackendError(f"cannot reach the Ray cluster at ray_address={address!r}: "
                              f"{host}:{port} answers, but not as a Ray (gRPC) server")


def connect(cfg) -> bool:
    """Join or start Ray; True if this call started it (and should shut it down)."""
    import logging

    import ray
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, logging_level=logging.WARNING,
                   log_to_driver=not cfg.quiet)
    try:
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, **options)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(cfg.threads * cfg.ray_worker_cpus))
            ray.init(num_cpus=cpus, **options)
    except (ConnectionError, RuntimeError) as e:
        raise RayBackendError(f"cannot start or join Ray at ray_address={cfg.ray_address!r}: "
                              f"{str(e).splitlines()[0]}") from None
    return True


# --------------------------------------------------------------- the actors

class ParameterServer:
    """Owns the parameters, the tickets and the per-worker logs (a threaded actor)."""

    def __init__(self, init: np.ndarray, algorithm: str, m: int, scales: np.ndarray,
                 persistence: int, num_updates: int, max_batches: int):
        from asgd.store import ParameterStore
        self.store = ParameterStore(init.size, mode=ALGORITHMS[algorithm], init=init)
        self.sync, self.m, self.persistence = algorithm == "sync", m, persistence
        self.scales = np.ascontiguousarray(scales, np.float32)
        self.tickets = Tickets(num_updates, max_batches)
        self.logs = [WorkerLog() for _ in range(m)]
        self.incarnation = [0] * m
        self.outstanding: list[int | None] = [None] * m   # async: the ticket each worker computes
        self.worker_locks = [threading.Lock() for _ in range(m)]
        self.lost = 0
        self._broadcast: tuple[int, list] = (-1, [])      # (version, [ref]) of the last ray.put
        self._put_lock = threading.Lock()
        self._round = threading.Condition()               # sync: one round at a time
        self.round_first: int | None = None
        self.round_version, self.round_refs = 0, []
        self.grads: list = [None] * m
        self.finite = [True] * m
        if self.sync:
            with self._round:
                self._begin_round()

    # -- the driver's calls -------------------------------------------------
    def set_scales(self, scales: np.ndarray) -> None:
        self.scales = np.ascontiguousarray(scales, np.float32)

    def stop(self, reason: str) -> None:
        self.tickets.stop(reason)
        if self.sync:
            with self._round:
                self._abort_round()

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
        if self.sync:
            with self._round:
                self.incarnation[k] = incarnation
                if self.round_first is not None and self.grads[k] is None:
                    self.lost += 1  # its share of this round; the restarted worker recomputes it
            return
        with self.worker_locks[k]:
            self.incarnation[k] = incarnation
            if self.outstanding[k] is not None:
                self.outstanding[k] = None
                self.lost += 1
                self.tickets.finish(False)

    # -- the workers' calls -------------------------------------------------
    def start(self, k: int, incarnation: int):
        """The first assignment of worker k: (ticket, version, [params ref]) or None to stop."""
        if self.sync:
            return self._sync_exchange(k, incarnation, None, None, 0.0, 0.0, 0.0)
        with self.worker_locks[k]:
            if incarnation != self.incarnation[k] or self.outstanding[k] is not None:
                return None
            return self._assign(k)

    def exchange(self, k: int, incarnation: int, ticket: int, grad: np.ndarray, t_read: int,
                 loss: float, read_s: float, compute_s: float):
        """Push one gradient computed on version ``t_read``; returns the next assignment."""
        if self.sync:
            return self._sync_exchange(k, incarnation, ticket, grad, loss, read_s, compute_s)
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

    def _sync_exchange(self, k, incarnation, ticket, grad, loss, read_s, compute_s):
        with self._round:
            if incarnation != self.incarnation[k]:
                return None
            if grad is not None and self.round_first is not None \
                    and ticket == self.round_first + k and self.grads[k] is None:
                log = self.logs[k]
                log.read_s.append(read_s)
                log.compute_s.append(compute_s)
                log.loss.append(loss)
                self.grads[k], self.finite[k] = grad, math.isfinite(loss)
                if all(g is not None for g in self.grads):
                    self._end_round()
                    self._begin_round()
            while self.round_first is not None and self.grads[k] is not None:
                self._round.wait()
            if self.round_first is None:
                return None
            return self.round_first + k, self.round_version, self.round_refs

    def _begin_round(self) -> None:
        self.round_first = self.tickets.take(count=self.m)
        self.grads = [None] * self.m
        self.finite = [True] * self.m
        if self.round_first is not None:
            self.round_version, self.round_refs = self._pull()
        self._round.notify_all()

    def _end_round(self) -> None:
        """Sum the m gradients in worker order, apply one update of their mean."""
        tickets = self.tickets
        if not all(self.finite):
            tickets.stop(f"diverged: non-finite minibatch loss at update {tickets.applied}")
        if tickets.stopped:
            tickets.finish(False)
            self.logs[0].discarded += self.m
            return
        total = np.array(self.grads[0], copy=True)
        for grad in self.grads[1:]:
            np.add(total, grad, out=total)
        began = time.perf_counter()
        result = self.store.update(total, self.scales / self.m, self.round_version, -1)
        self.logs[0].update_s.append(time.perf_counter() - began)
        self.logs[0].attempts.append(result.attempts)
        self.logs[0].staleness.append(result.staleness)
        tickets.finish(result.applied)

    def _abort_round(self) -> None:
        """A stop: discard the round in progress and release the waiting workers."""
        if self.round_first is not None:
            self.tickets.finish(False)
            self.logs[0].discarded += self.m  # as a local sync round cut by a stop
            self.round_first = None
        self._round.notify_all()


class Worker:
    """Computes gradients: pull -> compute -> push until the server says stop."""

    def __init__(self, k: int, ps, model: str, layout, train_ref: list, batch_size: int, seed: int):
        """``train_ref``: [object ref of the training set], one copy per node, zero-copy here.

        (In a list so Ray passes the reference: a restarted actor fetches it
        again, and Ray does not warn about by-value arguments of restartable actors.)
        """
        import jax
        import ray

        from asgd import models
        from asgd.data import Batches
        from asgd.problem import make_grad_fn
        self.k, self.ps = k, ps
        self.grad_fn = make_grad_fn(models.get(model), layout)
        self.batches = Batches(ray.get(train_ref[0]), batch_size, seed)
        x, y = self.batches.get(0)  # compile now, not on the clock
        jax.block_until_ready(self.grad_fn(np.zeros(layout.size, np.float32), x, y))

    def ready(self) -> int:
        return os.getpid()

    def run(self, incarnation: int) -> int:
        """Work until told to stop; returns the number of gradients pushed."""
        import jax
        import ray
        clock, pushed = time.perf_counter, 0
        assignment = ray.get(self.ps.start.remote(self.k, incarnation))
        while assignment is not None:
            ticket, version, (ref,) = assignment
            began = clock()
            params = ray.get(ref)  # zero-copy from the node's object store
            pulled = clock()
            x, y = self.batches.get(ticket)
            loss, grads = self.grad_fn(params, x, y)
            leaves = jax.block_until_ready(jax.tree.leaves(grads))
            grad = np.concatenate([np.asarray(leaf).reshape(-1) for leaf in leaves])
            loss = float(loss)
            computed = clock()
            del params
            assignment = ray.get(self.ps.exchange.remote(
                self.k, incarnation, ticket, grad, version, loss, pulled - began, computed - pulled))
            pushed += 1
        return pushed


# --------------------------------------------------------------- the driver side

class Mirror:
    """The driver's copy of the server's tickets, logs and store statistics.

    Stands in for ``Tickets`` in the ``Monitor``: ``refresh`` appends the
    server's new log entries to local ``WorkerLog``s; ``stop`` forwards.
    """

    def __init__(self, ps, m: int):
        self.ps = ps
        self.logs = [WorkerLog() for _ in range(m)]
        self.applied = self.applied_after_stop = self.lost = 0
        self.stop_reason: str | None = None
        self.stats: dict = {}
        self.ps_error: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.ps_error is None:
            self.ps.stop.remote(reason)

    def refresh(self) -> None:
        import ray
        seen = [[len(getattr(log, f)) for f in LOG_FIELDS] for log in self.logs]
        try:
            state = ray.get(self.ps.progress.remote(seen))
        except ray.exceptions.RayActorError as e:
            self.ps_died(e)
        for log, fresh in zip(self.logs, state["logs"]):
            for field in LOG_FIELDS:
                getattr(log, field).extend(fresh[field])
            log.dropped, log.discarded = fresh["dropped"], fresh["discarded"]
        self.applied, self.applied_after_stop = state["applied"], state["applied_after_stop"]
        self.stop_reason = self.stop_reason or state["stop_reason"]
        self.lost, self.stats = state["lost"], state["stats"]

    def ps_died(self, error: BaseException):
        self.ps_error = f"the parameter server died: {str(error).splitlines()[0]}"
        self.stop_reason = f"error: {self.ps_error}"
        raise ParameterServerDied(self.ps_error)


class RemoteStore:
    """What the ``Monitor`` needs of a store: ``read_copy`` and ``stats``."""

    def __init__(self, ps, mirror: Mirror, init: np.ndarray):
        self.ps, self.mirror, self.last = ps, mirror, init

    def read_copy(self) -> np.ndarray:
        """The server's latest version; once it is dead, the last one read."""
        import ray
        if self.mirror.ps_error is None:
            try:
                self.last = ray.get(self.ps.read.remote())
            except ray.exceptions.RayActorError as e:
                try:
                    self.mirror.ps_died(e)
                except ParameterServerDied:
                    pass
        return self.last

    def stats(self) -> dict:
        return self.mirror.stats


def run(cfg, problem, writer, schedule) -> dict:
    """Run ``cfg.algorithm`` on Ray; returns the summary it wrote."""
    import ray

    from asgd.data import Batches
    from asgd.executors.asynchronous import LiveScales

    started = connect(cfg)
    ps, workers = None, []
    try:
        m = int(cfg.threads)
        need, have = m * float(cfg.ray_worker_cpus), ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise RayBackendError(f"{m} workers x ray_worker_cpus={cfg.ray_worker_cpus:g} need {need:g} "
                                  f"CPUs; the Ray cluster has {have:g}")
        per_epoch = Batches(problem.train, cfg.batch_size, cfg.seed).per_epoch
        stop = StopConfig.of(cfg, per_epoch)
        scales = LiveScales(schedule)
        persistence = int(cfg.persistence) if cfg.algorithm == "leashed" else -1
        tag = os.path.basename(os.path.normpath(writer.run_dir))
        ps = ray.remote(ParameterServer).options(
            name=f"asgd-ps@{tag}", num_cpus=0, max_restarts=0, max_concurrency=m + 8).remote(
            problem.init_flat, cfg.algorithm, m, scales.array, persistence,
            stop.num_updates, stop.max_batches)
        train_ref = ray.put(problem.train)
        workers = [ray.remote(Worker).options(
            name=f"asgd-worker-{k}@{tag}", num_cpus=float(cfg.ray_worker_cpus),
            max_restarts=int(cfg.ray_max_restarts), max_task_retries=0).remote(
            k, ps, cfg.model, problem.layout, [train_ref],
            int(cfg.batch_size), int(cfg.seed)) for k in range(m)]
        ray.get([w.ready.remote() for w in workers], timeout=READY_TIMEOUT_S)
        problem.evaluate(problem.init_flat)  # compile eval before the clock starts
        mirror = Mirror(ps, m)
        store = RemoteStore(ps, mirror, problem.init_flat)
        restarts = [0] * m
        monitor = Monitor(cfg, problem, store, mirror, mirror.logs, writer, stop, scales,
                          extra_summary=lambda: {
                              "backend": "ray", "lost_gradients": mirror.lost,
                              "worker_restarts": sum(restarts), "ray_nodes": len(ray.nodes()),
                              **({"error": mirror.ps_error} if mirror.ps_error else {})})
        supervise(cfg, ps, workers, monitor, mirror, scales, restarts)
        return monitor.summary()
    except ray.exceptions.GetTimeoutError:
        raise RayBackendError(f"the worker actors did not start within {READY_TIMEOUT_S:g} s") from None
    finally:
        for actor in [*workers, *([ps] if ps is not None else [])]:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def supervise(cfg, ps, workers, monitor: Monitor, mirror: Mirror, scales, restarts: list[int]) -> None:
    """The driver loop: run the workers, let dead ones rejoin, poll the monitor.

    ``pending`` maps each outstanding call to (worker, what): "run" is a
    worker's loop, "ready" a probe of a restarting actor (a call made while
    Ray restarts it fails at once, so the loop starts only once it answers).
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
    incarnation = [0] * len(workers)
    monitor.start()
    pending = {w.run.remote(0): (k, "run") for k, w in enumerate(workers)}
    table = scales.array
    error: BaseException | None = None
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=RAY_POLL_S)
            for ref in done:
                k, what = pending.pop(ref)
                try:
                    ray.get(ref)
                    if what == "ready" and not mirror.stopped:
                        pending[workers[k].run.remote(incarnation[k])] = (k, "run")
                except RayActorError as e:
                    if what == "run":  # the worker died: declare it lost, then let it rejoin
                        restarts[k] += 1
                        incarnation[k] += 1
                        try:
                            ray.get(ps.worker_lost.remote(k, incarnation[k]))
                        except RayActorError as ps_error:
                            mirror.ps_died(ps_error)
                        pending[workers[k].ready.remote()] = (k, "ready")
                    elif isinstance(e, ActorUnavailableError):  # still restarting: ask again
                        pending[workers[k].ready.remote()] = (k, "ready")
                    # else Ray's restarts are exhausted: the worker is gone
                except RayTaskError as e:
                    mirror.refresh()  # a dead server shows here first
                    error = error or e
                    mirror.stop(f"error: worker {k}: {str(e).splitlines()[0]}")
            mirror.refresh()
            if scales.array is not table:
                table = scales.array
                ps.set_scales.remote(table)
            monitor.poll()
        mirror.refresh()
        if not mirror.stopped:
            mirror.stop("error: no worker left (restarts exhausted)")
    except ParameterServerDied:
        monitor.finish()
        raise
    except KeyboardInterrupt:
        mirror.stop("interrupted")
        monitor.finish()
        raise
    monitor.finish()
    if error is not None:
        raise error
