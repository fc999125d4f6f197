"""The figures: what each one draws (axes, series, markers, legend outside the data), and asgd.plot."""

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from asgd import aggregate, plots
from asgd import staleness as st
from asgd.metrics import Run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(seed, losses, algorithm="leashed", threads=2, stepsize="constant", times=None, **summary):
    config = {"algorithm": algorithm, "threads": threads, "stepsize": stepsize,
              "learning_rate": 0.05, "persistence": -1, "seed": seed, "loss_targets": [0.5, 0.1]}
    times = times or [0.1 * i for i in range(len(losses))]
    rows = [{"updates": 10 * i, "wall_time_s": t, "train_loss": loss}
            for i, (t, loss) in enumerate(zip(times, losses))]
    summary.setdefault("stop_reason", "num_updates")
    return Run(f"/nowhere/{algorithm}-{threads}-{stepsize}-{seed}", config, summary, rows)


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def assert_legends_outside(fig):
    """No legend box overlaps any axes' box (data area)."""
    fig.draw_without_rendering()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "the figure has no legend"
    for legend in legends:
        box = legend.get_window_extent()
        for ax in visible_axes(fig):
            assert not box.overlaps(ax.get_window_extent()), (legend, ax.get_title())


def series_of(runs):
    return plots.study_series(aggregate.group_runs(runs))


# -- loss -------------------------------------------------------------------------------

def loss_runs():
    runs = []
    for m in (1, 2):
        for algorithm in ("hogwild", "leashed"):
            for seed in range(3):
                runs.append(fake_run(seed, [2.0, 1.0 / (seed + 1), 0.1 * (seed + 1)], algorithm, m))
    runs.append(fake_run(3, [2.0, 5.0, float("nan")], "leashed", 2, stop_reason="diverged: x"))
    return runs


@pytest.mark.parametrize("x", ["wall_time_s", "updates"])
def test_loss_panels_per_m_share_a_log_y_and_draw_geometric_means(x):
    runs = loss_runs()
    fig = plots.loss(series_of(runs), x)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["m = 1", "m = 2"]
    assert all(ax.get_yscale() == "log" for ax in axes)
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    # one curve per configuration per panel, coloured by algorithm, at the geometric mean
    curves = [line for line in axes[1].lines if line.get_label() == "leashed"]
    (curve,) = curves
    assert curve.get_color() == plots.ALGORITHM_COLORS["leashed"]
    final = np.exp(np.mean(np.log([0.1, 0.2, 0.3])))  # the diverged seed is left out
    assert curve.get_ydata()[-1] == pytest.approx(final)
    assert len(axes[1].collections) == 2  # one band per configuration
    # the diverged run: drawn apart, ending in ×
    assert any(line.get_marker() == "x" for line in axes[1].lines)
    assert not any(line.get_marker() == "x" for line in axes[0].lines)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["hogwild", "leashed", "diverged run (ends at ×)"]
    assert_legends_outside(fig)


def test_study_series_style_colour_by_algorithm_and_line_by_step_size():
    runs = [fake_run(0, [1.0, 0.5], algorithm, 2, stepsize)
            for algorithm in ("lock", "leashed") for stepsize in ("constant", "mindthestep")]
    series = series_of(runs)
    assert [s.label for s in series] == ["lock constant", "lock mindthestep",
                                         "leashed constant", "leashed mindthestep"]
    assert [s.color for s in series] == [plots.ALGORITHM_COLORS["lock"]] * 2 + \
        [plots.ALGORITHM_COLORS["leashed"]] * 2
    assert [s.linestyle for s in series] == ["-", "--", "-", "--"]


# -- time to ε -------------------------------------------------------------------------------

def test_time_to_target_lines_over_m_with_error_bars_and_marks():
    runs = []
    for m in (1, 2, 4):
        for seed in range(2):
            runs.append(fake_run(seed, [2.0, 0.4, 0.3], "hogwild", m))           # reaches 0.5 only
            losses = [2.0, 0.4, 0.05] if seed == 0 else [2.0, 0.9, 0.7]           # 0.1: 1/2, 0.5: 1/2
            runs.append(fake_run(seed, losses, "leashed", m))
    runs += [fake_run(s, [2.0, float("nan")], "lock", 4, stop_reason="diverged: x") for s in range(2)]
    fig = plots.time_to_target(aggregate.group_runs(runs), (0.5, 0.1))
    ax5, ax1 = visible_axes(fig)
    assert ax5.get_title() == "training loss ≤ 0.5" and ax1.get_title() == "training loss ≤ 0.1"
    assert [t.get_text() for t in ax5.get_xticklabels()] == ["1", "2", "4"]
    assert ax5.get_xscale() == "log"  # m spans a factor 4: log2 spacing
    # an error-bar line per configuration that reached ε: hogwild and leashed over m = 1, 2, 4
    lines = [line for line in ax5.lines if line.get_linestyle() != "None" and len(line.get_xdata()) == 3]
    assert {line.get_color() for line in lines} == {plots.ALGORITHM_COLORS[a] for a in ("hogwild", "leashed")}
    assert {t.get_text() for t in ax5.texts} == {"1/2"}                  # leashed: one of two seeds
    not_reached = [line for line in ax1.lines if line.get_marker() == "^"]
    assert len(not_reached) == 3                                          # hogwild at every m
    assert any(line.get_marker() == "x" for line in ax1.lines)            # lock m=4: all diverged
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"k/n: k of n seeds reached ε", "no seed reached ε", "every seed diverged"} <= set(labels)
    assert_legends_outside(fig)


# -- staleness -----------------------------------------------------------------------------------

def test_staleness_only_for_m_above_1_with_the_fitted_model_in_the_legend():
    runs = [fake_run(seed, [1.0, 0.5], "leashed", 2, staleness_hist=[5, 3, 1 + seed]) for seed in (0, 1)]
    runs += [fake_run(0, [1.0, 0.5], "leashed", 1, staleness_hist=[100]),       # m = 1: no panel
             fake_run(0, [1.0, 0.5], "sync", 2, staleness_hist=[100])]          # τ ≡ 0: no panel
    fig = plots.staleness(series_of(runs), log=print)
    (ax,) = visible_axes(fig)
    pooled = np.array([10, 6, 3])
    np.testing.assert_allclose([p.get_height() for p in ax.patches], pooled / pooled.sum())
    name, model, scores = st.best_fit(pooled)
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_ydata(), model.pmf(np.arange(3)))
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0] == "observed: 19 updates, τ max 2"
    assert texts[1].startswith(f"fit: {plots.MODEL_NAMES[name]}(") and "TV" in texts[1]
    for value in scores[name]["params"].values():
        assert f"{value:.3g}" in texts[1]
    assert legend.get_title().get_text() == "leashed"
    assert all(t == int(t) for t in ax.get_xticks())
    assert_legends_outside(fig)


def test_staleness_without_asynchrony_draws_nothing():
    runs = [fake_run(0, [1.0, 0.5], "leashed", 1, staleness_hist=[100])]
    assert plots.staleness(series_of(runs)) is None


# -- CAS attempts, live buffers -----------------------------------------------------------------

def test_cas_attempts_grouped_bars_with_exact_counts_for_leashed_m_above_1():
    runs = [fake_run(s, [1.0, 0.5], "leashed", 2, cas_attempts_hist=[0, 500, 7, 1]) for s in (0, 1)]
    runs += [fake_run(0, [1.0, 0.5], "leashed", 1, cas_attempts_hist=[0, 100]),
             fake_run(0, [1.0, 0.5], "hogwild", 2, cas_attempts_hist=[0, 100])]
    fig = plots.cas_attempts(series_of(runs))
    (ax,) = visible_axes(fig)
    assert [p.get_height() for p in ax.patches] == [1000, 14, 2]
    assert [t.get_text() for t in ax.texts] == ["1000", "14", "2"]
    assert list(ax.get_xticks()) == [1, 2, 3] and ax.get_yscale() == "log"
    assert ax.get_ylim()[0] == 0.5  # a count of 1 stays visible
    assert_legends_outside(fig)


def test_live_buffers_shares_per_configuration_with_the_exact_peak_outlined():
    runs = [fake_run(s, [1.0, 0.5], "leashed", 2, live_buffers_hist=[0, 10, 80, 10],
                     peak_live_buffers=4) for s in (0, 1)]
    runs += [fake_run(0, [1.0, 0.5], "hogwild", 2, live_buffers_hist=[0, 100], peak_live_buffers=1),
             fake_run(0, [1.0, 0.5], "leashed", 1, live_buffers_hist=[0, 100], peak_live_buffers=2)]
    fig = plots.live_buffers(series_of(runs))
    (ax,) = visible_axes(fig)
    assert ax.get_title() == "m = 2"                         # m = 1 is left out
    assert [t.get_text() for t in ax.get_yticklabels()] == ["hogwild", "leashed"]
    assert list(ax.get_xticks()) == [1, 2, 3, 4]             # up to the peak, integers
    (image,) = ax.get_images()
    np.testing.assert_allclose(image.get_array(), [[1.0, 0, 0, 0], [0.1, 0.8, 0.1, 0]])
    assert [t.get_text() for t in ax.texts] == ["100%", "10%", "80%", "10%"]
    outlines = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches]
    assert outlines == [(1, 0), (4, 1)]                      # (peak, row)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["exact peak at any instant"]
    assert_legends_outside(fig)


# -- α(τ) -----------------------------------------------------------------------------------------

def test_alpha_tau_labels_a_shared_curve_by_every_rule_that_ended_with_it():
    flat, adaptive = [0.05] * 4, [0.08, 0.05, 0.02, 0.01]
    runs = [fake_run(0, [1.0], "leashed", 1, "constant", alpha_table=flat),
            fake_run(0, [1.0], "leashed", 2, "constant", alpha_table=flat),
            fake_run(0, [1.0], "leashed", 1, "mindthestep", alpha_table=flat),
            fake_run(0, [1.0], "leashed", 2, "mindthestep", alpha_table=adaptive, staleness_max=3)]
    fig = plots.alpha_tau(series_of(runs))
    (ax,) = visible_axes(fig)
    curves = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert [c.get_label() for c in curves] == ["constant = mindthestep m=1", "mindthestep m=2"]
    np.testing.assert_allclose(curves[1].get_ydata()[:4], adaptive)
    assert curves[1].get_drawstyle() == "steps-mid"
    assert all(t == int(t) for t in ax.get_xticks())
    assert_legends_outside(fig)


def test_alpha_tau_names_the_algorithm_when_one_rule_ends_differently_at_the_same_m():
    flat = [0.05] * 4
    runs = [fake_run(0, [1.0], "lock", 1, "mindthestep", alpha_table=flat),
            fake_run(0, [1.0], "sync", 2, "mindthestep", alpha_table=flat),
            fake_run(0, [1.0], "lock", 2, "mindthestep", alpha_table=[0.08, 0.05, 0.02, 0.02],
                     staleness_max=3),
            fake_run(0, [1.0], "leashed", 2, "mindthestep", alpha_table=[0.08, 0.04, 0.01, 0.01],
                     staleness_max=3)]
    (ax,) = visible_axes(plots.alpha_tau(series_of(runs)))
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labels == ["mindthestep sync m=2, lock m=1", "mindthestep lock m=2",
                      "mindthestep leashed m=2"]


# -- writing ------------------------------------------------------------------------------------

def test_plot_all_writes_every_figure_as_png_svg_and_pdf(tmp_path):
    runs = loss_runs()
    paths = plots.plot_all(str(tmp_path), runs, targets=(0.5, 0.1), log=print)
    assert len(paths) == len(plots.PLOTS) * 3
    for name in plots.PLOTS:
        for ext in plots.FORMATS:
            assert os.path.getsize(tmp_path / "plots" / f"{name}.{ext}") > 0
    assert matplotlib.image.imread(str(tmp_path / "plots" / "loss_vs_time.png")).ndim == 3
    assert open(tmp_path / "plots" / "loss_vs_time.pdf", "rb").read(4) == b"%PDF"
    # no CAS/α data in these runs: a note says so instead of an empty axes
    assert "no leashed run with m &gt; 1" in (tmp_path / "plots" / "cas_attempts.svg").read_text() or \
        "no leashed run with m" in (tmp_path / "plots" / "cas_attempts.svg").read_text()


def test_run_series_are_labelled_by_what_differs():
    a = fake_run(0, [1.0], "leashed", 2, "constant")
    b = fake_run(0, [1.0], "leashed", 2, "mindthestep")
    c = fake_run(1, [1.0], "leashed", 2, "mindthestep")
    series = plots.run_series([a, b, c])
    assert [s.label for s in series] == ["stepsize=constant, seed=0", "stepsize=mindthestep, seed=0",
                                         "stepsize=mindthestep, seed=1"]
    assert len({s.color for s in series}) == 3
    (one,) = plots.run_series([a])
    assert one.label == "leashed m=2 constant"


# -- python -m asgd.plot ------------------------------------------------------------------------

def run_plot(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "asgd.plot", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three real leashed runs on digits that differ in step size and m."""
    from asgd.run import default_config, train
    workdir = tmp_path_factory.mktemp("runs")
    dirs = []
    for stepsize, threads in (("constant", 2), ("mindthestep", 2), ("constant", 1)):
        cfg = default_config()
        cfg.workdir, cfg.quiet, cfg.num_updates, cfg.log_every = str(workdir), True, 300, 20
        cfg.stepsize, cfg.threads = stepsize, threads
        dirs.append(train(cfg)["run_dir"])
    return dirs


def test_plot_cli_on_one_run_writes_into_the_run_folder(three_runs):
    proc = run_plot(three_runs[0])
    assert proc.returncode == 0, proc.stderr
    assert "leashed m=2 constant:" in proc.stdout
    out = os.path.join(three_runs[0], "plots")
    for name in ("loss_vs_time", "loss_vs_updates", "staleness", "cas_attempts", "live_buffers",
                 "alpha_tau"):
        for ext in plots.FORMATS:
            assert os.path.getsize(os.path.join(out, f"{name}.{ext}")) > 0
    assert "time_to_target: nothing to draw" in proc.stdout


def test_plot_cli_on_three_runs_labels_them_by_what_differs(three_runs, tmp_path):
    proc = run_plot(*three_runs, "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    assert "stepsize=constant, threads=2:" in proc.stdout      # config.json's field order
    assert "stepsize=mindthestep, threads=2:" in proc.stdout
    assert "stepsize=constant, threads=1:" in proc.stdout
    assert os.path.getsize(tmp_path / "cmp" / "time_to_target.pdf") > 0  # m differs
    svg = (tmp_path / "cmp" / "loss_vs_time.svg").read_text()
    assert "stepsize=mindthestep" in svg


@pytest.mark.parametrize("args, message", [((), "the following arguments are required: RUN_DIR"),
                                           (("--bogus", "x"), "unrecognized arguments"),
                                           (None, "summary.json not found")])
def test_plot_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    proc = run_plot(*(args if args is not None else (str(tmp_path),)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
