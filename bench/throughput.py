"""Training-step throughput of the executors vs compute only (prints a table; not a test).

    python bench/throughput.py [--batches 16,128,512] [--threads 1,2,4] [--seconds 3] [--reps 3]
                               [--algorithms sequential,lock,hogwild,leashed,sync] [--cpus N]

Setup: the study's MLP 784-128-128-128-10 on MNIST (../shared/data/mnist, the
10k test split held out 80/20; digits if absent). For each batch size b and
thread count m it measures, in the same process and interleaved per round:

* ``compute``: m Python threads each looping minibatch fetch + the same jitted
  gradient on a fixed parameter vector, with no store: the ceiling;
* each algorithm's full training step through ``asgd.run.train`` (store,
  staleness bookkeeping, monitor thread), with a time budget, no evaluation
  during the run and the results folder in a temp dir;

and prints the median over --reps rounds of steps/s (applied updates/s; for
sync one round is one update of m gradients, so its gradients/s is m times
that) and the time ratio ``full step / compute-only step`` (1.00 = no
overhead), plus the m-thread speed-up over m=1 of the same algorithm.
``--cpus N`` pins the process to N CPUs before JAX starts (XLA sizes its
thread pools from the allowed CPUs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16,128,512")
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--algorithms", default="sequential,lock,hogwild,leashed,sync")
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    p.add_argument("--reps", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--cpus", type=int, default=0, help="pin to this many CPUs (0 = all)")
    return p.parse_args()


def base_config(batch: int):
    sys.path.insert(0, REPO)
    from asgd.configs import default
    c = default.get_config()
    if os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")):
        c.dataset, c.data_dir = "mnist", MNIST
    c.model, c.mlp_hidden = "mlp", (128, 128, 128)
    c.batch_size, c.learning_rate = batch, 0.01
    c.num_updates, c.epochs = 0, 0
    c.eval_every, c.log_every = 10**9, 1000
    c.quiet = True
    return c


def compute_only(problem, batch: int, threads: int, seconds: float, seed: int) -> float:
    """Gradient steps/s of ``threads`` threads with no parameter store."""
    import jax
    from asgd.data import Batches
    from asgd.store import aligned_empty
    flat = aligned_empty(problem.layout.size)
    flat[:] = problem.init_flat
    batches = Batches(problem.train, batch, seed)
    counts = [0] * threads
    stop = threading.Event()

    def loop(k):
        i = k
        while not stop.is_set():
            x, y = batches.get(i)
            loss, grads = problem.grad_fn(flat, x, y)
            jax.block_until_ready(grads)
            float(loss)
            counts[k] += 1
            i += threads

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def full_step(cfg, algorithm: str, threads: int, seconds: float) -> dict:
    from asgd.run import train
    cfg = cfg.copy_and_resolve_references()
    cfg.algorithm, cfg.threads, cfg.time_budget_s = algorithm, threads, seconds
    with tempfile.TemporaryDirectory() as workdir:
        cfg.workdir = workdir
        return train(cfg)


def main():
    args = parse_args()
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
    from asgd.run import problem_of
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(m) for m in args.threads.split(",")]
    algorithms = args.algorithms.split(",")
    print(f"# CPUs allowed: {len(os.sched_getaffinity(0))}, reps {args.reps} x {args.seconds:g} s; "
          f"data: {'MNIST 10k' if os.path.exists(MNIST) else 'digits'}")
    rows = []
    for batch in batches:
        cfg = base_config(batch)
        problem = problem_of(cfg)
        samples: dict[tuple, list[float]] = {}
        extra: dict[tuple, list[float]] = {}
        for rep in range(args.reps):
            for m in thread_counts:
                samples.setdefault(("compute", m), []).append(
                    compute_only(problem, batch, m, args.seconds, rep))
                for algorithm in algorithms:
                    if algorithm == "sequential" and m != 1:
                        continue
                    summary = full_step(cfg, algorithm, m, args.seconds)
                    samples.setdefault((algorithm, m), []).append(summary["updates_per_s"])
                    extra.setdefault((algorithm, m), []).append(
                        summary["cas_failures"] / max(1, summary["updates"] + summary["dropped_updates"]))
        median = {key: statistics.median(v) for key, v in samples.items()}
        for (name, m), rate in median.items():
            gradients = rate * (m if name == "sync" else 1)
            rows.append((batch, name, m, rate, median[("compute", m)] / gradients,
                         rate / median[(name, 1)] if (name, 1) in median else float("nan"),
                         statistics.median(extra[(name, m)]) if (name, m) in extra else None))
    print(f"{'batch':>5} {'algorithm':>10} {'m':>2} {'steps/s':>9} {'time ratio':>10} "
          f"{'vs m=1':>7} {'CAS fail':>8}")
    for batch, name, m, rate, ratio, speedup, cas in rows:
        cas_text = f"{100 * cas:7.2f}%" if cas is not None and name == "leashed" else f"{'':>8}"
        print(f"{batch:>5} {name:>10} {m:>2} {rate:>9.0f} {ratio:>10.3f} {speedup:>7.2f} {cas_text}")
    print("time ratio: time per full step / time per compute-only step with the same m "
          "(1.00 = no overhead; sync's step is m gradients). vs m=1: steps/s over the same "
          "algorithm's m=1.")


if __name__ == "__main__":
    main()
