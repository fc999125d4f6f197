"""Discrete-event simulator of m asynchronous SGD workers.

Each worker repeats: read the parameters (version ``t_read``), compute a
gradient (a random compute time), apply the update (the update time). The
staleness of an update is the version it is applied to minus ``t_read``,
measured exactly as the C parameter store measures it (``ckernels/pstore.c``):

  lock     reads and updates hold one mutex (FIFO, ties by worker id); tau is
           the version when the update gets the mutex. The read holds it for
           ``read_time`` (a snapshot copy), the update for ``update_time``.
  hogwild  no synchronisation; tau is the number of updates *finished* before
           this update *starts* (the store loads the version, applies, then
           increments). Updates that finish at the same instant do not see
           each other.
  leashed  lock-free CAS: an attempt loads the latest version, spends
           ``update_time`` building the new vector, then publishes by CAS; it
           fails if another update was published meanwhile. A failed attempt
           is retried at most ``persistence`` times (-1: until it succeeds),
           then the update is dropped. tau is the version the successful
           attempt was built on minus ``t_read``.

Time is in arbitrary units (seconds when fed measured timings). Outputs:
the staleness histogram, the histogram of CAS attempts per update (applied
or dropped), the dropped count and the throughput (applied updates per time
unit, overall and per worker). Lock and leashed run an event heap
(about 1 us per event in CPython); hogwild, where workers never wait, is
vectorised with numpy.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import NamedTuple, Sequence

import numpy as np

DISCIPLINES = ("lock", "hogwild", "leashed")
_CHUNK = 4096  # per-worker time draws are taken this many at a time


# ------------------------------------------------------- time distributions ----

@dataclasses.dataclass(frozen=True)
class Fixed:
    """Always ``value`` (>= 0)."""

    value: float

    def __post_init__(self):
        _check_time("fixed time", self.value, allow_zero=True)

    def mean(self) -> float:
        return float(self.value)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, float(self.value))


@dataclasses.dataclass(frozen=True)
class Exponential:
    """Exponential with mean ``mean`` (> 0): memoryless compute times."""

    mean_: float

    def __post_init__(self):
        _check_time("exponential mean", self.mean_)

    def mean(self) -> float:
        return float(self.mean_)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_, n)


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Log-normal with mean ``mean`` (> 0) and log-space std ``sigma`` (>= 0).

    The heavy right tail of real gradient times (stragglers, preemption)."""

    mean_: float
    sigma: float

    def __post_init__(self):
        _check_time("lognormal mean", self.mean_)
        _check_time("lognormal sigma", self.sigma, allow_zero=True)

    def mean(self) -> float:
        return float(self.mean_)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean_) - 0.5 * self.sigma ** 2
        return rng.lognormal(mu, self.sigma, n)


@dataclasses.dataclass(frozen=True, eq=False)
class EmpiricalTimes:
    """Resamples (with replacement) a recorded sample of times, e.g. a real
    run's per-step gradient times."""

    values: np.ndarray

    def __post_init__(self):
        values = np.asarray(self.values, np.float64).ravel()
        if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("an empirical time sample must be non-empty, finite and >= 0")
        object.__setattr__(self, "values", values)

    def mean(self) -> float:
        return float(self.values.mean())

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.values[rng.integers(0, self.values.size, n)]


def _check_time(name: str, value: float, allow_zero: bool = False) -> None:
    value = float(value)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value!r}")


def as_dist(spec):
    """A time distribution from a distribution, a number (fixed) or an array (empirical)."""
    if hasattr(spec, "sample"):
        return spec
    if np.ndim(spec) == 0:
        return Fixed(float(spec))
    return EmpiricalTimes(spec)


def parse_dist(text: str):
    """Parses ``fixed:V``, ``exp:MEAN``, ``lognormal:MEAN,SIGMA`` or
    ``empirical:FILE.npy`` (one time per line in .txt also works).

    Raises ValueError with a one-line message on bad input."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "fixed":
            return Fixed(float(arg))
        if kind in ("exp", "exponential"):
            return Exponential(float(arg))
        if kind == "lognormal":
            mean, sigma = (float(x) for x in arg.split(","))
            return LogNormal(mean, sigma)
        if kind == "empirical":
            values = np.load(arg) if arg.endswith(".npy") else np.loadtxt(arg)
            return EmpiricalTimes(values)
    except (TypeError, ValueError, OSError) as err:
        raise ValueError(f"bad time distribution {text!r}: {err}") from None
    raise ValueError(f"bad time distribution {text!r}; use fixed:V, exp:MEAN, "
                     f"lognormal:MEAN,SIGMA or empirical:FILE")


class _Draws:
    """Per-worker streams of time draws, taken in chunks (one Generator, so a
    seed fixes the whole simulation)."""

    def __init__(self, dists: Sequence, rng: np.random.Generator):
        self.dists, self.rng = list(dists), rng
        self.buf = [d.sample(rng, _CHUNK) for d in self.dists]
        self.pos = [0] * len(self.dists)

    def next(self, i: int) -> float:
        k = self.pos[i]
        if k == _CHUNK:
            self.buf[i] = self.dists[i].sample(self.rng, _CHUNK)
            k = 0
        self.pos[i] = k + 1
        return float(self.buf[i][k])


# ------------------------------------------------------------------ result ----

class SimResult(NamedTuple):
    """What one simulation produced.

    staleness: int64 [applied] tau of every applied update after burn-in, in
      order of application; worker: its worker id.
    attempts: int64 [finished] CAS attempts of every update after burn-in
      (applied or dropped; always 1 for lock and hogwild).
    dropped: updates dropped after ``persistence`` failed retries.
    time: simulated time from the end of burn-in to the last applied update.
    """

    staleness: np.ndarray
    worker: np.ndarray
    attempts: np.ndarray
    dropped: int
    time: float
    threads: int

    @property
    def hist(self) -> np.ndarray:
        """Staleness histogram, counts indexed by tau."""
        return np.bincount(self.staleness) if self.staleness.size else np.zeros(1, np.int64)

    @property
    def attempts_hist(self) -> np.ndarray:
        """Histogram of CAS attempts per update, counts indexed by attempts (0 unused)."""
        return np.bincount(self.attempts) if self.attempts.size else np.zeros(1, np.int64)

    @property
    def throughput(self) -> float:
        """Applied updates per time unit."""
        return self.staleness.size / self.time if self.time > 0 else math.inf

    @property
    def throughput_per_worker(self) -> np.ndarray:
        counts = np.bincount(self.worker, minlength=self.threads)
        return counts / self.time if self.time > 0 else np.full(self.threads, math.inf)

    def summary(self) -> dict:
        """JSON-friendly summary."""
        tau = self.staleness
        return {
            "threads": self.threads, "applied": int(tau.size), "dropped": int(self.dropped),
            "staleness_mean": float(tau.mean()) if tau.size else None,
            "staleness_std": float(tau.std()) if tau.size else None,
            "staleness_max": int(tau.max()) if tau.size else None,
            "staleness_hist": self.hist.tolist(),
            "cas_attempts_hist": self.attempts_hist.tolist(),
            "cas_attempts_mean": float(self.attempts.mean()) if self.attempts.size else None,
            "cas_failures": int(self.attempts.sum() - tau.size),
            "throughput": self.throughput,
            "throughput_per_worker": self.throughput_per_worker.tolist(),
        }


# --------------------------------------------------------------- simulator ----

def simulate(threads: int, compute, update_time=0.0, discipline: str = "lock",
             num_updates: int = 100_000, persistence: int = -1, read_time=0.0,
             burn_in: int = 0, rng=0) -> SimResult:
    """Simulates ``threads`` workers until ``num_updates + burn_in`` updates are applied.

    Args:
      threads: m >= 1.
      compute: gradient-compute time: one distribution for every worker, or a
        list of m (``Fixed``, ``Exponential``, ``LogNormal``, ``EmpiricalTimes``;
        a number means fixed, an array means empirical).
      update_time: time an update (one CAS attempt) takes; number or distribution.
      discipline: "lock", "hogwild" or "leashed".
      num_updates: applied updates to record, >= 1.
      persistence: leashed only; retries after a failed CAS (-1: unbounded).
      read_time: lock only; time a read holds the mutex (snapshot copy).
      burn_in: applied updates to simulate first and leave out of the results
        (all workers start together at time 0, so the first round is special).
      rng: numpy Generator or int seed.

    Returns:
      a ``SimResult``.
    """
    m = _check_int("threads", threads, 1)
    n = _check_int("num_updates", num_updates, 1)
    burn_in = _check_int("burn_in", burn_in, 0)
    persistence = _check_int("persistence", persistence, -1)
    if discipline not in DISCIPLINES:
        raise ValueError(f"unknown discipline {discipline!r}; choose one of {list(DISCIPLINES)}")
    dists = [as_dist(c) for c in compute] if isinstance(compute, (list, tuple)) else [as_dist(compute)] * m
    if len(dists) != m:
        raise ValueError(f"got {len(dists)} compute-time distributions for {m} threads")
    update, read = as_dist(update_time), as_dist(read_time)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    if discipline == "hogwild":
        return _hogwild(m, dists, update, n, burn_in, rng)
    if discipline == "lock":
        return _lock(m, dists, update, read, n, burn_in, rng)
    return _leashed(m, dists, update, n, persistence, burn_in, rng)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _result(taus, workers, attempts, dropped, t_start, t_end, m) -> SimResult:
    return SimResult(np.asarray(taus, np.int64), np.asarray(workers, np.int64),
                     np.asarray(attempts, np.int64), int(dropped), float(t_end - t_start), m)


def _lock(m, dists, update, read, n, burn_in, rng) -> SimResult:
    """A FIFO mutex serving read and update requests; one pending request per worker."""
    compute, hold_u, hold_r = _Draws(dists, rng), _Draws([update] * m, rng), _Draws([read] * m, rng)
    heap = [(0.0, i, 0) for i in range(m)]  # (request time, worker, 0 read / 1 update)
    heapq.heapify(heap)
    t_read = [0] * m
    version, free, t_start = 0, 0.0, 0.0
    total = n + burn_in
    taus, workers = [], []
    pop, push = heapq.heappop, heapq.heappush
    while version < total:
        t, i, kind = pop(heap)
        start = t if t > free else free
        if kind == 0:
            free = start + hold_r.next(i)
            t_read[i] = version
            push(heap, (free + compute.next(i), i, 1))
        else:
            free = start + hold_u.next(i)
            if version >= burn_in:
                taus.append(version - t_read[i])
                workers.append(i)
            elif version == burn_in - 1:
                t_start = free
            version += 1
            push(heap, (free, i, 0))
    return _result(taus, workers, np.ones(len(taus)), 0, t_start, free, m)


def _leashed(m, dists, update, n, persistence, burn_in, rng) -> SimResult:
    """CAS attempts as events at their publish time.

    An attempt started at s succeeds iff nothing was published in (s, now];
    then the version it loaded at s is still the current one, so its
    staleness is the current version minus the worker's t_read.
    """
    compute, attempt_time = _Draws(dists, rng), _Draws([update] * m, rng)
    heap = []
    for i in range(m):  # everyone reads version 0 at time 0
        start = compute.next(i)
        heap.append((start + attempt_time.next(i), i, start))
    heapq.heapify(heap)
    t_read, tries = [0] * m, [1] * m
    version, last_publish, t_start, dropped = 0, -math.inf, 0.0, 0
    total = n + burn_in
    taus, workers, attempts = [], [], []
    pop, push = heapq.heappop, heapq.heappush
    while version < total:
        t, i, start = pop(heap)
        if last_publish <= start:  # CAS succeeds
            if version >= burn_in:
                taus.append(version - t_read[i])
                workers.append(i)
                attempts.append(tries[i])
            elif version == burn_in - 1:
                t_start = t
            version += 1
            last_publish = t
            t_read[i], tries[i] = version, 1
            start = t + compute.next(i)
        elif persistence >= 0 and tries[i] > persistence:  # give up, read afresh
            if version >= burn_in:
                attempts.append(tries[i])
                dropped += 1
            t_read[i], tries[i] = version, 1
            start = t + compute.next(i)
        else:  # retry on the new latest version
            tries[i] += 1
            start = t
        push(heap, (start + attempt_time.next(i), i, start))
    return _result(taus, workers, attempts, dropped, t_start, last_publish, m)


def _hogwild(m, dists, update, n, burn_in, rng) -> SimResult:
    """Workers never wait, so each one's timeline is a cumulative sum.

    Worker i's k-th iteration reads at r_k (the end of its previous update),
    starts its update at s_k = r_k + compute and ends it at e_k = s_k + update.
    tau = #(updates ended before s_k) - #(updates ended at or before r_k).
    """
    total = n + burn_in
    rate = sum(1.0 / max(d.mean() + update.mean(), 1e-300) for d in dists)
    per = [max(16, int(math.ceil(1.2 * total * (1.0 / max(d.mean() + update.mean(), 1e-300)) / rate)) + 16)
           for d in dists]
    while True:
        starts, ends, reads, who = [], [], [], []
        for i, d in enumerate(dists):
            c, u = d.sample(rng, per[i]), update.sample(rng, per[i])
            e = np.cumsum(c + u)
            starts.append(e - u)
            ends.append(e)
            reads.append(np.concatenate([[0.0], e[:-1]]))
            who.append(np.full(per[i], i))
        all_ends = np.sort(np.concatenate(ends))
        if all_ends.size < total:
            per = [2 * k for k in per]
            continue
        horizon = all_ends[total - 1]
        if all(e[-1] >= horizon for e in ends):  # every worker ran past the horizon
            break
        per = [2 * k for k in per]
    s, e, r, w = (np.concatenate(x) for x in (starts, ends, reads, who))
    order = np.lexsort((w, e))[:total]  # the first `total` updates to finish
    s, e, r, w = s[order], e[order], r[order], w[order]
    tau = np.searchsorted(all_ends, s, side="left") - np.searchsorted(all_ends, r, side="right")
    tau = np.maximum(tau, 0)
    t_start = e[burn_in - 1] if burn_in else 0.0
    keep = slice(burn_in, total)
    return _result(tau[keep], w[keep], np.ones(n), 0, t_start, e[-1], m)
