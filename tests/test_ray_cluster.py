"""The Ray backend on a multi-node cluster simulated on this host (``ray.cluster_utils.Cluster``).

A head node with no CPU (the driver and the parameter servers) and two
worker nodes of one CPU each: the two worker actors (one CPU each) can only
run on the two worker nodes, one on each. Then a whole worker node is
removed mid-run.
"""

import os
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from asgd import metrics  # noqa: E402
from asgd.executors.ray.server import TICKETS_HELD  # noqa: E402
from asgd.run import train  # noqa: E402
from test_ray import on_ray  # noqa: E402  (tests/ is on sys.path under pytest)

# A removed node is declared dead after about 3 missed health checks of 0.5 s.
FAST_NODE_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                     "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs, the driver's node) and two 1-CPU worker nodes; the driver is connected."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_NODE_FAILURE})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def on_cluster(config, algorithm, **fields):
    return on_ray(config, algorithm, **fields)   # the same run, on the cluster's Ray


def worker_node_ids(cluster, nodes):
    return {node.node_id for node in nodes}


@pytest.mark.parametrize("algorithm", [
    "leashed", "sync",
    # the other two store modes: the same placement, left to the slow run (CI runs it)
    pytest.param("lock", marks=pytest.mark.slow), pytest.param("hogwild", marks=pytest.mark.slow)])
def test_workers_run_on_two_nodes_that_are_not_the_drivers(cluster, config, algorithm):
    cluster, nodes = cluster
    summary = train(on_cluster(config, algorithm, num_updates=300))
    assert summary["updates"] == 300 and summary["stop_reason"] == "num_updates"
    assert summary["ray_nodes"] == 3 and summary["worker_restarts"] == 0
    assert summary["driver_node"] == ray.get_runtime_context().get_node_id()
    placed = [incarnations[0] for incarnations in summary["worker_nodes"]]
    assert summary["driver_node"] not in placed
    assert set(placed) == worker_node_ids(cluster, nodes)  # two distinct worker nodes
    assert sum(summary["staleness_hist"]) == 300


def test_a_removed_node_loses_its_worker_and_the_run_still_applies_exactly_num_updates(
        cluster, config, tmp_path):
    """Runs last in this module: it removes one of the two worker nodes for good.

    The killed worker cannot restart (no CPU left), so the other one finishes
    the run, taking over the dead worker's released tickets.
    """
    cluster, nodes = cluster
    run_dir = str(tmp_path / "node-lost")
    removed = []

    def remove_a_node_mid_run():
        deadline = time.monotonic() + 60.0
        path = os.path.join(run_dir, "metrics.jsonl")
        while time.monotonic() < deadline:
            rows = metrics.read_jsonl(path) if os.path.exists(path) else []
            if rows and rows[-1]["updates"] >= 200:
                cluster.remove_node(nodes[0], allow_graceful=False)
                removed.append(rows[-1]["updates"])
                return
            time.sleep(0.02)

    remover = threading.Thread(target=remove_a_node_mid_run)
    remover.start()
    summary = train(on_cluster(config, "leashed", num_updates=1500, log_every=20), run_dir=run_dir)
    remover.join()
    assert removed and removed[0] < 1500, "the node was not removed mid-run"
    assert summary["updates"] == 1500 and summary["stop_reason"] == "num_updates"
    assert sum(summary["staleness_hist"]) == 1500
    # The dead worker's tickets (computing, being pushed) were released, counted, and re-taken.
    assert summary["worker_restarts"] == 1
    assert 1 <= summary["lost_gradients"] <= TICKETS_HELD
    assert summary["minibatches_taken"] == (summary["updates"] + summary["dropped_updates"]
                                            + summary["lost_gradients"])
    assert summary["ray_nodes"] == 2
    assert [len(incarnations) for incarnations in summary["worker_nodes"]] == [1, 1]
