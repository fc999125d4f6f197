"""Validation of the simulator against a real run's measured staleness.

A run folder (``asgd.run.train``) holds ``config.json``, ``summary.json`` and,
for validation, ``step_times.npz`` with the per-update timings of each worker
k = 0..m-1 (float64 seconds, in the order the worker did them):

  compute_s_<k>   gradient computation only (after the snapshot is acquired,
                  until the gradient is ready)                      required
  update_s_<k>    the whole ``store.update`` call (waits and retries included)
  read_s_<k>      the whole ``store.acquire`` call (lock: mutex wait + copy)
  attempts_<k>    int, CAS attempts of each update (as in WorkerLog.attempts)

The simulator is fed worker k's compute times as an empirical distribution
(resampled), and as service times a low quantile (default the 10th
percentile) of update_s / attempts and of read_s: the measured calls include
waiting for the mutex or retrying, the quantile approximates the uncontended
time. Without step_times.npz it falls back to a fixed compute time equal to
summary.json's ``mean_compute_s`` and zero update time (reported as such).

The simulated and measured staleness histograms are compared by total
variation, and each is matched to the parametric families (geometric,
Poisson, CMP) with ``asgd.staleness.best_fit``.
"""

from __future__ import annotations

import os

import numpy as np

from asgd import metrics
from asgd import staleness as st
from asgd.dynamics import simulator

ALGORITHM_TO_DISCIPLINE = {"lock": "lock", "hogwild": "hogwild", "leashed": "leashed",
                           "sequential": "lock"}


def load_run(run_dir: str) -> dict:
    """The parts of a run folder that validation needs (read through ``asgd.metrics``).

    Returns {"algorithm", "threads", "persistence", "staleness_hist",
    "compute_s": [per worker arrays] or None, "update_s", "read_s",
    "attempts" (same, or None), "mean_compute_s"}.

    Raises:
      ValueError: a missing or unusable file, with the path in the message.
    """
    folder = metrics.load_run(run_dir)
    summary, config = folder.summary, folder.config
    algorithm = summary.get("algorithm", config.get("algorithm"))
    if algorithm not in ALGORITHM_TO_DISCIPLINE:
        raise ValueError(f"{run_dir}: algorithm {algorithm!r} has no simulated discipline; "
                         f"supported: {sorted(ALGORITHM_TO_DISCIPLINE)}")
    hist = summary.get("staleness_hist") or []
    if not hist or sum(hist) <= 0:
        raise ValueError(f"{os.path.join(run_dir, 'summary.json')} has no staleness_hist "
                         f"to validate against")
    threads = int(summary.get("threads", config.get("threads", 1)))
    run = {"algorithm": algorithm, "threads": threads,
           "persistence": int(config.get("persistence", -1)),
           "staleness_hist": np.asarray(hist, np.float64),
           "mean_compute_s": summary.get("mean_compute_s"),
           "compute_s": None, "update_s": None, "read_s": None, "attempts": None}
    times = metrics.read_step_times(run_dir, threads)
    if times is not None:
        if times["compute_s"] is None:
            raise ValueError(f"{os.path.join(run_dir, 'step_times.npz')} has no compute_s_<k> arrays")
        run.update(times)
    return run


def _service_time(times, attempts, quantile: float) -> float:
    """Uncontended duration of one call/attempt: a low quantile over all workers."""
    if times is None:
        return 0.0
    t = np.concatenate(times).astype(np.float64)
    if attempts is not None:
        a = np.concatenate(attempts).astype(np.float64)
        if a.size == t.size:
            t = t / np.maximum(a, 1.0)
    return float(np.quantile(t, quantile)) if t.size else 0.0


def fit_report(hist, families=("geometric", "poisson", "cmp")) -> dict:
    """best_fit of a histogram: {"best", "scores": {family: {"tv", "aic", "params", ...}}}."""
    name, _, scores = st.best_fit(np.asarray(hist, np.float64), families)
    return {"best": name, "scores": scores}


def compare(measured_hist, simulated_hist) -> dict:
    """TV(simulated, measured), mean staleness of both, and the best fits of each."""
    measured = np.asarray(measured_hist, np.float64)
    simulated = np.asarray(simulated_hist, np.float64)
    tau = lambda h: float(np.dot(np.arange(h.size), h) / h.sum())
    return {"tv": st.total_variation(simulated / simulated.sum(), measured),
            "measured_mean": tau(measured), "simulated_mean": tau(simulated),
            "measured_fit": fit_report(measured), "simulated_fit": fit_report(simulated)}


def validate(run_dir: str, num_updates: int = 200_000, update_time: float | None = None,
             read_time: float | None = None, quantile: float = 0.1, seed: int = 0) -> dict:
    """Simulates a run folder's setting from its timings and compares staleness.

    Args:
      run_dir: a run folder (see the module docstring for step_times.npz).
      num_updates: simulated updates.
      update_time, read_time: override the service-time estimates (seconds).
      quantile: the quantile of the measured update/read times taken as the
        uncontended service time.
      seed: simulator seed.

    Returns:
      ``compare(...)`` plus {"run_dir", "algorithm", "discipline", "threads",
      "timings": "step_times.npz" | "mean_compute_s only", "update_time",
      "read_time", "measured_hist", "simulated": SimResult.summary()}.
    """
    run = load_run(run_dir)
    m, discipline = run["threads"], ALGORITHM_TO_DISCIPLINE[run["algorithm"]]
    if run["compute_s"] is not None:
        compute = [simulator.EmpiricalTimes(c) for c in run["compute_s"]]
        timings = "step_times.npz"
    elif run["mean_compute_s"]:
        compute = simulator.Fixed(float(run["mean_compute_s"]))
        timings = "mean_compute_s only"
    else:
        raise ValueError(f"{run_dir}: no step_times.npz and no mean_compute_s in summary.json")
    if update_time is None:
        update_time = _service_time(run["update_s"], run["attempts"], quantile)
    if read_time is None:
        read_time = _service_time(run["read_s"], None, quantile) if discipline == "lock" else 0.0
    sim = simulator.simulate(m, compute, update_time, discipline, num_updates,
                             persistence=run["persistence"], read_time=read_time,
                             burn_in=m, rng=seed)
    report = compare(run["staleness_hist"], sim.hist)
    report.update({"run_dir": os.path.abspath(run_dir), "algorithm": run["algorithm"],
                   "discipline": discipline, "threads": m, "timings": timings,
                   "update_time": update_time, "read_time": read_time,
                   "measured_hist": run["staleness_hist"].astype(int).tolist(),
                   "simulated": sim.summary()})
    return report
