"""Aggregation of runs: time to ε, statistics over seeds, the study's table.

A *run* is one results folder (config.json, metrics.jsonl, summary.json). A
*configuration* is a run's sweep fields without the seed; its runs are the
seeds. Everything here is plain numpy on what the runs wrote, so a table can
be rebuilt from a study folder at any time.

Order. Configurations are ordered sequential -> sync -> lock -> hogwild ->
leashed (the baselines first), then by m, step size (``STEPSIZE_ORDER``),
α and persistence.

Divergence. A run whose ``stop_reason`` starts with "diverged" is counted in
the row's ``diverged`` column and left out of *every* statistic of the row
(means, stds, maxima, times to ε): its NaN loss and chance-level accuracy
say nothing about the configuration's speed or quality when it converges.

Time to ε. Measured on the logged running-mean training loss (``train_loss``
in metrics.jsonl; each value is attributed to the wall time of its event).
The first logged point at or below ε is found; the time is then
*interpolated linearly in the loss* between that point and the one before
it, so a coarse ``log_every`` does not round every time up to the next event.
Of the runs that did not diverge, those that reached ε give the mean and std
(``reached_<ε>``); the others are counted in ``not_reached_<ε>``, so
reached + not reached + diverged = seeds. (summary.json's ``time_to_target``
is the uninterpolated first crossing; it is never earlier than this value.)

Spread. ``std`` is the sample standard deviation (ddof=1) over the runs that
have a value; with fewer than two values it is None.

The CSV holds every number at full precision, the Markdown the same rows in
fixed-point notation (``FORMATS``).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from asgd import metrics

# The sweep fields that name a configuration, in table order (seed excluded).
GROUP_FIELDS = ("algorithm", "threads", "stepsize", "learning_rate", "persistence")
ALGORITHM_ORDER = ("sequential", "sync", "lock", "hogwild", "leashed")
STEPSIZE_ORDER = ("constant", "inverse", "fleet", "tail_tau", "mindthestep", "dc_asgd")
# Statistics over seeds (mean and std) and over runs (maximum), from summary.json.
MEAN_FIELDS = ("eval_loss", "eval_accuracy", "updates_per_s", "staleness_mean",
               "cas_failures", "dropped_updates")
MAX_FIELDS = ("staleness_max", "peak_live_buffers", "peak_rss_mb")


class Stat(NamedTuple):
    """Mean and sample std over the seeds that have a value; n counts them."""
    mean: float | None
    std: float | None
    n: int


def diverged(run: metrics.Run) -> bool:
    """True if the run stopped on a non-finite loss or parameters."""
    return str(run.summary.get("stop_reason", "")).startswith("diverged")


def group_key(config: dict) -> tuple:
    """The configuration a run belongs to; persistence counts for leashed only."""
    key = {field: config.get(field) for field in GROUP_FIELDS}
    if key["algorithm"] != "leashed":
        key["persistence"] = None
    return tuple(key[field] for field in GROUP_FIELDS)


def _rank(order: Sequence[str], value) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def sort_key(key: tuple) -> tuple:
    """Table order of a configuration key (see the module docstring)."""
    fields = dict(zip(GROUP_FIELDS, key))
    numbers = tuple((v is None, v if v is not None else 0)
                    for v in (fields["threads"], fields["learning_rate"], fields["persistence"]))
    return (_rank(ALGORITHM_ORDER, fields["algorithm"]), numbers[0],
            _rank(STEPSIZE_ORDER, fields["stepsize"]), *numbers[1:])


def group_label(key: tuple, skip: Sequence[str] = ()) -> str:
    """Short human label of a configuration, e.g. ``leashed m=2 constant α=0.05 p=-1``.

    Fields in ``skip`` are left out (e.g. ``threads`` when a panel already says m).
    """
    fields = dict(zip(GROUP_FIELDS, key))
    parts = [fields["algorithm"]]
    if "threads" not in skip:
        parts.append(f"m={fields['threads']}")
    if "stepsize" not in skip:
        parts.append(str(fields["stepsize"]))
    if "learning_rate" not in skip and fields["learning_rate"] is not None:
        parts.append(f"α={fields['learning_rate']:g}")
    if "persistence" not in skip and fields["persistence"] is not None:
        parts.append(f"p={fields['persistence']}")
    return " ".join(parts)


def group_runs(runs: Iterable[metrics.Run]) -> dict[tuple, list[metrics.Run]]:
    """Runs by configuration, configurations in table order, seeds in order."""
    groups: dict[tuple, list[metrics.Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run.config), []).append(run)
    return {k: sorted(groups[k], key=lambda r: r.config.get("seed", 0))
            for k in sorted(groups, key=sort_key)}


def loss_series(rows: Sequence[dict], field: str = "train_loss",
                x: str = "wall_time_s") -> tuple[np.ndarray, np.ndarray]:
    """(x values, values) of the rows that logged a finite ``field``."""
    points = [(r[x], r[field]) for r in rows
              if r.get(field) is not None and math.isfinite(r[field])]
    if not points:
        return np.zeros(0), np.zeros(0)
    xs, values = np.asarray(points, np.float64).T
    return xs, values


def time_to_target(times: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Time the loss first reaches ``target``, interpolated linearly in the loss.

    Between the first point i with loss_i <= target and point i-1:
    t = t_{i-1} + (loss_{i-1} - target) / (loss_{i-1} - loss_i) * (t_i - t_{i-1}).
    None when no point reaches the target; t_0 when the first point does.
    """
    for i, (t, loss) in enumerate(zip(times, losses)):
        if loss <= target:
            if i == 0:
                return float(t)
            t_prev, loss_prev = times[i - 1], losses[i - 1]
            share = (loss_prev - target) / (loss_prev - loss)  # loss_prev > target >= loss
            return float(t_prev + share * (t - t_prev))
    return None


def stat(values: Iterable[float | None]) -> Stat:
    """Mean and sample std of the values that are not None and finite."""
    present = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if present.size == 0:
        return Stat(None, None, 0)
    std = float(present.std(ddof=1)) if present.size >= 2 else None
    return Stat(float(present.mean()), std, int(present.size))


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def target_name(target: float) -> str:
    return f"{target:g}"


def summarize_group(runs: Sequence[metrics.Run], targets: Sequence[float]) -> dict:
    """One table row: the configuration's fields and its statistics over seeds.

    Diverged runs are counted in ``diverged`` and left out of every statistic.
    """
    key = group_key(runs[0].config)
    row: dict = dict(zip(GROUP_FIELDS, key))
    kept = [run for run in runs if not diverged(run)]
    row["seeds"], row["diverged"] = len(runs), len(runs) - len(kept)
    curves = [loss_series(run.rows) for run in kept]
    for target in targets:
        name = target_name(target)
        s = stat(time_to_target(t, loss, target) for t, loss in curves)
        row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"] = s.mean, s.std
        row[f"reached_{name}"], row[f"not_reached_{name}"] = s.n, len(kept) - s.n
    for field in MEAN_FIELDS:
        s = stat(run.summary.get(field) for run in kept)
        row[f"{field}_mean"], row[f"{field}_std"] = s.mean, s.std
    for field in MAX_FIELDS:
        row[field] = _max(run.summary.get(field) for run in kept)
    row["stop_reasons"] = ";".join(sorted({str(run.summary.get("stop_reason")) for run in runs}))
    return row


def table(runs: Iterable[metrics.Run], targets: Sequence[float]) -> list[dict]:
    """One row per configuration, in table order."""
    return [summarize_group(group, targets) for group in group_runs(runs).values()]


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """Every statistic in its own column at full precision; missing values are empty cells."""
    columns = list(rows[0]) if rows else list(GROUP_FIELDS)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def fixed(value, decimals: int) -> str:
    """Fixed-point text of a number ("—" for none)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{decimals}f}"


def mean_std(mean, std, decimals: int) -> str:
    """``mean ± std`` in fixed point; the mean alone with one value."""
    if mean is None:
        return "—"
    return fixed(mean, decimals) if std is None else f"{fixed(mean, decimals)} ± {fixed(std, decimals)}"


# Markdown: (header, row -> cell) for the statistics after the configuration and time columns.
FORMATS = (
    ("eval loss", lambda r: mean_std(r["eval_loss_mean"], r["eval_loss_std"], 4)),
    ("eval acc", lambda r: mean_std(r["eval_accuracy_mean"], r["eval_accuracy_std"], 3)),
    ("updates/s", lambda r: mean_std(r["updates_per_s_mean"], r["updates_per_s_std"], 0)),
    ("τ mean", lambda r: fixed(r["staleness_mean_mean"], 2)),
    ("τ max", lambda r: fixed(r["staleness_max"], 0)),
    ("CAS failures", lambda r: fixed(r["cas_failures_mean"], 1)),
    ("dropped", lambda r: fixed(r["dropped_updates_mean"], 1)),
    ("peak live buffers", lambda r: fixed(r["peak_live_buffers"], 0)),
    ("peak RSS (MB)", lambda r: fixed(r["peak_rss_mb"], 0)),
)
CONFIG_COLUMNS = (("algorithm", "algorithm"), ("m", "threads"), ("step size", "stepsize"),
                  ("α", "learning_rate"), ("persistence", "persistence"), ("seeds", "seeds"))


def _config_cell(row: dict, field: str) -> str:
    value = row[field]
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict], targets: Sequence[float]) -> str:
    """The table for a paper or README, from the same rows as the CSV.

    Configuration columns that are the same in every row are stated once in a
    line above the table. Per ε: the time (mean ± std over the seeds that
    reached it, fixed point, seconds), how many reached it and how many did
    not; ``diverged`` counts the runs left out of every statistic.
    """
    shared = [(head, field) for head, field in CONFIG_COLUMNS  # "—": not applicable to that row
              if len(rows) > 1 and len({_config_cell(r, field) for r in rows} - {"—"}) == 1]
    config = [(head, field) for head, field in CONFIG_COLUMNS if (head, field) not in shared]
    head = [h for h, _ in config] + ["diverged"]
    for t in targets:
        name = target_name(t)
        head += [f"time to {name} (s)", f"reached {name}", f"not reached {name}"]
    head += [h for h, _ in FORMATS]
    caption = "Times to ε (s) and statistics over the seeds that did not diverge (mean ± std)."
    if shared:
        values = {f: ({_config_cell(r, f) for r in rows} - {"—"}).pop() for _, f in shared}
        caption = ("All rows: " + ", ".join(f"{h} = {values[f]}" for h, f in shared) + ". " + caption)
    lines = [caption, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_config_cell(row, field) for _, field in config] + [str(row["diverged"])]
        for t in targets:
            name = target_name(t)
            cells += [mean_std(row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"], 3),
                      str(row[f"reached_{name}"]), str(row[f"not_reached_{name}"])]
        cells += [cell(row) for _, cell in FORMATS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str, runs: Sequence[metrics.Run], targets: Sequence[float]) -> list[dict]:
    """Write ``table.csv`` and ``table.md`` (the same rows) into ``out_dir``; returns the rows."""
    rows = table(runs, targets)
    write_csv(os.path.join(out_dir, "table.csv"), rows)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown(rows, targets))
    return rows


def on_grid(runs: Sequence[metrics.Run], points: int = 200, field: str = "train_loss",
            x: str = "wall_time_s") -> tuple[np.ndarray, np.ndarray]:
    """Runs' curves of ``field`` against ``x`` on one common grid, for centre and spread.

    The grid runs from 0 to the smallest last logged x among the runs, so
    every run has a value at every grid point (np.interp, linear in x;
    before a run's first logged point its first value is held). Returns
    (grid [points], values [runs, points]); empty arrays if a run logged none.
    """
    curves = [loss_series(run.rows, field, x) for run in runs]
    if not curves or any(t.size == 0 for t, _ in curves):
        return np.zeros(0), np.zeros((0, 0))
    end = min(t[-1] for t, _ in curves)
    grid = np.linspace(0.0, end, points)
    return grid, np.stack([np.interp(grid, t, v) for t, v in curves])


def loss_on_grid(runs: Sequence[metrics.Run], points: int = 200,
                 field: str = "train_loss") -> tuple[np.ndarray, np.ndarray]:
    """``on_grid`` against wall-clock time (the seeds' loss curves, for mean and spread)."""
    return on_grid(runs, points, field)


def geometric_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometric mean and its ×/÷ one geometric standard deviation, per column.

    ``values`` [runs, points] > 0. The spread is computed in log space, as a
    log-scale axis shows it: the band is exp(mean(log v) ± std(log v)) (ddof=1),
    never below zero; with one run the band is the curve itself.
    """
    logs = np.log(np.maximum(values, np.finfo(np.float64).tiny))
    centre = logs.mean(axis=0)
    spread = logs.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(centre)
    return np.exp(centre), np.exp(centre - spread), np.exp(centre + spread)


def pooled_hist(hists: Iterable[Sequence[int] | None]) -> np.ndarray:
    """Sum of count histograms of different lengths (indexed by value)."""
    hists = [np.asarray(h, np.int64) for h in hists if h]
    if not hists:
        return np.zeros(0, np.int64)
    total = np.zeros(max(h.size for h in hists), np.int64)
    for h in hists:
        total[:h.size] += h
    return total
