"""The compiled worker loop: the same runs as the Python-driven loop, without Python per step."""

import numpy as np
import pytest

from asgd.executors import compiled


def configure(config, algorithm, threads, **fields):
    config.algorithm, config.threads = algorithm, threads
    for key, value in fields.items():
        config[key] = value
    return config


@pytest.mark.parametrize("algorithm", ["sequential", "lock", "hogwild", "leashed"])
def test_one_worker_performs_the_python_loops_updates(config, train, algorithm):
    """m = 1: the compiled and the Python-driven loop apply the same updates, bit for bit."""
    python = train(configure(config, algorithm, 1, num_updates=300, worker="python"))
    native = train(configure(config, algorithm, 1, num_updates=300, worker="compiled"))
    assert native["eval_loss"] == python["eval_loss"]
    assert native["staleness_hist"] == python["staleness_hist"] == [300]


def test_records_grow_and_windows_move_without_changing_the_run(config, train, monkeypatch):
    """Tiny record arrays and permutation windows force many returns to Python:
    the run must be the same as with one call."""
    reference = train(configure(config, "leashed", 1, num_updates=700))
    monkeypatch.setattr(compiled, "FIRST_CAPACITY", 16)
    monkeypatch.setattr(compiled, "WINDOW_BATCHES", 50)   # 2 epochs of 44 minibatches
    summary = train(configure(config, "leashed", 1, num_updates=700))
    assert summary["eval_loss"] == reference["eval_loss"]
    assert summary["updates"] == 700 and sum(summary["staleness_hist"]) == 700


def test_two_workers_exact_updates_and_histograms(config, train):
    summary = train(configure(config, "leashed", 2, num_updates=2000, persistence=0))
    assert summary["updates"] == 2000
    attempts = summary["cas_attempts_hist"]
    assert sum(attempts) == summary["updates"] + summary["dropped_updates"]
    assert summary["cas_failures"] == summary["dropped_updates"]  # persistence 0: one attempt
    assert sum(sum(h) for h in summary["staleness_hist_per_worker"]) == 2000
    assert summary["eval_accuracy"] >= 0.9


def test_epochs_apply_every_minibatch_handed_out(config, train):
    """The epoch cap stops handing out minibatches; those in flight are applied."""
    summary = train(configure(config, "lock", 2, num_updates=0, epochs=3))
    per_epoch = 1437 // config.batch_size
    assert summary["stop_reason"] == "epochs"
    assert summary["updates"] == 3 * per_epoch and summary["discarded_after_stop"] == 0


def test_a_changing_step_size_table_reaches_the_workers(config, train):
    """TAIL-tau learns its CDF online: the table the run ended with is not the prior's."""
    summary = train(configure(config, "leashed", 2, num_updates=2000, stepsize="tail_tau",
                              stepsize_window=200))
    table = np.asarray(summary["alpha_table"])
    assert not np.allclose(table, config.learning_rate)


def test_non_finite_loss_stops_the_compiled_loop(config, train):
    summary = train(configure(config, "hogwild", 2, learning_rate=1e6, num_updates=3000))
    assert summary["stop_reason"].startswith("diverged")
    assert summary["updates"] < 3000


@pytest.mark.parametrize("algorithm", ["lock", "leashed"])
def test_more_workers_than_cpus_all_run(config, train, algorithm):
    """Oversubscribed: every worker thread takes part, as the kernel time-slices
    them. (XLA's asynchronous CPU dispatch would run each compiled loop on a
    pool thread of its own, one per CPU, and the workers beyond it would wait
    for the whole run.)"""
    import os
    threads = len(os.sched_getaffinity(0)) + 2
    summary = train(configure(config, algorithm, threads, num_updates=1500, cpus=0))
    per_worker = [sum(h) for h in summary["staleness_hist_per_worker"]]
    assert len(per_worker) == threads and min(per_worker) > 0, per_worker
    assert sum(per_worker) == 1500
