"""Predicted whole runs on P-core machines, from a calibration, and their validation.

For each algorithm (lock, hogwild, leashed) and thread count m on a machine
of P cores, ``asgd.dynamics.machine`` simulates the calibrated step
(``asgd.dynamics.calibrate``) and gives updates/s, the staleness
distribution, CAS failures and drops per update and the peak number of
parameter buffers; ``asgd.dynamics.convergence`` runs the real model on the
real data with that staleness injected and gives the updates to the loss
level epsilon; their quotient is the predicted time to epsilon.

Machines: the calibrated one (its cores, the cores a gradient keeps busy
alone, the measured contention of k gradients at once, its copy bandwidth,
the GIL) and, for each requested core count P, a machine we do not have:
P cores, the same step and intra-op parallelism, gradients beside each other
slowed as measured here with P gradients on P cores, copies sharing
``memory_gbs`` of bandwidth, the calibrated GIL time per step; optionally
also without the GIL (a worker loop that never takes it: what-if).

Validation: real runs on this machine (m = 1, 2 and oversubscribed 4, 8 by
default, several seeds) measured with the same criteria, and per cell the
ratios predicted / measured of updates/s and time to epsilon, the mean
staleness of both and their total-variation distance. A prediction for a
machine we do not have is printed beside the validation error of its
algorithm on the machine we do have.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import statistics
import time
from typing import Sequence

import numpy as np

from asgd.dynamics import calibrate as cal
from asgd.dynamics import machine as mc
from asgd.dynamics import simulator, validation

ALGORITHMS = cal.ALGORITHMS
COLORS = {"lock": "tab:blue", "hogwild": "tab:orange", "leashed": "tab:green"}


# ---------------------------------------------------------- the model ----

def gil_time(calibration: dict, algorithm: str) -> float:
    """The model's GIL time per step (see ``calibrate``: held + one hand-off per acquisition)."""
    return float(calibration["gil"][algorithm]["model_s"])


def step_of(calibration: dict, algorithm: str) -> mc.Step:
    """The calibrated step of ``algorithm``: its m = 1 step split into GIL time,
    the lock's snapshot copy, the GIL-free gradient and the update; the GIL
    time held between the read and the update is the probe's figure for the
    gradient call and the store update, the rest is held before the read.

    The parts add up to the measured m = 1 step (1 / updates/s): the gradient
    is what is left after the GIL time, the read (lock) and the update, and
    keeps the shape of the measured gradient times.
    """
    s = calibration["steps"][algorithm]
    step_s = 1.0 / statistics.median(s["updates_per_s"])
    read = statistics.median(s["read_s"]) if algorithm == "lock" else 0.0
    update = statistics.median(s["update_s"])
    gil = gil_time(calibration, algorithm)
    compute = step_s - gil - read - update
    floor = 0.1 * statistics.median(s["compute_s"])
    if compute < floor:  # an inconsistent calibration: keep the gradient, shrink the GIL share
        gil, compute = max(step_s - read - update - floor, 0.0), floor
    samples = np.asarray(s["compute_samples"], np.float64)
    samples = samples * (compute / samples.mean()) if samples.size and samples.mean() > 0 \
        else np.array([compute])
    g = calibration["gil"]
    probe = g[algorithm]["probe_s"]
    post_read = g["gradient_call_s"] + g["update_call_s"]
    split = min(max(1.0 - post_read / probe, 0.0), 1.0) if probe > 0 else 0.5
    return mc.Step(simulator.EmpiricalTimes(samples), gil=gil, read=read, update=update,
                   gil_split=split)


def intra_op(calibration: dict) -> float:
    """Cores one gradient keeps busy alone: its time on one core / on all (in [1, P])."""
    one = calibration["one_core"]["gradient_s"][0]
    alone = calibration["concurrency"]["gradient_s"][0]
    return min(max(one / alone, 1.0), float(calibration["cores"]))


def contention(calibration: dict) -> list[float]:
    """c(k): measured time of one gradient with k at once / processor sharing's."""
    c, p, q = calibration["concurrency"], calibration["cores"], intra_op(calibration)
    alone = c["gradient_s"][0]
    return [t / (alone * max(1.0, k * q / p)) for k, t in zip(c["threads"], c["gradient_s"])]


def copy_gbs(calibration: dict) -> tuple[float, float]:
    """(one copy's bandwidth, all cores' copies together) in GB/s, as calibrated."""
    gbs = calibration["copies"]["gbs"]
    return gbs[0], max(gbs)


def calibrated_machine(calibration: dict, gil: bool = True) -> mc.Machine:
    """The machine the calibration ran on, as measured."""
    one, total = copy_gbs(calibration)
    p = calibration["cores"]
    return mc.Machine(p, intra_op(calibration), tuple(contention(calibration)),
                      copy_streams=max(total / one, 1.0), gil=gil,
                      name=f"this machine (P={p})" + ("" if gil else ", no GIL"))


def target_machine(calibration: dict, cores: int, memory_gbs: float,
                   grad_slowdown: float | None = None, gil: bool = True) -> mc.Machine:
    """A P-core machine we do not have: this machine's intra-op parallelism and
    step; gradients beside each other slowed as here with P gradients on P
    cores (or by ``grad_slowdown``), never sped up; copies sharing ``memory_gbs``."""
    one, _ = copy_gbs(calibration)
    slow = grad_slowdown_of(calibration) if grad_slowdown is None else grad_slowdown
    q = min(intra_op(calibration), float(cores))
    return mc.Machine(cores, q, (1.0, max(slow, 1.0)), copy_streams=max(memory_gbs / one, 1.0),
                      gil=gil,
                      name=f"P={cores}" + ("" if gil else ", no GIL"))


def grad_slowdown_of(calibration: dict) -> float:
    """The calibrated contention with P gradients on the P cores (at least 1)."""
    c = contention(calibration)
    return max(1.0, c[min(calibration["cores"], len(c)) - 1])


def ideal_rate(calibration: dict, machine: mc.Machine, threads: int, here: bool) -> float:
    """Compute-only ideal: gradients/s of m threads computing gradients and nothing else
    (on this machine as measured, up to the largest k measured; elsewhere
    min(m, P) / the gradient's time alone)."""
    c = calibration["concurrency"]
    if here:  # beyond the measured k, time-slicing adds nothing
        k = min(threads, len(c["gradient_s"]))
        return k / c["gradient_s"][k - 1]
    return min(threads, machine.cores) / c["gradient_s"][0]


def simulate_cell(machine: mc.Machine, step: mc.Step, algorithm: str, threads: int,
                  updates: int, persistence: int, seed: int = 0) -> dict:
    """One predicted cell: the simulation's summary, the ceilings, the staleness histogram."""
    res = mc.simulate(machine, step, threads, algorithm, updates,
                      persistence if algorithm == "leashed" else -1, rng=seed)
    s = res.summary()
    finished = max(s["applied"] + s["dropped"], 1)
    return {"machine": machine.name, "cores": machine.cores, "gil": machine.gil,
            "algorithm": algorithm, "threads": threads, "updates_per_s": res.throughput,
            "staleness_mean": s["staleness_mean"], "staleness_hist": s["staleness_hist"],
            "staleness_max": s["staleness_max"], "cas_failures_per_update": s["cas_failures"] / finished,
            "drop_rate": s["dropped"] / finished, "peak_buffers": res.peak_buffers,
            "gil_busy": res.gil_busy, "copies_mean": res.copies_mean,
            "gil_ceiling": mc.ceilings(machine, step, threads, algorithm)["gil"],
            "step_s": step.time}


# ------------------------------------------------------- convergence ----

class Convergence:
    """Updates to epsilon under injected staleness on the config's real problem,
    per seed (the seed sets the initialisation and the minibatch order, as in a
    run) and with the step-size table of the config at m threads (FLeet's and
    MindTheStep's depend on m); cached per (histogram, table, seed)."""

    def __init__(self, cfg, seeds: Sequence[int], epsilon: float, window: int, max_updates: int):
        from asgd.run import problem_of
        self.cfg = cfg
        self.seeds, self.epsilon, self.window = list(seeds), float(epsilon), int(window)
        self.max_updates = int(max_updates)
        self.problems = {}
        for seed in self.seeds:
            c = cfg.copy_and_resolve_references()
            c.seed = int(seed)
            self.problems[seed] = problem_of(c)
        self._tables: dict = {}
        self._cache: dict = {}

    def scales(self, threads: int) -> np.ndarray:
        """The step-size table the C store would use with ``threads`` workers."""
        if threads not in self._tables:
            from asgd import rules, stepsize
            from asgd.run import stepsize_spec
            c = self.cfg.copy_and_resolve_references()
            c.threads = int(threads)
            self._tables[threads] = np.asarray(stepsize.schedule(
                rules.update_rule(stepsize_spec(c)).transform).table(), np.float32)
        return self._tables[threads]

    def outcomes(self, hist, threads: int) -> list[tuple[float, bool]]:
        """(updates to epsilon, diverged) per seed; updates is inf when epsilon was
        not reached within max_updates or the run diverged."""
        from asgd.data import Batches
        from asgd.dynamics import convergence
        key = tuple(int(c) for c in np.trim_zeros(np.asarray(hist, np.int64), "b"))
        scales = self.scales(threads)
        table = scales.tobytes()
        out = []
        for seed in self.seeds:
            if (key, table, seed) not in self._cache:
                problem = self.problems[seed]
                taus = convergence.draw_staleness(key, self.max_updates,
                                                  np.random.default_rng([seed, 7]))
                res = convergence.run(
                    problem.grad_fn, problem.init_flat,
                    Batches(problem.train, int(self.cfg.batch_size), seed),
                    scales, taus, self.epsilon, self.window)
                self._cache[key, table, seed] = (res.updates, res.diverged)
            out.append(self._cache[key, table, seed])
        return out


def _mean_reached(values) -> tuple[float | None, int]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(finite)


# ------------------------------------------------------------ measuring ----

def measured_to_epsilon(run_dir: str, epsilon: float) -> tuple[float | None, float | None]:
    """(updates, wall seconds) at the first log event whose running-mean training loss
    is <= epsilon, from a run's metrics.jsonl; (None, None) if never."""
    from asgd import metrics
    for row in metrics.load_run(run_dir).rows:
        loss = row.get("train_loss")
        if loss is not None and loss <= epsilon:
            return float(row["updates"]), float(row["wall_time_s"])
    return None, None


def measure(cfg, threads: Sequence[int], seeds: Sequence[int], updates: int, epsilon: float,
            window: int, workdir: str, problems: dict, log=print) -> list[dict]:
    """Real runs of every algorithm, m in ``threads``, every seed, on this machine:
    one row per run with what the validation compares. ``problems``: the
    config's problem per seed (``Convergence.problems``). Runs are interleaved
    (seed-major) after one warm-up run, and write their folders under ``workdir``."""
    from asgd.run import execute, parse
    fields = cal.config_fields(cfg)
    rows = []
    warm = cal.run_config(fields, "leashed", 1, updates, workdir, seeds[0], window)
    execute(parse(warm), warm.to_dict(), problem=problems[seeds[0]])
    total, done = len(seeds) * len(threads) * len(ALGORITHMS), 0
    for seed in seeds:
        for m in threads:
            for algorithm in ALGORITHMS:
                c = cal.run_config(fields, algorithm, m, updates, workdir, seed, window)
                c.name = f"{algorithm}-m{m}-seed{seed}"
                summary = execute(parse(c), c.to_dict(), problem=problems[seed])
                u_eps, t_eps = measured_to_epsilon(summary["run_dir"], epsilon)
                finished = max(summary["updates"] + summary["dropped_updates"], 1)
                rows.append({"algorithm": algorithm, "threads": m, "seed": seed,
                             "run_dir": summary["run_dir"],
                             "updates_per_s": summary["updates_per_s"],
                             "staleness_hist": summary["staleness_hist"],
                             "staleness_mean": summary["staleness_mean"],
                             "cas_failures_per_update": summary["cas_failures"] / finished,
                             "drop_rate": summary["dropped_updates"] / finished,
                             "peak_buffers": summary["peak_live_buffers"],
                             "updates_to_eps": u_eps, "time_to_eps": t_eps})
                done += 1
                log(f"measure: {done}/{total} {algorithm} m={m} seed={seed}: "
                    f"{summary['updates_per_s']:.0f} upd/s, tau {summary['staleness_mean'] or 0:.2f}")
    return rows


# ------------------------------------------------------------ validation ----

def _pooled(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def validate(predicted: dict, measured: list[dict], conv: Convergence | None) -> dict:
    """Per (algorithm, m) cell: predicted vs measured (see the module docstring).

    ``predicted``: {(algorithm, m): cell} on the calibrated machine, cells with
    ``updates_to_eps`` (per seed) filled. Returns {"rows": [...], "summary": {...}}.
    """
    cells = sorted({(r["algorithm"], r["threads"]) for r in measured},
                   key=lambda c: (ALGORITHMS.index(c[0]), c[1]))
    rows = []
    for algorithm, m in cells:
        runs = [r for r in measured if r["algorithm"] == algorithm and r["threads"] == m]
        pred = predicted[algorithm, m]
        rate = float(np.mean(_pooled(runs, "updates_per_s")))
        rate_std = float(np.std(_pooled(runs, "updates_per_s")))
        hist = np.zeros(max(len(r["staleness_hist"]) for r in runs))
        for r in runs:
            hist[:len(r["staleness_hist"])] += r["staleness_hist"]
        comparison = validation.compare(hist, pred["staleness_hist"])
        u_meas, u_reached = _mean_reached(_pooled(runs, "updates_to_eps"))
        t_meas, _ = _mean_reached(_pooled(runs, "time_to_eps"))
        u_pred, _ = _mean_reached(pred["updates_to_eps"])
        u_inj = None
        if conv is not None:  # the measured staleness injected: the statistical part alone
            u_inj, _ = _mean_reached([u for u, _ in conv.outcomes(hist.astype(np.int64), m)])
        t_pred = u_pred / pred["updates_per_s"] if u_pred is not None else None
        tau_m, tau_p = comparison["measured_mean"], comparison["simulated_mean"]
        rows.append({
            "algorithm": algorithm, "threads": m, "runs": len(runs),
            "updates_per_s_measured": rate, "updates_per_s_std": rate_std,
            "updates_per_s_predicted": pred["updates_per_s"],
            "updates_per_s_ratio": pred["updates_per_s"] / rate,
            "staleness_mean_measured": tau_m, "staleness_mean_predicted": tau_p,
            "staleness_mean_error": (tau_p - tau_m) / tau_m if tau_m > 0 else None,
            "tv": comparison["tv"] if m > 1 else None,
            "cas_failures_measured": float(np.mean(_pooled(runs, "cas_failures_per_update"))),
            "cas_failures_predicted": pred["cas_failures_per_update"],
            "peak_buffers_measured": max(_pooled(runs, "peak_buffers") or [0]),
            "peak_buffers_predicted": pred["peak_buffers"],
            "updates_to_eps_measured": u_meas, "reached": u_reached,
            "updates_to_eps_injected_measured_tau": u_inj,
            "updates_to_eps_predicted": u_pred,
            "time_to_eps_measured": t_meas, "time_to_eps_predicted": t_pred,
            "time_to_eps_ratio": t_pred / t_meas if t_pred and t_meas else None})
    rate_err = [abs(r["updates_per_s_ratio"] - 1) for r in rows]
    tau_err = [abs(r["staleness_mean_error"]) for r in rows if r["staleness_mean_error"] is not None]
    tte = [abs(r["time_to_eps_ratio"] - 1) for r in rows if r["time_to_eps_ratio"]]
    per_algorithm = {}
    for a in ALGORITHMS:
        mine = [r for r in rows if r["algorithm"] == a]
        per_algorithm[a] = {
            "updates_per_s": _median([abs(r["updates_per_s_ratio"] - 1) for r in mine]),
            "staleness_mean": _median([abs(r["staleness_mean_error"]) for r in mine
                                       if r["staleness_mean_error"] is not None]),
            "time_to_eps": _median([abs(r["time_to_eps_ratio"] - 1) for r in mine
                                    if r["time_to_eps_ratio"]])}
    return {"rows": rows, "summary": {"updates_per_s": _median(rate_err),
                                      "staleness_mean": _median(tau_err),
                                      "time_to_eps": _median(tte),
                                      "per_algorithm": per_algorithm}}


def _median(values) -> float | None:
    return float(statistics.median(values)) if values else None


# ------------------------------------------------------------ markdown ----

def _f(value, digits=2, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if pct:
        return f"{100 * value:.0f} %"
    if isinstance(value, (int, np.integer)) or (abs(value) >= 100 and digits <= 2):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def calibration_md(calibration: dict) -> str:
    """The calibration in one table per part, with the machine and its load."""
    m, config, g = calibration["machine"], calibration["config"], calibration["gil"]
    loads = [calibration[p][k][0] for p in cal.PARTS for k in ("load_before", "load_after")]
    us = lambda seconds, digits=0: _f(1e6 * seconds, digits)  # noqa: E731
    lines = [f"Machine: {m['cpu_model'] or 'unknown CPU'}, {calibration['cores']} CPUs used "
             f"({m['cpu_count']} present), Python {m['python']}, jax {m['jax']}, {m['date']}; "
             f"1-minute load average during calibration {min(loads):.2f}–{max(loads):.2f}. "
             f"Config: {config['dataset']}, {config['model']} {tuple(config['mlp_hidden'])}, "
             f"batch {config['batch_size']}, cpus={config['cpus']}.", ""]
    rows = []
    for a in ALGORITHMS:
        s, gi = calibration["steps"][a], g[a]
        step = step_of(calibration, a)
        rate = statistics.median(s["updates_per_s"])
        rows.append([a, _f(rate, 0), us(1 / rate), us(statistics.median(s["compute_s"])),
                     us(statistics.median(s["read_s"]), 1), us(statistics.median(s["update_s"]), 1),
                     us(gi["probe_s"]), _f(gi["acquisitions"], 1), us(gi["held_s"]), us(gi["model_s"]),
                     _f(1 / gi["model_s"] if gi["model_s"] > 0 else None, 0),
                     _f(step.gil_split, 2, pct=True), _f(gi["runqueue_share"], 2, pct=True),
                     us(step.time)])
    lines.append(_md_table(
        ["algorithm", "m=1 updates/s", "step µs", "gradient call µs", "read µs", "update µs",
         "GIL probe µs/step", "GIL acquisitions/step", "GIL held µs/step", "GIL model µs/step",
         "GIL ceiling updates/s", "GIL share before the read", "probe run-queue share",
         "model step µs"], rows))
    lock = calibration["steps"]["lock"]
    hold = statistics.median(lock["read_s"]) + statistics.median(lock["update_s"])
    lines += ["", f"GIL probe check: a thread holding the GIL 100 µs per step measured "
                  f"{us(g['check']['measured_s'])} µs; an empty acquisition costs "
                  f"{us(g['handoff_pair_s'], 1)} µs of hand-offs (switch interval "
                  f"{us(g['switch_interval_s'])} µs while probing). Between read and update "
                  f"the gradient call holds the GIL {us(g['gradient_call_s'])} µs and the store "
                  f"update {us(g['update_call_s'])} µs (probe figures). The lock's hold time is "
                  f"its read + update: {us(hold)} µs.", ""]
    c = calibration["concurrency"]
    lines.append(_md_table(["gradients at once"] + [str(k) for k in c["threads"]],
                           [["µs per gradient"] + [us(t) for t in c["gradient_s"]],
                            ["contention beyond processor sharing"] +
                            [_f(x, 2) for x in contention(calibration)]]))
    cp, b = calibration["copies"], calibration["batches"]
    copies = ", ".join(f"{k} thread(s) {us(t, 1)} µs/update = {gb:.1f} GB/s"
                       for k, t, gb in zip(cp["threads"], cp["update_s"], cp["gbs"]))
    batches = ", ".join(f"b={bs}: {us(t)} µs" for bs, t in zip(b["batch_size"], b["gradient_s"]))
    lines += ["", f"One gradient pinned to one core: {us(calibration['one_core']['gradient_s'][0])} µs, "
                  f"so a gradient alone keeps {intra_op(calibration):.2f} cores busy (intra-op threads).",
              "", f"Store copies (copy + axpy of {cp['bytes'] / 1e6:.2f} MB per update, one store "
                  f"per thread): {copies}.",
              "", f"Gradient time vs batch size (one thread): {batches}; fit "
                  f"{us(b['fit']['fixed_s'])} µs + {us(b['fit']['per_example_s'], 2)} µs × b."]
    return "\n".join(lines)


def validation_md(result: dict) -> str:
    v = result["validation"]
    s = v["summary"]
    rows = []
    for r in v["rows"]:
        rows.append([r["algorithm"], r["threads"], r["runs"],
                     f"{_f(r['updates_per_s_measured'], 0)} ± {_f(r['updates_per_s_std'], 0)}",
                     _f(r["updates_per_s_predicted"], 0), _f(r["updates_per_s_ratio"], 2),
                     _f(r["staleness_mean_measured"], 2), _f(r["staleness_mean_predicted"], 2),
                     _f(r["tv"], 3), _f(r["cas_failures_measured"], 3), _f(r["cas_failures_predicted"], 3),
                     f"{r['peak_buffers_measured']} / {r['peak_buffers_predicted']}",
                     f"{_f(r['updates_to_eps_measured'], 0)} ({r['reached']}/{r['runs']})",
                     _f(r["updates_to_eps_injected_measured_tau"], 0), _f(r["updates_to_eps_predicted"], 0),
                     _f(r["time_to_eps_measured"], 3), _f(r["time_to_eps_predicted"], 3),
                     _f(r["time_to_eps_ratio"], 2)])
    eps = result["settings"]["epsilon"]
    table = _md_table(
        ["algorithm", "m", "runs", "updates/s measured", "predicted", "ratio", "τ mean measured",
         "predicted", "TV", "CAS fails/upd measured", "predicted", "peak buffers meas. / pred.",
         f"updates to ε={eps:g} measured", "injected, measured τ", "injected, predicted τ",
         "time to ε measured (s)", "predicted (s)", "ratio"], rows)
    return table + "\n\n" + (
        f"Median absolute error over the {len(v['rows'])} cells: updates/s "
        f"{_f(s['updates_per_s'], pct=True)}, mean staleness {_f(s['staleness_mean'], pct=True)} "
        f"(cells with m > 1), time to ε {_f(s['time_to_eps'], pct=True)}. Per algorithm "
        "(updates/s, τ mean, time to ε): " + "; ".join(
            f"{a} {_f(e['updates_per_s'], pct=True)}, {_f(e['staleness_mean'], pct=True)}, "
            f"{_f(e['time_to_eps'], pct=True)}" for a, e in s["per_algorithm"].items()) + ".")


def predictions_md(result: dict) -> str:
    """One table per machine: every algorithm and m."""
    errors = (result.get("validation") or {}).get("summary", {}).get("per_algorithm", {})
    blocks = []
    for name, cells in result["predictions"].items():
        rows = []
        for r in cells:
            e = errors.get(r["algorithm"], {})
            rows.append([r["algorithm"], r["threads"], _f(r["updates_per_s"], 0),
                         _f(r["gil_busy"], 2), _f(r["staleness_mean"], 2), r["staleness_max"],
                         _f(r["cas_failures_per_update"], 3), _f(r["drop_rate"], 3), r["peak_buffers"],
                         f"{_f(r['updates_to_eps_mean'], 0)} ({r['updates_to_eps_reached']}/"
                         f"{len(r['updates_to_eps'])}" + (f", {r['diverged']} diverged" if r["diverged"]
                                                          else "") + ")", _f(r["time_to_eps"], 3),
                         f"{_f(e.get('updates_per_s'), pct=True)} / {_f(e.get('staleness_mean'), pct=True)}"
                         f" / {_f(e.get('time_to_eps'), pct=True)}"])
        caps = result["gil_caps"].get(name, {})
        top = max(r["threads"] for r in cells)
        cap_text = "; ".join(f"{a}: GIL {1e6 / c['ceiling']:.0f} µs per step, 1/GIL = "
                             f"{_f(c['ceiling'], 0)} updates/s ("
                             + (f"the ideal reaches it at m ≈ {c['m_cross']:.1f}" if c["m_cross"]
                                else "the ideal stays below it") + "), "
                             + (f"90 % of it reached from m = {c['m_cap']}" if c["m_cap"]
                                else f"90 % of it not reached up to m = {top}")
                             for a, c in caps.items())
        blocks.append(f"**{name}** — GIL cap: {cap_text or 'none (no GIL)'}.\n\n" + _md_table(
            ["algorithm", "m", "updates/s", "GIL busy", "τ mean", "τ max", "CAS fails/upd", "drops/upd",
             "peak buffers", f"updates to ε={result['settings']['epsilon']:g} (reached)",
             "time to ε (s)", "validation error here: upd/s / τ / time to ε"], rows))
    return "\n\n".join(blocks)


def claims_md(result: dict) -> str:
    """What the predictions for machines we do not have say about the papers'
    many-thread claims, in numbers: time to epsilon against m and Leashed-SGD's
    ratio to the better of the other two (faster as m grows?), the spread and
    failures over seeds (more stable?), peak buffers (less memory?)."""
    lines = []
    mb = result["params"] * 4 / 1e6
    for name, cells in result["predictions"].items():
        if name == result["calibrated_name"]:
            continue
        by = {(r["algorithm"], r["threads"]): r for r in cells}
        ms = sorted({r["threads"] for r in cells})
        top = ms[-1]
        trend = "; ".join(f"{a} " + " → ".join(_f(by[a, m]["time_to_eps"], 3) for m in ms)
                          for a in ALGORITHMS)
        ratios = []
        for m in ms:
            leashed = by["leashed", m]["time_to_eps"]
            others = [by[a, m]["time_to_eps"] for a in ("hogwild", "lock")
                      if by[a, m]["time_to_eps"] is not None]
            ratios.append(_f(leashed / min(others), 2) if leashed is not None and others else "—")
        failed = ", ".join(f"{a} {by[a, top]['updates_to_eps_reached']}/{len(by[a, top]['updates_to_eps'])}"
                           f" reached ({by[a, top]['diverged']} diverged)" for a in ALGORITHMS)
        reached = {a: [m for m in ms if by[a, m]["time_to_eps"] is not None] for a in ALGORITHMS}
        spread = ", ".join(f"{a} {_f(_cv(by[a, reached[a][-1]]['updates_to_eps']), 2)} "
                           f"(m = {reached[a][-1]})" if reached[a] else f"{a} —" for a in ALGORITHMS)
        memory = ", ".join(f"{a} {by[a, top]['peak_buffers']} ({by[a, top]['peak_buffers'] * mb:.1f} MB)"
                           for a in ALGORITHMS)
        lines += [f"* **{name}**, m = {', '.join(map(str, ms))}.",
                  f"  * Faster as m grows? Time to ε (s): {trend}. Leashed-SGD ÷ the faster of "
                  f"Hogwild! and lock: {' → '.join(ratios)} (< 1: Leashed-SGD is faster).",
                  f"  * More stable? At m = {top}: {failed}; spread of updates to ε over seeds "
                  f"(std/mean) at the largest m each reached: {spread}.",
                  f"  * Less memory? Peak parameter buffers at m = {top}: {memory}."]
    return "\n".join(lines)


def _cv(values) -> float | None:
    """std / mean over seeds; None unless every seed (two or more) reached epsilon."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return float(np.std(values) / np.mean(values))


def fill_docs(path: str, blocks: dict[str, str]) -> None:
    """Replace each ``<!-- predict:NAME -->…<!-- /predict:NAME -->`` block of ``path``."""
    with open(path) as f:
        text = f.read()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- predict:{name} -->\n).*?(\n<!-- /predict:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{path} has no <!-- predict:{name} --> … <!-- /predict:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------ figure ----

def figure(result: dict, path: str) -> None:
    """Per machine (rows): time to epsilon, updates/s (with the GIL ceiling and the
    compute-only ideal) and mean staleness against m, one line per algorithm;
    measured points (mean ± std over seeds, nudged apart in m) on this machine;
    an x at the top where epsilon was not reached."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator
    machines = list(result["predictions"])
    fig, axes = plt.subplots(len(machines), 3, figsize=(14, 3.6 * len(machines)), squeeze=False)
    measured = result.get("measured") or []
    eps = result["settings"]["epsilon"]
    for row, name in zip(axes, machines):
        cells = result["predictions"][name]
        ms = sorted({r["threads"] for r in cells})
        unreached = []
        for k, a in enumerate(ALGORITHMS):
            mine = sorted((r for r in cells if r["algorithm"] == a), key=lambda r: r["threads"])
            xs = [r["threads"] for r in mine]
            style = dict(color=COLORS[a], marker="o", ms=3, label=f"{a} (model)")
            row[0].plot(xs, [r["time_to_eps"] if r["time_to_eps"] is not None else np.nan
                             for r in mine], **style)
            unreached += [(r["threads"] * 1.06 ** (k - 1), a) for r in mine if r["time_to_eps"] is None]
            row[1].plot(xs, [r["updates_per_s"] for r in mine], **style)
            row[2].plot(xs, [r["staleness_mean"] for r in mine], **style)
            ceiling = mine[0]["gil_ceiling"]
            if math.isfinite(ceiling):
                row[1].axhline(ceiling, color=COLORS[a], ls=":", lw=1, label=f"{a}: 1 / GIL time")
            if name == result["calibrated_name"] and measured:
                for col, key in ((0, "time_to_eps"), (1, "updates_per_s"), (2, "staleness_mean")):
                    pts = {}
                    for r in measured:
                        if r["algorithm"] == a and r.get(key) is not None:
                            pts.setdefault(r["threads"], []).append(r[key])
                    if pts:
                        x = sorted(pts)
                        row[col].errorbar([v * 1.06 ** (k - 1) for v in x], [np.mean(pts[v]) for v in x],
                                          yerr=[np.std(pts[v]) for v in x], color=COLORS[a],
                                          fmt="s", mfc="none", ms=7, capsize=3,
                                          label=f"{a} (measured)" if col == 0 else None)
        row[1].plot(ms, [result["ideal"][name][str(m)] for m in ms], color="k", ls="--", lw=1,
                    label="compute-only ideal")
        row[0].set_yscale("log")
        row[1].set_yscale("log")
        if unreached:
            top = row[0].get_ylim()[1]
            for m, a in unreached:
                row[0].plot([m], [top], marker="x", color=COLORS[a], ms=8, clip_on=False)
        row[0].set_ylabel(f"time to loss {eps:g} (s)" + ("; x: not reached" if unreached else ""))
        row[1].set_ylabel("updates/s")
        row[2].set_ylabel("mean staleness τ")
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(ms))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(m) for m in ms])
            ax.set_xlim(ms[0] / 1.25, ms[-1] * 1.25)
            ax.set_xlabel("threads m")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
        row[1].legend(fontsize=6, ncol=2)
    c = result.get("config_text")
    if c:
        fig.suptitle(c, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------ the run ----

def gil_caps(cells: list[dict], cores: int) -> dict:
    """Per algorithm: the GIL ceiling, the m at which the compute-only ideal
    min(m, P) / step would reach it (None if it cannot on P cores), and the
    smallest m whose predicted updates/s is >= 90 % of it (None if none)."""
    out = {}
    for a in ALGORITHMS:
        mine = sorted((r for r in cells if r["algorithm"] == a), key=lambda r: r["threads"])
        if not mine or not math.isfinite(mine[0]["gil_ceiling"]):
            continue
        ceiling = mine[0]["gil_ceiling"]
        m_cap = next((r["threads"] for r in mine if r["updates_per_s"] >= 0.9 * ceiling), None)
        cross = mine[0]["step_s"] * ceiling  # m / step = 1 / GIL time
        out[a] = {"ceiling": ceiling, "m_cap": m_cap, "m_cross": cross if cross <= cores else None}
    return out


def predict(cfg, calibration: dict, cores: Sequence[int], threads: Sequence[int],
            memory_gbs: float, grad_slowdown: float | None = None, gil_free: bool = False,
            epsilon: float = 0.5, window: int = 20, max_updates: int = 3000,
            seeds: Sequence[int] = (0, 1, 2), sim_updates: int = 20_000,
            measure_threads: Sequence[int] = (), measure_updates: int = 1500,
            workdir: str = ".", log=print) -> dict:
    """Predictions for every machine, algorithm and m; with ``measure_threads``, real
    runs on this machine and the validation. Returns a JSON-able dict."""
    from asgd.run import parse
    parse(cfg)
    persistence = int(cfg.persistence)  # leashed cells; the others always apply
    steps = {a: step_of(calibration, a) for a in ALGORITHMS}
    here = calibrated_machine(calibration)
    machines = [here] + [target_machine(calibration, p, memory_gbs, grad_slowdown) for p in cores]
    if gil_free:
        machines += [target_machine(calibration, p, memory_gbs, grad_slowdown, gil=False)
                     for p in cores]
    conv = Convergence(cfg, seeds, epsilon, window, max_updates)
    slowdown = grad_slowdown_of(calibration) if grad_slowdown is None else grad_slowdown
    model = f"{cfg.model} {tuple(cfg.mlp_hidden)}" if cfg.model == "mlp" else cfg.model
    result = {"settings": {"cores": list(cores), "threads": list(threads), "memory_gbs": memory_gbs,
                           "grad_slowdown": slowdown, "intra_op": intra_op(calibration),
                           "epsilon": epsilon, "window": window, "max_updates": max_updates,
                           "seeds": list(seeds), "sim_updates": sim_updates,
                           "persistence": persistence, "measure_threads": list(measure_threads),
                           "measure_updates": measure_updates},
              "calibrated_name": here.name, "params": int(calibration["params"]),
              "predictions": {}, "ideal": {}, "gil_caps": {}, "measured": None, "validation": None,
              "config_text": (f"{cfg.dataset} {model}, batch {cfg.batch_size}, {cfg.stepsize} step "
                              f"{cfg.learning_rate:g}; calibrated on "
                              f"{calibration['machine']['cpu_model'] or 'this machine'} "
                              f"({calibration['machine']['date']})")}
    t0 = time.perf_counter()
    for machine in machines:
        ms = sorted(set(threads) | (set(measure_threads) if machine is here else set()))
        cells = []
        for a in ALGORITHMS:
            for m in ms:
                cell = simulate_cell(machine, steps[a], a, m, sim_updates, persistence)
                outcomes = conv.outcomes(cell["staleness_hist"], m)
                cell["updates_to_eps"] = [u for u, _ in outcomes]
                cell["diverged"] = sum(d for _, d in outcomes)
                mean, reached = _mean_reached(cell["updates_to_eps"])
                cell["updates_to_eps_mean"], cell["updates_to_eps_reached"] = mean, reached
                cell["time_to_eps"] = mean / cell["updates_per_s"] if mean is not None else None
                cells.append(cell)
                log(f"predict: {machine.name} {a} m={m}: {cell['updates_per_s']:.0f} upd/s, "
                    f"tau {cell['staleness_mean']:.2f}, updates to eps {_f(mean, 0)} "
                    f"({time.perf_counter() - t0:.0f} s)")
        result["predictions"][machine.name] = cells
        result["ideal"][machine.name] = {str(m): ideal_rate(calibration, machine, m, machine is here)
                                        for m in ms}
        result["gil_caps"][machine.name] = gil_caps(cells, machine.cores)
    if measure_threads:
        measured = measure(cfg, measure_threads, seeds, measure_updates, epsilon, window,
                           workdir, conv.problems, log)
        predicted_here = {(r["algorithm"], r["threads"]): r for r in result["predictions"][here.name]}
        result["measured"] = measured
        result["validation"] = validate(predicted_here, measured, conv)
    return result


def write_outputs(result: dict, calibration: dict, out: str, plot: str, docs: str | None) -> dict:
    """predictions.md, validation.md, calibration.md, claims.md, cells.csv and the figure;
    fills the blocks of ``docs`` and copies the figure to predict/predict.png beside it."""
    os.makedirs(out, exist_ok=True)
    blocks = {"calibration": calibration_md(calibration), "predictions": predictions_md(result),
              "claims": claims_md(result)}
    if result["validation"]:
        blocks["validation"] = validation_md(result)
    for name, body in blocks.items():
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(body + "\n")
    with open(os.path.join(out, "cells.csv"), "w", newline="") as f:
        keys = ["machine", "cores", "gil", "algorithm", "threads", "updates_per_s", "gil_busy",
                "staleness_mean", "staleness_max", "cas_failures_per_update", "drop_rate",
                "peak_buffers", "updates_to_eps_mean", "updates_to_eps_reached", "time_to_eps"]
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        for cells in result["predictions"].values():
            w.writerows(cells)
    figure(result, plot)
    if docs:
        image = os.path.join(os.path.dirname(os.path.abspath(docs)), "predict", "predict.png")
        os.makedirs(os.path.dirname(image), exist_ok=True)
        shutil.copyfile(plot, image)
        fill_docs(docs, {**blocks, "predictions": blocks["predictions"] + (
            "\n\n![Predicted time to ε, updates/s (GIL ceilings dotted, compute-only ideal "
            "dashed) and mean staleness against m; measured points on this machine]"
            "(predict/predict.png)")})
    return blocks
