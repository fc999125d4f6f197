"""The run-folder schema: the one module that writes and reads a run's files.

A run folder ``<workdir>/runs/<timestamp>-<name>/`` holds
  config.json     the train config, as given
  metrics.jsonl   one event per line: updates, wall_time_s, train_loss,
                  eval_loss/eval_accuracy (at evaluations), live_buffers
  summary.json    the run's results (``Monitor.summary``)
  step_times.npz  per-worker read/compute/update seconds and CAS attempts

``config.json`` and ``summary.json`` are written atomically (temp file +
rename); ``metrics.jsonl`` is appended and flushed one line per event. A
crash or Ctrl-C therefore leaves valid files holding what was measured so
far. ``RunWriter`` writes a folder; ``load_run`` and ``read_step_times``
read one back (the study, its plots and ``asgd.dynamics validate`` use them).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON; non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    """All complete lines of a metrics.jsonl (a torn last line is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def new_run_dir(workdir: str, name: str) -> str:
    """Create ``<workdir>/runs/<timestamp>-<name>/``, unique even within a second."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(workdir, "runs", f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}")
    path, k = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            k += 1
            path = f"{base}-{k}"


STEP_FIELDS = {"read_s": np.float64, "compute_s": np.float64, "update_s": np.float64,
               "attempts": np.int64}


class RunWriter:
    """Writes one run's folder. Use as a context manager."""

    def __init__(self, run_dir: str, config: dict):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(os.path.join(run_dir, "config.json"), config)
        self._metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
        self._metrics.flush()

    def summary(self, summary: dict) -> None:
        write_json_atomic(os.path.join(self.run_dir, "summary.json"), summary)

    def step_times(self, logs) -> None:
        """Per-worker timings as ``step_times.npz`` (read by asgd.dynamics validate).

        Arrays ``read_s_<k>``, ``compute_s_<k>``, ``update_s_<k>`` (seconds) and
        ``attempts_<k>`` for worker k, in the order the worker ran.
        """
        arrays = {}
        for k, log in enumerate(logs):
            for field, dtype in STEP_FIELDS.items():
                arrays[f"{field}_{k}"] = np.asarray(getattr(log, field), dtype)
        tmp = os.path.join(self.run_dir, "step_times.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.run_dir, "step_times.npz"))

    def close(self) -> None:
        self._metrics.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Run(NamedTuple):
    """A finished run as read back from its folder."""

    run_dir: str
    config: dict
    summary: dict
    rows: list          # metrics.jsonl, one dict per event


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def load_run(run_dir: str) -> Run:
    """Read a finished run's config.json, summary.json and metrics.jsonl.

    Raises ValueError naming the file when summary.json is missing.
    """
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(summary_path):
        raise ValueError(f"{summary_path} not found (is {run_dir!r} a finished run folder?)")
    config_path = os.path.join(run_dir, "config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else {}
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    rows = read_jsonl(metrics_path) if os.path.isfile(metrics_path) else []
    return Run(run_dir, config, read_json(summary_path), rows)


def read_step_times(run_dir: str, threads: int) -> dict[str, list[np.ndarray] | None] | None:
    """``step_times.npz`` as {field: [array per worker] or None}; None if there is no file.

    Raises ValueError when a field is given for some workers only.
    """
    path = os.path.join(run_dir, "step_times.npz")
    if not os.path.isfile(path):
        return None
    out = {}
    with np.load(path) as z:
        for field in STEP_FIELDS:
            per = [z[f"{field}_{k}"] for k in range(threads) if f"{field}_{k}" in z]
            if per and len(per) != threads:
                raise ValueError(f"{path}: {field} is given for {len(per)} of {threads} workers")
            out[field] = per or None
    return out


def histogram(values: Iterable[int]) -> list[int]:
    """Exact histogram of non-negative integers: counts indexed by value, no cap."""
    values = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.int64)
    if values.size == 0:
        return []
    return np.bincount(values).tolist()


def time_to_targets(times: Sequence[float], losses: Sequence[float],
                    targets: Sequence[float]) -> dict[str, float | None]:
    """First time at which each target loss was reached (loss <= target), else None."""
    result = {}
    for target in targets:
        hit = next((t for t, loss in zip(times, losses)
                    if loss is not None and loss <= target), None)
        result[f"{target:g}"] = hit
    return result


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
