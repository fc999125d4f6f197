"""Command line: ``python -m asgd.dynamics {simulate,penalty,sweep,validate,predict} ...``.

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


# The rules the sweep compares by default (asgd.dynamics.penalty.RULES, without importing JAX).
RULES_DEFAULT = ("constant", "inverse", "fleet", "tail_tau", "mindthestep:tilted",
                 "mindthestep:uniform", "mindthestep:geometric")


class UsageError(ValueError):
    """Bad command-line input; reported as one line, exit status 2."""


# ------------------------------------------------------------------ parsing ----

def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values or not all(v > 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def parse_staleness(text: str):
    """``poisson:LAM``, ``geometric:P``, ``cmp:LAM,NU``, ``cmp-mean:MEAN,NU`` (the CMP
    with that mean) or ``hist:FILE`` (a JSON list of counts, or a JSON object
    whose staleness_hist is used, e.g. a run's summary.json)."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "cmp-mean":
            mean, nu = (float(x) for x in arg.split(","))
            return st.ConwayMaxwellPoisson.with_mean(mean, nu)
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
                     f"cmp:LAM,NU, cmp-mean:MEAN,NU or hist:FILE")


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

def _ratio(summary: dict, seeds: int) -> str:
    """'1.23 (1.10-1.38)', with 'k/n' and 'd div' when not every seed reached epsilon."""
    r = summary["ratio"]
    text = "-" if r["gmean"] is None else f"{r['gmean']:.2f}"
    if r["low"] is not None:
        text += f" ({r['low']:.2f}-{r['high']:.2f})"
    if summary["reached"] < seeds:
        text += f" {summary['reached']}/{seeds}"
        if summary["diverged"]:
            text += f", {summary['diverged']} div"
    return text


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
          f"{res['steps']} steps max, m={res['threads']}; {wall:.1f} s")
    rows = [["sequential (tau=0)", f"{seq['reached']}/{res['seeds']}", "0",
             _pm(seq["mean"], seq["std"]), "1"]]
    for name, r in res["methods"].items():
        rows.append([name, f"{r['reached']}/{res['seeds']}", str(r["diverged"]),
                     _pm(r["mean"], r["std"]), _ratio(r, res["seeds"])])
    print(_table(["step size", "reached", "diverged", "iters to eps",
                  "penalty (x sequential, 95% CI)"], rows))
    print("penalty: iterations to epsilon / sequential's at the same alpha, geometric mean over "
          "the seeds that reached epsilon, with its 95% t-interval; '-' = none did")
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


# -------------------------------------------------------------------- sweep ----

MEASURED = ("tests/fixtures/staleness/lock-m2-b16.json",
            "tests/fixtures/staleness/leashed-m4-b16.json",
            "tests/fixtures/staleness/lock-m8-b16.json")
SWEEP_STALENESS = (tuple(f"poisson:{lam}" for lam in (1, 3, 7, 15, 31))
                   + tuple(f"cmp-mean:{lam},0.5" for lam in (1, 3, 7, 15, 31))
                   + tuple(f"hist:{path}" for path in MEASURED))


def _source_label(text: str) -> str:
    import os
    kind, _, arg = text.partition(":")
    if kind == "hist":
        return "measured " + os.path.splitext(os.path.basename(arg))[0]
    return f"{kind}({arg})"


def sweep_markdown(res: dict) -> str:
    """One table per objective and alpha multiple: sources x rules, each cell the penalty."""
    lines = []
    seeds = res["seeds"]
    for name, entry in res["objectives"].items():
        for multiple in res["multiples"]:
            alpha = multiple * entry["alpha_star"]
            lines += ["", f"**{name}**, alpha = {multiple:g} alpha* = {alpha:.3g} "
                          f"(epsilon {entry['epsilon']}, {entry['steps']} steps at most)", ""]
            head = ["staleness", "mean", "sequential"] + list(res["methods"])
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for label, source in entry["sources"].items():
                cell = source["cells"][str(float(multiple))]
                row = [label, f"{source['mean']:.1f}", _ratio(cell["sequential"], seeds)]
                row += [_ratio(cell[m], seeds) for m in res["methods"]]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines).strip() + "\n"


def versus_markdown(res: dict, reference: str = "constant") -> str:
    """Per objective and alpha multiple, how many staleness sources each rule does better,
    the same or worse than ``reference`` on (``penalty.versus``)."""
    from asgd.dynamics.penalty import versus
    rules = [m for m in res["methods"] if m != reference]
    lines = [f"versus {reference}: staleness sources where the rule is better / the same / "
             f"worse (2 more seeds reaching epsilon, or a paired ratio whose 95% interval "
             f"excludes 1 and whose geometric mean is beyond 10%; sources where neither "
             f"reached epsilon once are left out):", "",
             "| problem | alpha | " + " | ".join(rules) + " |", "|" + "---|" * (len(rules) + 2)]
    for name, entry in res["objectives"].items():
        for multiple in res["multiples"]:
            counts = []
            for rule in rules:
                tally = {"better": 0, "same": 0, "worse": 0, "none": 0}
                for source in entry["sources"].values():
                    cell = source["cells"][str(float(multiple))]
                    tally[versus(cell[rule], cell[reference])] += 1
                counts.append(f"{tally['better']} / {tally['same']} / {tally['worse']}")
            lines.append(f"| {name} | {multiple:g} alpha* | " + " | ".join(counts) + " |")
    return "\n".join(lines) + "\n"


def cmd_sweep(args) -> None:
    from asgd.dynamics import penalty as pen
    import os
    texts = args.staleness or list(SWEEP_STALENESS)
    sources = [(_source_label(t), parse_staleness(t)) for t in texts]
    methods = args.methods.split(",")
    problems = args.problems.split(",")
    for name in methods:
        if name not in pen.METHODS:
            raise UsageError(f"unknown method {name!r}; choose from {list(pen.METHODS)}")
    for name in problems:
        if name not in pen.OBJECTIVES:
            raise UsageError(f"unknown problem {name!r}; choose from {list(pen.OBJECTIVES)}")
    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 (for an interval), got {args.seeds}")
    settings = dict(pen.SWEEP_SETTINGS)
    if args.steps:
        settings = {k: (e, ev, args.steps - args.steps % ev) for k, (e, ev, _) in settings.items()}
    objectives = [pen.OBJECTIVES[name](seed=args.seed) for name in problems]
    t0 = time.perf_counter()
    progress = None if args.quiet else (
        lambda text: print(f"[{time.perf_counter() - t0:7.1f} s] {text}", flush=True))
    res = pen.sweep(objectives, sources, methods, args.multiples, args.seeds, args.seed,
                    settings, progress)
    res["wall_s"] = time.perf_counter() - t0
    res["staleness"] = texts
    try:
        res["load_average"] = os.getloadavg()
    except OSError:
        pass
    text = sweep_markdown(res)
    if "constant" in res["methods"]:
        text += "\n" + versus_markdown(res)
    print(text)
    print("cells: iterations to epsilon / sequential SGD's at alpha* (the best alpha of a grid), "
          "geometric mean over the seeds that reached epsilon (95% t-interval); 'k/n' when only "
          "k of n seeds reached it, 'd div' when d diverged")
    path = _parent(os.path.join(args.out, "sweep.md"))
    with open(path, "w") as f:
        f.write(text)
    print(f"table: {path}")
    _sweep_figure(res, args.plot)
    _write_json(args.json, res)


def _sweep_figure(res: dict, path: str) -> None:
    """Per alpha multiple (rows) and objective (columns) a heatmap: rules x staleness
    sources, coloured by the penalty (log scale); 'div' where every seed failed and
    some diverged, '-' where none reached epsilon without diverging."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    names, multiples = list(res["objectives"]), res["multiples"]
    methods = ["sequential"] + list(res["methods"])
    seeds = res["seeds"]
    n_src = max(len(e["sources"]) for e in res["objectives"].values())
    fig, axes = plt.subplots(len(multiples), len(names), squeeze=False,
                             figsize=(0.5 * n_src * len(names) + 2.5,
                                      (0.32 * len(methods) + 2.0) * len(multiples)),
                             gridspec_kw={"hspace": 0.75, "wspace": 0.05})
    norm = LogNorm(vmin=1.0, vmax=32.0)
    cmap = plt.get_cmap("YlOrRd").with_extremes(bad="#d9d9d9")
    image = None
    for j, name in enumerate(names):
        entry = res["objectives"][name]
        labels = list(entry["sources"])
        for i, multiple in enumerate(multiples):
            ax = axes[i][j]
            grid = np.full((len(methods), len(labels)), np.nan)
            for x, label in enumerate(labels):
                cells = entry["sources"][label]["cells"][str(float(multiple))]
                for y, method in enumerate(methods):
                    cell = cells[method]
                    g = cell["ratio"]["gmean"]
                    if g is not None:
                        grid[y, x] = min(max(g, 1.0), 32.0)
                        text = f"{g:.1f}" if g < 10 else f"{g:.0f}"
                        if cell["reached"] < seeds:
                            text += f"\n{cell['reached']}/{seeds}"
                    else:
                        text = "div" if cell["diverged"] else "-"
                    dark = g is not None and g > 8
                    ax.text(x, y, text, ha="center", va="center", fontsize=5,
                            color="white" if dark else "black")
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
            ax.set_yticks(range(len(methods)))
            ax.set_yticklabels(methods if j == 0 else [], fontsize=6)
            ax.set_title(f"{name}, alpha = {multiple:g} alpha* = {multiple * entry['alpha_star']:.3g}",
                         fontsize=8)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01,
                       ticks=[1, 2, 4, 8, 16, 32])
    bar.ax.set_yticklabels(["1", "2", "4", "8", "16", ">= 32"])
    bar.set_label("iterations to eps / sequential SGD's at alpha* (geometric mean)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.savefig(_parent(path), dpi=100, bbox_inches="tight")
    print(f"plot: {path} (grey: no seed reached epsilon; 'div': some diverged)")


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


# ------------------------------------------------------------------ predict ----

def load_train_config(name: str, overrides: list[str]):
    """A train config from a config file (``configs/x.py``) or a module of
    ``asgd.configs`` (``x``), with ``FIELD=VALUE`` overrides (Python literals)."""
    import ast
    import importlib
    import importlib.util
    import os
    try:
        if name.endswith(".py") or os.sep in name:
            spec = importlib.util.spec_from_file_location("_predict_config", name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(f"asgd.configs.{name}")
        cfg = module.get_config()
    except (ImportError, OSError, AttributeError, SyntaxError) as err:
        raise UsageError(f"cannot load config {name!r}: {err}") from None
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep or field not in cfg:
            raise UsageError(f"bad --set {item!r}: expected FIELD=VALUE, FIELD a train-config field")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            cfg[field] = value
        except TypeError as err:
            raise UsageError(f"bad --set {item!r}: {err}") from None
    return cfg


def cmd_predict(args) -> None:
    import os

    from asgd.dynamics import calibrate as cal, predict as pr
    from asgd.run import ConfigError, parse, restrict_cpus
    cfg = load_train_config(args.config, args.set or [])
    try:
        # Before JAX starts: the validation runs (every m, in this process) use
        # these CPUs. cpus = -1 (one per worker) cannot follow m in one
        # process, so it means every allowed CPU here, as in the calibration.
        cpus = parse(cfg).cpus
        if cpus > 0:
            restrict_cpus(cpus)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    for name, values, low in (("--threads", args.threads, 1), ("--cores", args.cores, 1),
                              ("--measure-threads", args.measure_threads or [1], 1),
                              ("--seeds", args.seeds, 0)):
        if min(values) < low:
            raise UsageError(f"{name} must be >= {low}, got {values}")
    if max(args.threads + (args.measure_threads or [])) > 256:
        raise UsageError("threads must be <= 256")
    for name, value in (("--epsilon", args.epsilon), ("--memory-gbs", args.memory_gbs)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive number, got {value}")
    if args.window < 1 or args.max_updates < args.window or args.sim_updates < 1:
        raise UsageError("--window must be >= 1, --max-updates >= --window, --sim-updates >= 1")
    if args.docs and not os.path.isfile(args.docs):
        raise UsageError(f"--docs {args.docs!r} is not a file")
    if args.calibrate == "here":
        calibration = cal.calibrate(cfg, updates=args.calibration_updates, reps=args.reps,
                                    log=lambda line: print(line, flush=True))
        _write_json(os.path.join(args.out, "calibration.json"), calibration)
    else:
        try:
            with open(args.calibrate) as f:
                calibration = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"cannot read calibration {args.calibrate!r}: {err}") from None
        if calibration.get("version") != cal.CALIBRATION_VERSION:
            raise UsageError(f"{args.calibrate} is not a calibration of this version "
                             f"(version {calibration.get('version')!r}, want {cal.CALIBRATION_VERSION})")
        mine, theirs = cal.config_fields(cfg), calibration["config"]
        differ = [k for k in ("dataset", "model", "mlp_hidden", "batch_size", "cpus")
                  if mine[k] != theirs[k]]
        if differ:
            raise UsageError(f"{args.calibrate} calibrated another problem ({', '.join(differ)} "
                             f"differ from the config)")
    load = max(calibration[p]["load_before"][0] for p in cal.PARTS)
    if load > 0.25 * calibration["cores"]:
        print(f"warning: the calibration ran under a load average of {load:.2f} on "
              f"{calibration['cores']} CPUs: its timings are not a measurement of this machine",
              flush=True)
    result = pr.predict(cfg, calibration, args.cores, args.threads, args.memory_gbs,
                        args.grad_slowdown, args.gil_free, args.epsilon, args.window,
                        args.max_updates, args.seeds, args.sim_updates,
                        args.measure_threads or (), args.measure_updates,
                        os.path.join(args.out, "runs"), log=lambda line: print(line, flush=True))
    blocks = pr.write_outputs(result, calibration, args.out, args.plot, args.docs)
    for name in ("calibration", "validation", "predictions", "claims"):
        if name in blocks:
            print(f"\n## {name}\n\n{blocks[name]}")
    print(f"tables: {args.out}/{{calibration,validation,predictions,claims}}.md, cells.csv"
          + (f"; filled {args.docs}" if args.docs else ""))
    print(f"plot: {args.plot}")
    _write_json(args.json, result)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(_parent(path), dpi=110)
    print(f"plot: {path}")


# --------------------------------------------------------------------- main ----

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m asgd.dynamics",
                                description="Staleness dynamics: simulate, penalty, sweep, validate, "
                                            "predict.")
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
                   help="poisson:LAM, geometric:P, cmp:LAM,NU, cmp-mean:MEAN,NU or hist:FILE "
                        "(default poisson:7)")
    q.add_argument("--methods", default="constant,inverse,fleet,tail_tau,mindthestep",
                   help="step-size rules, comma-separated: constant, inverse, fleet, tail_tau, "
                        "mindthestep (the default variant) or mindthestep:TARGET with TARGET "
                        "tilted, uniform or geometric (default: the first five)")
    q.add_argument("--threads", type=int, default=None,
                   help="m for FLeet and MindTheStep's prior and targets (default round(E tau)+1)")
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

    w = sub.add_parser("sweep", help="the penalty grid: problems x staleness x alpha x rules, "
                                     "relative to sequential SGD at its best alpha")
    w.add_argument("--problems", default="least_squares,logistic,digits_mlp",
                   help="comma-separated (default: all three)")
    w.add_argument("--staleness", action="append", metavar="MODEL",
                   help="a staleness source as for penalty, once per source (default: Poisson "
                        "and CMP (nu = 0.5) with mean 1, 3, 7, 15, 31 and the measured "
                        "histograms lock-m2-b16, leashed-m4-b16, lock-m8-b16 of "
                        "tests/fixtures/staleness)")
    w.add_argument("--methods", default=",".join(RULES_DEFAULT),
                   help="step-size rules, comma-separated as for penalty (default: constant, "
                        "inverse, fleet, tail_tau and every MindTheStep variant)")
    w.add_argument("--multiples", type=_float_list, default=[0.25, 0.5, 1.0, 2.0, 4.0],
                   help="alpha / alpha*, comma-separated (default 0.25,0.5,1,2,4)")
    w.add_argument("--seeds", type=int, default=10, help="repetitions (default 10)")
    w.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    w.add_argument("--steps", type=int, default=0,
                   help="iterations per run for every problem (default 0: per problem, "
                        "2000)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    w.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, also for sweep.md (default: dynamics/sweep-<timestamp>)")
    w.add_argument("--plot", default=None, metavar="PNG", help="plot file (default: <out>/sweep.png)")
    w.add_argument("--json", default=None, metavar="FILE",
                   help="results as JSON (default: <out>/sweep.json)")
    w.set_defaults(fn=cmd_sweep)

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

    r = sub.add_parser("predict", help="calibrate this machine, predict runs on P-core machines "
                       "for m = 1..64 and validate the predictions against real runs")
    r.add_argument("--config", default="mnist_mlp",
                   help="train config: a file (configs/x.py) or a module of asgd.configs "
                        "(default mnist_mlp)")
    r.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a train-config field (a Python literal), repeatable")
    r.add_argument("--calibrate", default="here", metavar="here|FILE",
                   help="'here' calibrates this machine now (written to <out>/calibration.json); "
                        "or a calibration.json from an earlier call (default here)")
    r.add_argument("--calibration-updates", type=int, default=1500,
                   help="updates of each m=1 calibration run (default 1500)")
    r.add_argument("--reps", type=int, default=3,
                   help="interleaved repetitions of each calibration measurement (default 3)")
    r.add_argument("--cores", type=_int_list, default=[64],
                   help="core counts P of the machines to predict, besides this one (default 64)")
    r.add_argument("--threads", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="thread counts m to predict (default 1,2,4,8,16,32,64)")
    r.add_argument("--memory-gbs", type=float, default=200.0,
                   help="memory bandwidth (GB/s) the store copies share on the predicted "
                        "machines (default 200)")
    r.add_argument("--grad-slowdown", type=float, default=None,
                   help="on the predicted machines, how much slower each gradient runs while "
                        "others run (default: as calibrated with P gradients on P cores here)")
    r.add_argument("--gil-free", action="store_true",
                   help="also predict a worker loop that never takes the GIL (what-if)")
    r.add_argument("--epsilon", type=float, default=0.5,
                   help="training-loss level of the time to epsilon (default 0.5)")
    r.add_argument("--window", type=int, default=20,
                   help="updates per running-mean loss window: the runs' log_every (default 20)")
    r.add_argument("--max-updates", type=int, default=3000,
                   help="injected-staleness runs stop here unreached (default 3000)")
    r.add_argument("--seeds", type=_int_list, default=[0, 1, 2],
                   help="seeds of the injected-staleness and the measured runs (default 0,1,2)")
    r.add_argument("--sim-updates", type=int, default=20_000,
                   help="simulated updates per predicted cell (default 20000)")
    r.add_argument("--measure-threads", type=_int_list, default=None,
                   help="validate: real runs of every algorithm at these m on this machine, "
                        "e.g. 1,2,4,8 (default: no validation)")
    r.add_argument("--measure-updates", type=int, default=1500,
                   help="updates of each validation run (default 1500)")
    r.add_argument("--docs", default=None, metavar="MD",
                   help="fill the <!-- predict:NAME --> blocks of this markdown file "
                        "(e.g. docs/dynamics.md)")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: dynamics/predict-<timestamp>)")
    r.add_argument("--plot", default=None, metavar="PNG", help="figure (default: <out>/predict.png)")
    r.add_argument("--json", default=None, metavar="FILE",
                   help="results as JSON (default: <out>/predict.json)")
    r.set_defaults(fn=cmd_predict)
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
