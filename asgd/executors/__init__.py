"""The algorithms: who computes gradients and how they meet in the parameter store.

  sequential  one worker over a plain numpy vector; the reference
  sync        m gradients per round from the same parameters, averaged (``sync_round``)
  lock        AsyncSGD: consistent reads and updates under a mutex
  hogwild     Hogwild!: lock-free, inconsistent reads, in-place updates
  leashed     Leashed-SGD: lock-free and consistent (CAS on a version pointer)

sequential, lock, hogwild and leashed share one worker loop
(``asynchronous``) and differ only in the store: ``STORE_MODES`` is the one
table from algorithm to store mode. ``ray`` runs sync, lock, hogwild and
leashed with worker actors and a parameter-server actor instead.

``run(spec, run_spec, problem, writer, rule)`` compiles, runs and returns
the summary it wrote; it takes the typed specs of ``asgd.specs``.
"""

from __future__ import annotations

from asgd.specs import ExecutorSpec, RunSpec

# algorithm -> parameter-store mode (None: the single-threaded numpy store)
STORE_MODES = {
    "sequential": None,
    "sync": "locked",       # one update per round; LOCKED keeps evaluation copies consistent
    "lock": "locked",
    "hogwild": "hogwild",
    "leashed": "leashed",
}
ALGORITHMS = tuple(STORE_MODES)
MAX_THREADS = 256


def make_store(algorithm: str, init):
    """A fresh parameter store holding ``init`` in the algorithm's mode."""
    mode = STORE_MODES[algorithm]
    if mode is None:
        from asgd.executors.sequential import NumpyStore
        return NumpyStore(init)
    from asgd.store import ParameterStore
    return ParameterStore(init.size, mode=mode, init=init)


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule) -> dict:
    """Compile, then run ``spec.algorithm``; returns the summary it wrote."""
    if spec.ray is not None:  # worker and parameter-server actors
        from asgd.executors.ray import driver
        return driver.run(spec, run_spec, problem, writer, rule)
    warm_up(spec, problem)
    from asgd.executors import asynchronous, sync
    execute = sync.run if spec.algorithm == "sync" else asynchronous.run
    with make_store(spec.algorithm, problem.init_flat) as store:
        return execute(spec, run_spec, problem, writer, rule, store)


def warm_up(spec: ExecutorSpec, problem) -> None:
    """Compile the gradient and eval functions before the clock starts."""
    import jax
    x, y = problem.train.x[:spec.batch_size], problem.train.y[:spec.batch_size]
    jax.block_until_ready(problem.grad_fn(problem.init_flat, x, y))
    problem.evaluate(problem.init_flat)
