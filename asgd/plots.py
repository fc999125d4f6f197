"""The figures of a study or of a few runs, each written as PNG, SVG and PDF.

  loss_vs_time      training loss against wall-clock time, one panel per m,
  loss_vs_updates   and against applied updates; log y shared by the panels;
                    the geometric mean over seeds with a ×/÷ one geometric
                    standard deviation band (the spread in log space, as the
                    axis shows it); diverged runs drawn thin, ending in ×
  time_to_target    time to each ε against m (a panel per ε), a line with std
                    error bars per configuration; "k/n" = only k of n seeds
                    reached ε, △ at the top = no seed reached it, × = every
                    seed diverged
  staleness         staleness pmf of each configuration with m > 1 and some
                    τ > 0 (pooled over seeds), with the best-fitting model of
                    ``asgd.staleness`` and its parameters in the legend
  cas_attempts      CAS attempts per update of the leashed runs with m > 1
                    (log count axis, exact counts on the bars)
  live_buffers      parameter buffers alive right after each update's publish
                    (the C store's exact histogram), a panel per m > 1, with
                    each configuration's exact peak in the legend
  alpha_tau         α(τ) of each step-size rule as the runs ended

Style, as in the papers: one colour per algorithm (Okabe–Ito, colour-blind
safe), one line style per step size, one marker per further swept value
(α, persistence); every legend sits outside the axes; count axes have
integer ticks. ``Series`` is what a figure draws: a study makes one per
configuration (``study_series``), ``asgd.plot`` one per run (``run_series``).
Figures are ``matplotlib.figure.Figure`` objects (no pyplot: no global
state, no display). A figure without data is still written, with a note
saying why, so a study always yields the same files.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, Sequence

import matplotlib
import matplotlib.patches
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from asgd import aggregate
from asgd import staleness as st
from asgd.metrics import Run

PLOTS = ("loss_vs_time", "loss_vs_updates", "time_to_target", "staleness", "cas_attempts",
         "live_buffers", "alpha_tau")
FORMATS = ("png", "svg", "pdf")

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
ALGORITHM_COLORS = {"sequential": "#000000", "sync": "#CC79A7", "lock": "#0072B2",
                    "hogwild": "#E69F00", "leashed": "#009E73"}
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
STEPSIZE_STYLES = {"constant": "-", "mindthestep": "--", "inverse": ":", "fleet": "-.",
                   "tail_tau": (0, (5, 1, 1, 1, 1, 1)), "dc_asgd": (0, (1, 1))}
MARKERS = (None, "o", "s", "^", "D", "v", "P")
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
         "lines.linewidth": 1.4, "savefig.dpi": 150}


class Series(NamedTuple):
    """One thing a figure draws: a configuration's seeds (study) or one run (``asgd.plot``)."""

    label: str
    runs: list          # the runs it aggregates (diverged ones are drawn apart)
    color: str
    linestyle: object
    marker: str | None
    m: int              # worker threads (the panel of per-m figures)
    key: tuple          # aggregate.group_key of its first run


# -- series ---------------------------------------------------------------------

def _varying(keys: Sequence[tuple]) -> set[str]:
    """The configuration fields whose values differ between ``keys``."""
    return {f for i, f in enumerate(aggregate.GROUP_FIELDS)
            if len({k[i] for k in keys if k[i] is not None}) > 1}  # None: not applicable


def _variant_index(variants: list, key: tuple, fields: list[int]) -> int:
    value = tuple(key[i] for i in fields)
    return 0 if None in value else variants.index(value) - 1


def study_series(groups: dict[tuple, list[Run]]) -> list[Series]:
    """A series per configuration: colour = algorithm, line style = step size, marker = α/persistence.

    Labels name the algorithm and every other field that varies, except m
    (the panels say m).
    """
    varying = _varying(list(groups))
    variant_fields = [i for i, f in ((3, "learning_rate"), (4, "persistence")) if f in varying]
    variants = [None] + [v for v in dict.fromkeys(tuple(k[i] for i in variant_fields) for k in groups)
                         if None not in v]  # no marker: the first variant and n/a (persistence of lock)
    skip = [f for f in aggregate.GROUP_FIELDS if f not in varying or f == "threads"]
    skip = [f for f in skip if f != "algorithm"]
    return [Series(aggregate.group_label(key, skip=skip), runs,
                   ALGORITHM_COLORS.get(key[0], "#777777"), STEPSIZE_STYLES.get(key[2], "-"),
                   MARKERS[_variant_index(variants, key, variant_fields) % len(MARKERS)], key[1], key)
            for key, runs in groups.items()]


def differing_fields(configs: Sequence[dict], ignore: Sequence[str] = ("name", "workdir", "quiet",
                                                                       "tensorboard")) -> list[str]:
    """Config fields (in config order) whose values differ between the configs."""
    fields = list(dict.fromkeys(f for c in configs for f in c))
    return [f for f in fields if f not in ignore
            and len({repr(c.get(f)) for c in configs}) > 1]


def run_series(runs: Sequence[Run]) -> list[Series]:
    """A series per run, labelled by the config fields that differ between the runs.

    One run is labelled by what it is (``leashed m=2 constant``). Colours
    follow the algorithm when only the algorithm tells the runs apart,
    otherwise one colour per run; the line style follows the step size.
    """
    differ = differing_fields([r.config for r in runs])
    by_algorithm = differ == ["algorithm"]
    out = []
    for i, run in enumerate(runs):
        key = aggregate.group_key(run.config)
        if differ:
            label = ", ".join(f"{f}={run.config.get(f)}" for f in differ)
        else:
            label = aggregate.group_label(key, skip=("learning_rate", "persistence"))
        color = ALGORITHM_COLORS.get(key[0], "#777777") if by_algorithm else PALETTE[i % len(PALETTE)]
        out.append(Series(label, [run], color, STEPSIZE_STYLES.get(key[2], "-"), None, key[1], key))
    return out


# -- figure helpers ---------------------------------------------------------------

def save(fig: Figure, out_dir: str, name: str) -> list[str]:
    """Write ``name``.png, .svg and .pdf into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in FORMATS]
    with matplotlib.rc_context(STYLE):
        for path in paths:
            fig.savefig(path, bbox_inches="tight")
    return paths


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (3.4, 2.6), **kwargs):
    """A constrained-layout figure with a grid of axes in the house style."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def note_figure(title: str, text: str) -> Figure:
    """A figure that says why there is nothing to draw."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5, 1.6), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def outside_legend(fig: Figure, handles: Sequence, labels: Sequence[str], ncols: int | None = None):
    """One legend for the whole figure, below the axes (never over data)."""
    if not handles:
        return None
    longest = max(len(label) for label in labels)
    fits = 4 if longest <= 28 else 2 if longest <= 44 else 1  # columns that fit a page's width
    with matplotlib.rc_context(STYLE):
        return fig.legend(handles, labels, loc="outside lower center",
                          ncols=min(ncols or 4, fits, len(labels)), frameon=False)


def series_handle(s: Series) -> Line2D:
    return Line2D([], [], color=s.color, linestyle=s.linestyle, marker=s.marker, markersize=4)


def wrap(label: str, width: int = 34) -> str:
    """A label broken into lines at its ", " separators, each at most about ``width`` long."""
    lines = [""]
    for part in label.split(", "):
        if lines[-1] and len(lines[-1]) + 2 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]}, {part}" if lines[-1] else part
    return "\n".join(lines)


def integer_ticks(axis) -> None:
    axis.set_major_locator(MaxNLocator(integer=True))


def log_axis(axis) -> None:
    """A log scale labelled in plain numbers at 1, 2 and 5 times the powers of ten."""
    axis.axes.set_yscale("log") if axis is axis.axes.yaxis else axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(1, 10)))
    axis.set_minor_formatter(NullFormatter())


def panel_ms(series: Sequence[Series], minimum: int = 1) -> list[int]:
    return sorted({s.m for s in series if s.m is not None and s.m >= minimum})


# -- loss curves ---------------------------------------------------------------------

def loss(series: Sequence[Series], x: str = "wall_time_s") -> Figure:
    """Training loss against ``x`` (wall_time_s or updates), a panel per m, shared log y."""
    ms = panel_ms(series)
    fig, axes = figure(len(ms), sharex=True, sharey=True)
    xlabel = "wall-clock time (s)" if x == "wall_time_s" else "applied updates"
    handles = {}
    diverged_any = False
    with matplotlib.rc_context(STYLE):
        for ax, m in zip(axes[0], ms):
            for s in (s for s in series if s.m == m):
                kept = [r for r in s.runs if not aggregate.diverged(r)]
                grid, values = aggregate.on_grid(kept, x=x) if kept else (np.zeros(0), None)
                if grid.size:
                    centre, low, high = aggregate.geometric_band(values)
                    ax.plot(grid, centre, color=s.color, linestyle=s.linestyle, marker=s.marker,
                            markevery=0.1, markersize=3.5, label=s.label)
                    if len(kept) > 1:
                        ax.fill_between(grid, low, high, color=s.color, alpha=0.15, linewidth=0)
                for run in s.runs:
                    if aggregate.diverged(run):
                        diverged_any = True
                        xs, ys = aggregate.loss_series(run.rows, x=x)
                        if xs.size:
                            ax.plot(xs, ys, color=s.color, linestyle=s.linestyle, linewidth=0.7,
                                    alpha=0.6)
                            ax.plot(xs[-1:], ys[-1:], "x", color=s.color, markersize=6)
                handles.setdefault(s.label, series_handle(s))
            log_axis(ax.yaxis)
            if x == "updates":
                integer_ticks(ax.xaxis)
            ax.set_xlabel(xlabel)
            if len(ms) > 1:
                ax.set_title(f"m = {m}")
        axes[0][0].set_xlim(left=0)  # once every panel has drawn: the panels share x
        axes[0][0].set_ylabel("training loss (running mean)")
        labels = list(handles)
        lines = list(handles.values())
        if diverged_any:
            labels.append("diverged run (ends at ×)")
            lines.append(Line2D([], [], color="0.3", marker="x", linewidth=0.7))
        outside_legend(fig, lines, labels)
        seeds = max((len(s.runs) for s in series), default=1)
        if seeds > 1:
            fig.suptitle("geometric mean over seeds; band: ×/÷ one geometric standard deviation")
    return fig


# -- time to ε ------------------------------------------------------------------------------

def time_to_target(groups: dict[tuple, list[Run]], targets: Sequence[float]) -> Figure:
    """Time to each ε against m: a line with std error bars per configuration (m blanked)."""
    rows = {key: aggregate.summarize_group(runs, targets) for key, runs in groups.items()}
    series = study_series(groups)
    lines: dict[tuple, list[Series]] = {}
    for s in series:
        lines.setdefault(tuple(None if f == "threads" else v
                               for f, v in zip(aggregate.GROUP_FIELDS, s.key)), []).append(s)
    ms = sorted({s.m for s in series})
    log2 = len(ms) > 1 and ms[-1] / ms[0] >= 4
    ncols = 2 if len(targets) == 4 else min(len(targets), 3)
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = figure(ncols, nrows, size=(3.4, 2.6))
    for ax in axes.ravel()[len(targets):]:
        ax.set_visible(False)
    handles, marks = {}, set()
    with matplotlib.rc_context(STYLE):
        for ax, target in zip(axes.ravel(), targets):
            name = aggregate.target_name(target)
            top = blended_transform_factory(ax.transData, ax.transAxes)
            for i, members in enumerate(lines.values()):
                dodge = (i - (len(lines) - 1) / 2) * 0.025 * (ms[-1] / ms[0] if not log2 else 1)
                xs, means, stds = [], [], []
                for s in members:
                    row = rows[s.key]
                    xm = s.m * 2 ** dodge if log2 else s.m + dodge
                    mean, std = row[f"time_to_{name}_mean_s"], row[f"time_to_{name}_std_s"]
                    reached, seeds, div = row[f"reached_{name}"], row["seeds"], row["diverged"]
                    if mean is not None:
                        xs.append(xm), means.append(mean), stds.append(std or 0.0)
                        if reached < seeds:
                            ax.annotate(f"{reached}/{seeds}", (xm, mean), textcoords="offset points",
                                        xytext=(3, 3), fontsize=7, color=s.color)
                            marks.add("partial")
                    elif div == seeds:
                        ax.plot([xm], [0.96], "x", color=s.color, markersize=7, transform=top,
                                clip_on=False)
                        marks.add("diverged")
                    else:
                        ax.plot([xm], [0.96], "^", markerfacecolor="none", color=s.color,
                                markersize=6, transform=top, clip_on=False)
                        marks.add("not reached")
                s0 = members[0]
                if xs:
                    ax.errorbar(xs, means, yerr=stds, color=s0.color, linestyle=s0.linestyle,
                                marker=s0.marker or "o", markersize=3.5, capsize=2.5, linewidth=1.2)
                handles.setdefault(s0.label, Line2D([], [], color=s0.color, linestyle=s0.linestyle,
                                                    marker=s0.marker or "o", markersize=3.5))
            if log2:
                ax.set_xscale("log", base=2)
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ms, [str(m) for m in ms])
            pad = 0.5 if not log2 else 0
            ax.set_xlim(ms[0] / 1.5 if log2 else ms[0] - pad, ms[-1] * 1.5 if log2 else ms[-1] + pad)
            ax.set_ylim(0, max(ax.get_ylim()[1], 1e-3) * 1.12)  # headroom for the △/× strip
            ax.set_xlabel("worker threads m")
            ax.set_title(f"training loss ≤ {name}")
        for ax in axes[:, 0]:
            ax.set_ylabel("time to ε (s)")
        labels, lines_ = list(handles), list(handles.values())
        if "partial" in marks:
            labels.append("k/n: k of n seeds reached ε")
            lines_.append(Line2D([], [], linestyle="none"))
        if "not reached" in marks:
            labels.append("no seed reached ε")
            lines_.append(Line2D([], [], color="0.3", marker="^", markerfacecolor="none", linestyle="none"))
        if "diverged" in marks:
            labels.append("every seed diverged")
            lines_.append(Line2D([], [], color="0.3", marker="x", linestyle="none"))
        outside_legend(fig, lines_, labels)
        fig.suptitle("time to training loss ε (mean ± std over the seeds that reached it)")
    return fig


# -- staleness -------------------------------------------------------------------------------

MODEL_NAMES = {"geometric": "geometric", "poisson": "Poisson", "cmp": "CMP"}
PARAM_NAMES = {"lam": "λ", "nu": "ν", "p": "p"}


def fitted_model(hist: np.ndarray, log: Callable) -> tuple[str, np.ndarray] | None:
    """(legend text with the parameters and total variation, pmf) of the best fit, or None."""
    try:
        name, model, scores = st.best_fit(hist)
    except Exception as e:  # a fit that fails must not cost the other figures
        log(f"plots: staleness model fit failed ({type(e).__name__}: {e}); no overlay")
        return None
    params = ", ".join(f"{PARAM_NAMES.get(k, k)}={v:.3g}" for k, v in scores[name]["params"].items())
    text = f"fit: {MODEL_NAMES.get(name, name)}({params}), TV {scores[name]['tv']:.3f}"
    return text, np.asarray(model.pmf(np.arange(hist.size)), np.float64)


def staleness(series: Sequence[Series], log: Callable = print) -> Figure | None:
    """Pooled staleness pmf of every series with m > 1 and some τ > 0, best fit overlaid."""
    hists = [(s, aggregate.pooled_hist(r.summary.get("staleness_hist") for r in s.runs))
             for s in series if s.m > 1]
    hists = [(s, h) for s, h in hists if h.sum() > h[:1].sum()]  # τ ≡ 0 (sync) shows nothing
    if not hists:
        return None
    cells = rows_by_algorithm([s for s, _ in hists])
    fig, axes = figure(len(cells[0]), len(cells), size=(2.9, 2.3), sharex=True, sharey=True)
    several_m = len({s.m for s, _ in hists}) > 1
    with matplotlib.rc_context(STYLE):
        for r, row in enumerate(cells):
            for c, index in enumerate(row):
                ax = axes[r][c]
                if index is None:
                    ax.set_visible(False)
                    if r > 0:  # the panel above ends its column: it shows the τ axis
                        axes[r - 1][c].xaxis.set_tick_params(labelbottom=True)
                        axes[r - 1][c].set_xlabel("staleness τ")
                    continue
                s, hist = hists[index]
                taus = np.arange(hist.size)
                handles = [ax.bar(taus, hist / hist.sum(), width=0.8, color=s.color, alpha=0.75,
                                  label=f"observed: {int(hist.sum())} updates, τ max {hist.size - 1}")]
                fit = fitted_model(hist, log)
                if fit is not None:
                    handles += ax.plot(taus, fit[1], "o-", color="0.15", markersize=2.5,
                                       linewidth=0.9, label=fit[0])
                integer_ticks(ax.xaxis)
                ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                          frameon=False, fontsize=7, title_fontsize=8, alignment="left",
                          title=wrap(s.label + (f", m={s.m}" if several_m else "")),
                          borderaxespad=0.2)
                if r == len(cells) - 1:
                    ax.set_xlabel("staleness τ")
                if c == 0:
                    ax.set_ylabel("share of updates")
        if not several_m:
            fig.suptitle(f"m = {hists[0][0].m}, pooled over seeds")
        # the axis ends where 99.5% of every panel's updates lie left of it (the
        # legend gives the largest τ seen): a long thin tail would squash the pmf
        shown = max(int(np.searchsorted(np.cumsum(h) / h.sum(), 0.995)) for _, h in hists)
        axes[0][0].set_xlim(-0.6, shown + 1.6)
    return fig


def rows_by_algorithm(series: Sequence[Series], most: int = 4) -> list[list[int | None]]:
    """Panel grid of ``series`` (indices; None = empty cell): a row per algorithm,
    wrapped at ``most`` columns, so step sizes line up in columns."""
    by_algorithm: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        by_algorithm.setdefault(s.key[0], []).append(i)
    ncols = min(most, max(len(v) for v in by_algorithm.values()))
    rows = []
    for members in by_algorithm.values():
        for start in range(0, len(members), ncols):
            chunk = members[start:start + ncols]
            rows.append(chunk + [None] * (ncols - len(chunk)))
    return rows


# -- CAS attempts -------------------------------------------------------------------------------

def cas_attempts(series: Sequence[Series]) -> Figure | None:
    """CAS attempts per update of the leashed series with m > 1: grouped bars, exact counts."""
    hists = [(s, aggregate.pooled_hist(r.summary.get("cas_attempts_hist") for r in s.runs))
             for s in series if s.key[0] == "leashed" and s.m > 1]
    hists = [(s, h) for s, h in hists if h.sum() > 0]
    if not hists:
        return None
    top = max(h.size for _, h in hists) - 1
    fig, axes = figure(size=(max(3.4, 1.2 * top + 2.4), 2.8))
    ax = axes[0][0]
    width = 0.8 / len(hists)
    with matplotlib.rc_context(STYLE):
        for i, (s, hist) in enumerate(hists):
            attempts = np.arange(1, hist.size)
            xs = attempts - 0.4 + width * (i + 0.5)
            counts = hist[1:]
            shown = counts > 0
            bars = ax.bar(xs[shown], counts[shown], width, color=s.color, alpha=0.85,
                          hatch=None if s.linestyle == "-" else "//", edgecolor="white",
                          linewidth=0.5, label=s.label + ("" if len({h.m for h, _ in hists}) == 1
                                                          else f", m={s.m}"))
            ax.bar_label(bars, [str(int(c)) for c in counts[shown]], fontsize=6, padding=1)
        log_axis(ax.yaxis)
        ax.yaxis.set_major_locator(LogLocator(base=10))  # counts: 1, 10, 100, ...
        ax.set_ylim(0.5, max(h.max() for _, h in hists) * 4)
        ax.set_xticks(range(1, top + 1))
        ax.set_xlim(0.4, top + 0.6)
        ax.grid(axis="x", visible=False)
        ax.set_xlabel("CAS attempts per update (1 = no retry)")
        ax.set_ylabel("updates (pooled over seeds)")
        ms = {s.m for s, _ in hists}
        if len(ms) == 1:
            ax.set_title(f"m = {ms.pop()}")
        handles, labels = ax.get_legend_handles_labels()
        outside_legend(fig, handles, labels, ncols=min(2, len(labels)))
    return fig


# -- live buffers ---------------------------------------------------------------------------------

def live_buffers(series: Sequence[Series]) -> Figure | None:
    """Buffers alive right after each publish (the store's exact histogram) of every series with m > 1.

    A row per configuration, a column per live-buffer count k: each cell
    is the share of updates that saw k buffers (pooled over seeds); the
    outlined cell is the exact peak at any instant (summary.json
    ``peak_live_buffers``), which can fall between publishes.
    """
    hists = [(s, aggregate.pooled_hist(r.summary.get("live_buffers_hist") for r in s.runs))
             for s in series if s.m > 1]
    hists = [(s, h) for s, h in hists if h.sum() > 0]
    if not hists:
        return None
    peaks = [max((r.summary.get("peak_live_buffers") or 0) for r in s.runs) for s, _ in hists]
    top = max(max(h.size - 1 for _, h in hists), *peaks)
    shares = np.zeros((len(hists), top))
    for i, (_, hist) in enumerate(hists):
        shares[i, :hist.size - 1] = hist[1:] / hist.sum()
    several_m = len({s.m for s, _ in hists}) > 1
    labels = [s.label + (f", m={s.m}" if several_m else "") for s, _ in hists]
    fig, axes = figure(size=(1.6 + 0.75 * top + 0.06 * max(len(t) for t in labels),
                             1.3 + 0.3 * len(hists)))
    ax = axes[0][0]
    with matplotlib.rc_context(STYLE):
        ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                  extent=(0.5, top + 0.5, len(hists) - 0.5, -0.5))
        for i, row in enumerate(shares):
            for k, share in enumerate(row, 1):
                if share > 0:
                    ax.text(k, i, f"{100 * share:.3g}%", ha="center", va="center", fontsize=7,
                            color="white" if share > 0.6 else "black")
            ax.add_patch(matplotlib.patches.Rectangle((peaks[i] - 0.5, i - 0.5), 1, 1, fill=False,
                                                      edgecolor="black", linewidth=1.2))
        ax.set_xticks(range(1, top + 1))
        ax.set_yticks(range(len(hists)), labels)
        for tick, (s, _) in zip(ax.get_yticklabels(), hists):
            tick.set_color(s.color if s.color != "#000000" else "black")
        ax.grid(False)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("live parameter buffers right after a publish")
        if not several_m:
            ax.set_title(f"m = {hists[0][0].m}")
        outside_legend(fig, [matplotlib.patches.Patch(fill=False, edgecolor="black")],
                       ["exact peak at any instant"])
    return fig


# -- α(τ) ------------------------------------------------------------------------------------------

def alpha_tau(series: Sequence[Series]) -> Figure | None:
    """α(τ) as each series' first run ended; identical curves drawn once, labelled by all their series.

    A curve's label lists the step sizes that ended with it and, where a step
    size ended with different curves (it adapts to m or to the observed
    staleness), the m of each.
    """
    curves: dict[tuple, list[Series]] = {}
    for s in series:
        table = s.runs[0].summary.get("alpha_table")
        if table:
            curves.setdefault(tuple(table), []).append(s)
    if not curves:
        return None
    # τ shown: past 99.5% of the observed staleness and past the last change of a
    # curve that settles nearby (MindTheStep's support); 1/τ-like rules never settle
    pooled = aggregate.pooled_hist(r.summary.get("staleness_hist") for s in series for r in s.runs)
    typical = int(np.searchsorted(np.cumsum(pooled) / pooled.sum(), 0.995)) if pooled.sum() else 0
    changes = [int(np.flatnonzero(np.diff(table))[-1]) + 1 if np.any(np.diff(table)) else 0
               for table in map(np.asarray, curves)]
    settled = [c for c in changes if c <= 4 * (typical + 2)]
    tau_end = max(typical + 2, *(settled or [0])) + 2
    stepsize_curves: dict[str, set] = {}
    for table, members in curves.items():
        for s in members:
            stepsize_curves.setdefault(s.key[2], set()).add(table)
    fig, axes = figure(size=(4.6, 2.8))
    ax = axes[0][0]
    taus = np.arange(tau_end + 1)
    with matplotlib.rc_context(STYLE):
        for i, (table, members) in enumerate(curves.items()):
            parts = []
            for stepsize in dict.fromkeys(s.key[2] for s in members):
                text = str(stepsize)
                mine = [s for s in members if s.key[2] == stepsize]
                if len(stepsize_curves[stepsize]) > 1:
                    # an adaptive rule ended with several curves: say whose this is
                    ms = sorted({s.m for s in mine})
                    same_m_elsewhere = any(s.key[2] == stepsize and s.m in ms and s not in mine
                                           for s in series)
                    if same_m_elsewhere:  # algorithms grouped by the m they ran with
                        by_algorithm: dict[str, list] = {}
                        for s in mine:
                            by_algorithm.setdefault(s.key[0], []).append(s.m)
                        groups: dict[tuple, list] = {}
                        for algorithm, its_ms in by_algorithm.items():
                            groups.setdefault(tuple(sorted(set(its_ms))), []).append(algorithm)
                        text += " " + ", ".join("/".join(names) + " m=" + ",".join(map(str, g))
                                                for g, names in groups.items())
                    else:
                        text += " m=" + ",".join(map(str, ms))
                parts.append(text)
            values = np.asarray(table, np.float64)[np.minimum(taus, len(table) - 1)]
            first = members[0].key[2]
            ax.plot(taus, values, drawstyle="steps-mid", color=PALETTE[i % len(PALETTE)],
                    linestyle=STEPSIZE_STYLES.get(first, "-"), label=" = ".join(parts))
            ax.plot(taus, values, "o", color=PALETTE[i % len(PALETTE)], markersize=2.5)
        integer_ticks(ax.xaxis)
        ax.set_xlim(-0.5, taus[-1] + 0.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("staleness τ")
        ax.set_ylabel("step size α(τ)")
        handles, labels = ax.get_legend_handles_labels()
        outside_legend(fig, handles, labels, ncols=min(2, len(labels)))
    return fig


# -- all figures ------------------------------------------------------------------------------------

# Why a figure has nothing to draw (its function returned None).
EMPTY = {
    "staleness": "no run with m > 1 and a staleness τ > 0",
    "cas_attempts": "no leashed run with m > 1: no CAS retries to show",
    "live_buffers": "no run with m > 1 recorded the store's live-buffer histogram",
    "alpha_tau": "no run recorded an alpha_table",
    "time_to_target": "the runs have one worker count m only",
}


def write(out_dir: str, figures: dict[str, Callable[[], Figure | None]], notes: bool = True,
          log: Callable = print) -> list[str]:
    """Make and save each figure; one without data becomes a note figure or, with
    ``notes=False``, is skipped with a log line. Returns the written paths."""
    paths = []
    for name, make in figures.items():
        fig = make()
        if fig is None:
            if not notes:
                log(f"{name}: nothing to draw ({EMPTY[name]})")
                continue
            fig = note_figure(name.replace("_", " "), EMPTY[name])
        paths += save(fig, out_dir, name)
    return paths


def plot_all(study_dir: str, runs: Sequence[Run], targets: Sequence[float],
             log: Callable = print) -> list[str]:
    """Every figure of ``PLOTS`` for a study into ``<study_dir>/plots/``; returns the paths."""
    groups = aggregate.group_runs(runs)
    series = study_series(groups)
    return write(os.path.join(study_dir, "plots"), log=log, figures={
        "loss_vs_time": lambda: loss(series, "wall_time_s"),
        "loss_vs_updates": lambda: loss(series, "updates"),
        "time_to_target": lambda: time_to_target(groups, targets),
        "staleness": lambda: staleness(series, log),
        "cas_attempts": lambda: cas_attempts(series),
        "live_buffers": lambda: live_buffers(series),
        "alpha_tau": lambda: alpha_tau(series),
    })


def plot_runs(out_dir: str, runs: Sequence[Run], log: Callable = print) -> list[str]:
    """The figures of a few runs, each run its own series labelled by what differs.

    ``time_to_target`` is drawn when the runs have more than one m; figures
    without data are skipped (with a log line). Returns the written paths.
    """
    series = run_series(runs)
    targets = sorted({float(t) for r in runs for t in r.config.get("loss_targets", ())},
                     reverse=True)
    figures = {
        "loss_vs_time": lambda: loss(series, "wall_time_s"),
        "loss_vs_updates": lambda: loss(series, "updates"),
        "time_to_target": lambda: (time_to_target(aggregate.group_runs(runs), targets)
                                   if targets and len({s.m for s in series}) > 1 else None),
        "staleness": lambda: staleness(series, log),
        "cas_attempts": lambda: cas_attempts(series),
        "live_buffers": lambda: live_buffers(series),
        "alpha_tau": lambda: alpha_tau(series),
    }
    return write(out_dir, figures, notes=False, log=log)
