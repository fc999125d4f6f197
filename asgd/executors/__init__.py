"""The algorithms, selected by ``config.algorithm``.

Each exposes ``run(cfg, problem, writer, schedule) -> summary``:
  sequential  one thread, plain numpy; the reference
  sync        m gradients per round from the same parameters, averaged
  lock        AsyncSGD: consistent reads and updates under a mutex
  hogwild     Hogwild!: lock-free, inconsistent reads, in-place updates
  leashed     Leashed-SGD: lock-free and consistent (CAS on a version pointer)

``config.backend = "ray"`` runs sync, lock, hogwild and leashed with Ray
worker actors and a parameter-server actor instead (``ray_backend``).
"""

from __future__ import annotations


from asgd.executors import sequential, sync
from asgd.executors.shared_memory import make_runner

ALGORITHMS = {
    "sequential": sequential.run,
    "sync": sync.run,
    "lock": make_runner("lock"),
    "hogwild": make_runner("hogwild"),
    "leashed": make_runner("leashed"),
}
MAX_THREADS = 256


def run(cfg, problem, writer, schedule) -> dict:
    """Compile, then run ``cfg.algorithm``; returns the summary it wrote."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    if cfg.get("backend", "local") == "ray":  # worker and parameter-server actors
        from asgd.executors import ray_backend
        return ray_backend.run(cfg, problem, writer, schedule)
    warm_up(cfg, problem)
    return ALGORITHMS[cfg.algorithm](cfg, problem, writer, schedule)


def warm_up(cfg, problem) -> None:
    """Compile the gradient and eval functions before the clock starts."""
    import jax
    x, y = problem.train.x[:cfg.batch_size], problem.train.y[:cfg.batch_size]
    jax.block_until_ready(problem.grad_fn(problem.init_flat, x, y))
    problem.evaluate(problem.init_flat)
