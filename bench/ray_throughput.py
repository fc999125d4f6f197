"""Ray backend vs the shared-memory executor on one machine (prints figures; not a test).

    python bench/ray_throughput.py [--batches 16,128,1024] [--seconds 5] [--threads 2]
                                   [--algorithm leashed] [--round-trips 500]

1. Updates/s of ``train()`` with ``backend=local`` and ``backend=ray`` on the
   digits MLP (configs/default.py), the same algorithm, m and batch size, each
   run for ``--seconds`` of wall clock after compilation (eval only at the
   start and the end). "compute" is the mean gradient time per update as
   the workers measured it; "ray/local" the throughput ratio.
2. The per-update overhead of the actor round trip, without any gradient:
   one client actor loops ``exchange`` (push a zero gradient of d floats,
   the server applies it, takes a ticket, puts the new version) and
   ``ray.get`` of the parameters it is handed, against the same
   ``store.update`` + ``acquire`` on a local store. The difference is what
   each update costs on Ray beyond the shared-memory path.

Ray is started once, locally, with as many CPUs as the machine has.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/


def base_config(workdir: str, algorithm: str, threads: int, seconds: float):
    from asgd.configs import default
    cfg = default.get_config()
    cfg.algorithm, cfg.threads, cfg.workdir, cfg.quiet = algorithm, threads, workdir, True
    cfg.num_updates, cfg.time_budget_s = 0, seconds
    cfg.eval_every, cfg.log_every = 10 ** 9, 200
    return cfg


def throughput(args, workdir: str) -> list[dict]:
    from asgd.run import train
    rows = []
    for batch in args.batches:
        row = {"batch": batch}
        for backend in ("local", "ray"):
            cfg = base_config(workdir, args.algorithm, args.threads, args.seconds)
            cfg.batch_size, cfg.backend = batch, backend
            summary = train(cfg)
            row[backend] = summary["updates_per_s"]
            row[f"{backend}_compute_us"] = 1e6 * (summary["mean_compute_s"] or float("nan"))
            row[f"{backend}_tau"] = summary["staleness_mean"]
        rows.append(row)
    return rows


def round_trip(d: int, n: int) -> dict:
    """Microseconds per update: Ray exchange + pull vs local update + acquire."""
    import ray

    from asgd.executors.ray.server import ParameterServer
    from asgd.store import ParameterStore

    @ray.remote(num_cpus=0)
    class Client:
        def loop(self, ps, n: int) -> tuple[float, float]:
            g = np.zeros(d, np.float32)
            assignment = ray.get(ps.start.remote(0, 0))
            pull = 0.0
            began = time.perf_counter()
            for _ in range(n):
                ticket, version, (ref,) = assignment
                t = time.perf_counter()
                params = ray.get(ref)
                pull += time.perf_counter() - t
                del params
                assignment = ray.get(ps.exchange.remote(0, 0, ticket, g, version, 0.0, 0.0, 0.0))
            return (time.perf_counter() - began) / n, pull / n

    scales = np.full(64, -1e-6, np.float32)
    ps = ray.remote(ParameterServer).options(num_cpus=0, max_concurrency=4).remote(
        np.zeros(d, np.float32), "leashed", 1, scales, -1, 0, 0)
    client = Client.remote()
    ray.get(client.loop.remote(ps, 20))  # warm up (the server now holds ticket 20)
    ray.kill(ps)
    ps = ray.remote(ParameterServer).options(num_cpus=0, max_concurrency=4).remote(
        np.zeros(d, np.float32), "leashed", 1, scales, -1, 0, 0)
    per_update, pull = ray.get(client.loop.remote(ps, n))
    ray.kill(ps)

    store = ParameterStore(d, mode="leashed", init=np.zeros(d, np.float32))
    g = np.zeros(d, np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with store.acquire() as snapshot:
            version = snapshot.version
        store.update(g, scales, version, -1)
        times.append(time.perf_counter() - t)
    store.close()
    local = statistics.mean(times)
    return {"d": d, "ray_us": 1e6 * per_update, "ray_pull_us": 1e6 * pull,
            "local_us": 1e6 * local, "overhead_us": 1e6 * (per_update - local)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="16,128,1024", help="comma-separated batch sizes")
    p.add_argument("--seconds", type=float, default=5.0, help="wall clock per run")
    p.add_argument("--threads", type=int, default=2, help="m: worker threads / worker actors")
    p.add_argument("--algorithm", default="leashed", choices=["lock", "hogwild", "leashed", "sync"])
    p.add_argument("--round-trips", type=int, default=500)
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]

    import logging

    import ray
    ray.init(num_cpus=max(os.cpu_count() or 1, args.threads), include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        from asgd.run import problem_of
        from asgd.configs import default
        d = problem_of(default.get_config()).layout.size
        print(f"machine: {os.cpu_count()} CPUs; digits MLP {tuple(default.get_config().mlp_hidden)}, "
              f"d={d}; {args.algorithm}, m={args.threads}, {args.seconds:g} s per run")
        with tempfile.TemporaryDirectory() as workdir:
            rows = throughput(args, workdir)
        print(f"\n{'batch':>6} {'local upd/s':>12} {'ray upd/s':>10} {'ray/local':>9} "
              f"{'compute us (local)':>19} {'compute us (ray)':>17} {'tau local':>9} {'tau ray':>8}")
        for r in rows:
            print(f"{r['batch']:>6} {r['local']:>12.0f} {r['ray']:>10.0f} {r['ray'] / r['local']:>9.2f} "
                  f"{r['local_compute_us']:>19.0f} {r['ray_compute_us']:>17.0f} "
                  f"{r['local_tau']:>9.2f} {r['ray_tau']:>8.2f}")
        rt = round_trip(d, args.round_trips)
        print(f"\nround trip per update, d={rt['d']} (no gradient; mean of {args.round_trips}):")
        print(f"  ray exchange + pull : {rt['ray_us']:8.0f} us  (of which ray.get of the params: "
              f"{rt['ray_pull_us']:.0f} us)")
        print(f"  local update+acquire: {rt['local_us']:8.0f} us")
        print(f"  actor overhead      : {rt['overhead_us']:8.0f} us per update")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
