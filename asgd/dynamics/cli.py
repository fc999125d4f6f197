"""Command line: ``python -m asgd.dynamics {simulate,penalty,validate} ...``.

Each subcommand prints a table and writes a PNG plot and the full results as
JSON into its own output folder (``--out``, by default
``dynamics/<command>-<timestamp>/``, so no call overwrites another's;
``--plot`` and ``--json`` name the files instead). Bad input exits with
status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from asgd import staleness as st


class UsageError(ValueError):
    """Bad command-line input; reported as one line, exit status 2."""


# ------------------------------------------------------------------ parsing ----

def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def parse_staleness(text: str):
    """``poisson:LAM``, ``geometric:P``, ``cmp:LAM,NU`` or ``hist:FILE`` (a JSON list
    of counts, or a run's summary.json whose staleness_hist is used)."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "poisson":
            return st.Poisson(float(arg))
        if kind == "geometric":
            return st.Geometric(float(arg))
        if kind == "cmp":
            lam, nu = (float(x) for x in arg.split(","))
            return st.ConwayMaxwellPoisson(lam, nu)
        if kind == "hist":
            with open(arg) as f:
                counts = json.load(f)
            if isinstance(counts, dict):
                counts = counts.get("staleness_hist")
            return st.Empirical(np.asarray(counts, np.float64), smoothing=0.0)
    except (TypeError, ValueError, OSError) as err:
        raise UsageError(f"bad staleness model {text!r}: {err}") from None
    raise UsageError(f"bad staleness model {text!r}; use poisson:LAM, geometric:P, "
                     f"cmp:LAM,NU or hist:FILE")


def _pm(mean, std, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _figure(n: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _outputs(args) -> None:
    """Resolve --out/--plot/--json into file paths; folders are made when written."""
    import datetime
    import os
    if not args.out:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = args.out = os.path.join("dynamics", f"{args.command}-{stamp}")
        k = 1
        while os.path.exists(args.out):  # two calls within a second
            k += 1
            args.out = f"{base}-{k}"
    args.plot = args.plot or os.path.join(args.out, f"{args.command}.png")
    args.json = args.json or os.path.join(args.out, f"{args.command}.json")


def _parent(path: str) -> str:
    import os
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def _write_json(path: str, obj) -> None:
    with open(_parent(path), "w") as f:
        json.dump(obj, f, indent=1, default=float)
    print(f"results: {path}")


# ----------------------------------------------------------------- simulate ----

def cmd_simulate(args) -> None:
    from asgd.dynamics import simulator
    try:
        compute = [simulator.parse_dist(c) for c in (args.compute or ["exp:1"])]
        update = simulator.parse_dist(args.update_time) if ":" in args.update_time \
            else float(args.update_time)
        read = float(args.read_time)
    except ValueError as err:
        raise UsageError(str(err)) from None
    disciplines = args.discipline.split(",")
    for d in disciplines:
        if d not in simulator.DISCIPLINES:
            raise UsageError(f"unknown discipline {d!r}; choose from {list(simulator.DISCIPLINES)}")
    results, rows = [], []
    for d in disciplines:
        for m in args.threads:
            if len(compute) not in (1, m):
                raise UsageError(f"--compute given {len(compute)} times; give it once or "
                                 f"once per worker (threads={m})")
            t0 = time.perf_counter()
            sim = simulator.simulate(m, compute if len(compute) == m else compute[0], update, d,
                                     args.updates, args.persistence, read, args.burn_in,
                                     rng=args.seed)
            wall = time.perf_counter() - t0
            s = sim.summary()
            fit = st.best_fit(sim.hist)[0] if sim.hist.sum() else "-"
            fails = s["cas_failures"] / max(s["applied"] + s["dropped"], 1)
            rows.append([d, m, _pm(s["staleness_mean"], s["staleness_std"], 2), s["staleness_max"],
                         f"{fails:.3f}", s["dropped"], f"{s['throughput']:.3g}", fit,
                         f"{wall:.2f}"])
            results.append({"discipline": d, "sim_seconds": wall, **s})
    print(_table(["discipline", "m", "tau mean ± std", "tau max", "CAS fails/upd", "dropped",
                  "throughput", "best fit", "sim s"], rows))
    fig, axes = _figure(len(results))
    for ax, r in zip(axes, results):
        h = np.asarray(r["staleness_hist"], np.float64)
        ax.bar(np.arange(h.size), h / h.sum(), width=1.0, color="tab:blue", alpha=0.7)
        ax.set_title(f"{r['discipline']}, m={r['threads']}: mean {r['staleness_mean']:.2f}")
        ax.set_xlabel("staleness tau")
        ax.set_ylabel("P(tau)")
    _save(fig, args.plot)
    _write_json(args.json, results)


# ------------------------------------------------------------------ penalty ----

def cmd_penalty(args) -> None:
    from asgd.dynamics import penalty as pen
    model = parse_staleness(args.staleness)
    methods = args.methods.split(",")
    for name in methods:
        if name not in pen.METHODS:
            raise UsageError(f"unknown method {name!r}; choose from {list(pen.METHODS)}")
    if args.problem not in pen.OBJECTIVES:
        raise UsageError(f"unknown problem {args.problem!r}; choose from {list(pen.OBJECTIVES)}")
    obj = pen.OBJECTIVES[args.problem](seed=args.seed)
    t0 = time.perf_counter()
    res = pen.penalty(obj, model, methods, args.threads, args.alpha, args.epsilon, args.steps,
                      args.seeds, args.seed)
    wall = time.perf_counter() - t0
    seq = res["sequential_stats"]
    print(f"{res['objective']}: tau ~ {res['model']} (mean {model.mean():.2f}), "
          f"alpha={res['alpha']}, epsilon={res['epsilon']} (relative), {res['seeds']} seeds, "
          f"{res['steps']} steps max, FLeet m={res['threads']}; {wall:.1f} s")
    rows = [["sequential (tau=0)", f"{seq['reached']}/{res['seeds']}",
             _pm(seq["mean"], seq["std"]), "1"]]
    for name, r in res["methods"].items():
        rows.append([name, f"{r['reached']}/{res['seeds']}", _pm(r["mean"], r["std"]),
                     _pm(r["ratio_mean"], r["ratio_std"], 2)])
    print(_table(["step size", "reached", "iters to eps", "penalty (x sequential)"], rows))
    print("penalty: iterations to epsilon / sequential's, per seed, over seeds that reached "
          "epsilon; '-' = none did")
    fig, axes = _figure(1)
    ax = axes[0]
    names = list(res["methods"])
    means = [res["methods"][n]["mean"] or np.nan for n in names]
    stds = [res["methods"][n]["std"] or 0.0 for n in names]
    ax.bar(names, means, yerr=stds, color="tab:orange", capsize=4)
    if seq["mean"] is not None:
        ax.axhline(seq["mean"], color="k", ls="--", label="sequential")
        ax.legend()
    ax.set_ylabel(f"iterations to eps={res['epsilon']}")
    ax.set_title(f"{res['objective']}, tau ~ {res['model']}")
    ax.tick_params(axis="x", rotation=30)
    _save(fig, args.plot)
    _write_json(args.json, res)


# ----------------------------------------------------------------- validate ----

def cmd_validate(args) -> None:
    from asgd.dynamics import validation
    reports, rows = [], []
    for run_dir in args.run_dirs:
        r = validation.validate(run_dir, args.updates, args.update_time, args.read_time,
                                seed=args.seed)
        mf, sf = r["measured_fit"], r["simulated_fit"]
        rows.append([run_dir, r["algorithm"], r["threads"], f"{r['tv']:.3f}",
                     f"{r['measured_mean']:.2f}", f"{r['simulated_mean']:.2f}",
                     f"{mf['best']} (tv {mf['scores'][mf['best']]['tv']:.3f})",
                     f"{sf['best']} (tv {sf['scores'][sf['best']]['tv']:.3f})", r["timings"]])
        reports.append(r)
    print(_table(["run", "algorithm", "m", "TV(sim, measured)", "tau measured", "tau simulated",
                  "best fit measured", "best fit simulated", "timings"], rows))
    fig, axes = _figure(len(reports))
    for ax, r in zip(axes, reports):
        h = np.asarray(r["measured_hist"], np.float64)
        s = np.asarray(r["simulated"]["staleness_hist"], np.float64)
        ax.bar(np.arange(h.size), h / h.sum(), width=1.0, alpha=0.5, label="measured")
        ax.step(np.arange(s.size), s / s.sum(), where="mid", color="tab:red", label="simulated")
        ax.set_title(f"{r['algorithm']}, m={r['threads']}: TV {r['tv']:.3f}")
        ax.set_xlabel("staleness tau")
        ax.legend()
    _save(fig, args.plot)
    _write_json(args.json, reports)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(_parent(path), dpi=110)
    print(f"plot: {path}")


# --------------------------------------------------------------------- main ----

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asgd.dynamics",
                                description="Staleness dynamics: simulate, penalty, validate.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate m asynchronous workers")
    s.add_argument("--threads", type=_int_list, default=[1, 2, 4, 8, 16],
                   help="m, comma-separated for a sweep (default 1,2,4,8,16)")
    s.add_argument("--discipline", default="lock,hogwild,leashed",
                   help="lock, hogwild, leashed; comma-separated")
    s.add_argument("--compute", action="append",
                   help="compute time: fixed:V, exp:MEAN, lognormal:MEAN,SIGMA, empirical:FILE; "
                        "once for all workers or once per worker (default exp:1)")
    s.add_argument("--update-time", default="0.01", help="update (CAS attempt) time: a number "
                   "or a distribution as --compute (default 0.01)")
    s.add_argument("--read-time", default="0", help="lock: time a read holds the mutex (default 0)")
    s.add_argument("--persistence", type=int, default=-1,
                   help="leashed CAS retries after the first attempt (-1: unbounded, the default)")
    s.add_argument("--updates", type=int, default=100_000,
                   help="simulated updates per (discipline, m) (default 100000)")
    s.add_argument("--burn-in", type=int, default=100,
                   help="first updates left out of the statistics (default 100)")
    s.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    s.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: dynamics/simulate-<timestamp>)")
    s.add_argument("--plot", default=None, metavar="PNG", help="plot file (default: <out>/simulate.png)")
    s.add_argument("--json", default=None, metavar="FILE",
                   help="results as JSON (default: <out>/simulate.json)")
    s.set_defaults(fn=cmd_simulate)

    q = sub.add_parser("penalty", help="iterations to epsilon under injected staleness")
    q.add_argument("--problem", default="least_squares",
                   help="least_squares, logistic or digits_mlp")
    q.add_argument("--staleness", default="poisson:7",
                   help="poisson:LAM, geometric:P, cmp:LAM,NU or hist:FILE (default poisson:7)")
    q.add_argument("--methods", default="constant,inverse,fleet,tail_tau,mindthestep",
                   help="step-size rules, comma-separated (default: all)")
    q.add_argument("--threads", type=int, default=None, help="FLeet's m (default round(E tau)+1)")
    q.add_argument("--alpha", type=float, default=None, help="step size (default: per problem)")
    q.add_argument("--epsilon", type=float, default=None,
                   help="relative suboptimality target (default: per problem)")
    q.add_argument("--steps", type=int, default=3000,
                   help="iterations per run; a run that has not reached epsilon by then counts "
                        "as not reached (default 3000)")
    q.add_argument("--seeds", type=int, default=5, help="repetitions (default 5)")
    q.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    q.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: dynamics/penalty-<timestamp>)")
    q.add_argument("--plot", default=None, metavar="PNG", help="plot file (default: <out>/penalty.png)")
    q.add_argument("--json", default=None, metavar="FILE",
                   help="results as JSON (default: <out>/penalty.json)")
    q.set_defaults(fn=cmd_penalty)

    v = sub.add_parser("validate", help="simulated vs measured staleness of run folders")
    v.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results folders of train.py runs")
    v.add_argument("--updates", type=int, default=200_000, help="simulated updates (default 200000)")
    v.add_argument("--update-time", type=float, default=None,
                   help="uncontended update time in seconds (default: from step_times.npz)")
    v.add_argument("--read-time", type=float, default=None,
                   help="lock: uncontended read time in seconds (default: from step_times.npz)")
    v.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    v.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: dynamics/validate-<timestamp>)")
    v.add_argument("--plot", default=None, metavar="PNG", help="plot file (default: <out>/validate.png)")
    v.add_argument("--json", default=None, metavar="FILE",
                   help="results as JSON (default: <out>/validate.json)")
    v.set_defaults(fn=cmd_validate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _outputs(args)
        args.fn(args)
    except (UsageError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
