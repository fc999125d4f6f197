"""Training steps/s of every asynchronous algorithm next to the in-XLA compute ceiling
(prints a table; not a test).

    python bench/throughput.py [--batches 16,32,128,512] [--threads 1,2] [--seconds 2]
                               [--rounds 5] [--cpus auto|all|N] [--gil yes|no]

Setup: the study's MLP 784-128-128-128-10 on MNIST (../shared/data/mnist, the
10k test split held out 80/20; digits if absent), alpha = 0.01. For each batch
size b and thread count m, interleaved per round, in one process:

* ``ceiling``: m threads, each running minibatch gathers by index + the same
  value-and-gradient back to back inside one jitted ``fori_loop`` (no store,
  no update, no Python per step): the compute-only limit of m workers;
* every algorithm (sequential at m = 1, lock, hogwild, leashed) through
  ``asgd.run.execute`` with the compiled worker loop (``worker=compiled``,
  the default) and with the Python-driven loop (``worker=python``), each
  with a time budget of --seconds, no evaluation during the run;

and prints medians over --rounds of steps/s (applied updates/s) and the ratio
to the ceiling of the same round. Peak RSS of each process is printed last.

The GIL-held time per step is measured at m = 1 in a process of its own on
two CPUs (see ``gil_cell``): the run on the first, a pure-Python probe
thread on the second, whose time off its CPU is time others held the GIL.
It counts every holder (the worker and the monitor thread) and the
hand-offs, so it is an upper bound of the worker's own share.

``--cpus``: pin the process before JAX starts: ``auto`` = m CPUs (one core
per worker; XLA sizes its intra-op pool from the allowed CPUs, and at m = 1
an unpinned gradient is split over the cores, which is slower), ``all`` =
no pinning, N = N CPUs. Each (m, cpus) setting runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")
ALGORITHMS = ("sequential", "lock", "hogwild", "leashed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16,32,128,512", help="batch sizes (default 16,32,128,512)")
    p.add_argument("--threads", default="1,2", help="worker counts m (default 1,2)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each measurement (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported (default 5)")
    p.add_argument("--cpus", default="auto", help="auto (= m), all, or a number (default auto)")
    p.add_argument("--gil", default="yes", choices=("yes", "no"),
                   help="also measure the GIL time per step (needs 2 CPUs; default yes)")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one m in this process
    p.add_argument("--probe-cpu", default=None, help=argparse.SUPPRESS)  # internal: the GIL cell
    return p.parse_args(argv)


def base_config(batch: int, seconds: float, workdir: str):
    from asgd.run import default_config
    c = default_config()
    if os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")):
        c.dataset, c.data_dir = "mnist", MNIST
    c.batch_size, c.learning_rate = batch, 0.01
    c.num_updates, c.time_budget_s = 0, seconds
    c.eval_every, c.log_every = 10**9, 1000
    c.quiet, c.workdir = True, workdir
    return c


def ceiling_rate(problem, batch: int, m: int, seconds: float) -> float:
    """Steps/s of m threads each running gradients back to back in one jitted loop."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from asgd import models
    layout, n = problem.layout, len(problem.train.y)
    per_epoch, steps = n // batch, 64
    x, y = jnp.asarray(problem.train.x), jnp.asarray(problem.train.y)
    perm = jnp.asarray(np.random.default_rng(0).permutation(n).astype(np.int32))

    def loss_of(params, xb, yb):
        return models.cross_entropy(problem.model_apply(params, xb), yb)

    @jax.jit
    def loop(flat, start):
        def body(i, carry):  # the last gradient is the result: every step's is computed
            k = (start + i) % per_epoch
            index = jax.lax.dynamic_slice(perm, (k * batch,), (batch,))
            return jax.value_and_grad(loss_of)(layout.unravel(flat), x[index], y[index])
        first = jax.value_and_grad(loss_of)(layout.unravel(flat), x[:batch], y[:batch])
        return jax.lax.fori_loop(0, steps, body, first)

    flat = jnp.asarray(problem.init_flat)
    jax.block_until_ready(loop(flat, 0))
    counts = [0] * m

    def worker(k):
        end, start = time.perf_counter() + seconds, k * 997
        while time.perf_counter() < end:
            jax.block_until_ready(loop(flat, start))
            counts[k] += steps
            start += steps

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(m)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


GIL_ALGORITHMS = ("lock", "hogwild", "leashed")


def gil_cell(args) -> list[dict]:
    """GIL-held time at m = 1: this process runs on one CPU, a probe thread
    (``asgd.dynamics.calibrate.GilProbe``) on another.

    The probe runs pure Python all the time, so the wall time it spends off
    its CPU is time some other thread held the GIL (plus the hand-offs).
    Per step = (probe's loss in a run of N updates - in a run of N/4) /
    (3N/4): the difference removes start-up and compilation; it counts every
    holder, the worker and the monitor thread (which polls every 10 ms, so
    its share is per second, not per step), hence also the share of the
    run's wall time the GIL was held. For the compiled loop, the worker's own
    share is its wall time outside the loop, differenced the same way. The
    switch interval is 0.2 ms while probing, so that a thread waits at most
    that long for the GIL.
    """
    from asgd.dynamics.calibrate import GilProbe
    from asgd.run import execute, parse, problem_of
    probe_cpu = int(args.probe_cpu)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for batch in map(int, args.batches.split(",")):
            cfg = base_config(batch, 1.0, workdir)
            problem = problem_of(cfg)
            long = max(400, 120_000 // batch)
            short = long // 4
            keys = [(a, w, n) for a in GIL_ALGORITHMS for w in ("compiled", "python")
                    for n in (short, long)]
            lost, share, outside = ({k: [] for k in keys} for _ in range(3))
            switch = sys.getswitchinterval()
            for _ in range(args.rounds + 1):  # the first round warms up (compilation)
                for key in keys:
                    algorithm, worker, n = key
                    cfg.algorithm, cfg.threads, cfg.worker = algorithm, 1, worker
                    cfg.num_updates, cfg.time_budget_s = n, 0.0
                    specs = parse(cfg)
                    sys.setswitchinterval(2e-4)
                    try:
                        with GilProbe(probe_cpu) as probe:
                            summary = execute(specs, cfg.to_dict(), None, problem)
                    finally:
                        sys.setswitchinterval(switch)
                    lost[key].append(probe.lost)
                    share[key].append(probe.lost / probe.wall)
                    outside[key].append(sum(summary.get("worker_python_s", [math.nan])))

            def per_step(values, algorithm, worker):
                held = (statistics.median(values[(algorithm, worker, long)][1:])
                        - statistics.median(values[(algorithm, worker, short)][1:]))
                return max(held, 0.0) * 1e6 / (long - short)
            for algorithm in GIL_ALGORITHMS:
                for worker in ("compiled", "python"):
                    row = {"b": batch, "variant": f"{algorithm}/{worker}",
                           "gil_us_per_step": per_step(lost, algorithm, worker),
                           "gil_share": statistics.median(share[(algorithm, worker, long)][1:])}
                    if worker == "compiled":
                        row["worker_gil_us_per_step"] = per_step(outside, algorithm, worker)
                    rows.append(row)
    return rows


def cell(args) -> list[dict]:
    """All batch sizes for one m, in this process (pinned as asked)."""
    m = int(args.cell)
    from asgd.run import execute, parse, problem_of
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for batch in map(int, args.batches.split(",")):
            cfg = base_config(batch, args.seconds, workdir)
            problem = problem_of(cfg)
            variants = [(a, w) for a in ALGORITHMS if a != "sequential" or m == 1
                        for w in ("compiled", "python")]
            results = {v: [] for v in ["ceiling", *variants]}
            outside = {v: [] for v in variants}
            for _ in range(args.rounds):
                results["ceiling"].append(ceiling_rate(problem, batch, m, args.seconds))
                for algorithm, worker in variants:
                    cfg.algorithm, cfg.threads, cfg.worker = algorithm, m, worker
                    specs = parse(cfg)
                    summary = {}

                    def go():
                        summary.update(execute(specs, cfg.to_dict(), None, problem))
                    go()
                    results[(algorithm, worker)].append(summary["updates_per_s"])
                    if "worker_python_s" in summary:
                        outside[(algorithm, worker)].append(
                            1e6 * sum(summary["worker_python_s"]) / max(summary["updates"], 1))
            ceiling = statistics.median(results["ceiling"])
            for key, rates in results.items():
                row = {"b": batch, "m": m, "variant": key if key == "ceiling" else "/".join(key),
                       "steps_per_s": statistics.median(rates),
                       "ratio": statistics.median(r / c for r, c in zip(rates, results["ceiling"])),
                       "ceiling": ceiling}
                if key != "ceiling" and outside[key]:
                    row["python_us_per_step"] = statistics.median(outside[key])
                rows.append(row)
    import resource
    rows.append({"m": m, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cell == "gil":
        print(json.dumps(gil_cell(args)))
        return 0
    if args.cell is not None:
        print(json.dumps(cell(args)))
        return 0
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{os.cpu_count()} CPUs; cpus={args.cpus}", flush=True)
    rows = []
    for m in map(int, args.threads.split(",")):
        env = dict(os.environ)
        cpus = {"auto": m, "all": 0}.get(args.cpus)
        cpus = int(args.cpus) if cpus is None else cpus
        prefix = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:cpus]))] \
            if cpus else []
        forwarded = sys.argv[1:] if argv is None else list(argv)
        out = subprocess.run([*prefix, sys.executable, __file__, *forwarded, f"--cell={m}"],
                             capture_output=True, text=True, env=env, cwd=REPO)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        print(f"m={m} measured; load average {os.getloadavg()[0]:.2f}", flush=True)
    allowed = sorted(os.sched_getaffinity(0))
    gil = {}
    if args.gil == "yes" and len(allowed) >= 2:
        # taskset pins the process (and JAX's pool) to one CPU; the probe thread
        # moves itself to the second.
        forwarded = sys.argv[1:] if argv is None else list(argv)
        out = subprocess.run(["taskset", "-c", str(allowed[0]), sys.executable, __file__,
                              *forwarded, "--cell=gil", f"--probe-cpu={allowed[1]}"],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        gil = {(r["b"], r["variant"]): r for r in json.loads(out.stdout.strip().splitlines()[-1])}
    elif args.gil == "yes":
        print("GIL time not measured: it needs 2 CPUs", flush=True)
    for r in rows:
        if r.get("m") == 1 and (r.get("b"), r.get("variant")) in gil:
            r.update({k: v for k, v in gil[(r["b"], r["variant"])].items() if k.startswith("gil")
                      or k.startswith("worker")})
    print(f"{'b':>4} {'m':>2}  {'variant':<22} {'steps/s':>9} {'/ ceiling':>9} "
          f"{'GIL us/step':>11} {'GIL share':>9} {'worker GIL us/step':>18}")
    print("     (GIL columns: m = 1 only; us/step and share count every holder, the monitor"
          " included; the worker's own column is the compiled worker's time outside the loop)")

    def cell_text(r, key, fmt):
        return format(r[key], fmt) if key in r else ""
    for r in rows:
        if "variant" in r:
            print(f"{r['b']:>4} {r['m']:>2}  {r['variant']:<22} {r['steps_per_s']:>9.0f} "
                  f"{r['ratio']:>9.2f} {cell_text(r, 'gil_us_per_step', '.1f'):>11} "
                  f"{cell_text(r, 'gil_share', '.3f'):>9} "
                  f"{cell_text(r, 'worker_gil_us_per_step', '.2f'):>18}")
        else:
            print(f"peak RSS (m={r['m']} process): {r['peak_rss_mb']:.0f} MB")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
