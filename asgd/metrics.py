"""Per-run results: a folder with config.json, metrics.jsonl and summary.json.

``config.json`` and ``summary.json`` are written atomically (temp file +
rename); ``metrics.jsonl`` is appended and flushed one line per event. A
crash or Ctrl-C therefore leaves valid files holding what was measured so far.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from typing import Any, Iterable, Sequence

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
            arrays[f"read_s_{k}"] = np.asarray(log.read_s, np.float64)
            arrays[f"compute_s_{k}"] = np.asarray(log.compute_s, np.float64)
            arrays[f"update_s_{k}"] = np.asarray(log.update_s, np.float64)
            arrays[f"attempts_{k}"] = np.asarray(log.attempts, np.int64)
        tmp = os.path.join(self.run_dir, "step_times.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.run_dir, "step_times.npz"))

    def close(self) -> None:
        self._metrics.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
