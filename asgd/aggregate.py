"""Aggregation of a study's runs: time to ε, mean ± std over seeds, the table.

A *run* is one results folder (config.json, metrics.jsonl, summary.json). A
*configuration* is a run's sweep fields without the seed; its runs are the
seeds. Everything here is plain numpy on what the runs wrote, so a table can
be rebuilt from a study folder at any time.

Time to ε. The study measures it on the logged running-mean training loss
(``train_loss`` in metrics.jsonl; each value is attributed to the wall time of
its event). The first logged point at or below ε is found; the time is then
*interpolated linearly in the loss* between that point and the one before
it, so a coarse ``log_every`` does not round every time up to the next event.
A run that never logs a loss <= ε has not reached ε: it is left out of the
mean and std and counted in "k/n reached". (summary.json's ``time_to_target``
is the uninterpolated first crossing; it is never earlier than this value.)

Spread. ``std`` is the sample standard deviation (ddof=1) over the seeds
that have a value; with fewer than two values it is None.
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


class Stat(NamedTuple):
    """Mean and sample std over the seeds that have a value; n counts them."""
    mean: float | None
    std: float | None
    n: int


def group_key(config: dict) -> tuple:
    """The configuration a run belongs to; persistence counts for leashed only."""
    key = {field: config.get(field) for field in GROUP_FIELDS}
    if key["algorithm"] != "leashed":
        key["persistence"] = None
    return tuple(key[field] for field in GROUP_FIELDS)


def group_label(key: tuple) -> str:
    """Short human label of a configuration, e.g. ``leashed m2 constant α=0.05 p=-1``."""
    fields = dict(zip(GROUP_FIELDS, key))
    label = f"{fields['algorithm']} m{fields['threads']} {fields['stepsize']} α={fields['learning_rate']:g}"
    if fields["persistence"] is not None:
        label += f" p={fields['persistence']}"
    return label


def group_runs(runs: Iterable[metrics.Run]) -> dict[tuple, list[metrics.Run]]:
    """Runs by configuration, configurations in sorted order, seeds in order."""
    groups: dict[tuple, list[metrics.Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run.config), []).append(run)
    order = sorted(groups, key=lambda k: tuple((v is None, v if v is not None else 0) for v in k))
    return {k: sorted(groups[k], key=lambda r: r.config.get("seed", 0)) for k in order}


def loss_series(rows: Sequence[dict], field: str = "train_loss") -> tuple[np.ndarray, np.ndarray]:
    """(wall times, values) of the rows that logged a finite ``field``."""
    points = [(r["wall_time_s"], r[field]) for r in rows
              if r.get(field) is not None and math.isfinite(r[field])]
    if not points:
        return np.zeros(0), np.zeros(0)
    times, values = np.asarray(points, np.float64).T
    return times, values


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
    """One table row: the configuration's fields and its statistics over seeds."""
    key = group_key(runs[0].config)
    row: dict = dict(zip(GROUP_FIELDS, key))
    row["seeds"] = len(runs)
    curves = [loss_series(run.rows) for run in runs]
    for target in targets:
        name = target_name(target)
        s = stat(time_to_target(t, loss, target) for t, loss in curves)
        row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"] = s.mean, s.std
        row[f"reached_{name}"] = s.n
    for field in ("eval_loss", "eval_accuracy", "updates_per_s", "staleness_mean",
                  "cas_failures", "dropped_updates"):
        s = stat(run.summary.get(field) for run in runs)
        row[f"{field}_mean"], row[f"{field}_std"] = s.mean, s.std
    row["staleness_max"] = _max(run.summary.get("staleness_max") for run in runs)
    row["peak_live_buffers"] = _max(run.summary.get("peak_live_buffers") for run in runs)
    row["peak_rss_mb"] = _max(run.summary.get("peak_rss_mb") for run in runs)
    row["stop_reasons"] = ";".join(sorted({str(run.summary.get("stop_reason")) for run in runs}))
    return row


def table(runs: Iterable[metrics.Run], targets: Sequence[float]) -> list[dict]:
    """One row per configuration, in sorted configuration order."""
    return [summarize_group(group, targets) for group in group_runs(runs).values()]


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pm(mean, std, digits: int = 4) -> str:
    if mean is None:
        return "—"
    return _fmt(mean, digits) if std is None else f"{_fmt(mean, digits)} ± {_fmt(std, 2)}"


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """Every statistic in its own column; missing values are empty cells."""
    columns = list(rows[0]) if rows else list(GROUP_FIELDS)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def markdown(rows: Sequence[dict], targets: Sequence[float]) -> str:
    """The table for a README: mean ± std, time to ε with "k/n reached"."""
    head = ["algorithm", "m", "step size", "α", "persistence", "seeds"]
    head += [f"time to {target_name(t)} (s)" for t in targets]
    head += ["eval loss", "eval acc", "updates/s", "τ mean", "τ max", "CAS failures",
             "dropped", "peak live buffers", "peak RSS (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["algorithm"], str(row["threads"]), row["stepsize"], _fmt(row["learning_rate"]),
                 _fmt(row["persistence"]), str(row["seeds"])]
        for t in targets:
            name = target_name(t)
            reached = f"{row[f'reached_{name}']}/{row['seeds']} reached"
            time = _pm(row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"], 3)
            cells.append(reached if row[f"reached_{name}"] == 0 else f"{time} ({reached})")
        cells += [_pm(row["eval_loss_mean"], row["eval_loss_std"]),
                  _pm(row["eval_accuracy_mean"], row["eval_accuracy_std"]),
                  _pm(row["updates_per_s_mean"], row["updates_per_s_std"], 3),
                  _fmt(row["staleness_mean_mean"], 3), _fmt(row["staleness_max"]),
                  _fmt(row["cas_failures_mean"]), _fmt(row["dropped_updates_mean"]),
                  _fmt(row["peak_live_buffers"]), _fmt(row["peak_rss_mb"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(study_dir: str, runs: Sequence[metrics.Run], targets: Sequence[float]) -> list[dict]:
    """Write ``table.csv`` and ``table.md`` into the study folder; returns the rows."""
    rows = table(runs, targets)
    write_csv(os.path.join(study_dir, "table.csv"), rows)
    with open(os.path.join(study_dir, "table.md"), "w") as f:
        f.write(markdown(rows, targets))
    return rows


def loss_on_grid(runs: Sequence[metrics.Run], points: int = 200,
                 field: str = "train_loss") -> tuple[np.ndarray, np.ndarray]:
    """Seeds' loss curves on one common time grid, for mean and spread.

    The grid runs from 0 to the earliest last logged time among the seeds, so
    every seed has a value at every grid point (np.interp, linear in time;
    before a seed's first logged point its first value is held). Returns
    (grid [points], losses [seeds, points]); empty arrays if a seed logged none.
    """
    curves = [loss_series(run.rows, field) for run in runs]
    if not curves or any(t.size == 0 for t, _ in curves):
        return np.zeros(0), np.zeros((0, 0))
    end = min(t[-1] for t, _ in curves)
    grid = np.linspace(0.0, end, points)
    return grid, np.stack([np.interp(grid, t, v) for t, v in curves])


def pooled_hist(hists: Iterable[Sequence[int] | None]) -> np.ndarray:
    """Sum of count histograms of different lengths (indexed by value)."""
    hists = [np.asarray(h, np.int64) for h in hists if h]
    if not hists:
        return np.zeros(0, np.int64)
    total = np.zeros(max(h.size for h in hists), np.int64)
    for h in hists:
        total[:h.size] += h
    return total
