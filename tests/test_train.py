"""End to end: the sequential trainer and train.py as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from asgd import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_run(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    return config, metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl")), summary


def test_sequential_reaches_90_percent_on_digits(config, train):
    config.algorithm, config.threads = "sequential", 1
    summary = train(config)
    assert summary["eval_accuracy"] >= 0.90
    assert summary["updates"] == config.num_updates
    assert summary["staleness_hist"] == [config.num_updates]


def test_sequential_is_deterministic(config, train):
    config.algorithm, config.threads, config.num_updates = "sequential", 1, 300
    first, second = train(config), train(config)
    assert first["eval_loss"] == second["eval_loss"]
    assert first["eval_accuracy"] == second["eval_accuracy"]
    config.seed = 1
    assert train(config)["eval_loss"] != first["eval_loss"]


def test_epochs_and_time_budget_stop_the_run(config, train):
    config.algorithm, config.threads = "sequential", 1
    config.num_updates, config.epochs = 0, 2
    summary = train(config)
    per_epoch = 1438 // config.batch_size
    assert summary["updates"] == 2 * per_epoch and summary["stop_reason"] == "epochs"
    config.epochs, config.time_budget_s = 0, 0.5
    summary = train(config)
    assert summary["stop_reason"] == "time_budget"
    assert summary["wall_time_s"] >= 0.5
    _, rows, _ = read_run(summary["run_dir"])
    assert rows[-1]["updates"] == summary["updates"] and "eval_loss" in rows[-1]


@pytest.mark.slow
def test_time_budget_ends_the_run_within_seconds(config, train):
    config.algorithm, config.threads, config.num_updates, config.time_budget_s = "leashed", 2, 0, 0.5
    assert 0.5 <= train(config)["wall_time_s"] < 5.0


def test_target_loss_stops_and_is_timed(config, train):
    config.algorithm, config.threads, config.num_updates = "sequential", 1, 20000
    config.target_loss = 0.3
    summary = train(config)
    assert summary["stop_reason"] == "target_loss"
    assert summary["updates"] < 20000
    assert summary["time_to_target"]["0.3"] is not None
    assert summary["time_to_target"]["0.1"] is None or summary["final_train_loss"] <= 0.1


def run_train(tmp_path, *flags):
    return subprocess.run([sys.executable, "train.py", "--config=configs/default.py",
                           f"--config.workdir={tmp_path}", "--config.quiet=True", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_train_py_writes_a_complete_results_folder(tmp_path):
    proc = run_train(tmp_path, "--config.num_updates=400", "--config.eval_every=100",
                     "--config.name=e2e")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [os.path.join(tmp_path, "runs", d) for d in os.listdir(tmp_path / "runs")]
    assert run_dir.endswith("-e2e")
    config, rows, summary = read_run(run_dir)
    assert config["num_updates"] == 400 and config["dataset"] == "digits"
    assert rows[0]["updates"] == 0 and rows[-1]["updates"] == 400
    assert all({"updates", "wall_time_s"} <= set(r) for r in rows)
    # Evaluations at the start, at the end, and between them no closer than eval_every
    # (how many fall between depends on how fast the run is next to the monitor's poll).
    evals = [r["updates"] for r in rows if "eval_loss" in r and "eval_accuracy" in r]
    assert evals[0] == 0 and evals[-1] == 400
    assert all(b - a >= 100 for a, b in zip(evals[:-2], evals[1:-1]))
    assert any("train_loss" in r for r in rows)
    times = [r["wall_time_s"] for r in rows]
    assert times == sorted(times)
    for key in ("updates", "wall_time_s", "updates_per_s", "eval_loss", "eval_accuracy",
                "time_to_target", "staleness_hist"):
        assert key in summary, key
    assert summary["updates"] == 400
    assert "eval_accuracy" in proc.stdout


def test_ctrl_c_leaves_valid_results(tmp_path):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "train.py", "--config=configs/default.py",
                             f"--config.workdir={tmp_path}", "--config.quiet=True",
                             "--config.num_updates=0", "--config.time_budget_s=60"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has logged something
        runs = list((tmp_path / "runs").glob("*/metrics.jsonl")) if (tmp_path / "runs").exists() else []
        if runs and len(metrics.read_jsonl(str(runs[0]))) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    config, rows, summary = read_run(str(runs[0].parent))
    assert summary["stop_reason"] == "interrupted"
    assert summary["updates"] > 0 and rows[-1]["updates"] == summary["updates"]
