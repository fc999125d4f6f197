"""A study: sweep the algorithms, aggregate over seeds, write tables and plots.

  python -m asgd.study [--config=configs/study_digits.py] [--config.FIELD=VALUE ...]
  asgd-study ...                     (the same, installed as a command)

A study config holds a train config under ``base`` and the sweep lists
(``algorithms``, ``threads``, ``stepsizes``, ``learning_rates``,
``persistences``, ``seeds``); see configs/study_digits.py and docs/study.md.
Each configuration of the cross product is one ``train()`` run in
``<study_dir>/runs/<key>/`` where ``key`` names the swept values, so a study
started again skips every run that already has its summary.json. A run that
fails is reported and left without summary.json (the next start retries it);
the study then goes on and exits with code 1. Bad flags or config values exit
with code 2 and a one-line error.

``study_dir = ""`` (the configs' default) names the folder after the config
file and the command-line overrides (``default_study_dir``), so two
different studies never share a folder and the same command resumes its own.
Each run's line ends with the time it took and the study's ETA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from ml_collections import config_dict, config_flags

from asgd import metrics
from asgd.cli import exit_code, exit_quietly_on_signals, fail, parse_config, stop_signals
from asgd.specs import Specs

PROG = "asgd.study"

SWEEPS = ("algorithms", "threads", "stepsizes", "learning_rates", "persistences", "seeds")
# Config fields that may differ between a finished run and the study asking for it.
NOT_COMPARED = ("quiet", "workdir", "name", "tensorboard", metrics.ENVIRONMENT)

class StudyError(ValueError):
    """The study config or the study folder is unusable; the message says why."""


class Planned(NamedTuple):
    key: str        # folder name under <study_dir>/runs/
    config: object  # the train ConfigDict of this run (written as its config.json)
    specs: Specs    # the same, validated and typed


def run_key(specs: Specs) -> str:
    """Deterministic folder name of a run from its swept values."""
    ex, step = specs.executor, specs.stepsize
    key = f"{ex.algorithm}-m{ex.threads}-{step.name}-lr{step.alpha:g}"
    if ex.algorithm == "leashed":
        key += f"-p{ex.persistence}"
    key += f"-s{ex.seed}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", key)


# Study fields that do not change what a study computes (left out of its folder's name).
NOT_NAMED = ("quiet", "study_dir", "base.quiet", "base.workdir", "base.name", "base.tensorboard")


def default_study_dir(config_file: str, overrides: dict) -> str:
    """``studies/<name>`` for a study config file run as it is, e.g. ``studies/digits``
    for configs/study_digits.py; with command-line overrides ``studies/<name>-<hash>``,
    the hash of the overridden fields and values (so the same command finds its
    folder again and a different one never reuses it).
    """
    name = os.path.splitext(os.path.basename(config_file))[0].removeprefix("study_")
    changed = {k: v for k, v in overrides.items() if k not in NOT_NAMED}
    if changed:
        text = json.dumps({k: repr(v) for k, v in sorted(changed.items())}, sort_keys=True)
        name += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return os.path.join("studies", name)


def duration(seconds: float) -> str:
    """Compact human duration: 42s, 3m05s, 1h02m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def check(study) -> None:
    """Study-level checks; each failure is one line."""
    for name in SWEEPS:
        if len(study[name]) == 0:
            raise StudyError(f"sweep list {name!r} is empty")
    if not study.study_dir:
        raise StudyError("study_dir is empty")
    if len(study.targets) == 0:
        raise StudyError("targets is empty: give at least one training-loss level")
    if study.base.cpus > 0 and not study.isolate:
        raise StudyError("base.cpus pins a process's CPUs: it needs isolate=True (one process per run)")


def expand(study) -> list[Planned]:
    """The cross product of the sweep lists, without meaningless or duplicate runs.

    ``sequential`` runs only with threads=1 (other thread counts are skipped);
    ``persistence`` varies only for ``leashed`` (the others take the base
    value once). Order: algorithm, threads, step size, α, persistence, seed.
    """
    from asgd.run import parse
    check(study)
    planned, seen = [], set()
    for algorithm in study.algorithms:
        for threads in study.threads:
            if algorithm == "sequential" and threads != 1:
                continue
            for strategy in study.stepsizes:
                for lr in study.learning_rates:
                    persistences = study.persistences if algorithm == "leashed" else (study.base.persistence,)
                    for persistence in persistences:
                        for seed in study.seeds:
                            cfg = config_dict.ConfigDict(study.base.to_dict())
                            cfg.algorithm, cfg.threads, cfg.stepsize = algorithm, int(threads), strategy
                            cfg.learning_rate, cfg.persistence = float(lr), int(persistence)
                            cfg.seed, cfg.loss_targets = int(seed), tuple(float(t) for t in study.targets)
                            cfg.quiet, cfg.workdir = True, study.study_dir
                            specs = parse(cfg)  # a bad value fails now
                            key = run_key(specs)
                            if key in seen:
                                continue
                            seen.add(key)
                            cfg.name = key
                            specs = dataclasses.replace(
                                specs, run=dataclasses.replace(specs.run, name=key))
                            planned.append(Planned(key, cfg, specs))
    return planned


def _comparable(config: dict) -> dict:
    plain = json.loads(json.dumps(config))  # tuples become lists, as in config.json
    return {k: v for k, v in plain.items() if k not in NOT_COMPARED}


def finished(run_dir: str, cfg) -> bool:
    """True if the run folder holds a finished run of exactly this config.

    Finished means summary.json exists and the run was not interrupted or
    ended by a worker error (a diverged run is a result and counts).

    A finished run made with a different config is an error: mixing them
    would make the table lie. Use another study_dir, or delete the folder.
    """
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        return False
    with open(os.path.join(run_dir, "summary.json")) as f:
        reason = str(json.load(f).get("stop_reason"))
    if reason == "interrupted" or reason.startswith("error"):
        return False  # Ctrl-C and worker errors also write a summary; such a run is redone
    with open(os.path.join(run_dir, "config.json")) as f:
        old = _comparable(json.load(f))
    new = _comparable(cfg.to_dict())
    if old != new:
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise StudyError(f"{run_dir} holds a finished run with different {', '.join(diff)}; "
                         "use another study_dir or delete that folder")
    return True


def run_in_process(run: Planned, run_dir: str) -> dict:
    from asgd.run import execute
    return execute(run.specs, run.config.to_dict(), run_dir)


def run_isolated(run: Planned, run_dir: str) -> dict:
    """Run in a fresh Python process: its own peak RSS, CPU set and JAX state."""
    os.makedirs(run_dir, exist_ok=True)
    metrics.write_json_atomic(os.path.join(run_dir, "config.json"), run.config.to_dict())
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    child = "import sys; from asgd.study import run_one; sys.exit(run_one(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", child, os.path.abspath(run_dir)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise RuntimeError(lines[-1])
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def run_one(run_dir: str) -> int:
    """The child side of ``run_isolated``: train the config.json in ``run_dir``."""
    from asgd.run import execute, parse, pin_process
    cfg = config_dict.ConfigDict(metrics.read_json(os.path.join(run_dir, "config.json")))
    specs = parse(cfg)
    pin_process(specs)
    execute(specs, cfg.to_dict(), run_dir)
    return 0


def describe(summary: dict) -> str:
    """One line of a finished run's results."""
    reached = summary.get("time_to_target") or {}
    hits = " ".join(f"t({k})={'-' if v is None else f'{v:.2f}s'}"
                    for k, v in sorted(reached.items(), key=lambda kv: -float(kv[0])))
    return (f"acc {summary.get('eval_accuracy', float('nan')):.3f} "
            f"loss {summary.get('eval_loss', float('nan')):.4f} "
            f"{summary.get('updates_per_s', 0):.0f} upd/s {hits}")


def run_study(study, log=print) -> dict:
    """Run every planned configuration not yet finished, then aggregate and plot.

    Returns counts ``{"planned", "ran", "skipped", "failed"}`` and the
    ``rows`` of the table.
    """
    planned = expand(study)
    runs_dir = os.path.join(study.study_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    metrics.write_json_atomic(os.path.join(study.study_dir, "study.json"), study.to_dict())
    say = (lambda *a: None) if study.quiet else log
    counts = {"planned": len(planned), "ran": 0, "skipped": 0, "failed": 0}
    say(f"study: {len(planned)} runs in {study.study_dir}")
    spent = 0.0  # seconds of the runs done by this call (for the ETA)
    for i, run in enumerate(planned, 1):
        key, cfg = run.key, run.config
        run_dir = os.path.join(runs_dir, key)
        prefix = f"[{i}/{len(planned)}] {key}:"
        if finished(run_dir, cfg):
            counts["skipped"] += 1
            say(f"{prefix} finished before, skipped")
            continue
        shutil.rmtree(run_dir, ignore_errors=True)  # a partial run restarts from scratch
        start = time.perf_counter()
        try:
            summary = (run_isolated if study.isolate else run_in_process)(run, run_dir)
        except Exception as e:  # one failed run must not end the study
            counts["failed"] += 1
            spent += time.perf_counter() - start
            log(f"{prefix} FAILED: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            continue
        counts["ran"] += 1
        took = time.perf_counter() - start
        spent += took
        left = len(planned) - i
        eta = f"; {left} left, ETA {duration(spent / (counts['ran'] + counts['failed']) * left)}" \
            if left else ""
        say(f"{prefix} {describe(summary)} ({took:.1f}s{eta})")
    from asgd import aggregate, plots
    done = [metrics.load_run(os.path.join(runs_dir, p.key)) for p in planned
            if os.path.exists(os.path.join(runs_dir, p.key, "summary.json"))]
    counts["rows"] = aggregate.write_tables(study.study_dir, done, study.targets) if done else []
    if done:
        plots.plot_all(study.study_dir, done, study.targets, log=say)
    say(f"study: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"table and plots in {study.study_dir}")
    return counts


STUDY_USAGE = """usage: python -m asgd.study [--config=PATH[:ARG]] [--config.FIELD=VALUE ...]
       (or asgd-study)

Run a sweep of training runs, resume it, and write table.csv, table.md and
plots/ into the study folder (see docs/study.md). Sweep lists are overridden
as tuples, training fields under base., e.g.
  --config.threads="(1, 2)" --config.base.num_updates=1000
Every field is described in docs/study.md. Bad input exits with code 2 and one line on stderr; Ctrl-C or SIGTERM stops
the study, keeping every finished run for the next start."""


def main(argv: list[str], prog: str = PROG) -> int:
    study, flag_values = parse_config(argv, "study_digits.py", prog, STUDY_USAGE)
    if not study.study_dir:
        flag = flag_values["config"]
        study.study_dir = default_study_dir(config_flags.get_config_filename(flag),
                                            config_flags.get_override_values(flag))
    with stop_signals(prog) as signals:
        try:
            counts = run_study(study)
        except ValueError as e:  # StudyError, ConfigError, DataError
            fail(prog, str(e).splitlines()[0])
        except KeyboardInterrupt:
            what = "terminated (SIGTERM)" if signals.received == signal.SIGTERM else "interrupted"
            print(f"{prog}: {what}; the finished runs in {study.study_dir} are kept and the next "
                  "start resumes from them", file=sys.stderr)
            return exit_code(signals.received)
    return 1 if counts["failed"] else 0


def run() -> None:
    """The ``asgd-study`` entry point."""
    code = main(sys.argv, "asgd-study")
    exit_quietly_on_signals()
    sys.exit(code)


if __name__ == "__main__":
    code = main(sys.argv)
    exit_quietly_on_signals()
    sys.exit(code)
