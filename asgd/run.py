"""One training run: the config boundary, then build, execute and write the results folder.

``parse(cfg)`` is the only place that reads a train config: it validates
every field (one ``ConfigError`` line per problem, before anything touches
the disk or starts JAX) and returns the typed ``asgd.specs.Specs`` that the
layers below take. ``train(cfg)`` = ``parse`` + ``execute``: load the data,
build the model and the step-size rule, check that the batch fits the data,
create ``<workdir>/runs/<timestamp>-<name>/`` and run the executor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil

from asgd import data, executors, metrics, models, rules
from asgd.specs import (DataSpec, ExecutorSpec, ModelSpec, OptimizerSpec, RaySpec, RunSpec, Specs,
                        StepSizeSpec, StopSpec)

FLOAT32_MAX = 3.4028234663852886e38
DEFAULT_THREADS = 2  # threads = 0: this many workers (sequential: 1)
MAX_RAY_SERVERS = 64  # ray_servers: parameter-server shards
MAX_PULLS_IN_FLIGHT = 8  # ray_pulls_in_flight
# Algorithms whose updates all have staleness 0 (sync applies one update per
# round, computed on the round's version).
STALENESS_FREE = ("sequential", "sync")


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message says which."""


def _finite(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    """A finite float >= low (> low if strict)."""
    value = float(value)
    if not math.isfinite(value) or value < low or (strict and value == low):
        relation = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {relation} {low:g}, got {value}")
    return value


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


def threads_of(cfg) -> int:
    """The worker count a config asks for: ``threads``, or for 0 the algorithm's default."""
    if isinstance(cfg.threads, bool) or int(cfg.threads) != cfg.threads:
        raise ConfigError(f"threads must be an integer, got {cfg.threads!r}")
    if cfg.threads == 0:
        return 1 if cfg.algorithm == "sequential" else DEFAULT_THREADS
    return int(cfg.threads)


def run_name(cfg) -> str:
    """The results folder's name after its timestamp: ``name``, or what the run is.

    ``<algorithm>-m<threads>-<stepsize>``, then each field a study sweeps
    that differs from ``configs/default.py`` (``-lr0.1``, ``-p0`` for
    leashed, ``-s3``), so runs that differ in them never look alike.
    """
    if cfg.name:
        return cfg.name
    default = default_config()
    name = f"{cfg.algorithm}-m{threads_of(cfg)}-{cfg.stepsize}"
    if cfg.learning_rate != default.learning_rate:
        name += f"-lr{cfg.learning_rate:g}"
    if cfg.algorithm == "leashed" and cfg.persistence != default.persistence:
        name += f"-p{cfg.persistence}"
    if cfg.seed != default.seed:
        name += f"-s{cfg.seed}"
    return name


def check_workdir(workdir: str) -> None:
    """The results can be written under ``workdir``: its nearest existing folder is writable."""
    probe = os.path.abspath(workdir or ".")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"workdir {workdir!r} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir {workdir!r} is not writable ({probe})")


def parse(cfg) -> Specs:
    """Validate a train config (``configs/default.py``'s fields) and type it.

    Needs no data and does not start JAX; every failure is a ``ConfigError``
    (or the Ray backend's ``RayBackendError``) whose first line says what to fix.
    """
    if cfg.algorithm not in executors.ALGORITHMS:
        raise ConfigError(f"unknown algorithm {cfg.algorithm!r}; choose one of {list(executors.ALGORITHMS)}")
    if cfg.model not in models.MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {sorted(models.MODELS)}")
    if cfg.dataset not in data.DATASETS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; choose one of {list(data.DATASETS)}")
    if cfg.data_dir and cfg.dataset != "digits" and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"data folder {cfg.data_dir!r} does not exist")
    if not 0.0 < cfg.eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in (0, 1), got {cfg.eval_fraction}")
    hidden = tuple(cfg.mlp_hidden)
    if cfg.model == "mlp" and not all(not isinstance(h, bool) and int(h) == h and h >= 1
                                      for h in hidden):
        raise ConfigError(f"mlp_hidden must be positive integers, got {hidden}")

    backend = cfg.backend
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; choose 'local' or 'ray'")
    threads = threads_of(cfg)
    if not 1 <= threads <= executors.MAX_THREADS:
        what = "threads (Ray worker actors)" if backend == "ray" else "threads"
        raise ConfigError(f"{what} must be in 1..{executors.MAX_THREADS} (or 0: the algorithm's "
                          f"default), got {threads}")
    if cfg.algorithm == "sequential" and threads != 1:
        raise ConfigError(f"algorithm 'sequential' runs one thread; got threads={threads}")
    if cfg.persistence < -1:
        raise ConfigError(f"persistence must be -1 (retry until success) or >= 0, got {cfg.persistence}")
    if cfg.stepsize == "dc_asgd" and cfg.algorithm not in ("sequential", "leashed"):
        raise ConfigError("stepsize 'dc_asgd' needs each update's theta_now - theta_read, which "
                          "the sequential and leashed executors provide; use one of those")
    if cfg.worker not in ("compiled", "python"):
        raise ConfigError(f"unknown worker {cfg.worker!r}; choose 'compiled' or 'python'")
    if cfg.batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")
    if not (0 < cfg.learning_rate <= FLOAT32_MAX and math.isfinite(cfg.learning_rate)):
        raise ConfigError(f"learning_rate must be positive, finite and within float32, "
                          f"got {cfg.learning_rate}")
    stop = StopSpec(_integer("num_updates", cfg.num_updates, 0), _integer("epochs", cfg.epochs, 0),
                    _finite("time_budget_s", cfg.time_budget_s), _finite("target_loss", cfg.target_loss))
    if not any(stop):
        raise ConfigError("no stop condition: set num_updates, epochs, time_budget_s or target_loss")
    try:
        targets = tuple(float(t) for t in cfg.loss_targets)
    except (TypeError, ValueError):
        raise ConfigError(f"loss_targets must be a tuple of numbers, got {cfg.loss_targets!r}") from None
    for target in targets:
        _finite("each of loss_targets", target, strict=True)
    if cfg.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError("tensorboard=True needs tensorboardX: pip install -e '.[tensorboard]'")
    ray = None
    if backend == "ray":
        ray = _ray_spec(cfg)
    stepsize = stepsize_spec(cfg, threads)
    check_workdir(cfg.workdir)
    optimizer = optimizer_spec(cfg)
    if optimizer.name != "sgd":
        # The step-size rule scales the optimizer's learning rate: alpha(tau) built from it.
        stepsize = dataclasses.replace(stepsize, alpha=optimizer.learning_rate)
        if backend == "ray" or cfg.stepsize == "dc_asgd":
            raise ConfigError(f"optimizer {optimizer.name!r} runs on the local backend with a "
                              f"step-size table rule, not with {'backend ray' if backend == 'ray' else 'dc_asgd'}")
        if cfg.worker == "python" and cfg.algorithm != "sync":
            raise ConfigError(f"optimizer {optimizer.name!r} keeps its state in the store through the "
                              f"compiled worker loop: use worker='compiled' (or algorithm 'sync')")
        # XLA may continue a worker's loop on its intra-op threads (one per CPU
        # the process has when JAX starts); with more workers than those, a
        # worker's step can wait there while the others run. lock holds the
        # store's writer lock during the step, so the workers waiting for it can
        # occupy every intra-op thread while the holder's step waits for one: a
        # deadlock. hogwild's commit writes the whole vector computed from its
        # begin, so a step that waited rolls back every update since (measured:
        # MNIST runs ending at chance accuracy at m = 4 and 8 on 2 CPUs).
        # leashed's commit fails on a moved version and recomputes: allowed.
        cpus = len(os.sched_getaffinity(0))
        pool = min(threads, cpus) if cfg.cpus == -1 else (min(cfg.cpus, cpus) if cfg.cpus > 0 else cpus)
        if cfg.algorithm in ("lock", "hogwild") and threads > pool:
            raise ConfigError(f"optimizer {optimizer.name!r} with algorithm {cfg.algorithm!r} needs "
                              f"threads <= CPUs ({threads} > {pool}): use leashed, or fewer threads")
    if ray is not None:
        from asgd.executors.ray import ALGORITHMS as RAY_ALGORITHMS, RayBackendError, address
        if cfg.algorithm not in RAY_ALGORITHMS:
            raise RayBackendError(f"backend 'ray' runs {list(RAY_ALGORITHMS)}, not {cfg.algorithm!r}")
        if cfg.stepsize == "dc_asgd":
            raise RayBackendError("stepsize 'dc_asgd' is not available with backend 'ray' "
                                  "(it needs theta_read at every CAS attempt)")
        address.check(ray.address, ray.connect_timeout_s)  # fails in seconds, before data loads
    return Specs(
        data=DataSpec(cfg.dataset, cfg.data_dir, float(cfg.eval_fraction), int(cfg.split_seed),
                      bool(cfg.tfds_download)),
        model=ModelSpec(cfg.model, (("hidden", tuple(int(h) for h in hidden)),)
                        if cfg.model == "mlp" else (), int(cfg.seed)),
        stepsize=stepsize,
        optimizer=optimizer,
        executor=ExecutorSpec(cfg.algorithm, int(threads),
                              int(cfg.persistence) if cfg.algorithm == "leashed" else -1,
                              int(cfg.batch_size), int(cfg.seed), ray, cfg.worker),
        run=RunSpec(stop, targets, _integer("eval_every", cfg.eval_every, 0),
                    _integer("log_every", cfg.log_every, 0), bool(cfg.quiet), cfg.workdir,
                    run_name(cfg), bool(cfg.tensorboard)),
        cpus=_integer("cpus", cfg.cpus, -1))


def stepsize_spec(cfg, threads: int | None = None) -> StepSizeSpec:
    """The step-size fields of a train config, typed and checked (``asgd.rules.check``).

    ``threads``: the run's worker count (default: the config's, resolved by ``threads_of``).
    Sequential and sync runs, and runs with one worker, never see staleness
    (tau is always 0): their spec says so, and every rule is then alpha.
    """
    threads = threads_of(cfg) if threads is None else threads
    staleness_free = cfg.algorithm in STALENESS_FREE or int(threads) == 1
    spec = StepSizeSpec(
        cfg.stepsize, float(cfg.learning_rate), int(threads), cfg.stepsize_model,
        float(cfg.stepsize_model_param), cfg.stepsize_target, float(cfg.stepsize_target_param),
        float(cfg.stepsize_cap), float(cfg.tail_amplitude), int(cfg.stepsize_window),
        float(cfg.dc_lambda), staleness_free)
    try:
        rules.check(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return spec


# Where each rule needed more updates than a constant step in the evidence of
# docs/mindthestep.md (injected-staleness sweep and MNIST runs); alpha* is
# sequential SGD's best alpha on the same problem. train.py prints the line
# whenever a rule is picked for a run with staleness: the regime depends on
# alpha / alpha*, which a run cannot know.
WORSE_THAN_CONSTANT = {
    "mindthestep": "it was the same as or worse than a constant step in docs/mindthestep.md's "
                   "evidence with alpha >= alpha* (sequential SGD's best alpha), diverging wherever "
                   "the constant step did, and better only with alpha <= alpha*/2 where a constant "
                   "step was near its stale-stability limit",
    "inverse": "it needed 1.3-10x the updates of a constant step (or never got there) whenever "
               "alpha was <= alpha*/2 (sequential SGD's best alpha): it lowers the average step; "
               "it wins when alpha is too large for the staleness (docs/mindthestep.md)",
    "fleet": "it needed 1.3-7x the updates of a constant step (or never got there) whenever "
             "alpha was <= alpha*/2 (sequential SGD's best alpha): it lowers the average step; "
             "it wins when alpha is too large for the staleness (docs/mindthestep.md)",
    "tail_tau": "it needed about 1.1x (up to 1.3x) the updates of a constant step with "
                "alpha <= alpha*/2 (sequential SGD's best alpha) in docs/mindthestep.md's evidence",
}


def stepsize_warning(spec: StepSizeSpec) -> str | None:
    """One line for train.py when the run's rule was worse than a constant step in a
    regime of docs/mindthestep.md; None without staleness (every rule is alpha then)."""
    if spec.staleness_free or spec.name not in WORSE_THAN_CONSTANT:
        return None
    return f"stepsize={spec.name}: {WORSE_THAN_CONSTANT[spec.name]}"


def optimizer_spec(cfg) -> OptimizerSpec:
    """The optimizer fields of a train config, typed and checked (``asgd.optimizers.check``)."""
    from asgd import optimizers
    rate = float(cfg.optimizer_learning_rate)
    if rate == 0:
        rate = optimizers.DEFAULT_LEARNING_RATES.get(cfg.optimizer, 0.0)
    spec = OptimizerSpec(cfg.optimizer, rate, float(cfg.optimizer_momentum),
                         float(cfg.optimizer_b1), float(cfg.optimizer_b2), float(cfg.optimizer_eps),
                         float(cfg.optimizer_decay), float(cfg.optimizer_weight_decay))
    try:
        optimizers.check(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return spec


def default_config():
    """``configs/default.py``'s config: every train field with its default."""
    from asgd.configs import default
    return default.get_config()


def _ray_spec(cfg) -> RaySpec:
    if not cfg.ray_connect_timeout_s > 0:
        raise ConfigError(f"ray_connect_timeout_s must be positive, got {cfg.ray_connect_timeout_s}")
    if not cfg.ray_worker_cpus >= 0:
        raise ConfigError(f"ray_worker_cpus must be >= 0, got {cfg.ray_worker_cpus}")
    if cfg.ray_max_restarts < -1:
        raise ConfigError(f"ray_max_restarts must be -1 (unlimited) or >= 0, got {cfg.ray_max_restarts}")
    servers = _integer("ray_servers", cfg.ray_servers, 1)
    if servers > MAX_RAY_SERVERS:
        raise ConfigError(f"ray_servers must be in 1..{MAX_RAY_SERVERS}, got {servers}")
    pulls = _integer("ray_pulls_in_flight", cfg.ray_pulls_in_flight, 1)
    if pulls > MAX_PULLS_IN_FLIGHT:
        raise ConfigError(f"ray_pulls_in_flight must be in 1..{MAX_PULLS_IN_FLIGHT}, got {pulls}")
    return RaySpec(cfg.ray_address, float(cfg.ray_connect_timeout_s), float(cfg.ray_worker_cpus),
                   int(cfg.ray_max_restarts), servers, pulls)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; says what it left behind.

    ``run_dir``: its results folder, or None if none is left (interrupted
    before the run started: a folder ``execute`` made for it is removed);
    ``summary_written``: whether summary.json records what was measured.
    """

    def __init__(self, run_dir: str | None, summary_written: bool):
        super().__init__(run_dir)
        self.run_dir, self.summary_written = run_dir, summary_written


def execute(specs: Specs, config: dict, run_dir: str | None = None, problem=None) -> dict:
    """Run validated specs; ``config`` is what config.json records.

    ``problem`` (from ``asgd.problem.make_problem`` of the same data and model
    specs) skips loading and compiling again. Returns summary.json's content
    plus ``run_dir``. Bad data raises before the results folder is created;
    Ctrl-C raises ``Interrupted``.
    """
    from asgd.problem import make_problem
    made = None
    try:
        problem = problem or make_problem(specs.data, specs.model)
        examples = len(problem.train.y)
        if specs.executor.batch_size > examples:
            raise ConfigError(f"batch_size {specs.executor.batch_size} is larger than the training "
                              f"set ({examples} examples)")
        rule = rules.update_rule(specs.stepsize, specs.optimizer)
        if run_dir is None:
            try:
                run_dir = made = metrics.new_run_dir(specs.run.workdir, specs.run.name)
            except OSError as e:
                raise ConfigError(f"cannot create the results folder under workdir "
                                  f"{specs.run.workdir!r}: {e.strerror or e}") from None
        with metrics.RunWriter(run_dir, config, problem.layout, specs.run.tensorboard) as writer:
            summary = executors.run(specs.executor, specs.run, problem, writer, rule)
    except KeyboardInterrupt:
        written = run_dir is not None and os.path.exists(os.path.join(run_dir, "summary.json"))
        if made is not None and not written:  # nothing measured yet: leave nothing behind
            shutil.rmtree(made, ignore_errors=True)
            run_dir = None
        raise Interrupted(run_dir and os.path.abspath(run_dir), written) from None
    summary["run_dir"] = os.path.abspath(run_dir)
    return summary


def train(cfg, run_dir: str | None = None, problem=None) -> dict:
    """Train as the config says; returns summary.json's content plus ``run_dir``."""
    return execute(parse(cfg), cfg.to_dict(), run_dir, problem)


def pin_process(specs: Specs) -> None:
    """Apply ``cpus`` to this process (the run's own), before JAX starts.

    With the Ray backend the workers are other processes: only an explicit
    count pins the driver.
    """
    if specs.executor.ray is None or specs.cpus > 0:
        restrict_cpus(specs.cpus, specs.executor.threads)


def restrict_cpus(count: int, threads: int = 1) -> None:
    """Pin the process to ``count`` CPUs before JAX starts its thread pools.

    -1: one per worker, min(threads, available); 0: leave the process as it is.
    XLA runs a computation on its own intra-op pool, sized from the CPUs the
    process may use when JAX starts: with as many CPUs as workers, each of the
    m concurrent gradients gets a core, while a lone gradient on a wider pool
    is split over the cores, which is slower for small models (XLA flags did
    not change that; the affinity does).
    """
    allowed = sorted(os.sched_getaffinity(0))
    if count == -1:
        count = min(threads, len(allowed))
    if count:
        if count > len(allowed):
            raise ConfigError(f"cpus={count} but only {len(allowed)} CPUs are available")
        os.sched_setaffinity(0, allowed[:count])


def problem_of(cfg):
    """The ``asgd.problem.Problem`` a (validated) train config describes."""
    from asgd.problem import make_problem
    specs = parse(cfg)
    return make_problem(specs.data, specs.model)
