"""Stateful optimizers under asynchrony on MNIST: updates to each loss level, divergences
(prints a Markdown table; not a test).

    python bench/optimizer_evidence.py [--threads 2,4,8] [--seeds 5] [--epochs 10]
                                       [--optimizers sgd,momentum,adam] [--out FILE.json]

Every run: configs/mnist_mlp.py on ../shared/data/mnist (the 10k test split,
held out 80/20), batch 128, the compiled worker loop, one process per run
pinned as train.py pins it (cpus=-1: one CPU per worker, here at most 2), each
optimizer at its default learning rate (sgd: the config's 0.05; momentum 0.01
with beta 0.9 and adam 0.001, the usual library defaults that
optimizer_learning_rate = 0 selects; not tuned here), seeds 0..N-1. For each optimizer,
algorithm and m it reports over the seeds: how many reached each training-loss
level, the median and range of the applied updates at the first logged point
at or below it, how many diverged, the final eval accuracy, and the wall time
per update (under whatever else the machine runs: the load is printed).
m = 4 and 8 on a 2-core machine are oversubscribed: time-sliced workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")
ORDER = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
LEVELS = (0.5, 0.3)


def run_one(optimizer: str, algorithm: str, threads: int, seed: int, epochs: int,
            workdir: str) -> dict:
    """One train.py run in its own process; its summary and metrics rows."""
    flags = [f"--config={REPO}/configs/mnist_mlp.py", f"--config.data_dir={MNIST}",
             f"--config.optimizer={optimizer}",
             f"--config.algorithm={algorithm}", f"--config.threads={threads}",
             f"--config.seed={seed}", f"--config.epochs={epochs}", "--config.num_updates=0",
             "--config.log_every=10", "--config.eval_every=100000", "--config.quiet=True",
             f"--config.workdir={workdir}", f"--config.name={optimizer}-{algorithm}-m{threads}-s{seed}",
             "--noprint_summary"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *flags],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    sys.path.insert(0, REPO)
    from asgd import metrics
    runs = os.path.join(workdir, "runs")
    name = f"{optimizer}-{algorithm}-m{threads}-s{seed}"
    (folder,) = [d for d in os.listdir(runs) if d.endswith(name)]
    run = metrics.load_run(os.path.join(runs, folder))
    reached = {}
    for level in LEVELS:
        hit = next((r["updates"] for r in run.rows if r.get("train_loss") is not None
                    and r["train_loss"] <= level), None)
        reached[str(level)] = hit
    s = run.summary
    return {"optimizer": optimizer, "algorithm": algorithm, "threads": threads, "seed": seed,
            "reached": reached, "diverged": str(s["stop_reason"]).startswith("diverged"),
            "accuracy": s["eval_accuracy"], "updates": s["updates"],
            "us_per_update": 1e6 * s["wall_time_s"] / max(s["updates"], 1),
            "overwritten": s.get("optimizer_overwritten")}


def table(rows: list[dict]) -> str:
    head = ["optimizer", "algorithm", "m"]
    head += [f"updates to {level} (median [min, max], reached)" for level in LEVELS]
    head += ["diverged", "eval acc (median)", "µs/update (median)", "overwritten (hogwild)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(r["optimizer"], r["algorithm"], r["threads"]) for r in rows},
                  key=lambda k: (ORDER.index(k[0]), ["lock", "hogwild", "leashed"].index(k[1]),
                                 k[2]))
    for key in keys:
        group = [r for r in rows if (r["optimizer"], r["algorithm"], r["threads"]) == key]
        cells = [key[0], key[1], str(key[2])]
        for level in LEVELS:
            hits = [r["reached"][str(level)] for r in group if r["reached"][str(level)] is not None]
            if hits:
                cells.append(f"{statistics.median(hits):.0f} [{min(hits)}, {max(hits)}], "
                             f"{len(hits)}/{len(group)}")
            else:
                cells.append(f"not reached, 0/{len(group)}")
        cells.append(f"{sum(r['diverged'] for r in group)}/{len(group)}")
        cells.append(f"{statistics.median(r['accuracy'] or 0 for r in group):.3f}")
        cells.append(f"{statistics.median(r['us_per_update'] for r in group):.0f}")
        over = [r["overwritten"] for r in group if r["overwritten"] is not None]
        cells.append(f"{statistics.median(over):.0f}" if key[1] == "hogwild" and over else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="2,4,8", help="worker counts m (default 2,4,8)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    p.add_argument("--optimizers", default="sgd,momentum,adam", help="(default sgd,momentum,adam)")
    p.add_argument("--algorithms", default="lock,hogwild,leashed", help="(default all three)")
    p.add_argument("--out", default=None, help="also write every run's figures as JSON here")
    args = p.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows, refused = [], set()
    with tempfile.TemporaryDirectory() as workdir:
        for optimizer in args.optimizers.split(","):
            for algorithm in args.algorithms.split(","):
                for m in map(int, args.threads.split(",")):
                    for seed in range(args.seeds):
                        try:
                            rows.append(run_one(optimizer, algorithm, m, seed, args.epochs, workdir))
                        except RuntimeError as err:  # a configuration train.py refuses
                            if "needs threads <= CPUs" not in str(err):
                                raise
                            refused.add(f"{optimizer} {algorithm} m={m}: {err}")
                            break
                        r = rows[-1]
                        print(f"  {optimizer} {algorithm} m={m} seed={seed}: reached {r['reached']} "
                              f"acc {r['accuracy']:.3f} {r['us_per_update']:.0f} us/update",
                              flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(rows))
    for line in sorted(refused):
        print(f"not run (train.py refuses it): {line}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
