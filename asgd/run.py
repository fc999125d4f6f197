"""One training run from a config: build the problem, run, write the folder."""

from __future__ import annotations

import os

from asgd import executors, metrics, stepsize
from asgd.problem import make_problem


def run_name(cfg) -> str:
    return cfg.name or f"{cfg.algorithm}-m{cfg.threads}"


def train(cfg, run_dir: str | None = None) -> dict:
    """Train as ``cfg`` says; returns summary.json's content plus ``run_dir``."""
    problem = make_problem(cfg)
    schedule = stepsize.schedule(stepsize.from_config(cfg))
    run_dir = run_dir or metrics.new_run_dir(cfg.workdir, run_name(cfg))
    with metrics.RunWriter(run_dir, cfg.to_dict()) as writer:
        summary = executors.run(cfg, problem, writer, schedule)
    summary["run_dir"] = os.path.abspath(run_dir)
    return summary
