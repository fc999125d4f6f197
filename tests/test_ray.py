"""The Ray backend on a local 2-CPU Ray: accuracy, staleness (overall and per shard), faults, bad input."""

import json
import os
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from asgd import metrics  # noqa: E402
from asgd.executors.ray import ParameterServerDied, RayBackendError  # noqa: E402
from asgd.run import ConfigError, parse, train  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module; train() reuses it instead of starting its own."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    yield
    ray.shutdown()


def on_ray(config, algorithm, **fields):
    config.backend, config.algorithm, config.threads = "ray", algorithm, 2
    for key, value in fields.items():
        config[key] = value
    return config


@pytest.mark.parametrize("algorithm,servers", [
    ("leashed", 1),
    # sync (rounds of m calls) and two shards (twice the actors and calls): 20-30 s each on 2 cores
    pytest.param("sync", 1, marks=pytest.mark.slow),
    pytest.param("leashed", 2, marks=pytest.mark.slow), pytest.param("sync", 2, marks=pytest.mark.slow)])
def test_two_workers_train_digits_to_90_percent(config, algorithm, servers):
    summary = train(on_ray(config, algorithm, num_updates=1500, ray_servers=servers))
    assert summary["backend"] == "ray" and summary["ray_servers"] == servers
    assert summary["eval_accuracy"] >= 0.90
    assert summary["updates"] == 1500 and summary["stop_reason"] == "num_updates"
    # Every applied update has one staleness entry; every attempt is counted.
    assert sum(summary["staleness_hist"]) == summary["updates"]
    assert sum(map(sum, summary["staleness_hist_per_worker"])) == summary["updates"]
    attempts = summary["cas_attempts_hist"]
    assert sum(attempts) == summary["updates"] + summary["dropped_updates"]
    assert sum(k * n for k, n in enumerate(attempts)) == (
        summary["updates"] + summary["dropped_updates"] + summary["cas_failures"])
    assert summary["lost_gradients"] == 0 and summary["worker_restarts"] == 0
    assert summary["minibatches_taken"] == 1500 * (2 if algorithm == "sync" else 1)
    # Every shard applied every update, each counting staleness in its own versions.
    shards = summary["staleness_hist_per_shard"]
    assert len(shards) == servers and all(sum(hist) == 1500 for hist in shards)
    if algorithm == "sync":  # one update per round, on the version the round pulled
        assert summary["staleness_hist"] == [1500] and shards == [[1500]] * servers
    else:  # the other worker's pushes land between a pull and its push
        assert summary["staleness_max"] >= 1
        # An update's staleness is the largest of its shards'.
        assert summary["staleness_max"] == max(len(hist) - 1 for hist in shards)
    rows = metrics.read_jsonl(os.path.join(summary["run_dir"], "metrics.jsonl"))
    assert rows[-1]["updates"] == 1500 and rows[-1]["eval_accuracy"] == summary["eval_accuracy"]
    assert os.path.exists(os.path.join(summary["run_dir"], "step_times.npz"))


def updates_so_far(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = metrics.read_jsonl(path) if os.path.exists(path) else []
    return rows[-1]["updates"] if rows else 0


def kill_when(run_dir, name, after_updates, killed, timeout_s=60.0):
    """In a thread: kill actor ``name`` once the run has applied ``after_updates``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if updates_so_far(run_dir) >= after_updates:
            try:
                ray.kill(ray.get_actor(name), no_restart=False)
                killed.append(updates_so_far(run_dir))
            except ValueError:  # not registered (yet or any more)
                pass
            return
        time.sleep(0.02)


@pytest.mark.parametrize("algorithm", ["leashed", pytest.param("sync", marks=pytest.mark.slow)])  # sync: 34 s
def test_a_killed_worker_rejoins_and_its_gradient_is_counted_lost(config, tmp_path, algorithm):
    run_dir = str(tmp_path / "killed")
    cfg = on_ray(config, algorithm, num_updates=2000, log_every=20)
    killed = []
    killer = threading.Thread(target=kill_when, args=(
        run_dir, f"asgd-worker-0@{os.path.basename(run_dir)}", 200, killed))
    killer.start()
    summary = train(cfg, run_dir=run_dir)
    killer.join()
    assert killed and killed[0] < 2000, "the worker was not killed mid-run"
    assert summary["worker_restarts"] == 1
    if algorithm == "sync":  # lost if it died computing; not if its share was already in
        assert summary["lost_gradients"] in (0, 1)
    else:  # an asynchronous worker holds one or two tickets: one computing, one being pushed
        assert summary["lost_gradients"] in (1, 2)
        assert summary["minibatches_taken"] == (summary["updates"] + summary["dropped_updates"]
                                                + summary["lost_gradients"])
    # The lost ticket went to another worker: exactly num_updates applied.
    assert summary["updates"] == 2000 and summary["stop_reason"] == "num_updates"
    assert sum(summary["staleness_hist"]) == 2000
    assert summary["eval_accuracy"] >= 0.90


def test_a_dead_parameter_server_ends_the_run_and_keeps_the_results(config, tmp_path):
    run_dir = str(tmp_path / "ps-died")
    cfg = on_ray(config, "leashed", num_updates=100000, log_every=20)
    killed = []
    killer = threading.Thread(target=kill_when, args=(
        run_dir, f"asgd-ps@{os.path.basename(run_dir)}", 100, killed))
    killer.start()
    with pytest.raises(ParameterServerDied, match="parameter server died"):
        train(cfg, run_dir=run_dir)
    killer.join()
    assert killed
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["updates"] >= 100
    assert "parameter server died" in summary["error"]
    assert summary["stop_reason"].startswith("error: the parameter server died")


def silent_server():
    """A listener that accepts connections and never answers (not a Ray GCS)."""
    import socket
    server = socket.create_server(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


def test_an_unreachable_address_fails_fast(config):
    server, port = silent_server()
    with server:
        # closed port, Ray Client scheme, a port that accepts but never answers (times out)
        for address in ("127.0.0.1:1", "ray://127.0.0.1:1", f"127.0.0.1:{port}"):
            cfg = on_ray(config, "leashed", ray_address=address, ray_connect_timeout_s=1.0)
            with pytest.raises(RayBackendError, match="cannot reach the Ray cluster"):
                train(cfg)
    # the real, running local Ray passes the same probe
    from asgd.executors.ray.address import check_address
    check_address(ray.get_runtime_context().gcs_address, 2.0)


@pytest.mark.slow
def test_an_unreachable_address_fails_within_seconds(config):
    server, port = silent_server()
    with server:
        cfg = on_ray(config, "leashed", ray_address=f"127.0.0.1:{port}", ray_connect_timeout_s=1.0)
        began = time.monotonic()
        with pytest.raises(RayBackendError, match="cannot reach the Ray cluster"):
            train(cfg)
        assert time.monotonic() - began < 5.0


def test_bad_input_gives_one_line_errors(config, monkeypatch):
    with pytest.raises(ConfigError, match=r"threads \(Ray worker actors\) must be in 1\.\.256 .*got -1"):
        parse(on_ray(config, "leashed", threads=-1))
    with pytest.raises(RayBackendError, match="runs .* not 'sequential'"):
        parse(on_ray(config, "sequential", threads=1))
    with pytest.raises(ConfigError, match="unknown backend"):
        parse(on_ray(config, "leashed", backend="mpi"))
    with pytest.raises(ConfigError, match=r"ray_servers must be an integer >= 1, got 0"):
        parse(on_ray(config, "leashed", ray_servers=0))
    with pytest.raises(ConfigError, match=r"ray_servers must be in 1\.\.64, got 65"):
        parse(on_ray(config, "leashed", ray_servers=65))
    with pytest.raises(ConfigError, match=r"ray_pulls_in_flight must be in 1\.\.8, got 9"):
        parse(on_ray(config, "leashed", ray_servers=1, ray_pulls_in_flight=9))
    config.ray_pulls_in_flight = 1
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else find_spec(name, *a))
    with pytest.raises(RayBackendError, match=r"pip install -e '\.\[ray\]'"):
        parse(on_ray(config, "leashed"))


def test_more_workers_than_cluster_cpus_is_a_clear_error(config):
    with pytest.raises(RayBackendError, match="need 3 CPUs; the Ray cluster has 2"):
        train(on_ray(config, "leashed", threads=3))


@pytest.mark.slow
def test_a_run_prints_no_warning_the_user_cannot_act_on(tmp_path):
    """A whole run on its own local Ray: stderr stays empty (no token-auth notice,
    no fork warning from JAX, no actor-restart error line)."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "train.py"), "--config.backend=ray",
                           "--config.num_updates=50", "--config.quiet=True",
                           f"--config.workdir={tmp_path}", "--noprint_summary"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
