"""Where one training step's time goes, per store mode (prints a table; not a test).

    python bench/step_breakdown.py [--batch 128] [--steps 1500]

One thread runs the executors' step by hand (minibatch, acquire, jitted
gradient on the zero-copy snapshot, release, ``store.update``) on the MNIST
MLP and reports the median time of the gradient and of the update in the
loop, and the update's share of the step. Compare the update here with the
isolated update in bench/store_throughput.py: the gap is the cache traffic
the update and the gradient cost each other.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from asgd.configs import default
    from asgd.data import Batches
    from asgd.run import problem_of
    from asgd.store import ParameterStore
    cfg = default.get_config()
    if os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")):
        cfg.dataset, cfg.data_dir = "mnist", MNIST
    cfg.batch_size = args.batch
    problem = problem_of(cfg)
    batches = Batches(problem.train, args.batch, 0)
    scales = np.array([-0.001], np.float32)
    warm = min(100, args.steps // 5)
    print(f"# batch {args.batch}, {args.steps} steps per mode, medians after {warm} warm-up steps")
    print(f"{'mode':>8} {'gradient us':>12} {'update us':>10} {'update share':>13}")
    # A fresh process runs its first ~thousand steps slower (allocator and cache
    # warm-up); take them on a throw-away store before timing anything.
    with ParameterStore(problem.layout.size, mode="leashed", init=problem.init_flat) as store:
        for i in range(1000):
            with store.acquire() as snapshot:
                jax.block_until_ready(problem.grad_fn(snapshot.array, *batches.get(i)))
    for mode in ("leashed", "hogwild", "locked"):
        with ParameterStore(problem.layout.size, mode=mode, init=problem.init_flat) as store:
            gradient_s, update_s = [], []
            for i in range(args.steps):
                x, y = batches.get(i)
                with store.acquire() as snapshot:
                    began = time.perf_counter()
                    loss, grads = problem.grad_fn(snapshot.array, x, y)
                    leaves = jax.block_until_ready(jax.tree.leaves(grads))
                    float(loss)
                    computed = time.perf_counter()
                    t_read = snapshot.version
                store.update(leaves, scales, t_read, -1)
                if i >= warm:
                    gradient_s.append(computed - began)
                    update_s.append(time.perf_counter() - computed)
        g, u = statistics.median(gradient_s) * 1e6, statistics.median(update_s) * 1e6
        print(f"{mode:>8} {g:>12.1f} {u:>10.1f} {u / (g + u):>12.1%}")


if __name__ == "__main__":
    main()
