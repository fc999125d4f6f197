"""The driver side of a Ray run: start the actors, supervise them, monitor the run.

The local ``Monitor`` runs unchanged over a mirror of the server's tickets
and logs (``Mirror``, refreshed every poll) and a store-like adapter
(``RemoteStore``) whose ``read_copy`` pulls the latest version for eval; the
``ScaleController`` observes the mirrored staleness and pushes a changed
table to the server.

Workers are restartable actors (``ray_max_restarts``). When one dies the
driver declares its incarnation lost on the server and lets the restarted
actor rejoin. The server is not restartable: if it dies, the run ends with
``ParameterServerDied`` after summary.json records what was measured.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import numpy as np

from asgd.data import Batches
from asgd.executors.base import POLL_S, Monitor, WorkerLog
from asgd.executors.ray import ParameterServerDied, RayBackendError
from asgd.executors.ray.server import LOG_FIELDS, ParameterServer
from asgd.executors.ray.worker import Worker
from asgd.executors.scales import ScaleController, schedule
from asgd.specs import ExecutorSpec, RaySpec, RunSpec

READY_TIMEOUT_S = 600.0  # worker actors start, load JAX and compile before this
RAY_POLL_S = 5 * POLL_S  # the driver's poll: one progress call to the server each


class _QuietTokenAuthDefault(logging.Filter):
    """Drops Ray's notice that a new local cluster uses token authentication (its
    secure default): nothing to act on. Its other authentication warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def connect(ray_spec: RaySpec, threads: int, quiet: bool) -> bool:
    """Join or start Ray; True if this call started it (and should shut it down)."""
    import ray
    if ray.is_initialized():
        return False
    auth_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _QuietTokenAuthDefault) for f in auth_logger.filters):
        auth_logger.addFilter(_QuietTokenAuthDefault())
    options = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
    try:
        with warnings.catch_warnings():
            # JAX warns at every fork; Ray starts its processes with fork + exec
            # (subprocess), which is safe, so the warning is noise here.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            if ray_spec.address:
                ray.init(address=ray_spec.address, **options)
            else:
                cpus = max(os.cpu_count() or 1, math.ceil(threads * ray_spec.worker_cpus))
                # "local": a new local Ray even if a cluster from `ray start` runs here
                ray.init(address="local", num_cpus=cpus, **options)
    except (ConnectionError, RuntimeError) as e:
        raise RayBackendError(f"cannot start or join Ray at ray_address={ray_spec.address!r}: "
                              f"{str(e).splitlines()[0]}") from None
    return True


class Mirror:
    """The driver's copy of the server's tickets, logs and store statistics.

    Stands in for ``Tickets`` in the ``Monitor``: ``refresh`` appends the
    server's new log entries to local ``WorkerLog``s; ``stop`` forwards.
    """

    def __init__(self, ps, logs: list[WorkerLog]):
        self.ps, self.logs = ps, logs
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


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule) -> dict:
    """Run ``spec.algorithm`` on Ray; returns the summary it wrote."""
    import ray

    ray_spec, m = spec.ray, spec.threads
    started = connect(ray_spec, m, run_spec.quiet)
    ps, workers = None, []
    try:
        need, have = m * ray_spec.worker_cpus, ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise RayBackendError(f"{m} workers x ray_worker_cpus={ray_spec.worker_cpus:g} need "
                                  f"{need:g} CPUs; the Ray cluster has {have:g}")
        per_epoch = Batches(problem.train, spec.batch_size, spec.seed).per_epoch
        stop = run_spec.stop
        max_batches = stop.epochs * per_epoch
        logs = [WorkerLog() for _ in range(m)]  # the mirror of the server's
        scales = ScaleController(schedule(rule.transform), logs)
        tag = os.path.basename(os.path.normpath(writer.run_dir))
        ps_name = f"asgd-ps@{tag}"
        ps = ray.remote(ParameterServer).options(
            name=ps_name, num_cpus=0, max_restarts=0, max_concurrency=m + 8).remote(
            problem.init_flat, spec.algorithm, m, scales.array, spec.persistence,
            stop.num_updates, max_batches)
        train_ref = ray.put(problem.train)
        # Restartable actors take no object references (actor handles included) in
        # their constructor (Ray warns that a restart could not recover them): the
        # workers find the server by name and get the training set with each run.
        workers = [ray.remote(Worker).options(
            name=f"asgd-worker-{k}@{tag}", num_cpus=ray_spec.worker_cpus,
            max_restarts=ray_spec.max_restarts, max_task_retries=0).remote(
            k, ps_name, problem.grad_factory, problem.layout.size, problem.train.input_shape,
            spec.batch_size, spec.seed) for k in range(m)]
        ray.get([w.ready.remote() for w in workers], timeout=READY_TIMEOUT_S)
        problem.evaluate(problem.init_flat)  # compile eval before the clock starts
        mirror = Mirror(ps, logs)
        store = RemoteStore(ps, mirror, problem.init_flat)
        restarts = [0] * m
        monitor = Monitor(run_spec, {"algorithm": spec.algorithm, "threads": m},
                          problem.evaluate, store, mirror, logs, writer, max_batches,
                          parts=[scales.summary, lambda: {
                              "backend": "ray", "lost_gradients": mirror.lost,
                              "worker_restarts": sum(restarts), "ray_nodes": len(ray.nodes()),
                              **({"error": mirror.ps_error} if mirror.ps_error else {})}])
        supervise(ps, workers, monitor, mirror, scales, restarts, [train_ref])
        return monitor.summary()
    except ray.exceptions.GetTimeoutError:
        raise RayBackendError(f"the worker actors did not start within {READY_TIMEOUT_S:g} s") from None
    finally:
        for actor in [*workers, *([ps] if ps is not None else [])]:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def supervise(ps, workers, monitor: Monitor, mirror: Mirror, scales: ScaleController,
              restarts: list[int], train: list) -> None:
    """The driver loop: run the workers, let dead ones rejoin, poll the monitor.

    ``pending`` maps each outstanding call to (worker, what): "run" is a
    worker's loop, "ready" a probe of a restarting actor (a call made while
    Ray restarts it fails at once, so the loop starts only once it answers).
    ``train``: [object reference of the training set], handed to every run.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
    incarnation = [0] * len(workers)
    monitor.start()
    pending = {w.run.remote(0, train): (k, "run") for k, w in enumerate(workers)}
    error: BaseException | None = None
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=RAY_POLL_S)
            for ref in done:
                k, what = pending.pop(ref)
                try:
                    ray.get(ref)
                    if what == "ready" and not mirror.stopped:
                        pending[workers[k].run.remote(incarnation[k], train)] = (k, "run")
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
            if scales.poll():
                ps.set_scales.remote(scales.array)
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
