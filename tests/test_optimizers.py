"""Stateful optimizers under asynchrony: state versioned with the parameters."""

import threading

import jax
import numpy as np
import optax
import pytest

from asgd import optimizers
from asgd.data import Batches
from asgd.run import ConfigError, optimizer_spec, parse


def configure(config, algorithm, threads, **fields):
    config.algorithm, config.threads = algorithm, threads
    for key, value in fields.items():
        config[key] = value
    return config


def plain_optax(problem, spec, alpha, batch_size, seed, steps):
    """The reference: ordinary optax training (a jitted step) on the same minibatch sequence."""
    tx = optax.chain(optimizers.direction(spec), optax.scale_by_learning_rate(alpha))
    params = problem.layout.unravel(problem.init_flat)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    batches = Batches(problem.train, batch_size, seed)
    for i in range(steps):
        _, grads = problem.grad_fn(problem.layout.ravel(params), *batches.get(i))
        params, state = step(params, state, grads)
    return problem.evaluate(problem.layout.ravel(params))[0]


@pytest.mark.parametrize("name, alpha", [("momentum", 0.05), ("adam", 0.002)])
@pytest.mark.parametrize("algorithm", ["sequential", "sync", "lock", "hogwild", "leashed"])
def test_one_worker_is_plain_optax_training_bit_for_bit(config, train, problems, name, alpha,
                                                        algorithm):
    cfg = configure(config, algorithm, 1, optimizer=name, optimizer_learning_rate=alpha,
                    num_updates=200)
    summary = train(cfg)
    specs = parse(cfg)
    reference = plain_optax(problems(specs), specs.optimizer, alpha, cfg.batch_size, cfg.seed, 200)
    assert summary["eval_loss"] == reference
    assert summary["updates"] == 200 and summary["staleness_hist"] == [200]


def counting_direction():
    """A test optimizer: state counts its updates, the direction is all ones."""
    def init(params):
        return np.zeros((), np.float32)

    def update(grads, count, params=None):
        return jax.tree.map(lambda g: g * 0 + 1, grads), count + 1
    return optax.GradientTransformation(init, update)


def test_leashed_state_counts_every_applied_update_and_snapshots_are_consistent(config, problems):
    """m = 4 Leashed workers with a counter as optimizer state: every version read
    has parameters = -alpha * count (from zero: exact in float32), and the final
    count = applied updates."""
    from asgd import executors, metrics, rules
    from asgd.executors import compiled
    cfg = configure(config, "leashed", 4, num_updates=3000, learning_rate=1.0, batch_size=8)
    assert parse(cfg).stepsize.alpha == 1.0
    specs = parse(cfg)
    problem = problems(specs)
    versioned = optimizers.versioned(counting_direction(), problem.layout, problem.init_flat)
    d = problem.layout.size
    versioned = versioned._replace(init=np.zeros_like(versioned.init))
    rule = rules.update_rule(specs.stepsize)
    bad, reads = [], [0]
    with executors.make_store("leashed", versioned.init, "compiled") as store:
        done = threading.Event()

        def check_snapshots():
            while not done.is_set():
                x = store.read_copy()
                count = x[d]
                if not np.array_equal(x[:d], np.full(d, -count, np.float32)):
                    bad.append(float(count))
                reads[0] += 1

        checker = threading.Thread(target=check_snapshots)
        checker.start()
        with metrics.RunWriter(str(config.workdir) + "/run", cfg.to_dict()) as writer:
            summary = compiled.run(specs.executor, specs.run, problem, writer, rule, store,
                                   versioned)
        done.set()
        checker.join()
        final = store.read_copy()
    assert summary["updates"] == 3000
    assert final[d] == 3000.0 and np.array_equal(final[:d], np.full(d, -3000.0, np.float32))
    assert not bad and reads[0] > 10
    assert summary["cas_failures"] >= 0 and sum(summary["cas_attempts_hist"]) == 3000 + summary[
        "dropped_updates"]


def test_optimizer_fields_are_checked(config):
    for field, value, message in [("optimizer", "lamb", "unknown optimizer"),
                                  ("optimizer_b2", 1.0, "optimizer_b2 must be in"),
                                  ("optimizer_eps", 0.0, "optimizer_eps")]:
        cfg = config.copy_and_resolve_references()
        cfg[field] = value
        with pytest.raises(ConfigError, match=message):
            optimizer_spec(cfg)
    cfg = configure(config.copy_and_resolve_references(), "leashed", 2, optimizer="adam")
    assert parse(cfg).stepsize.alpha == optimizers.DEFAULT_LEARNING_RATES["adam"]
    cfg.optimizer_learning_rate = 0.02
    assert parse(cfg).stepsize.alpha == 0.02   # the step-size rule scales the optimizer's rate
    with pytest.raises(ConfigError, match="compiled worker loop"):
        parse(configure(config, "leashed", 2, optimizer="adam", worker="python"))


@pytest.mark.parametrize("algorithm", ["lock", "hogwild"])
def test_lock_and_hogwild_with_a_stateful_optimizer_refuse_more_workers_than_cpus(config, algorithm):
    """With more workers than XLA's CPU threads a worker's step can wait on them:
    lock would deadlock (it holds the writer lock meanwhile), hogwild would roll
    back every update since its begin with its whole-vector commit."""
    import os
    cpus = len(os.sched_getaffinity(0))
    config.optimizer, config.algorithm, config.cpus = "momentum", algorithm, 0
    config.threads = cpus + 1
    with pytest.raises(ConfigError, match="needs threads <= CPUs"):
        parse(config)
    config.threads = cpus
    parse(config)
    config.algorithm, config.threads = "leashed", cpus + 1   # recomputes on a moved version
    parse(config)
