"""The driver side of a Ray run: start the actors, supervise them, monitor the run.

The local ``Monitor`` runs unchanged over a mirror of the primary shard's
tickets and logs (``Mirror``, refreshed every poll) and a store-like adapter
(``RemoteStore``) whose ``read_copy`` pulls every shard's latest version for
eval; the ``ScaleController`` observes the mirrored staleness and sends a
changed table to every shard.

Placement. The shard actors run on the driver's node (Ray's node-affinity
strategy): the run depends on the driver anyway, so losing any other node
never loses parameters. Workers are spread over the cluster's nodes (Ray's
SPREAD strategy) and report their node at every (re)start.

Workers are restartable actors (``ray_max_restarts``). When one dies the
driver declares its incarnation lost on the servers and lets the restarted
actor rejoin; a worker still waiting to restart when the run is over is
not waited for. The servers are not restartable: if one dies, the run ends
with ``ParameterServerDied`` after summary.json records what was measured.
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
from asgd.executors.ray.server import LOG_FIELDS, TICKETS_HELD, ParameterServer, shard_bounds
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
    """The driver's copy of the primary shard's tickets, logs and store statistics.

    Stands in for ``Tickets`` in the ``Monitor``: ``refresh`` appends the
    primary's new log entries to local ``WorkerLog``s; ``stop`` forwards to
    every shard.
    """

    def __init__(self, servers: list, logs: list[WorkerLog]):
        self.servers, self.logs = servers, logs
        self.applied = self.applied_after_stop = self.lost = self.taken = 0
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
            for server in self.servers:
                server.stop.remote(reason)

    def refresh(self) -> None:
        import ray
        seen = [[len(getattr(log, f)) for f in LOG_FIELDS] for log in self.logs]
        try:
            state = ray.get(self.servers[0].progress.remote(seen))
        except ray.exceptions.RayActorError as e:
            self.ps_died(e)
        for log, fresh in zip(self.logs, state["logs"]):
            for field in LOG_FIELDS:
                getattr(log, field).extend(fresh[field])
            log.dropped, log.discarded = fresh["dropped"], fresh["discarded"]
        self.applied, self.applied_after_stop = state["applied"], state["applied_after_stop"]
        self.stop_reason = self.stop_reason or state["stop_reason"]
        self.lost, self.stats, self.taken = state["lost"], state["stats"], state["taken"]

    def ps_died(self, error: BaseException):
        self.ps_error = f"the parameter server died: {str(error).splitlines()[0]}"
        self.stop_reason = f"error: {self.ps_error}"
        raise ParameterServerDied(self.ps_error)

    def shard_staleness(self) -> dict:
        """Each shard's staleness histogram and mean (in its own versions), for the summary."""
        import ray
        if self.ps_error is not None:
            return {}
        try:
            hists = ray.get([server.staleness_hist.remote() for server in self.servers])
        except ray.exceptions.RayActorError:
            return {}
        means = [sum(t * n for t, n in enumerate(h)) / sum(h) if sum(h) else None for h in hists]
        return {"staleness_hist_per_shard": hists, "staleness_mean_per_shard": means}


class RemoteStore:
    """What the ``Monitor`` needs of a store: ``read_copy`` and ``stats``."""

    def __init__(self, servers: list, mirror: Mirror, init: np.ndarray):
        self.servers, self.mirror, self.last = servers, mirror, init

    def read_copy(self) -> np.ndarray:
        """Every shard's latest version, concatenated; once a server is dead, the last one read.

        Each shard's read is consistent (hogwild: racy); shards are read
        one after another, not at one instant.
        """
        import ray
        if self.mirror.ps_error is None:
            try:
                parts = ray.get([server.read.remote() for server in self.servers])
                self.last = parts[0] if len(parts) == 1 else np.concatenate(parts)
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
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray_spec, m = spec.ray, spec.threads
    started = connect(ray_spec, m, run_spec.quiet)
    servers, workers = [], []
    try:
        need, have = m * ray_spec.worker_cpus, ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise RayBackendError(f"{m} workers x ray_worker_cpus={ray_spec.worker_cpus:g} need "
                                  f"{need:g} CPUs; the Ray cluster has {have:g}")
        d, shards = problem.layout.size, ray_spec.servers
        if shards > d:
            raise RayBackendError(f"ray_servers={shards} is more shards than the {d} parameters")
        per_epoch = Batches(problem.train, spec.batch_size, spec.seed).per_epoch
        stop = run_spec.stop
        max_batches = stop.epochs * per_epoch
        logs = [WorkerLog() for _ in range(m)]  # the mirror of the primary's
        scales = ScaleController(schedule(rule.transform), logs)
        tag = os.path.basename(os.path.normpath(writer.run_dir))
        driver_node = ray.get_runtime_context().get_node_id()
        bounds = shard_bounds(d, shards)
        names = [f"asgd-ps{s}@{tag}" if s else f"asgd-ps@{tag}" for s in range(shards)]
        concurrency = m * (ray_spec.pulls_in_flight + TICKETS_HELD) + 8
        servers = [ray.remote(ParameterServer).options(
            name=names[s], num_cpus=0, max_restarts=0, max_concurrency=concurrency,
            scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)).remote(
            problem.init_flat[bounds[s]:bounds[s + 1]], spec.algorithm, m, scales.array,
            spec.persistence, stop.num_updates, max_batches, s) for s in range(shards)]
        train_ref = ray.put(problem.train)
        # Restartable actors take no object references (actor handles included) in
        # their constructor (Ray warns that a restart could not recover them): the
        # workers find the servers by name and get the training set with each run.
        workers = [ray.remote(Worker).options(
            name=f"asgd-worker-{k}@{tag}", num_cpus=ray_spec.worker_cpus, scheduling_strategy="SPREAD",
            max_restarts=ray_spec.max_restarts, max_task_retries=0).remote(
            k, names, bounds, spec.algorithm == "sync", ray_spec.pulls_in_flight, problem.grad_factory,
            problem.train.input_shape, spec.batch_size, spec.seed) for k in range(m)]
        nodes = [[node] for _, node in ray.get([w.ready.remote() for w in workers],
                                               timeout=READY_TIMEOUT_S)]
        problem.evaluate(problem.init_flat)  # compile eval before the clock starts
        mirror = Mirror(servers, logs)
        store = RemoteStore(servers, mirror, problem.init_flat)
        restarts = [0] * m
        monitor = Monitor(run_spec, {"algorithm": spec.algorithm, "threads": m},
                          problem.evaluate, store, mirror, logs, writer, max_batches,
                          parts=[scales.summary, mirror.shard_staleness, lambda: {
                              "backend": "ray", "ray_servers": shards,
                              "ray_pulls_in_flight": ray_spec.pulls_in_flight,
                              "lost_gradients": mirror.lost, "minibatches_taken": mirror.taken,
                              "worker_restarts": sum(restarts),
                              "ray_nodes": sum(node["Alive"] for node in ray.nodes()),
                              "driver_node": driver_node, "worker_nodes": nodes,
                              **({"error": mirror.ps_error} if mirror.ps_error else {})}])
        supervise(servers, workers, monitor, mirror, scales, restarts, nodes, [train_ref])
        return monitor.summary()
    except ray.exceptions.GetTimeoutError:
        raise RayBackendError(f"the worker actors did not start within {READY_TIMEOUT_S:g} s") from None
    finally:
        for actor in [*workers, *servers]:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def supervise(servers: list, workers: list, monitor: Monitor, mirror: Mirror,
              scales: ScaleController, restarts: list[int], nodes: list[list[str]],
              train: list) -> None:
    """The driver loop: run the workers, let dead ones rejoin, poll the monitor.

    ``pending`` maps each outstanding call to (worker, what): "run" is a
    worker's loop, "ready" a probe of a restarting actor (a call made while
    Ray restarts it fails at once, so the loop starts only once it answers;
    its answer, the node it restarted on, is appended to ``nodes[k]``).
    The loop ends when no worker runs and either none is restarting or the
    run is over. ``train``: [object reference of the training set], handed
    to every run.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
    incarnation = [0] * len(workers)
    monitor.start()
    pending = {w.run.remote(0, train): (k, "run") for k, w in enumerate(workers)}
    error: BaseException | None = None

    def waiting() -> bool:
        return any(what == "run" for _, what in pending.values()) or bool(pending) and not mirror.stopped

    try:
        while waiting():
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=RAY_POLL_S)
            for ref in done:
                k, what = pending.pop(ref)
                try:
                    answer = ray.get(ref)
                    if what == "ready":
                        nodes[k].append(answer[1])
                        if not mirror.stopped:
                            pending[workers[k].run.remote(incarnation[k], train)] = (k, "run")
                except RayActorError as e:
                    if what == "run":  # the worker died: declare it lost, then let it rejoin
                        restarts[k] += 1
                        incarnation[k] += 1
                        try:
                            ray.get([s.worker_lost.remote(k, incarnation[k]) for s in servers])
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
                for server in servers:
                    server.set_scales.remote(scales.array)
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
