"""Asynchronous SGD over the C parameter store: lock, hogwild and leashed.

The three algorithms run the same worker loop (``asynchronous.worker_loop``)
and differ only in the store's synchronisation mode:
  lock     LOCKED: consistent snapshots copied under a mutex, updates
           serialised by it (AsyncSGD).
  hogwild  HOGWILD: one shared vector, read and updated in place without
           synchronisation; reads may mix versions (Hogwild!).
  leashed  LEASHED: lock-free and consistent; an update publishes a new
           version by CAS on the latest pointer, retrying at most
           ``persistence`` times (Leashed-SGD).
"""

from __future__ import annotations

from asgd.executors.asynchronous import run_async

MODES = {"lock": "locked", "hogwild": "hogwild", "leashed": "leashed"}


def make_runner(algorithm: str):
    mode = MODES[algorithm]

    def run(cfg, problem, writer, schedule) -> dict:
        from asgd.store import ParameterStore
        persistence = int(cfg.persistence) if algorithm == "leashed" else -1
        dc_lambda = float(cfg.dc_lambda) if cfg.stepsize == "dc_asgd" else 0.0
        with ParameterStore(problem.layout.size, mode=mode, init=problem.init_flat) as store:
            return run_async(cfg, problem, writer, store, schedule, int(cfg.threads), persistence,
                             dc_lambda)

    run.__doc__ = f"{algorithm}: asynchronous SGD on a {mode.upper()} store."
    return run
