"""The parallel executors on digits: accuracy, staleness, stopping, metrics."""

import json
import os

import jax
import numpy as np
import pytest

from asgd import metrics
from asgd.data import Batches
from asgd.run import ConfigError, parse

ALGORITHMS = ("sequential", "sync", "lock", "hogwild", "leashed")


def configure(config, algorithm, threads, **fields):
    config.algorithm = algorithm
    config.threads = 1 if algorithm == "sequential" else threads
    for key, value in fields.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def sequential_300(tmp_path_factory, problems):
    """The reference: sequential SGD, 300 updates of the default config, and its problem."""
    from asgd.run import default_config, execute
    cfg = configure(default_config(), "sequential", 1, num_updates=300, quiet=True,
                    workdir=str(tmp_path_factory.mktemp("reference")))
    specs = parse(cfg)
    return execute(specs, cfg.to_dict(), None, problems(specs)), problems(specs), specs


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_digits_to_90_percent(config, train, algorithm):
    summary = train(configure(config, algorithm, 2))
    assert summary["eval_accuracy"] >= 0.90
    # Exactly the requested number of updates, and the histograms add up.
    assert summary["updates"] == config.num_updates
    assert sum(summary["staleness_hist"]) == summary["updates"]
    per_worker = summary["staleness_hist_per_worker"]
    assert len(per_worker) == config.threads
    assert sum(sum(h) for h in per_worker) == summary["updates"]
    attempts = summary["cas_attempts_hist"]
    assert sum(attempts) == summary["updates"] + summary["dropped_updates"]
    assert sum(k * n for k, n in enumerate(attempts)) == (
        summary["updates"] + summary["dropped_updates"] + summary["cas_failures"])


def test_sequential_is_plain_sgd_on_the_minibatch_sequence(sequential_300):
    """The reference itself against a hand-written float32 SGD loop: bit for bit."""
    summary, problem, specs = sequential_300
    batches = Batches(problem.train, specs.executor.batch_size, specs.executor.seed)
    x = problem.init_flat.copy()
    step = np.float32(-specs.stepsize.alpha)
    for i in range(300):
        _, grads = problem.grad_fn(x, *batches.get(i))
        g = np.concatenate([np.asarray(leaf).reshape(-1) for leaf in jax.tree.leaves(grads)])
        x = x + step * g
    assert problem.evaluate(x)[0] == summary["eval_loss"]


@pytest.mark.parametrize("algorithm", ALGORITHMS[1:])
def test_one_thread_means_zero_staleness_and_the_same_updates(config, train, sequential_300,
                                                              algorithm):
    reference = sequential_300[0]
    summary = train(configure(config, algorithm, 1, num_updates=300))
    assert summary["staleness_hist"] == [300]
    assert summary["cas_failures"] == 0 and summary["dropped_updates"] == 0
    # Same seed, same minibatches, same arithmetic: the same parameters.
    assert summary["eval_loss"] == reference["eval_loss"]


def test_dc_asgd_with_one_thread_is_plain_sgd(config, train, sequential_300):
    """tau = 0 means theta_now = theta_read: the compensation term vanishes exactly."""
    summary = train(configure(config, "leashed", 1, stepsize="dc_asgd", dc_lambda=5.0,
                              num_updates=300))
    assert summary["eval_loss"] == sequential_300[0]["eval_loss"]


def test_two_threads_see_staleness(config, train):
    summary = train(configure(config, "lock", 2, num_updates=1500))
    assert summary["staleness_max"] >= 1
    assert len(summary["staleness_hist_per_worker"]) == 2


def test_leashed_with_persistence_0_and_8_threads_drops_and_counts(config, train):
    # A wider MLP makes each update long enough that 8 threads on few cores collide.
    summary = train(configure(config, "leashed", 8, persistence=0, num_updates=1500,
                              batch_size=8, mlp_hidden=(256, 256)))
    assert summary["dropped_updates"] > 0
    assert summary["cas_failures"] == summary["dropped_updates"]  # one attempt each
    assert summary["cas_attempts_hist"] == [0, summary["updates"] + summary["dropped_updates"]]
    assert summary["updates"] == 1500  # dropped updates free their ticket for another
    assert summary["peak_live_buffers"] <= 2 * 8 + 1


def test_leashed_memory_is_claimed_only_when_needed(config, train):
    summary = train(configure(config, "leashed", 2, num_updates=500))
    assert 1 <= summary["peak_live_buffers"] <= summary["buffers_allocated"] <= 2 * 2 + 1
    rows = metrics.read_jsonl(os.path.join(summary["run_dir"], "metrics.jsonl"))
    assert all(1 <= r["live_buffers"] <= 5 for r in rows)


def test_sync_is_deterministic(config, train):
    first = train(configure(config, "sync", 2, num_updates=200))
    second = train(configure(config, "sync", 2, num_updates=200))
    assert first["eval_loss"] == second["eval_loss"]
    assert first["updates"] == second["updates"] == 200
    assert first["staleness_hist"] == [200]


def test_time_budget_writes_complete_results(config, train):
    summary = train(configure(config, "hogwild", 2, num_updates=0, time_budget_s=1.0))
    assert summary["stop_reason"] == "time_budget"
    assert summary["applied_after_stop"] <= 2
    run_dir = summary["run_dir"]
    with open(os.path.join(run_dir, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk["updates"] == summary["updates"] > 0
    assert sum(on_disk["staleness_hist"]) == on_disk["updates"]
    rows = metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert rows[-1]["updates"] == on_disk["updates"] and "eval_accuracy" in rows[-1]
    times = metrics.read_step_times(run_dir, 2)
    assert all(times[field] is not None for field in metrics.STEP_FIELDS)
    assert sum(len(c) for c in times["compute_s"]) >= on_disk["updates"]


@pytest.mark.parametrize("algorithm, threads", [("leashed", 2), ("hogwild", 2), ("sync", 2)])
def test_an_epoch_stop_applies_every_minibatch_handed_out(config, train, algorithm, threads):
    summary = train(configure(config, algorithm, threads, num_updates=0, epochs=2))
    per_epoch = 1438 // config.batch_size
    assert summary["stop_reason"] == "epochs"
    assert summary["discarded_after_stop"] == 0 and summary["applied_after_stop"] == 0
    # every minibatch of the two epochs went into exactly one update (sync: m per round)
    assert summary["updates"] == (2 * per_epoch if algorithm != "sync" else 2 * per_epoch // threads)


def test_tickets_at_the_epoch_cap_let_the_tickets_in_flight_finish():
    from asgd.executors.base import Tickets
    tickets = Tickets(num_updates=0, max_batches=3)
    assert [tickets.take(), tickets.take(), tickets.take()] == [0, 1, 2]
    assert tickets.take() is None and not tickets.stopped  # two more still in flight
    tickets.finish(True)
    tickets.finish(False)  # dropped (leashed persistence): used, not applied
    assert tickets.take() is None and not tickets.stopped
    tickets.finish(True)
    assert tickets.take() is None and tickets.stop_reason == "epochs"
    state = tickets.state()
    assert (state.applied, state.in_flight, state.next_batch) == (2, 0, 3)


def test_a_gradient_that_finds_the_run_stopped_is_discarded_unrecorded():
    from asgd.executors.base import Tickets, WorkerLog
    tickets, log = Tickets(), WorkerLog()
    tickets.take()
    tickets.stop("time_budget")
    assert not log.gradient(tickets, 5.0, 0.1, 0.2)
    assert log.loss == [] and log.compute_s == [0.2] and log.discarded == 1
    assert tickets.state().in_flight == 0 and tickets.applied == 0


def test_a_target_loss_stop_reports_the_loss_that_reached_the_target(tmp_path):
    """time_to_target and final_train_loss from one series, without discarded gradients."""
    from asgd.executors.base import Monitor, Tickets, WorkerLog
    from asgd.executors.sequential import NumpyStore
    from asgd.specs import RunSpec, StopSpec
    from asgd.store import UpdateResult
    spec = RunSpec(StopSpec(0, 0, 0.0, 0.5), (1.0, 0.5), eval_every=1000, log_every=1, quiet=True,
                   workdir=str(tmp_path), name="t")
    tickets, log = Tickets(), WorkerLog()
    with metrics.RunWriter(str(tmp_path / "run"), {}) as writer:
        monitor = Monitor(spec, {"algorithm": "sequential", "threads": 1}, lambda x: (0.0, 1.0),
                          NumpyStore(np.zeros(4, np.float32)), tickets, [log], writer)
        monitor.start()
        for loss in (0.9, 0.4):  # the second event reaches the target
            tickets.take()
            assert log.gradient(tickets, loss, 0.0, 1e-3)
            log.update(tickets, UpdateResult(True, 1, 0, tickets.applied + 1), 0.0)
            if loss < 0.5:
                tickets.take()  # another gradient in flight when the target is reached
            monitor.poll()
        assert tickets.stop_reason == "target_loss"
        assert not log.gradient(tickets, 2.0, 0.0, 1e-3)  # finished after the stop
        monitor.finish()
    summary = metrics.read_json(str(tmp_path / "run" / "summary.json"))
    rows = metrics.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    logged = [(r["wall_time_s"], r["train_loss"]) for r in rows if "train_loss" in r]
    assert [loss for _, loss in logged] == [0.9, 0.4]
    assert summary["final_train_loss"] == 0.4
    assert summary["time_to_target"] == {"1": logged[0][0], "0.5": logged[1][0]}
    assert summary["discarded_after_stop"] == 1 and summary["updates"] == 2


def test_divergence_stops_with_a_clear_reason_and_keeps_results(config, train):
    summary = train(configure(config, "leashed", 2, learning_rate=1e6, num_updates=2000))
    assert summary["stop_reason"].startswith("diverged")
    assert summary["updates"] < 2000
    assert os.path.exists(os.path.join(summary["run_dir"], "summary.json"))


def test_dc_asgd_runs_on_leashed(config, train):
    summary = train(configure(config, "leashed", 2, stepsize="dc_asgd", num_updates=1500))
    assert summary["eval_accuracy"] >= 0.90


def test_leashed_with_mindthestep_trains(config, train):
    summary = train(configure(config, "leashed", 2, stepsize="mindthestep", num_updates=3000))
    assert summary["eval_accuracy"] >= 0.90
    alpha = summary["alpha_table"]
    assert alpha[0] != alpha[3]  # the table depends on tau, and it is recorded


@pytest.mark.parametrize("fields, message", [
    ({"threads": -1}, "threads must be in"),
    ({"threads": 10_000}, "threads must be in"),
    ({"persistence": -2}, "persistence must be"),
    ({"batch_size": 100_000}, "larger than the training set"),
    ({"algorithm": "lock", "stepsize": "dc_asgd"}, "dc_asgd"),
])
def test_bad_parallel_settings_are_clear_errors_before_any_folder(config, train, tmp_path, fields,
                                                                  message):
    for key, value in fields.items():
        config[key] = value
    with pytest.raises(ConfigError, match=message):
        train(config)
    assert not (tmp_path / "runs").exists()
