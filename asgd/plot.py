"""Figures of one run or a few runs, without a study.

  python -m asgd.plot RUN_DIR [RUN_DIR ...] [--out DIR]

Reads each run folder (``asgd.metrics.load_run``) and writes the figures of
``asgd.plots`` (loss against time and updates, staleness with its fitted
model, CAS attempts, live buffers, α(τ), and time to ε when the runs differ
in m) as PNG, SVG and PDF. Each run is one curve, labelled by the config
fields that differ between the runs (``stepsize=constant``, ...); a single
run is labelled by what it is. Figures with nothing to draw (e.g. staleness
of a sequential run) are skipped with a line saying why.

``--out`` defaults to ``RUN_DIR/plots/`` for one run and to
``plots/<timestamp>/`` (under the current folder) for several. A folder that
is not a finished run is an error: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

PROG = "asgd.plot"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every asgd command
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(
        prog=f"python -m {PROG}", description="Figures of one run or a few runs (PNG, SVG, PDF).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run's results folder (<workdir>/runs/<timestamp>-<name>/ or a "
                             "study's <study_dir>/runs/<key>/)")
    parser.add_argument("--out", default="",
                        help="folder for the figures (default: RUN_DIR/plots/ for one run, "
                             "plots/<timestamp>/ for several)")
    return parser.parse_args(argv)


def default_out(run_dirs: list[str]) -> str:
    if len(run_dirs) == 1:
        return os.path.join(run_dirs[0], "plots")
    return os.path.join("plots", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from asgd import metrics
    runs = []
    for run_dir in args.run_dirs:
        try:
            runs.append(metrics.load_run(run_dir))
        except (ValueError, OSError) as e:  # not a run folder, or unreadable JSON
            print(f"{PROG}: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    from asgd import plots
    out = args.out or default_out(args.run_dirs)
    for series in plots.run_series(runs):
        run = series.runs[0]
        summary = run.summary
        print(f"{series.label}: {run.run_dir}: eval acc {summary.get('eval_accuracy') or float('nan'):.3f}, "
              f"{summary.get('updates')} updates, stop: {summary.get('stop_reason')}")
    paths = plots.plot_runs(out, runs)
    print(f"{len(paths) // len(plots.FORMATS)} figures (PNG, SVG, PDF) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
