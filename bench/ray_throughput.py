"""Ray backend vs the shared-memory executor, on one Ray node and on a simulated 2-node cluster.

    python bench/ray_throughput.py [--batches 16,128,1024] [--servers 1,2] [--seconds 4]
                                   [--reps 3] [--threads 2] [--algorithm leashed] [--calls 500]

Prints figures, not pass/fail. Each repetition runs, for every batch size,
``train()`` on the digits MLP (configs/default.py) for ``--seconds`` of wall
clock after compilation (eval only at the start and the end) with

  local     threads over shared memory (``backend=local``)
  ray S     ``backend=ray`` with ``ray_servers=S`` on one local Ray node
  2-node S  the same on a ``ray.cluster_utils.Cluster`` on this host: a head
            node with no CPU (the driver and the servers) and two 1-CPU
            worker nodes (one worker actor on each)

local and the ray variants alternate within a repetition; the two Ray
setups alternate in order between repetitions. Figures are medians over the
repetitions. "overhead" is the per-update time of one worker beyond its
gradient: m / (updates/s) minus the mean gradient time. "floor" is Ray's
own: the round trip of an empty call from one actor to a threaded actor
(like a worker's call to a server), on each setup. ``os.getloadavg()`` is
printed before and after.
"""
import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/


def base_config(workdir: str, args, batch: int):
    from asgd.configs import default
    cfg = default.get_config()
    cfg.algorithm, cfg.threads, cfg.workdir, cfg.quiet = args.algorithm, args.threads, workdir, True
    cfg.num_updates, cfg.time_budget_s, cfg.batch_size = 0, args.seconds, batch
    cfg.eval_every, cfg.log_every = 10 ** 9, 200
    return cfg


def measure(cfg, m: int) -> dict:
    from asgd.run import train
    summary = train(cfg)
    ups, compute = summary["updates_per_s"], summary["mean_compute_s"] or float("nan")
    return {"ups": ups, "compute_us": 1e6 * compute, "overhead_us": 1e6 * (m / ups - compute),
            "tau": summary["staleness_mean"]}


def floor_us(calls: int) -> float:
    """Mean round trip of an empty call from an actor on a worker node to a threaded actor on the driver's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class Echo:
        def noop(self):
            return None

    @ray.remote(num_cpus=0)
    class Caller:
        def loop(self, target, n: int) -> float:
            for _ in range(20):
                ray.get(target.noop.remote())
            began = time.perf_counter()
            for _ in range(n):
                ray.get(target.noop.remote())
            return (time.perf_counter() - began) / n

    here = ray.get_runtime_context().get_node_id()
    others = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    echo = Echo.options(max_concurrency=8, scheduling_strategy=NodeAffinitySchedulingStrategy(
        here, soft=False)).remote()
    caller = Caller.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        (others or [here])[0], soft=False)).remote()
    try:
        return 1e6 * ray.get(caller.loop.remote(echo, calls))
    finally:
        ray.kill(caller)
        ray.kill(echo)


def measure_ray(workdir: str, args, batch: int, servers: int) -> dict:
    """One run on the Ray this process is connected to, with ``servers`` shards."""
    cfg = base_config(workdir, args, batch)
    cfg.backend, cfg.ray_servers = "ray", servers
    return measure(cfg, args.threads)


def one_node(args, workdir: str, rows: dict, floors: dict) -> None:
    import ray
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, args.threads), include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        floors.setdefault("ray", []).append(floor_us(args.calls))
        for batch in args.batches:
            cfg = base_config(workdir, args, batch)
            rows.setdefault((batch, "local"), []).append(measure(cfg, args.threads))
            for servers in args.servers:
                rows.setdefault((batch, f"ray{servers}"), []).append(
                    measure_ray(workdir, args, batch, servers))
    finally:
        ray.shutdown()


def two_nodes(args, workdir: str, rows: dict, floors: dict) -> None:
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=max(1, args.threads // 2))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        floors.setdefault("2-node", []).append(floor_us(args.calls))
        for batch in args.batches:
            for servers in args.servers:
                rows.setdefault((batch, f"2-node{servers}"), []).append(
                    measure_ray(workdir, args, batch, servers))
    finally:
        ray.shutdown()
        cluster.shutdown()


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="16,128,1024", help="comma-separated batch sizes")
    p.add_argument("--servers", default="1,2", help="comma-separated ray_servers values")
    p.add_argument("--seconds", type=float, default=4.0, help="wall clock per run")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--threads", type=int, default=2, help="m: worker threads / worker actors")
    p.add_argument("--algorithm", default="leashed", choices=["lock", "hogwild", "leashed", "sync"])
    p.add_argument("--calls", type=int, default=500, help="empty calls for Ray's floor")
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.servers = [int(s) for s in args.servers.split(",")]

    from asgd.configs import default
    from asgd.run import problem_of
    import ray
    d = problem_of(default.get_config()).layout.size
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} / "
          f"{os.getloadavg()[1]:.2f} (1 / 5 min) before; Ray {ray.__version__}; digits MLP "
          f"{tuple(default.get_config().mlp_hidden)}, d={d}; {args.algorithm}, m={args.threads}, "
          f"{args.seconds:g} s per run, median of {args.reps}", flush=True)
    rows, floors = {}, {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(args.reps):
            setups = [one_node, two_nodes] if rep % 2 == 0 else [two_nodes, one_node]
            for setup in setups:
                setup(args, workdir, rows, floors)
            print(f"  repetition {rep + 1} done ({time.monotonic() - began:.0f} s, load "
                  f"{os.getloadavg()[0]:.2f})", flush=True)

    print(f"\n{'batch':>5} {'variant':>10} {'upd/s':>7} {'x local':>7} {'grad us':>8} "
          f"{'overhead us':>11} {'mean tau':>8}")
    for batch in args.batches:
        local = median(rows[(batch, "local")], "ups")
        for variant in ["local", *(f"ray{s}" for s in args.servers), *(f"2-node{s}" for s in args.servers)]:
            runs = rows[(batch, variant)]
            name = variant if variant == "local" else variant[:-1] + f" S={variant[-1]}"
            print(f"{batch:>5} {name:>10} {median(runs, 'ups'):>7.0f} {median(runs, 'ups') / local:>7.2f} "
                  f"{median(runs, 'compute_us'):>8.0f} {median(runs, 'overhead_us'):>11.0f} "
                  f"{median(runs, 'tau'):>8.2f}")
    print(f"\nRay's floor, empty actor -> threaded actor call (median of {args.reps} means of "
          f"{args.calls}): one node {statistics.median(floors['ray']):.0f} us, "
          f"2-node {statistics.median(floors['2-node']):.0f} us")
    print(f"load average after: {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} (1 / 5 min)")


if __name__ == "__main__":
    main()
