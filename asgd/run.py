"""One training run from a config: build the problem, run, write the folder."""

from __future__ import annotations

import os

from asgd import data, executors, metrics, models, stepsize
from asgd.problem import make_problem


class ConfigError(ValueError):
    """A config value is out of range or unknown; the message says which."""


def validate(cfg) -> None:
    """Checks that need no data or JAX; each failure is one clear line."""
    if cfg.algorithm not in executors.ALGORITHMS:
        raise ConfigError(f"unknown algorithm {cfg.algorithm!r}; choose one of {sorted(executors.ALGORITHMS)}")
    if cfg.model not in models.MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {sorted(models.MODELS)}")
    if cfg.dataset not in data.DATASETS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; choose one of {list(data.DATASETS)}")
    if cfg.data_dir and cfg.dataset != "digits" and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"data folder {cfg.data_dir!r} does not exist")
    if not 1 <= cfg.threads <= executors.MAX_THREADS:
        what = "threads (Ray worker actors)" if cfg.get("backend") == "ray" else "threads"
        raise ConfigError(f"{what} must be in 1..{executors.MAX_THREADS}, got {cfg.threads}")
    if cfg.algorithm == "sequential" and cfg.threads != 1:
        raise ConfigError(f"algorithm 'sequential' runs one thread; got threads={cfg.threads}")
    if cfg.persistence < -1:
        raise ConfigError(f"persistence must be -1 (retry until success) or >= 0, got {cfg.persistence}")
    if cfg.stepsize == "dc_asgd" and cfg.algorithm not in ("sequential", "leashed"):
        raise ConfigError("stepsize 'dc_asgd' needs each update's theta_now - theta_read, which "
                          "the sequential and leashed executors provide; use one of those")
    if cfg.batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")
    if not cfg.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive, got {cfg.learning_rate}")
    if not (cfg.num_updates > 0 or cfg.epochs > 0 or cfg.time_budget_s > 0 or cfg.target_loss > 0):
        raise ConfigError("no stop condition: set num_updates, epochs, time_budget_s or target_loss")
    for field in ("num_updates", "epochs", "time_budget_s", "target_loss", "eval_every", "log_every",
                  "cpus"):
        if cfg[field] < 0:
            raise ConfigError(f"{field} must be >= 0, got {cfg[field]}")
    backend = cfg.get("backend", "local")
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; choose 'local' or 'ray'")
    if backend == "ray":  # Ray installed, address reachable: fails in seconds, before data loads
        from asgd.executors import ray_backend
        ray_backend.check(cfg)


def run_name(cfg) -> str:
    return cfg.name or f"{cfg.algorithm}-m{cfg.threads}"


def train(cfg, run_dir: str | None = None) -> dict:
    """Train as ``cfg`` says; returns summary.json's content plus ``run_dir``."""
    validate(cfg)
    problem = make_problem(cfg)
    schedule = stepsize.schedule(stepsize.from_config(cfg))
    run_dir = run_dir or metrics.new_run_dir(cfg.workdir, run_name(cfg))
    with metrics.RunWriter(run_dir, cfg.to_dict()) as writer:
        summary = executors.run(cfg, problem, writer, schedule)
    summary["run_dir"] = os.path.abspath(run_dir)
    return summary
