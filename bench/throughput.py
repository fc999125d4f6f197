"""Training steps/s of every asynchronous algorithm next to the in-XLA compute ceiling
(prints a table; not a test).

    python bench/throughput.py [--batches 16,32,128,512] [--threads 1,2] [--seconds 2]
                               [--rounds 5] [--cpus auto|all|N]

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
to the ceiling of the same round. The GIL-held time per step is measured for
m = 1 with a canary: a pure-Python thread counting loop iterations, whose
rate during the run is compared with its rate alone (on 2 cores at m = 1 the
canary has a core of its own, so what it loses is time the GIL was held by
others); GIL us/step = (1 - rate_during / rate_alone) * wall / steps. It
counts every holder (worker threads and the monitor), so it is an upper
bound of the workers' own share. For the compiled loop, "Python us/step" is
the workers' own wall time outside the compiled loop per step (the most they
can hold the GIL). Peak RSS of each process is printed last.

``--cpus``: pin the process before JAX starts: ``auto`` = m CPUs (one core
per worker; XLA sizes its intra-op pool from the allowed CPUs, and at m = 1
an unpinned gradient is split over the cores, which is slower), ``all`` =
no pinning, N = N CPUs. Each (m, cpus) setting runs in its own process.
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one m in this process
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


class Canary:
    """A pure-Python thread counting iterations: its rate falls while others hold the GIL."""

    def __init__(self):
        self.count, self.running = 0, False

    def _spin(self):
        n = 0
        while self.running:
            n += 1
            if n & 1023 == 0:
                self.count = n
        self.count = n

    def rate(self, during) -> tuple[float, float]:
        """(iterations/s, wall s) while ``during()`` runs."""
        self.count, self.running = 0, True
        thread = threading.Thread(target=self._spin)
        began = time.perf_counter()
        thread.start()
        during()
        self.running = False
        thread.join()
        wall = time.perf_counter() - began
        return self.count / wall, wall


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
            gil = {w: [] for w in ("compiled", "python")}
            outside = {v: [] for v in variants}
            canary = Canary()
            for _ in range(args.rounds):
                results["ceiling"].append(ceiling_rate(problem, batch, m, args.seconds))
                for algorithm, worker in variants:
                    cfg.algorithm, cfg.threads, cfg.worker = algorithm, m, worker
                    specs = parse(cfg)
                    summary = {}

                    def go():
                        summary.update(execute(specs, cfg.to_dict(), None, problem))
                    if m == 1 and algorithm == "leashed":
                        alone, _ = canary.rate(lambda: time.sleep(1.0))
                        during, wall = canary.rate(go)
                        held = max(0.0, 1.0 - during / alone) * summary["wall_time_s"]
                        gil[worker].append(1e6 * held / max(summary["updates"], 1))
                    else:
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
                if key != "ceiling" and key[0] == "leashed" and gil[key[1]]:
                    row["gil_us_per_step"] = statistics.median(gil[key[1]])
                if key != "ceiling" and outside[key]:
                    row["python_us_per_step"] = statistics.median(outside[key])
                rows.append(row)
    import resource
    rows.append({"m": m, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
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
    print(f"{'b':>4} {'m':>2}  {'variant':<22} {'steps/s':>9} {'/ ceiling':>9} "
          f"{'GIL us/step':>11} {'Python us/step':>14}")
    for r in rows:
        if "variant" in r:
            gil = f"{r['gil_us_per_step']:.2f}" if "gil_us_per_step" in r else ""
            py = f"{r['python_us_per_step']:.3f}" if "python_us_per_step" in r else ""
            print(f"{r['b']:>4} {r['m']:>2}  {r['variant']:<22} {r['steps_per_s']:>9.0f} "
                  f"{r['ratio']:>9.2f} {gil:>11} {py:>14}")
        else:
            print(f"peak RSS (m={r['m']} process): {r['peak_rss_mb']:.0f} MB")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
