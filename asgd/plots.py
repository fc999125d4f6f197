"""The study's figures, each written as PNG and SVG into ``<study_dir>/plots/``.

  loss_vs_time      training loss against wall-clock time, one panel per m,
                    mean over seeds with a ± std band, on a common time grid
  time_to_target    time to each ε against m, bars per configuration (mean,
                    std error bars); "k/n" marks configurations where not every
                    seed reached ε, "×" those where none did
  staleness         staleness histograms (pooled over seeds, as a pmf) with
                    the best-fitting model of ``asgd.staleness`` overlaid
  cas_attempts      CAS attempts per update of the leashed runs
  live_buffers      live parameter buffers over time (stores that report it)
  alpha_tau         α(τ) of each step-size strategy as the runs ended

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, so no global
figure state and no display backend). A figure without data (e.g. CAS retries
in a study without leashed runs) is still written, with a note in it, so a
study always yields the same set of files.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from asgd import aggregate
from asgd import staleness as st
from asgd.metrics import Run

PLOTS = ("loss_vs_time", "time_to_target", "staleness", "cas_attempts", "live_buffers", "alpha_tau")


def save(fig: Figure, plots_dir: str, name: str) -> list[str]:
    """Write ``name``.png and ``name``.svg; returns their paths."""
    os.makedirs(plots_dir, exist_ok=True)
    paths = [os.path.join(plots_dir, f"{name}.{ext}") for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return paths


def panels(count: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)):
    """A figure with ``count`` axes in a grid (unused cells hidden)."""
    ncols = max(1, min(ncols, count))
    nrows = max(1, math.ceil(count / ncols))
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, list(axes[:count])


def label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title, a light grid and the legend of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def note_figure(title: str, text: str) -> Figure:
    fig = Figure(figsize=(5, 2.5), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def without(key: tuple, field: str) -> tuple:
    """A configuration key with one field blanked, to group across it."""
    return tuple(None if f == field else v for f, v in zip(aggregate.GROUP_FIELDS, key))


def label_without(key: tuple, field: str) -> str:
    fields = dict(zip(aggregate.GROUP_FIELDS, key))
    parts = [fields["algorithm"]]
    if field != "threads":
        parts.append(f"m{fields['threads']}")
    parts += [fields["stepsize"], f"α={fields['learning_rate']:g}"]
    if fields["persistence"] is not None:
        parts.append(f"p={fields['persistence']}")
    return " ".join(str(p) for p in parts)


def loss_vs_time(groups: dict[tuple, list[Run]]) -> Figure:
    """Mean training loss ± std over seeds against wall-clock time, a panel per m."""
    ms = sorted({key[1] for key in groups})
    fig, axes = panels(len(ms))
    for ax, m in zip(axes, ms):
        for key, runs in groups.items():
            if key[1] != m:
                continue
            grid, losses = aggregate.loss_on_grid(runs)
            if grid.size == 0:
                continue
            mean = losses.mean(axis=0)
            line, = ax.plot(grid, mean, label=label_without(key, "threads"))
            if len(runs) > 1:
                std = losses.std(axis=0, ddof=1)
                ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        label_axes(ax, "wall-clock time (s)", "training loss (running mean)", f"m = {m}")
    fig.suptitle("Training loss vs time (mean ± std over seeds)")
    return fig


def time_to_target(groups: dict[tuple, list[Run]], targets: Sequence[float]) -> Figure:
    """Bars of time to each ε against m, one bar per configuration (m blanked)."""
    rows = {key: aggregate.summarize_group(runs, targets) for key, runs in groups.items()}
    ms = sorted({key[1] for key in groups})
    series = list(dict.fromkeys(without(key, "threads") for key in groups))
    fig, axes = panels(len(targets))
    width = 0.8 / max(1, len(series))
    for ax, target in zip(axes, targets):
        name = aggregate.target_name(target)
        for s, base in enumerate(series):
            label = label_without(base, "threads")
            for j, m in enumerate(ms):
                key = tuple(m if f == "threads" else v for f, v in zip(aggregate.GROUP_FIELDS, base))
                if key not in rows:
                    continue
                row = rows[key]
                x = j - 0.4 + width * (s + 0.5)
                color = f"C{s % 10}"
                mean, std = row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"]
                reached, seeds = row[f"reached_{name}"], row["seeds"]
                if mean is None:
                    ax.plot([x], [0], marker="x", color=color, markersize=8)
                else:
                    ax.bar(x, mean, width, yerr=std or 0.0, color=color, capsize=2,
                           label=label if j == 0 or label not in ax.get_legend_handles_labels()[1] else None)
                if reached < seeds:
                    ax.annotate(f"{reached}/{seeds}", (x, mean or 0), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(ms)), [f"m={m}" for m in ms])
        ax.set_ylabel("time (s)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"time to training loss ≤ {name}")
        ax.grid(axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            ax.legend(fontsize=7)
    fig.suptitle("Time to ε vs m (× = not reached by any seed, k/n = reached by k of n)")
    return fig


def staleness_model(hist: np.ndarray, log: Callable) -> tuple[str, np.ndarray] | None:
    """(name, pmf) of the best-fitting staleness model, or None if none fits."""
    try:
        name, model, _ = st.best_fit(hist)
        return name, np.asarray(model.pmf(np.arange(hist.size)), np.float64)
    except Exception as e:  # a fit that fails must not cost the other figures
        log(f"plots: staleness model fit failed ({type(e).__name__}: {e}); no overlay")
        return None


def staleness(groups: dict[tuple, list[Run]], log: Callable) -> Figure:
    """Pooled staleness pmf per configuration, best-fitting model overlaid."""
    hists = {key: aggregate.pooled_hist(r.summary.get("staleness_hist") for r in runs)
             for key, runs in groups.items()}
    hists = {k: h for k, h in hists.items() if h.sum() > 0}
    if not hists:
        return note_figure("Staleness", "no staleness recorded")
    fig, axes = panels(len(hists), ncols=4, size=(3.6, 2.8))
    missing_logged = []
    quiet_log = lambda msg: missing_logged.append(msg) if msg not in missing_logged else None
    for ax, (key, hist) in zip(axes, hists.items()):
        pmf = hist / hist.sum()
        taus = np.arange(hist.size)
        ax.bar(taus, pmf, width=0.9, color="C0", alpha=0.7, label="observed")
        fit = staleness_model(hist, quiet_log) if hist.size > 1 or hist[0] != hist.sum() else None
        if fit is not None:
            ax.plot(taus, fit[1], "o-", color="C3", markersize=3, label=f"best fit: {fit[0]}")
        ax.set_title(aggregate.group_label(key), fontsize=8)
        ax.set_xlabel("staleness τ")
        ax.set_ylabel("share of updates")
        ax.legend(fontsize=7)
    for message in missing_logged:
        log(message)
    fig.suptitle("Staleness distributions (pooled over seeds)")
    return fig


def cas_attempts(groups: dict[tuple, list[Run]]) -> Figure:
    """CAS attempts per update for the leashed configurations."""
    hists = {key: aggregate.pooled_hist(r.summary.get("cas_attempts_hist") for r in runs)
             for key, runs in groups.items() if key[0] == "leashed"}
    hists = {k: h for k, h in hists.items() if h.sum() > 0}
    if not hists:
        return note_figure("CAS attempts", "no leashed runs in this study: no CAS retries to show")
    fig, axes = panels(len(hists), ncols=4, size=(3.6, 2.8))
    for ax, (key, hist) in zip(axes, hists.items()):
        ax.bar(np.arange(hist.size), hist, width=0.9, color="C2")
        ax.set_yscale("log")
        ax.set_title(aggregate.group_label(key), fontsize=8)
        ax.set_xlabel("CAS attempts per update")
        ax.set_ylabel("updates")
    fig.suptitle("CAS attempts per update (pooled over seeds)")
    return fig


def live_buffers(groups: dict[tuple, list[Run]]) -> Figure:
    """Live parameter buffers against time, one line per run."""
    series = {key: [aggregate.loss_series(r.rows, "live_buffers") for r in runs]
              for key, runs in groups.items()}
    series = {k: v for k, v in series.items() if any(t.size for t, _ in v)}
    if not series:
        return note_figure("Live buffers", "no run reported live buffers (only the leashed store does)")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for i, (key, curves) in enumerate(series.items()):
        for j, (t, live) in enumerate(curves):
            ax.step(t, live, where="post", color=f"C{i % 10}", alpha=0.8,
                    label=aggregate.group_label(key) if j == 0 else None)
    label_axes(ax, "wall-clock time (s)", "live parameter buffers",
               "Live buffers over time (one line per seed)")
    return fig


def alpha_tau(groups: dict[tuple, list[Run]]) -> Figure:
    """α(τ) as each configuration's first seed ended; identical curves drawn once.

    A curve is labelled by its step-size strategy and α; where one such label
    has several different curves (an adaptive strategy fitted per
    configuration), each is labelled by its full configuration instead.
    """
    def short(key):
        fields = dict(zip(aggregate.GROUP_FIELDS, key))
        return f"{fields['stepsize']} α={fields['learning_rate']:g}"

    curves: dict[tuple, list[tuple]] = {}  # α table -> configurations that ended with it
    tau_max = 8
    for key, runs in groups.items():
        tau_max = max([tau_max] + [r.summary.get("staleness_max") or 0 for r in runs])
        table = runs[0].summary.get("alpha_table")
        if table:
            curves.setdefault(tuple(table), []).append(key)
    if not curves:
        return note_figure("α(τ)", "no run recorded an alpha_table")
    shorts = [short(keys[0]) for keys in curves.values()]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    taus = np.arange(int(1.5 * tau_max) + 2)
    for (table, keys), label in zip(curves.items(), shorts):
        if shorts.count(label) > 1 or len({short(k) for k in keys}) > 1:
            label = aggregate.group_label(keys[0]) + (f" (+{len(keys) - 1} same)" if len(keys) > 1 else "")
        values = np.asarray(table, np.float64)[np.minimum(taus, len(table) - 1)]  # last entry holds beyond
        ax.step(taus, values, where="mid", label=label)
    label_axes(ax, "staleness τ", "step size α(τ)", "Step-size strategies: α(τ) at the end of the runs")
    return fig


def plot_all(study_dir: str, runs: Sequence[Run], targets: Sequence[float],
             log: Callable = print) -> list[str]:
    """Every figure of ``PLOTS`` into ``<study_dir>/plots/``; returns the paths."""
    groups = aggregate.group_runs(runs)
    plots_dir = os.path.join(study_dir, "plots")
    figures = {
        "loss_vs_time": lambda: loss_vs_time(groups),
        "time_to_target": lambda: time_to_target(groups, targets),
        "staleness": lambda: staleness(groups, log),
        "cas_attempts": lambda: cas_attempts(groups),
        "live_buffers": lambda: live_buffers(groups),
        "alpha_tau": lambda: alpha_tau(groups),
    }
    paths = []
    for name in PLOTS:
        paths += save(figures[name](), plots_dir, name)
    return paths
