"""The run-folder schema: the one module that writes and reads a run's files.

A run folder ``<workdir>/runs/<timestamp>-<name>/`` holds
  config.json     the train config, as given, its fields at the top level, and
                  under ``"environment"`` what ran it (``environment()``)
  metrics.jsonl   one event per line: updates, wall_time_s, train_loss,
                  eval_loss/eval_accuracy (at evaluations), live_buffers
  summary.json    the run's results (``Monitor.summary``)
  step_times.npz  per-worker read/compute/update seconds and CAS attempts
  params.npz      the final parameters: the flat float32 vector and its layout
  events.out.tfevents.*  TensorBoard scalars (only with ``tensorboard=True``)

``config.json``, ``summary.json`` and ``params.npz`` are written atomically
(temp file + rename); ``metrics.jsonl`` is appended and flushed one line per
event. A crash or Ctrl-C therefore leaves valid files holding what was
measured so far. ``RunWriter`` writes a folder; ``load_run``, ``load_params``
and ``read_step_times`` read one back (the study, its plots, ``asgd.plot``
and ``asgd.dynamics validate`` use them).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

ENVIRONMENT = "environment"  # the config.json key that records what ran the run
PACKAGES = ("jax", "jaxlib", "numpy", "optax", "scipy", "ml_collections")


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


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with local changes), or None outside git."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """What a run ran on: Python and package versions, CPU, the C kernel's build, git commit.

    Computed once per process (a study runs many runs in one).
    """
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        from asgd import store
        kernel = store.build_info() if store.available() else None
    except Exception:  # a broken build must not cost the run its results
        kernel = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "c_kernel": kernel,
        "git_commit": _git_commit(),
    }


def params_layout(layout) -> dict:
    """The arrays that describe an ``asgd.params.FlatLayout`` in params.npz.

    ``paths``: each leaf's key path ("dense0/w"), ``offsets``, ``ndims`` and
    ``dims`` (all shapes concatenated), in the flat vector's leaf order.
    """
    import jax
    numbered = jax.tree.unflatten(layout.treedef, range(len(layout.shapes)))
    paths = [jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_flatten_with_path(numbered)[0]]
    return {"paths": np.asarray(paths), "offsets": np.asarray(layout.offsets, np.int64),
            "ndims": np.asarray([len(s) for s in layout.shapes], np.int64),
            "dims": np.asarray([d for s in layout.shapes for d in s], np.int64)}


def load_params(run_dir: str, flat: bool = False):
    """A run's final parameters from its params.npz, as the model's pytree.

    The pytree is nested dicts keyed as the model's (``{"dense0": {"w": ..., "b": ...}}``),
    numpy float32 leaves, in the flat vector's order: ``asgd.models`` ``apply``
    takes it as is. With ``flat=True``, the flat float32 vector the store held.
    Raises ValueError naming the file when it is missing.
    """
    path = os.path.join(run_dir, "params.npz")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found (runs write it when they end)")
    with np.load(path) as z:
        vector = z["flat"]
        if flat:
            return vector
        dims, tree, start = z["dims"].tolist(), {}, 0
        for name, offset, ndim in zip(z["paths"].tolist(), z["offsets"].tolist(), z["ndims"].tolist()):
            shape = tuple(dims[start:start + ndim])
            start += ndim
            node, *parents = tree, *name.split("/")[:-1]
            for key in parents:
                node = node.setdefault(key, {})
            node[name.split("/")[-1]] = vector[offset:offset + math.prod(shape)].reshape(shape)
    return tree


STEP_FIELDS = {"read_s": np.float64, "compute_s": np.float64, "update_s": np.float64,
               "attempts": np.int64}


class RunWriter:
    """Writes one run's folder. Use as a context manager.

    Args:
      run_dir: the folder (created if needed).
      config: the train config's fields, written at the top level of config.json;
        the environment goes under ``"environment"`` beside them.
      layout: the ``asgd.params.FlatLayout`` of the parameters, saved in params.npz.
      tensorboard: also write every metrics event as TensorBoard scalars
        (tensorboardX; ``pip install -e '.[tensorboard]'``).
    """

    def __init__(self, run_dir: str, config: dict, layout=None, tensorboard: bool = False):
        self.run_dir, self.layout = run_dir, layout
        os.makedirs(run_dir, exist_ok=True)
        fields = {k: v for k, v in config.items() if k != ENVIRONMENT}
        write_json_atomic(os.path.join(run_dir, "config.json"), {**fields, ENVIRONMENT: environment()})
        self._metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self._tensorboard = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tensorboard = SummaryWriter(logdir=run_dir, flush_secs=5)

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
        self._metrics.flush()
        if self._tensorboard is not None:
            for name, value in record.items():
                if name != "updates" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(name, value, global_step=record["updates"])

    def summary(self, summary: dict) -> None:
        write_json_atomic(os.path.join(self.run_dir, "summary.json"), summary)
        if self._tensorboard is not None:
            for name, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    self._tensorboard.add_scalar(f"summary/{name}", value,
                                                 global_step=summary.get("updates", 0))
            self._tensorboard.flush()

    def params(self, flat: np.ndarray) -> None:
        """The final parameters as params.npz: ``flat`` and, with a layout, where each leaf lives.

        A store that holds an optimizer's state after the parameters gives a
        longer vector: the part past the layout is saved as ``optimizer_state``.
        """
        flat = np.asarray(flat, np.float32)
        arrays = {"flat": flat}
        if self.layout is not None:
            arrays = {"flat": flat[:self.layout.size], **params_layout(self.layout)}
            if flat.size > self.layout.size:
                arrays["optimizer_state"] = flat[self.layout.size:]
        tmp = os.path.join(self.run_dir, "params.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.run_dir, "params.npz"))

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
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Run(NamedTuple):
    """A finished run as read back from its folder."""

    run_dir: str
    config: dict        # the train config's fields (config.json without the environment)
    summary: dict
    rows: list          # metrics.jsonl, one dict per event
    environment: dict | None = None  # config.json's "environment", if recorded


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
    environment_ = config.pop(ENVIRONMENT, None)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    rows = read_jsonl(metrics_path) if os.path.isfile(metrics_path) else []
    return Run(run_dir, config, read_json(summary_path), rows, environment_)


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
