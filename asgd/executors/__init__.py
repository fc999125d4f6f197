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


def runs_compiled(spec: ExecutorSpec, rule) -> bool:
    """Whether the run uses the compiled worker loop (``compiled``): asynchronous
    algorithms with a scale-table rule, unless ``worker = python`` is asked for."""
    return spec.worker == "compiled" and spec.algorithm != "sync" and not rule.dc_lambda


def make_store(algorithm: str, init, worker: str = "python"):
    """A fresh parameter store holding ``init`` in the algorithm's mode.

    The compiled loop needs the C store: sequential runs it on a LOCKED one
    (one worker: no contention, the same arithmetic).
    """
    mode = STORE_MODES[algorithm]
    if mode is None and worker == "compiled":
        mode = "locked"
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
    from asgd.executors import asynchronous, sync
    worker = "compiled" if runs_compiled(spec, rule) else "python"
    versioned = None
    if rule.optimizer is not None:   # the store versions the optimizer's state with x
        from asgd import optimizers
        versioned = optimizers.versioned(optimizers.direction(rule.optimizer), problem.layout,
                                         problem.init_flat)
    warm_up(spec, run_spec, problem, worker, versioned, rule.optimizer)
    if worker == "compiled":
        import asgd.executors.compiled as compiled_loop
        execute = compiled_loop.run
    else:
        execute = sync.run if spec.algorithm == "sync" else asynchronous.run
    init = problem.init_flat if versioned is None else versioned.init
    with make_store(spec.algorithm, init, worker) as store:
        if versioned is None:
            return execute(spec, run_spec, problem, writer, rule, store)
        return execute(spec, run_spec, problem, writer, rule, store, versioned)


def warm_up(spec: ExecutorSpec, run_spec: RunSpec, problem, worker: str, versioned=None,
            optimizer=None) -> None:
    """Compile the gradient (or the whole worker loop) and the evaluation before the clock starts."""
    import jax
    if worker == "compiled":
        from asgd.data import Batches
        import asgd.executors.compiled as compiled_loop
        per_epoch = Batches(problem.train, spec.batch_size, spec.seed).per_epoch
        epochs = compiled_loop.window_epochs(per_epoch, run_spec.stop.epochs * per_epoch)
        compiled_loop.compiled_loop(problem, spec.batch_size, per_epoch, epochs, versioned, optimizer)
    else:
        x, y = problem.train.x[:spec.batch_size], problem.train.y[:spec.batch_size]
        jax.block_until_ready(problem.grad_fn(problem.init_flat, x, y))
    problem.evaluate(problem.init_flat)
