"""How XLA's intra-op threads and CPU pinning change gradient throughput (prints a table).

    python bench/xla_threads.py [--seconds 1.5]

Compute-only steps/s of the MNIST MLP's jitted gradient (no store), with 1
and 2 Python threads, at batch 16 and 128, in three settings, each in a fresh
process (XLA sizes its thread pools once, at start-up):
  default      all allowed CPUs
  cpus=1       the process pinned to one CPU (what --config.cpus=1 does)
  eigen_off    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
It prints figures; it is not a test.
"""

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")

CHILD = r"""
import os, sys, threading, time
cpus, seconds = int(sys.argv[1]), float(sys.argv[2])
if cpus:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])
sys.path.insert(0, sys.argv[3])
import jax
from asgd.configs import default
from asgd.data import Batches
from asgd.store import aligned_empty
from asgd.run import problem_of
cfg = default.get_config()
if os.path.exists(os.path.join(sys.argv[4], "t10k-images-idx3-ubyte.gz")):
    cfg.dataset, cfg.data_dir = "mnist", sys.argv[4]
rates = []
for batch in (16, 128):
    cfg.batch_size = batch
    problem = problem_of(cfg)
    batches = Batches(problem.train, batch, 0)
    flat = aligned_empty(problem.layout.size)
    flat[:] = problem.init_flat
    jax.block_until_ready(problem.grad_fn(flat, *batches.get(0)))
    for m in (1, 2):
        counts, stop = [0] * m, threading.Event()
        def loop(k):
            i = k
            while not stop.is_set():
                jax.block_until_ready(problem.grad_fn(flat, *batches.get(i)))
                counts[k] += 1
                i += m
        threads = [threading.Thread(target=loop, args=(k,)) for k in range(m)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        rates.append(sum(counts) / (time.perf_counter() - start))
print(" ".join(f"{r:.0f}" for r in rates))
"""

SETTINGS = {
    "default": (0, {}),
    "cpus=1": (1, {}),
    "eigen_off": (0, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.5)
    args = p.parse_args()
    print(f"# CPUs allowed: {len(os.sched_getaffinity(0))}; compute-only gradient steps/s")
    print(f"{'setting':>10} {'b=16 m=1':>9} {'b=16 m=2':>9} {'b=128 m=1':>10} {'b=128 m=2':>10}")
    for name, (cpus, env) in SETTINGS.items():
        out = subprocess.run([sys.executable, "-c", CHILD, str(cpus), str(args.seconds), REPO, MNIST],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
        r = out.stdout.split()
        print(f"{name:>10} {r[0]:>9} {r[1]:>9} {r[2]:>10} {r[3]:>10}")


if __name__ == "__main__":
    main()
