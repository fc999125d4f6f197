"""The study: aggregation math, the sweep expansion, a smoke study, resume, the CLI."""

import csv
import importlib
import json
import math
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from asgd import aggregate, metrics, plots, study
from asgd.metrics import Run



def study_config(tmp_path, name="study_digits.py"):
    """A study config from configs/, writing into tmp_path, quiet."""
    cfg = importlib.import_module(f"asgd.configs.{name.removesuffix('.py')}").get_config()
    cfg.study_dir = str(tmp_path / "study")
    cfg.quiet = True
    return cfg


def fake_run(seed, times, losses, algorithm="hogwild", threads=2, **summary):
    config = {"algorithm": algorithm, "threads": threads, "stepsize": "constant",
              "learning_rate": 0.05, "persistence": -1, "seed": seed}
    summary.setdefault("stop_reason", "num_updates")
    rows = [{"updates": 10 * i, "wall_time_s": t, "train_loss": loss}
            for i, (t, loss) in enumerate(zip(times, losses))]
    return Run(f"/nowhere/{seed}", config, summary, rows)


# -- aggregation math ----------------------------------------------------------

def test_time_to_target_interpolates_linearly_in_the_loss():
    times, losses = [0.0, 1.0, 2.0, 3.0], [2.0, 1.0, 0.5, 0.25]
    assert aggregate.time_to_target(times, losses, 0.75) == pytest.approx(1.5)
    assert aggregate.time_to_target(times, losses, 0.9) == pytest.approx(1.2)
    assert aggregate.time_to_target(times, losses, 0.5) == pytest.approx(2.0)  # exact hit
    assert aggregate.time_to_target(times, losses, 3.0) == 0.0                 # first point
    assert aggregate.time_to_target(times, losses, 0.1) is None                # never reached
    # first crossing counts, not a later dip
    assert aggregate.time_to_target([0, 1, 2, 3], [1.0, 0.4, 0.8, 0.1], 0.5) == pytest.approx(1 / 0.6 * 0.5)


def test_stat_is_mean_and_sample_std_of_present_values():
    s = aggregate.stat([1.0, 3.0, None, float("nan")])
    assert s.mean == 2.0 and s.std == pytest.approx(math.sqrt(2.0)) and s.n == 2
    assert aggregate.stat([4.0]) == aggregate.Stat(4.0, None, 1)
    assert aggregate.stat([None]) == aggregate.Stat(None, None, 0)


def test_not_reached_is_counted_and_left_out_of_the_mean():
    runs = [fake_run(0, [0, 1, 2], [1.0, 0.6, 0.2], eval_loss=0.3, staleness_max=3, peak_rss_mb=100.0),
            fake_run(1, [0, 1, 2], [1.0, 0.4, 0.3], eval_loss=0.5, staleness_max=5, peak_rss_mb=120.0),
            fake_run(2, [0, 1, 2], [1.0, 0.9, 0.8], eval_loss=0.7, staleness_max=4, peak_rss_mb=90.0)]
    row = aggregate.summarize_group(runs, targets=(0.5, 0.1))
    assert row["seeds"] == 3 and row["reached_0.5"] == 2 and row["reached_0.1"] == 0
    t0 = 1 + (0.6 - 0.5) / (0.6 - 0.2)  # seed 0
    t1 = 0 + (1.0 - 0.5) / (1.0 - 0.4)  # seed 1
    assert row["time_to_0.5_mean_s"] == pytest.approx((t0 + t1) / 2)
    assert row["time_to_0.5_std_s"] == pytest.approx(np.std([t0, t1], ddof=1))
    assert row["time_to_0.1_mean_s"] is None and row["time_to_0.1_std_s"] is None
    assert row["eval_loss_mean"] == pytest.approx(0.5) and row["eval_loss_std"] == pytest.approx(0.2)
    assert row["staleness_max"] == 5 and row["peak_rss_mb"] == 120.0
    assert (row["not_reached_0.5"], row["not_reached_0.1"], row["diverged"]) == (1, 3, 0)
    table = aggregate.markdown([row], (0.5, 0.1))
    cells = table.splitlines()[-1].split(" | ")
    head = table.splitlines()[2].split(" | ")
    assert cells[head.index("reached 0.5")] == "2" and cells[head.index("not reached 0.5")] == "1"
    assert cells[head.index("time to 0.1 (s)")] == "—" and cells[head.index("not reached 0.1")] == "3"


def test_diverged_runs_are_counted_and_left_out_of_every_statistic():
    ok = [fake_run(s, [0, 1, 2], [1.0, 0.4, 0.2], eval_loss=0.3 + 0.1 * s, eval_accuracy=0.9,
                   updates_per_s=2000.0 + 100 * s, staleness_max=3, stop_reason="num_updates")
          for s in (0, 1)]
    bad = fake_run(2, [0, 1], [1.0, float("nan")], eval_loss=None, eval_accuracy=0.09,
                   updates_per_s=9000.0, staleness_max=50, stop_reason="diverged: non-finite loss")
    row = aggregate.summarize_group(ok + [bad], targets=(0.5,))
    assert row["seeds"] == 3 and row["diverged"] == 1
    assert row["reached_0.5"] + row["not_reached_0.5"] + row["diverged"] == 3
    assert row["eval_accuracy_mean"] == pytest.approx(0.9)          # not pulled down by 0.09
    assert row["updates_per_s_mean"] == pytest.approx(2050.0)
    assert row["staleness_max"] == 3                                  # maxima too
    assert "diverged: non-finite loss" in row["stop_reasons"]


def test_table_order_and_fixed_point_numbers_in_csv_and_markdown_from_the_same_rows(tmp_path):
    runs = [fake_run(0, [0, 1], [1.0, 0.4], algorithm=a, threads=m, updates_per_s=2611.4,
                     eval_accuracy=0.93125, eval_loss=0.23456)
            for a in ("leashed", "hogwild", "sequential", "lock", "sync") for m in (2, 1)
            if not (a == "sequential" and m == 2)]
    rows = aggregate.write_tables(str(tmp_path), runs, targets=(0.5,))
    order = [(r["algorithm"], r["threads"]) for r in rows]
    assert order == [("sequential", 1), ("sync", 1), ("sync", 2), ("lock", 1), ("lock", 2),
                     ("hogwild", 1), ("hogwild", 2), ("leashed", 1), ("leashed", 2)]
    md = (tmp_path / "table.md").read_text().splitlines()
    assert md[0].startswith("All rows: step size = constant, α = 0.05, persistence = -1, seeds = 1.")
    head = md[2].split(" | ")
    body = [line.split(" | ") for line in md[4:]]
    assert [b[0].strip("| ") for b in body] == [a for a, _ in order]
    first = body[0]
    assert first[head.index("updates/s")] == "2611" and first[head.index("eval acc")] == "0.931"
    assert first[head.index("eval loss")] == "0.2346" and "e+" not in "\n".join(md)
    with open(tmp_path / "table.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["algorithm"], int(r["threads"])) for r in csv_rows] == order
    assert float(csv_rows[0]["updates_per_s_mean"]) == 2611.4   # full precision in the CSV
    assert {"diverged", "reached_0.5", "not_reached_0.5"} <= set(csv_rows[0])


def test_runs_group_by_configuration_and_persistence_only_for_leashed():
    a = fake_run(0, [0], [1.0])
    b = fake_run(1, [0], [1.0])
    b.config["persistence"] = 3  # ignored: hogwild has no persistence bound
    c = fake_run(0, [0], [1.0], algorithm="leashed")
    d = fake_run(0, [0], [1.0], algorithm="leashed")
    d.config["persistence"] = 0
    groups = aggregate.group_runs([a, b, c, d])
    assert [len(g) for g in groups.values()] == [2, 1, 1]


def test_loss_on_grid_ends_where_the_shortest_seed_ends():
    runs = [fake_run(0, [0, 1, 2], [1.0, 0.5, 0.25]), fake_run(1, [0, 1], [2.0, 1.0])]
    grid, losses = aggregate.loss_on_grid(runs, points=5)
    assert grid[-1] == 1.0 and losses.shape == (2, 5)
    assert losses[0, 2] == pytest.approx(0.75) and losses[1, -1] == pytest.approx(1.0)


# -- the sweep -------------------------------------------------------------------

def test_expand_skips_meaningless_and_duplicate_runs(tmp_path):
    cfg = study_config(tmp_path)
    cfg.algorithms = ("sequential", "hogwild", "leashed", "hogwild")
    cfg.threads, cfg.stepsizes, cfg.seeds = (1, 2), ("constant",), (0, 1)
    cfg.persistences = (-1, 0)
    keys = [p.key for p in study.expand(cfg)]
    assert len(keys) == len(set(keys))
    assert [k for k in keys if k.startswith("sequential")] == [
        "sequential-m1-constant-lr0.05-s0", "sequential-m1-constant-lr0.05-s1"]
    assert sum(k.startswith("hogwild") for k in keys) == 4       # m x seeds
    assert sum(k.startswith("leashed") for k in keys) == 8       # m x persistences x seeds
    assert "leashed-m2-constant-lr0.05-p0-s1" in keys
    assert keys == [p.key for p in study.expand(cfg)]            # deterministic
    cfg.base.cpus, cfg.isolate = 1, False
    with pytest.raises(study.StudyError, match="isolate"):
        study.expand(cfg)
    cfg.base.cpus, cfg.seeds = 0, ()
    with pytest.raises(study.StudyError, match="seeds"):
        study.expand(cfg)


# -- a smoke study, resume --------------------------------------------------------

def assert_outputs(study_dir, seeds):
    for name in ("table.csv", "table.md"):
        assert os.path.getsize(os.path.join(study_dir, name)) > 0
    with open(os.path.join(study_dir, "table.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["algorithm"] == "sequential" and rows[0]["seeds"] == str(seeds)
    assert float(rows[0]["eval_accuracy_mean"]) > 0.5
    for name in plots.PLOTS:
        for ext in plots.FORMATS:
            path = os.path.join(study_dir, "plots", f"{name}.{ext}")
            assert os.path.getsize(path) > 0, path
        image = matplotlib.image.imread(os.path.join(study_dir, "plots", f"{name}.png"))
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_smoke_study_writes_table_and_plots_and_resumes(tmp_path):
    cfg = study_config(tmp_path)
    cfg.algorithms, cfg.threads, cfg.stepsizes, cfg.seeds = ("sequential",), (1, 2), ("constant",), (0, 1)
    cfg.base.num_updates, cfg.base.eval_every, cfg.base.log_every = 150, 50, 10
    cfg.targets, cfg.isolate = (1.0, 0.5, 0.001), False
    counts = study.run_study(cfg)
    assert counts["planned"] == 2 and counts["ran"] == 2 and counts["failed"] == 0
    assert_outputs(cfg.study_dir, seeds=2)
    assert counts["rows"][0]["reached_0.001"] == 0  # not reached in 150 updates: counted, no time

    runs = os.path.join(cfg.study_dir, "runs")
    summaries = {k: os.path.join(runs, k, "summary.json") for k in os.listdir(runs)}
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in summaries.items()}
    counts = study.run_study(cfg)
    assert (counts["ran"], counts["skipped"]) == (0, 2)
    assert {k: os.stat(p).st_mtime_ns for k, p in summaries.items()} == mtimes

    # An unfinished run (no summary.json) is redone from scratch; the other is kept.
    partial = "sequential-m1-constant-lr0.05-s1"
    os.remove(summaries[partial])
    counts = study.run_study(cfg)
    assert (counts["ran"], counts["skipped"]) == (1, 1)
    assert os.stat(summaries["sequential-m1-constant-lr0.05-s0"]).st_mtime_ns == mtimes["sequential-m1-constant-lr0.05-s0"]
    rows = metrics.load_run(os.path.join(runs, partial)).rows
    assert rows[0]["updates"] == 0 and [r["updates"] for r in rows] == sorted(r["updates"] for r in rows)

    # A run stopped by Ctrl-C also wrote a summary; it is not finished.
    with open(summaries[partial]) as f:
        summary = json.load(f)
    summary["stop_reason"] = "interrupted"
    with open(summaries[partial], "w") as f:
        json.dump(summary, f)
    counts = study.run_study(cfg)
    assert (counts["ran"], counts["skipped"]) == (1, 1)
    with open(summaries[partial]) as f:
        assert json.load(f)["stop_reason"] == "num_updates"

    # A finished run made with another config is not silently reused.
    cfg.base.num_updates = 200
    with pytest.raises(study.StudyError, match="num_updates"):
        study.run_study(cfg)


def test_default_study_dir_names_the_config_file_and_its_overrides():
    assert study.default_study_dir("configs/study_digits.py", {}) == os.path.join("studies", "digits")
    a = study.default_study_dir("configs/study_digits.py", {"base.num_updates": 1000})
    b = study.default_study_dir("configs/study_digits.py", {"base.num_updates": 2000})
    assert a.startswith(os.path.join("studies", "digits-")) and a != b
    assert a == study.default_study_dir("configs/study_digits.py", {"base.num_updates": 1000})
    # what does not change the results does not change the folder
    assert study.default_study_dir("configs/study_digits.py", {"quiet": True}) == \
        os.path.join("studies", "digits")
    assert study.default_study_dir("x/study_mnist_mlp.py", {}) == os.path.join("studies", "mnist_mlp")


@pytest.mark.parametrize("seconds, text", [(42.4, "42s"), (185, "3m05s"), (3720, "1h02m")])
def test_duration(seconds, text):
    assert study.duration(seconds) == text


# -- the command line --------------------------------------------------------------

def run_cli(tmp_path, *flags):
    # From a folder without configs/: the relative config path resolves to the installed config.
    return subprocess.run([sys.executable, "-m", "asgd.study", "--config=configs/study_digits.py",
                           f"--config.study_dir={tmp_path}/study", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_cli_names_the_study_folder_after_the_config_and_its_overrides(tmp_path):
    flags = ["--config.algorithms=('sequential',)", "--config.stepsizes=('constant',)",
             "--config.seeds=(0,)", "--config.base.num_updates=30", "--config.isolate=False"]
    proc = subprocess.run([sys.executable, "-m", "asgd.study", "--config=configs/study_digits.py", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (folder,) = os.listdir(tmp_path / "studies")
    assert folder == os.path.basename(study.default_study_dir("study_digits.py", {
        "algorithms": ("sequential",), "stepsizes": ("constant",), "seeds": (0,),
        "base.num_updates": 30, "isolate": False}))
    assert folder.startswith("digits-") and f"study: 1 runs in studies/{folder}" in proc.stdout
    assert (tmp_path / "studies" / folder / "table.md").exists()


def test_cli_runs_an_isolated_study(tmp_path):
    proc = run_cli(tmp_path, "--config.algorithms=('sequential',)", "--config.stepsizes=('constant',)",
                   "--config.seeds=(3,)", "--config.base.num_updates=100", "--config.base.log_every=10")
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] sequential-m1-constant-lr0.05-s3: acc" in proc.stdout
    assert f"study: 1 runs in {tmp_path}/study" in proc.stdout
    assert os.path.exists(tmp_path / "study" / "runs" / "sequential-m1-constant-lr0.05-s3" / "summary.json")
    assert "| sequential | 1 | constant |" in (tmp_path / "study" / "table.md").read_text()


@pytest.mark.parametrize("flag, message", [
    ("--config.no_such_field=1", "unknown config field 'no_such_field'"),
    ("--config.algorithms=('adam',)", "unknown algorithm 'adam'"),
    ("--config.seeds=()", "sweep list 'seeds' is empty"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, flag, message):
    proc = run_cli(tmp_path, flag)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
