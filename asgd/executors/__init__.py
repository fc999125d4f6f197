"""The algorithms, selected by ``config.algorithm``.

Each module exposes ``run(cfg, problem, writer, schedule) -> summary``:
  sequential  one thread, plain numpy; the reference
"""

from __future__ import annotations

import numpy as np

from asgd.executors import sequential

ALGORITHMS = {
    "sequential": sequential.run,
}


def run(cfg, problem, writer, schedule) -> dict:
    """Compile, then run ``cfg.algorithm``; returns the summary it wrote."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    warm_up(cfg, problem)
    return ALGORITHMS[cfg.algorithm](cfg, problem, writer, schedule)


def warm_up(cfg, problem) -> None:
    """Compile the gradient and eval functions before the clock starts."""
    import jax
    x, y = problem.train.x[:cfg.batch_size], problem.train.y[:cfg.batch_size]
    jax.block_until_ready(problem.grad_fn(problem.init_flat, x, y))
    problem.evaluate(problem.init_flat)
