"""A run folder as a researcher uses it: environment, saved model, run name, TensorBoard, progress."""

import glob
import os
import struct

import jax
import numpy as np
import pytest

from asgd import metrics, models
from asgd.executors.base import Monitor, Tickets, WorkerLog
from asgd.run import parse, run_name
from asgd.specs import RunSpec, StopSpec


def test_saved_params_load_as_the_model_pytree_and_reproduce_the_eval_accuracy(config, train, problems):
    config.algorithm, config.threads, config.num_updates = "leashed", 2, 300
    summary = train(config)
    problem = problems(parse(config))
    params = metrics.load_params(summary["run_dir"])
    init = models.mlp_init(jax.random.key(0), problem.train.input_shape, problem.train.num_classes)
    assert jax.tree.structure(params) == jax.tree.structure(init)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init)
    # the pytree through the model's own apply, on the eval split
    logits = models.mlp_apply(params, problem.eval.x)
    accuracy = float(np.mean(np.argmax(logits, -1) == problem.eval.y))
    assert accuracy == pytest.approx(summary["eval_accuracy"], abs=1e-6)
    # the flat vector through the run's evaluation: the same loss and accuracy
    flat = metrics.load_params(summary["run_dir"], flat=True)
    np.testing.assert_array_equal(problem.layout.ravel(params), flat)
    assert problem.evaluate(flat) == pytest.approx((summary["eval_loss"], summary["eval_accuracy"]))
    assert not np.array_equal(flat, problem.init_flat)


def test_config_json_records_the_environment_beside_the_train_fields(config, train):
    config.algorithm, config.threads, config.num_updates = "sequential", 1, 50
    summary = train(config)
    raw = metrics.read_json(os.path.join(summary["run_dir"], "config.json"))
    assert raw["num_updates"] == 50 and raw["algorithm"] == "sequential"  # train fields on top
    env = raw[metrics.ENVIRONMENT]
    assert env["python"].count(".") == 2 and env["cpu_count"] >= 1
    for package in ("jax", "jaxlib", "numpy", "optax"):
        assert env["packages"][package]
    assert {"compiler", "cflags", "vector"} <= set(env["c_kernel"])
    assert env["git_commit"] is None or len(env["git_commit"].split("+")[0]) == 40
    run = metrics.load_run(summary["run_dir"])
    assert metrics.ENVIRONMENT not in run.config and run.environment == env


def test_default_run_name_says_the_step_size_and_every_non_default_swept_field(config):
    assert run_name(config) == "leashed-m2-constant"
    config.stepsize, config.learning_rate, config.persistence, config.seed = "inverse", 0.1, 0, 3
    assert run_name(config) == "leashed-m2-inverse-lr0.1-p0-s3"
    config.algorithm = "hogwild"  # persistence means nothing there
    assert run_name(config) == "hogwild-m2-inverse-lr0.1-s3"
    config.name = "mine"
    assert run_name(config) == "mine"


def read_tfevents(path):
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2
    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(f.read(length))
            f.read(4)
            for value in event.summary.value:
                out.append((value.tag, event.step, value.simple_value))
    return out


def test_tensorboard_writes_the_logged_scalars(config, train):
    pytest.importorskip("tensorboardX")
    config.algorithm, config.threads, config.num_updates, config.tensorboard = "sequential", 1, 200, True
    summary = train(config)
    (events,) = glob.glob(os.path.join(summary["run_dir"], "events.out.tfevents.*"))
    scalars = read_tfevents(events)
    rows = metrics.load_run(summary["run_dir"]).rows
    logged = [(r["updates"], r["train_loss"]) for r in rows if "train_loss" in r]
    written = [(step, v) for tag, step, v in scalars if tag == "train_loss"]
    assert [step for step, _ in written] == [step for step, _ in logged]
    np.testing.assert_allclose([v for _, v in written], [v for _, v in logged], rtol=1e-6)
    final = [v for tag, _, v in scalars if tag == "summary/eval_accuracy"]
    assert final == pytest.approx([summary["eval_accuracy"]])


def test_tensorboard_without_the_library_is_a_config_error(config, monkeypatch):
    import importlib.util
    from asgd.run import ConfigError
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    config.tensorboard = True
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
        parse(config)


@pytest.mark.parametrize("stop, applied, gradients, elapsed, share", [
    (StopSpec(1000, 0, 0.0, 0.0), 250, 260, 1.0, 0.25),       # updates
    (StopSpec(0, 2, 0.0, 0.0), 10, 50, 1.0, 0.5),             # epochs: minibatches of 2 x 50
    (StopSpec(0, 0, 4.0, 0.0), 10, 10, 1.0, 0.25),            # time budget
    (StopSpec(1000, 0, 4.0, 0.0), 500, 500, 1.0, 0.5),        # the nearest limit
    (StopSpec(0, 0, 0.0, 0.3), 10, 10, 1.0, None),            # target loss only: no total
])
def test_progress_is_the_share_of_the_nearest_limit(stop, applied, gradients, elapsed, share):
    tickets = Tickets(stop.num_updates)
    for _ in range(applied):
        tickets.take()
        tickets.finish(True)
    logs = [WorkerLog(), WorkerLog()]
    logs[0].loss.extend([0.0] * (gradients // 2))
    logs[1].loss.extend([0.0] * (gradients - gradients // 2))
    spec = RunSpec(stop, (0.5,), 0, 0, True, ".", "x")
    monitor = Monitor(spec, {}, None, None, tickets, logs, None,
                      max_batches=stop.epochs * 50)
    monitor.t0, monitor.t_end = 0.0, elapsed
    assert monitor._done() == share


def test_saved_params_keep_an_optimizers_state_apart(config, train, problems):
    config.algorithm, config.threads, config.num_updates = "sequential", 1, 100
    config.optimizer = "momentum"
    summary = train(config)
    problem = problems(parse(config))
    flat = metrics.load_params(summary["run_dir"], flat=True)
    assert flat.size == problem.layout.size
    assert problem.evaluate(flat) == pytest.approx((summary["eval_loss"], summary["eval_accuracy"]))
    with np.load(os.path.join(summary["run_dir"], "params.npz")) as z:
        assert z["optimizer_state"].size > 0 and np.isfinite(z["optimizer_state"]).all()
