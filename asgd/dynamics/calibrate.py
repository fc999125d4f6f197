"""Calibration: short measurements of the machine at hand, for ``asgd.dynamics.machine``.

``calibrate(config)`` measures, for the problem a train config describes
(data, model, batch size, step size, ``cpus``), through the public APIs
(``asgd.run``, ``asgd.problem``, ``asgd.store``, ``asgd.data``):

  steps        one worker alone (m = 1) of lock, hogwild and leashed: updates/s
               and the mean read, gradient and update call of every step (the
               runs' step_times.npz), interleaved over ``reps`` rounds. The
               lock's hold time is its read (the snapshot copy) plus its update.
  gil          the time per step that holds Python's GIL, with a probe: a pure-
               Python thread pinned to a core of its own (one the config's
               ``cpus`` leaves free, else the last; the run is pinned to the
               others) that wants the GIL all the time. Whatever the
               probe does not spend on its core, it waits for the GIL that
               the run holds. Two run lengths are differenced (so set-up and
               the final evaluation cancel out). The probe makes every GIL
               acquisition of the worker wait for a forced switch, and pays two
               thread hand-offs per acquisition, so it is checked on synthetic
               workers (GIL held for 0 and for 100 us per step) and corrected:
               acquisitions per step = (step time with the probe - without) /
               switch interval; held = probe - acquisitions x hand-off pair;
               the model's GIL time adds back one hand-off per acquisition,
               what a contended hand-off between two workers costs. The probe
               also measures the GIL time of the gradient call and of the
               store update alone: what the step holds between its read and
               its update; the rest is held before the read.
  concurrency  k = 1, 2, ... threads computing gradients at once: the time of
               one gradient against k (oversubscribed k included); with
  one_core     one gradient pinned to one core, it gives the cores a gradient
               keeps busy alone (XLA's intra-op threads: time on one core /
               time on all) and the contention of k gradients beyond
               processor sharing.
  copies       k = 1..P threads each updating a store of its own (copy + axpy,
               12 d bytes per update): the copies' memory bandwidth.
  batches      one gradient's time against the batch size (reported, with a
               linear fit).

Each part runs in a fresh child process (``python -m asgd.dynamics.calibrate
PART``), so JAX sizes its thread pools for that part's CPU set, and the load
average before and after is recorded: timings taken while other jobs run
are not calibration.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ALGORITHMS = ("lock", "hogwild", "leashed")
PARTS = ("steps", "gil", "concurrency", "one_core", "copies", "batches")
CALIBRATION_VERSION = 1
MAX_SAMPLES = 4000  # compute-time samples kept per algorithm


# ------------------------------------------------------------- the config ----

def config_fields(cfg) -> dict:
    """The train-config fields a calibration depends on (and records).

    ``cpus`` is the machine calibrated: N > 0 CPUs, or all allowed (0; the
    default -1, one CPU per worker, pins train.py's runs, not the machine).
    """
    keys = ("dataset", "data_dir", "eval_fraction", "split_seed", "model", "mlp_hidden",
            "batch_size", "learning_rate", "stepsize", "persistence", "cpus", "seed")
    fields = {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]) for k in keys}
    fields["cpus"] = max(int(fields["cpus"]), 0)
    return fields


def config_from_fields(fields: dict):
    """The default train config with ``fields`` set (tuples restored)."""
    from asgd.run import default_config
    cfg = default_config()
    for key, value in fields.items():
        cfg[key] = tuple(value) if isinstance(value, list) else value
    return cfg


def run_config(fields: dict, algorithm: str, threads: int, updates: int, workdir: str,
               seed: int | None = None, log_every: int = 1000):
    """A quiet train config of one measured run: no evaluation during training."""
    cfg = config_from_fields(fields)
    cfg.algorithm, cfg.threads = algorithm, int(threads)
    cfg.num_updates, cfg.epochs, cfg.time_budget_s, cfg.target_loss = int(updates), 0, 0.0, 0.0
    cfg.eval_every, cfg.log_every = 10**9, int(log_every)
    cfg.quiet, cfg.workdir = True, workdir
    if seed is not None:
        cfg.seed = int(seed)
    return cfg


# ------------------------------------------------------------- GIL probe ----

def _thread_times(tid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of thread ``tid``."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) * 1e-9, int(waiting) * 1e-9


class GilProbe:
    """A thread that wants the GIL all the time; measures how long others held it.

    ``with GilProbe(cpu) as probe: ...`` then ``probe.lost`` = wall time the
    probe spent off its CPU (waiting for the GIL, or runnable but not running:
    ``probe.runqueue``, which pinning to an otherwise idle core keeps near 0).
    Linux only (it reads /proc/self/task/<tid>/schedstat).
    """

    def __init__(self, cpu: int | None = None):
        self.cpu = cpu
        self.lost = self.runqueue = self.wall = math.nan

    def __enter__(self):
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gil-probe", daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _loop(self):
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})  # this thread only
        tid = threading.get_native_id()
        cpu0, wait0 = _thread_times(tid)
        t0 = time.perf_counter()
        self._ready.set()
        stop, n = self._stop, 0
        while not stop.is_set():
            for _ in range(100):  # pure Python: progresses only while it holds the GIL
                n += 1
        wall = time.perf_counter() - t0
        cpu1, wait1 = _thread_times(tid)
        self.wall, self.runqueue = wall, wait1 - wait0
        self.lost = wall - (cpu1 - cpu0)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def synthetic_gil_cost(hold_s: float, steps: int, cpu: int | None) -> float:
    """Probe-measured GIL time per step of a thread holding the GIL for ``hold_s``
    (busy Python) then releasing it once (``time.sleep(0)``), per step."""
    def worker():
        for _ in range(steps):
            _busy(hold_s)
            time.sleep(0)
    thread = threading.Thread(target=worker)
    with GilProbe(cpu) as probe:
        thread.start()
        thread.join()
    return probe.lost / steps


# ------------------------------------------------------------------ parts ----

def _execute(fields, problem, algorithm, threads, updates, workdir, seed=None) -> dict:
    from asgd.run import execute, parse
    cfg = run_config(fields, algorithm, threads, updates, workdir, seed)
    return execute(parse(cfg), cfg.to_dict(), problem=problem)


def _problem(fields):
    from asgd.run import problem_of
    return problem_of(config_from_fields(fields))


def part_steps(fields: dict, updates: int, reps: int) -> dict:
    """m = 1 runs of every algorithm, interleaved: rates and mean call times."""
    from asgd import metrics
    problem = _problem(fields)
    out = {a: {"updates_per_s": [], "read_s": [], "compute_s": [], "update_s": []}
           for a in ALGORITHMS}
    with tempfile.TemporaryDirectory() as workdir:
        for algorithm in ALGORITHMS:  # a fresh process's first steps are slower
            _execute(fields, problem, algorithm, 1, updates, workdir)
        for _ in range(reps):
            for algorithm in ALGORITHMS:
                summary = _execute(fields, problem, algorithm, 1, updates, workdir)
                times = metrics.read_step_times(summary["run_dir"], 1)
                rec = out[algorithm]
                rec["updates_per_s"].append(summary["updates_per_s"])
                for field in ("read_s", "compute_s", "update_s"):
                    rec[field].append(float(np.mean(times[field][0])))
                rec["compute_samples"] = times["compute_s"][0][-MAX_SAMPLES:].tolist()
    out["params"] = int(problem.layout.size)
    return out


def _probe_per_call(call, n: int, probe_cpu: int) -> float:
    """Probe-measured GIL time per ``call(i)``, i = 0..n-1, made by this thread."""
    with GilProbe(probe_cpu) as probe:
        for i in range(n):
            call(i)
    return probe.lost / n


def part_gil(fields: dict, updates: int, reps: int, switch_s: float, probe_cpu: int) -> dict:
    """The probe's measurements; the probe runs on ``probe_cpu``, the runs on this
    process's CPUs (which must not include it).

    Besides the whole step (m = 1 runs of each algorithm), the probe measures
    the GIL time of the two calls a worker makes between its read and its
    update (the gradient call on a snapshot, the store update), which gives
    the share of the step's GIL time held before the read.
    """
    import jax

    from asgd.data import Batches
    from asgd.store import ParameterStore
    default_switch = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    try:
        handoff = statistics.median(synthetic_gil_cost(0.0, 2000, probe_cpu) for _ in range(3))
        check = statistics.median(synthetic_gil_cost(1e-4, 1000, probe_cpu) for _ in range(3))
    finally:
        sys.setswitchinterval(default_switch)
    problem = _problem(fields)
    short, long = max(updates // 4, 20), updates
    out = {"switch_interval_s": switch_s, "probe_cpu": probe_cpu, "handoff_pair_s": handoff,
           "check": {"hold_s": 1e-4, "measured_s": check}}
    with tempfile.TemporaryDirectory() as workdir:
        for algorithm in ALGORITHMS:
            _execute(fields, problem, algorithm, 1, long, workdir)  # warm-up
            alone = [_execute(fields, problem, algorithm, 1, long, workdir)["updates_per_s"]
                     for _ in range(reps)]
            lost = {short: [], long: []}
            runqueue, with_probe = [], []
            sys.setswitchinterval(switch_s)
            try:
                for _ in range(reps):
                    for n in (short, long):
                        with GilProbe(probe_cpu) as probe:
                            summary = _execute(fields, problem, algorithm, 1, n, workdir)
                        lost[n].append(probe.lost)
                        runqueue.append(probe.runqueue / probe.wall)
                        if n == long:
                            with_probe.append(summary["updates_per_s"])
            finally:
                sys.setswitchinterval(default_switch)
            probe_s = (statistics.median(lost[long]) - statistics.median(lost[short])) / (long - short)
            step_alone = 1.0 / statistics.median(alone)
            step_probed = 1.0 / statistics.median(with_probe)
            acquisitions = max(step_probed - step_alone, 0.0) / switch_s
            held = max(probe_s - acquisitions * handoff, 0.0)
            out[algorithm] = {"probe_s": probe_s, "acquisitions": acquisitions, "held_s": held,
                              "model_s": held + 0.5 * acquisitions * handoff,
                              "step_alone_s": step_alone, "step_with_probe_s": step_probed,
                              "runqueue_share": statistics.median(runqueue)}
    batches = Batches(problem.train, int(fields["batch_size"]), 0)
    data = [batches.get(i) for i in range(64)]
    scales = np.array([1e-12], np.float32)
    store = ParameterStore(problem.layout.size, mode="leashed", init=problem.init_flat)
    leaves = []

    def gradient_call(i):
        with store.acquire() as snapshot:
            loss, grads = problem.grad_fn(snapshot.array, *data[i % len(data)])
            leaves[:] = jax.block_until_ready(jax.tree.leaves(grads))
            float(loss)

    n = max(updates // 4, 50)
    gradient_call(0)
    sys.setswitchinterval(switch_s)
    try:
        out["gradient_call_s"] = statistics.median(
            _probe_per_call(gradient_call, n, probe_cpu) for _ in range(reps))
        out["update_call_s"] = statistics.median(
            _probe_per_call(lambda i: store.update(leaves, scales, 0), n, probe_cpu)
            for _ in range(reps))
    finally:
        sys.setswitchinterval(default_switch)
    store.close()
    return out


def time_per_iteration(k: int, iteration, seconds: float) -> float:
    """k threads each calling ``iteration(j, i)`` (thread j, its i-th call) for
    ``seconds``: the wall time per call of one thread (k x elapsed / calls)."""
    counts, stop = [0] * k, threading.Event()

    def loop(j):
        while not stop.is_set():
            iteration(j, counts[j])
            counts[j] += 1
    workers = [threading.Thread(target=loop, args=(j,)) for j in range(k)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return k * (time.perf_counter() - start) / max(sum(counts), 1)


def _interleaved(measure, threads: list[int], reps: int) -> list[float]:
    """Median over ``reps`` rounds of ``measure(k)`` for every k, rounds interleaved."""
    measure(1)  # warm-up
    times = {k: [] for k in threads}
    for _ in range(reps):
        for k in threads:
            times[k].append(measure(k))
    return [statistics.median(times[k]) for k in threads]


def part_concurrency(fields: dict, threads: list[int], seconds: float, reps: int) -> dict:
    """Per-gradient time with k gradient threads at once (snapshot, gradient, release)."""
    import jax

    from asgd.data import Batches
    from asgd.store import ParameterStore
    problem = _problem(fields)
    batches = Batches(problem.train, int(fields["batch_size"]), 0)
    store = ParameterStore(problem.layout.size, mode="leashed", init=problem.init_flat)

    def measure(k: int) -> float:
        def gradient(j, i):
            with store.acquire() as snapshot:
                loss, grads = problem.grad_fn(snapshot.array, *batches.get(i * k + j))
                jax.block_until_ready(grads)
                float(loss)
        return time_per_iteration(k, gradient, seconds)

    gradient_s = _interleaved(measure, list(threads), reps)
    store.close()
    return {"threads": list(threads), "gradient_s": gradient_s,
            "speed": [gradient_s[0] / t for t in gradient_s]}


def part_copies(fields: dict, seconds: float, reps: int) -> dict:
    """Update time with k = 1..P threads each on a store of its own (no conflicts)."""
    import jax

    from asgd.data import Batches
    from asgd.store import ParameterStore
    problem = _problem(fields)
    batches = Batches(problem.train, int(fields["batch_size"]), 0)
    _, grads = problem.grad_fn(problem.init_flat, *batches.get(0))
    leaves = [np.asarray(leaf) for leaf in jax.block_until_ready(jax.tree.leaves(grads))]
    scales = np.array([1e-12], np.float32)
    d = problem.layout.size

    def measure(k: int) -> float:
        stores = [ParameterStore(d, mode="leashed", init=problem.init_flat) for _ in range(k)]
        try:
            return time_per_iteration(
                k, lambda j, i: stores[j].update(leaves, scales, stores[j].version), seconds)
        finally:
            for store in stores:
                store.close()

    threads = list(range(1, len(os.sched_getaffinity(0)) + 1))
    update_s = _interleaved(measure, threads, reps)
    nbytes = 12 * d
    return {"threads": threads, "update_s": update_s, "bytes": nbytes,
            "gbs": [k * nbytes / t / 1e9 for k, t in zip(threads, update_s)]}


def part_batches(fields: dict, batch_sizes: list[int], steps: int) -> dict:
    """Median single-thread gradient time per batch size, and a linear fit."""
    import jax

    from asgd.data import Batches
    problem = _problem(fields)
    flat = problem.init_flat
    times = []
    for b in batch_sizes:
        batches = Batches(problem.train, min(b, len(problem.train.y)), 0)
        jax.block_until_ready(problem.grad_fn(flat, *batches.get(0)))  # compile
        samples = []
        for i in range(steps):
            x, y = batches.get(i)
            t0 = time.perf_counter()
            loss, grads = problem.grad_fn(flat, x, y)
            jax.block_until_ready(grads)
            float(loss)
            samples.append(time.perf_counter() - t0)
        times.append(statistics.median(samples[steps // 5:]))
    slope, intercept = np.polyfit(batch_sizes, times, 1) if len(batch_sizes) > 1 else (0.0, times[0])
    return {"batch_size": list(batch_sizes), "gradient_s": times,
            "fit": {"fixed_s": float(intercept), "per_example_s": float(slope)}}


# ------------------------------------------------------- orchestration ----

def _machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    import jax

    from asgd import store
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "jax": jax.__version__,
            "store_build": store.build_info() if store.available() else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _run_part(part: str, args: dict, cpus: list[int], log, label: str = "") -> dict:
    """Runs one part in a child process (pinned to ``cpus``), returns its JSON."""
    payload = json.dumps({"part": part, "args": args, "cpus": cpus})
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asgd.dynamics.calibrate", payload],
                          capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"calibration part {part!r} failed: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = list(load), list(os.getloadavg())
    result["seconds"] = time.perf_counter() - t0
    log(f"calibrate: {label or part} done in {result['seconds']:.0f} s "
        f"(load {load[0]:.2f} -> {result['load_after'][0]:.2f})")
    return result


def calibrate(cfg, updates: int = 1500, reps: int = 3, concurrency: list[int] | None = None,
              seconds: float = 1.5, batch_sizes: list[int] | None = None,
              switch_s: float = 2e-4, log=print) -> dict:
    """Measures the machine for the problem of train config ``cfg`` (validated
    with ``asgd.run.parse``); returns the calibration as a JSON-able dict.

    Args:
      cfg: a train config (its data, model, batch size, step size, cpus).
      updates: updates per m = 1 run (the GIL probe's long run; its short run is a quarter).
      reps: interleaved repetitions (medians are kept).
      concurrency: thread counts for the gradient-concurrency curve (default 1..2P).
      seconds: duration of each concurrency and copy measurement.
      batch_sizes: for the gradient-time-vs-batch curve (default 16..256 and the config's).
      switch_s: the interpreter's switch interval while the GIL probe runs.
      log: progress lines go here.
    """
    from asgd.run import parse
    parse(cfg)
    fields = config_fields(cfg)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[:cfg.cpus] if cfg.cpus > 0 else allowed
    p = len(cpus)
    concurrency = concurrency or list(range(1, 2 * p + 1))
    batch_sizes = sorted(set(batch_sizes or [16, 32, 64, 128, 256]) | {int(cfg.batch_size)})
    if any(k < 1 for k in concurrency) or concurrency[0] != 1:
        raise ValueError(f"concurrency thread counts must start at 1, got {concurrency}")
    # The probe needs a CPU of its own: one the runs do not use, else the last
    # of theirs (the probe's runs then get the others).
    spare = [c for c in allowed if c not in cpus]
    if spare:
        gil_cpus, probe_cpu = cpus, spare[0]
    elif p > 1:
        gil_cpus, probe_cpu = cpus[:-1], cpus[-1]
    else:
        raise ValueError("the GIL probe needs a CPU of its own: calibrate with 2 or more CPUs allowed")
    out = {"version": CALIBRATION_VERSION, "config": fields, "cores": p}
    out["steps"] = _run_part("steps", {"fields": fields, "updates": updates, "reps": reps}, cpus, log)
    out["params"] = out["steps"].pop("params")
    out["gil"] = _run_part("gil", {"fields": fields, "updates": updates, "reps": reps,
                                   "switch_s": switch_s, "probe_cpu": probe_cpu}, gil_cpus, log)
    out["concurrency"] = _run_part("concurrency", {"fields": fields, "threads": concurrency,
                                                   "seconds": seconds, "reps": reps}, cpus, log)
    out["one_core"] = _run_part("concurrency", {"fields": fields, "threads": [1],
                                                "seconds": seconds, "reps": reps},
                                cpus[:1], log, "one_core")
    out["copies"] = _run_part("copies", {"fields": fields, "seconds": seconds, "reps": reps},
                              cpus, log)
    out["batches"] = _run_part("batches", {"fields": fields, "batch_sizes": batch_sizes,
                                           "steps": 200}, cpus, log)
    out["machine"] = _run_part("machine", {}, cpus, log)
    return out


def _child(payload: str) -> None:
    """Entry point of a part's child process: pin, run, print one JSON line."""
    request = json.loads(payload)
    part, args, cpus = request["part"], request["args"], request["cpus"]
    os.sched_setaffinity(0, cpus)  # before JAX starts and sizes its thread pools
    fn = {"steps": part_steps, "gil": part_gil, "concurrency": part_concurrency,
          "copies": part_copies, "batches": part_batches, "machine": _machine_info}[part]
    result = fn(**args)
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    _child(sys.argv[1])
