"""Step-size rules on real asynchronous runs: updates to a training loss (prints a table; not a test).

    python bench/stepsize_runs.py [--threads 2,4,8] [--alphas 0.1,0.4] [--seeds 5] [--out DIR]

Trains the MNIST MLP (784-128-128-128-10, batch 128, the 10k split in
../shared/data/mnist held out 80/20) with ``--algorithm`` (leashed) and m
workers under each step-size rule, and sequential SGD (m = 1, constant) as
the reference, for ``--updates`` applied updates per run. A run reaches a
loss eps at the first metrics line (every 10 updates) whose training loss
(the mean minibatch loss since the line before) is <= eps; it diverged if
it stopped on a non-finite loss or ended above its initial loss. Counts of
updates, not times: the machine's load changes the staleness the runs see
(it is recorded), not what is counted. Every run is a results folder under
``<out>/runs/``; a run whose summary.json exists is not run again.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist")
RULES = ("constant", "mindthestep", "mindthestep:uniform", "mindthestep:geometric", "inverse",
         "fleet", "tail_tau")


def numbers(text, kind=float):
    return [kind(x) for x in text.split(",") if x]


def updates_to(rows, eps):
    """First logged update count whose training loss is <= eps, or inf."""
    for row in rows:
        loss = row.get("train_loss")
        if loss is not None and math.isfinite(loss) and loss <= eps and row["updates"] > 0:
            return float(row["updates"])
    return math.inf


def diverged(run) -> bool:
    first = next((r["train_loss"] for r in run.rows if r.get("train_loss") is not None), None)
    final = run.summary.get("final_train_loss")
    stopped = str(run.summary.get("stop_reason", "")).startswith("diverged")
    return stopped or final is None or not math.isfinite(final) or (
        first is not None and final > first)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", default="leashed", help="lock, hogwild or leashed (default leashed)")
    p.add_argument("--threads", type=lambda t: numbers(t, int), default=[2, 4, 8],
                   help="worker counts m, comma-separated (default 2,4,8; > 2 oversubscribes 2 cores)")
    p.add_argument("--alphas", type=numbers, default=[0.1, 0.4], help="step sizes (default 0.1,0.4)")
    p.add_argument("--rules", default=",".join(RULES),
                   help="step-size rules as in asgd.dynamics penalty (default: constant, the "
                        "default mindthestep, its uniform and geometric variants, inverse, fleet, "
                        "tail_tau)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per configuration (default 5)")
    p.add_argument("--updates", type=int, default=1000, help="applied updates per run (default 1000)")
    p.add_argument("--targets", type=numbers, default=[0.5, 0.3],
                   help="training-loss levels eps (default 0.5,0.3)")
    p.add_argument("--worker", default="python",
                   help="the runs' worker loop: python (default, as docs/mindthestep.md's table) or "
                        "compiled")
    p.add_argument("--data-dir", default=MNIST, help="raw MNIST IDX files (default ../shared/data/mnist)")
    p.add_argument("--out", default="stepsize_runs", help="results folder (default ./stepsize_runs)")
    args = p.parse_args()
    sys.path.insert(0, REPO)
    from asgd import metrics
    from asgd.configs import mnist_mlp
    from asgd.dynamics.penalty import ratio_interval, versus
    from asgd.problem import make_problem
    from asgd.run import ConfigError, execute, parse

    rules = args.rules.split(",")

    def config(algorithm, m, rule, alpha, seed):
        cfg = mnist_mlp.get_config()
        cfg.data_dir, cfg.worker, cfg.cpus = args.data_dir, args.worker, 0  # no pinning: one process
        cfg.algorithm, cfg.threads, cfg.learning_rate, cfg.seed = algorithm, m, alpha, seed
        name, _, target = rule.partition(":")
        cfg.stepsize = name
        if target:
            cfg.stepsize_target = target
        cfg.epochs, cfg.num_updates, cfg.log_every, cfg.eval_every = 0, args.updates, 10, args.updates
        cfg.loss_targets = tuple(args.targets)
        cfg.quiet, cfg.workdir = True, args.out
        return cfg

    plan = [("sequential", 1, "constant", a, s) for a in args.alphas for s in range(args.seeds)]
    plan += [(args.algorithm, m, r, a, s) for a in args.alphas for m in args.threads
             for r in rules for s in range(args.seeds)]
    problem, loads, t0 = None, [], time.perf_counter()
    for i, (algorithm, m, rule, alpha, seed) in enumerate(plan):
        key = f"{algorithm}-m{m}-{rule.replace(':', '_')}-lr{alpha:g}-s{seed}"
        run_dir = os.path.join(args.out, "runs", key)
        if os.path.exists(os.path.join(run_dir, "summary.json")):
            continue
        cfg = config(algorithm, m, rule, alpha, seed)
        try:
            specs = parse(cfg)
        except ConfigError as err:
            sys.exit(f"stepsize_runs.py: error: {err}")
        problem = problem or make_problem(specs.data, specs.model)
        loads.append(os.getloadavg()[0])
        execute(specs, cfg.to_dict(), run_dir, problem)
        print(f"[{time.perf_counter() - t0:6.0f} s] {i + 1}/{len(plan)} {key} "
              f"(load {loads[-1]:.1f})", flush=True)

    runs = {}
    for algorithm, m, rule, alpha, seed in plan:
        key = f"{algorithm}-m{m}-{rule.replace(':', '_')}-lr{alpha:g}-s{seed}"
        runs[(algorithm, m, rule, alpha, seed)] = metrics.load_run(os.path.join(args.out, "runs", key))
    report = {"algorithm": args.algorithm, "updates": args.updates, "seeds": args.seeds,
              "targets": args.targets, "load_average_during": loads, "cells": []}
    lines = []

    def outcome(algorithm, m, rule, alpha, eps):
        iters = [updates_to(runs[(algorithm, m, rule, alpha, s)].rows, eps)
                 for s in range(args.seeds)]
        return {"iters": iters, "reached": sum(math.isfinite(x) for x in iters)}

    for eps in args.targets:
        lines += ["", f"updates to training loss {eps} (median over the seeds that reached it; "
                      f"ratio to sequential SGD at the same alpha and seed, geometric mean "
                      f"(95% interval); k/{args.seeds} reached, d diverged)", ""]
        head = ["alpha", "m", "tau mean", "sequential (m = 1)"] + rules
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for alpha in args.alphas:
            seq = [updates_to(runs[("sequential", 1, "constant", alpha, s)].rows, eps)
                   for s in range(args.seeds)]
            ok = [x for x in seq if math.isfinite(x)]
            seq_text = (f"{np.median(ok):.0f}" if ok else "-") + f" {len(ok)}/{args.seeds}"
            for m in args.threads:
                cells, taus = [], []
                for rule in rules:
                    rs = [runs[(args.algorithm, m, rule, alpha, s)] for s in range(args.seeds)]
                    iters = [updates_to(r.rows, eps) for r in rs]
                    div = sum(diverged(r) for r in rs)
                    reached = [x for x in iters if math.isfinite(x)]
                    ratio = ratio_interval(iters, seq)
                    taus += [r.summary.get("staleness_mean") or 0.0 for r in rs]
                    cap = [r.summary.get("stepsize_at_cap_share") for r in rs]
                    text = f"{np.median(reached):.0f}" if reached else "-"
                    if ratio["gmean"] is not None:
                        text += f", x{ratio['gmean']:.2f}"
                        if ratio["low"] is not None:
                            text += f" ({ratio['low']:.2f}-{ratio['high']:.2f})"
                    text += f" {len(reached)}/{args.seeds}" + (f", {div} div" if div else "")
                    cells.append(text)
                    report["cells"].append({
                        "eps": eps, "alpha": alpha, "m": m, "rule": rule, "updates_to": iters,
                        "sequential": seq, "diverged": div, "ratio": ratio,
                        "staleness_mean": [r.summary.get("staleness_mean") for r in rs],
                        "at_cap_share": cap,
                        "fit": [(r.summary.get("stepsize_fit") or {}).get("best_by_aic")
                                for r in rs]})
                lines.append(f"| {alpha:g} | {m} | {np.mean(taus):.2f} | {seq_text} | "
                             + " | ".join(cells) + " |")
    if "constant" in rules:
        others = [r for r in rules if r != "constant"]
        lines += ["", "versus constant, same seeds (better / same / worse: 2 more seeds reaching "
                      "eps, or a paired ratio whose 95% interval excludes 1 and whose geometric "
                      "mean is beyond 10%; none: neither reached eps)", "",
                  "| eps | alpha | m | " + " | ".join(others) + " |",
                  "|" + "---|" * (3 + len(others))]
        for eps in args.targets:
            for alpha in args.alphas:
                for m in args.threads:
                    ref = outcome(args.algorithm, m, "constant", alpha, eps)
                    marks = [versus(outcome(args.algorithm, m, r, alpha, eps), ref) for r in others]
                    lines.append(f"| {eps:g} | {alpha:g} | {m} | " + " | ".join(marks) + " |")
    text = "\n".join(lines).strip() + "\n"
    print(text)
    load = os.getloadavg()
    during = f"{np.mean(loads):.1f} on average" if loads else "(every run was already there)"
    print(f"load average now: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; during the runs: {during}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stepsize_runs.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "stepsize_runs.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(f"table: {os.path.join(args.out, 'stepsize_runs.md')}")


if __name__ == "__main__":
    main()
