"""A model of a P-core machine running m asynchronous SGD workers.

``asgd.dynamics.simulator`` gives each worker its own processor and no shared
resource but the parameter store's synchronisation. Here the workers share
what a real machine shares, each modelled as a resource of the discrete-event
simulation:

  cores    P processors, time-sliced as processor sharing: while the runnable
           threads want more cores than P, each progresses at P/(cores
           wanted) of its speed alone (a gradient alone may keep several
           cores busy: XLA's intra-op threads); gradients running at once
           also slow each other (caches, memory: a measured factor). Threads
           waiting for the GIL or the mutex sleep and use no processor.
  GIL      Python's global interpreter lock: one holder at a time, waiters
           served first come, first served. A step holds it for ``Step.gil``
           seconds in two parts: before the read (take a ticket, fetch the
           minibatch, acquire, dispatch the gradient) and between the gradient
           and the update (convert the gradient, log it, call the store).
  mutex    lock only: one FIFO mutex held by the read's snapshot copy and by
           the update, as in ``simulator``.
  memory   the store's copies (the lock's snapshot copy and every update
           attempt's copy + axpy) share the memory bandwidth: with j copies
           under way each runs at min(1, copy_streams / j) of its speed.
  CAS      leashed: an attempt loads the latest version, copies and applies
           (the update time), then publishes by CAS; it fails if another
           update was published meanwhile and is retried at most
           ``persistence`` times, then dropped.

Staleness is measured as the C store measures it (see ``simulator``).
Hogwild!'s reads are taken as consistent reads of the version current at the
read and its in-place update as atomic: the model does not see the partial,
inconsistent reads and the lost element updates of real Hogwild! (see
docs/dynamics.md for what that costs the predictions).

The simulation is event driven: in each class of work that runs at one
common rate (GIL-held Python, copies, gradients) every job progresses at the
same rate, so one virtual clock per class and a heap of finishing points
make every event O(log m). Times are in seconds when fed calibrated timings.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import Counter, deque
from typing import NamedTuple, Sequence

import numpy as np

from asgd.dynamics import simulator

DISCIPLINES = simulator.DISCIPLINES

# the phases of one worker's step, in order
GIL_A, READ, GRADIENT, GIL_B, UPDATE = range(5)


@dataclasses.dataclass(frozen=True)
class Step:
    """One worker's step as it runs alone on the machine (seconds).

    compute: the GIL-free gradient time: a distribution of ``simulator``
      (``Fixed``, ``Exponential``, ``LogNormal``, ``EmpiricalTimes``), a number
      (fixed) or an array of measured times (resampled).
    gil: time per step that holds the GIL.
    read: lock only: the snapshot copy, under the mutex (leashed and hogwild
      acquire without copying; their acquire time belongs to ``compute``).
    update: one update attempt: the store's copy and axpy (lock: under the mutex).
    gil_split: the share of ``gil`` held before the read; the rest is held
      between the gradient and the update.
    """

    compute: object
    gil: float = 0.0
    read: float = 0.0
    update: float = 0.0
    gil_split: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "compute", simulator.as_dist(self.compute))
        for name in ("gil", "read", "update"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"step {name} time must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, value)
        if not 0.0 <= self.gil_split <= 1.0:
            raise ValueError(f"gil_split must be in [0, 1], got {self.gil_split!r}")

    @property
    def time(self) -> float:
        """Mean duration of the step alone: gil + read + compute + update."""
        return self.gil + self.read + self.compute.mean() + self.update


@dataclasses.dataclass(frozen=True)
class Machine:
    """The shared resources of a machine.

    cores: P.
    intra_op: the cores one gradient keeps busy when it runs alone (XLA's
      intra-op threads; >= 1). Every other runnable thread (GIL-held Python,
      a store copy) wants one core. While the runnable threads want D > P
      cores, each gets P/D of what it wants (processor sharing).
    contention: c(n) for n = 1, 2, ... gradients at once: each runs c(n) times
      slower than processor sharing alone would make it (caches, memory
      bandwidth); beyond the end the last value holds; empty = 1.
    copy_streams: how many store copies run at once at full speed (the memory
      bandwidth divided by one copy's bandwidth; >= 1); inf = no contention.
    gil: False models a worker loop that never takes the GIL (its ``Step.gil``
      time then runs in parallel, like the gradient).
    name: for tables and plots.
    """

    cores: int
    intra_op: float = 1.0
    contention: tuple[float, ...] = ()
    copy_streams: float = math.inf
    gil: bool = True
    name: str = ""

    def __post_init__(self):
        if isinstance(self.cores, bool) or int(self.cores) != self.cores or self.cores < 1:
            raise ValueError(f"cores must be an integer >= 1, got {self.cores!r}")
        if not 1.0 <= self.intra_op <= self.cores:
            raise ValueError(f"intra_op must be in [1, cores], got {self.intra_op!r}")
        contention = tuple(float(c) for c in self.contention)
        if not all(math.isfinite(c) and c > 0 for c in contention):
            raise ValueError(f"contention factors must be finite and > 0, got {contention}")
        object.__setattr__(self, "contention", contention)
        if not self.copy_streams >= 1:  # one copy alone runs at its calibrated speed
            raise ValueError(f"copy_streams must be >= 1, got {self.copy_streams!r}")

    def cpu_share(self, demand: float) -> float:
        """The share of what it wants that each runnable thread gets, for ``demand`` cores wanted."""
        return min(1.0, self.cores / demand) if demand > 0 else 1.0

    def gradient_speed(self, demand: float, gradients: int) -> float:
        """Speed of each of ``gradients`` gradients (1 = as fast as alone)."""
        c = self.contention
        slow = (c[gradients - 1] if gradients <= len(c) else c[-1]) if c and gradients else 1.0
        return self.cpu_share(demand) / slow

    def copy_speed(self, demand: float, copies: int) -> float:
        """Speed of each of ``copies`` store copies: its processor share, or its
        share of the memory bandwidth if that is smaller."""
        share = self.cpu_share(demand)
        return min(share, self.copy_streams / copies) if copies else share


class MachineResult(NamedTuple):
    """What one machine simulation produced.

    sim: the staleness, attempts, drops and throughput (``simulator.SimResult``).
    peak_buffers: most parameter vectors alive at once (the latest version,
      snapshots still held, update attempts' private buffers); over the whole run.
    gil_busy: share of the measured time the GIL was held.
    copies_mean: mean number of store copies under way.
    runnable_mean: mean number of runnable threads.
    """

    sim: simulator.SimResult
    peak_buffers: int
    gil_busy: float
    copies_mean: float
    runnable_mean: float

    @property
    def throughput(self) -> float:
        return self.sim.throughput

    def summary(self) -> dict:
        return {**self.sim.summary(), "peak_buffers": self.peak_buffers,
                "gil_busy": self.gil_busy, "copies_mean": self.copies_mean,
                "runnable_mean": self.runnable_mean}


class _Fifo:
    """A resource with one holder at a time (the GIL, the mutex); waiters are
    served first come, first served and ``grant(worker, phase)`` starts a holder."""

    __slots__ = ("owner", "queue", "grant")

    def __init__(self, grant):
        self.owner, self.queue, self.grant = None, deque(), grant

    def request(self, worker: int, phase: int) -> None:
        if self.owner is None:
            self.owner = worker
            self.grant(worker, phase)
        else:
            self.queue.append((worker, phase))

    def release(self) -> None:
        self.owner = None
        if self.queue:
            self.request(*self.queue.popleft())


class _Rate:
    """Jobs served at one common rate: a virtual clock and a heap of finishing points."""

    __slots__ = ("v", "heap", "rate")

    def __init__(self):
        self.v, self.heap, self.rate = 0.0, [], 1.0


def simulate(machine: Machine, step: Step, threads: int, discipline: str,
             num_updates: int = 20_000, persistence: int = -1, burn_in: int | None = None,
             rng=0) -> MachineResult:
    """Simulates ``threads`` workers of ``step`` on ``machine`` until
    ``num_updates + burn_in`` updates are applied.

    Args:
      machine: the cores, the gradient speed, the memory bandwidth, the GIL.
      step: one worker's step alone (or a list of m steps, one per worker).
      threads: m >= 1.
      discipline: "lock", "hogwild" or "leashed".
      num_updates: applied updates to record.
      persistence: leashed: retries after a failed CAS (-1: until it succeeds).
      burn_in: applied updates left out first (default 10 m + 100).
      rng: numpy Generator or int seed.
    """
    m = simulator._check_int("threads", threads, 1)
    n = simulator._check_int("num_updates", num_updates, 1)
    burn_in = 10 * m + 100 if burn_in is None else simulator._check_int("burn_in", burn_in, 0)
    persistence = simulator._check_int("persistence", persistence, -1)
    if discipline not in DISCIPLINES:
        raise ValueError(f"unknown discipline {discipline!r}; choose one of {list(DISCIPLINES)}")
    steps = list(step) if isinstance(step, (list, tuple)) else [step] * m
    if len(steps) != m:
        raise ValueError(f"got {len(steps)} steps for {m} threads")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return _Engine(machine, steps, discipline, persistence, rng).run(n, burn_in)


class _Engine:
    """The event loop of ``simulate``; one instance per simulation."""

    def __init__(self, machine: Machine, steps: Sequence[Step], discipline: str,
                 persistence: int, rng: np.random.Generator):
        self.machine, self.steps, self.discipline = machine, steps, discipline
        self.persistence = persistence
        m = len(steps)
        self.draws = simulator._Draws([s.compute for s in steps], rng)
        self.gil_class, self.copy_class, self.grad_class = _Rate(), _Rate(), _Rate()
        # without the GIL its time is plain parallel CPU work, like a gradient's
        self.cpu_class = self.gil_class if machine.gil else _Rate()
        self.gil, self.mutex = _Fifo(self._gil_granted), _Fifo(self._granted)
        self.now, self.seq, self.version = 0.0, 0, 0
        self.t_read, self.base, self.tries = [0] * m, [0] * m, [1] * m
        self.held = Counter()          # versions referenced by snapshots and attempts (leashed)
        self.copies_held = 0           # lock: snapshot copies alive
        self.attempts_open = 0         # leashed: private buffers of attempts under way
        self.peak_buffers = 1
        self.taus, self.workers, self.attempts, self.dropped = [], [], [], 0

    # -- jobs -----------------------------------------------------------------
    def _push(self, cls: _Rate, work: float, worker: int, phase: int) -> None:
        self.seq += 1
        heapq.heappush(cls.heap, (cls.v + work, self.seq, worker, phase))

    def _gil(self, i: int, phase: int) -> None:
        if self.machine.gil:
            self.gil.request(i, phase)
        else:
            self._gil_granted(i, phase)

    def _gil_granted(self, i: int, phase: int) -> None:
        step = self.steps[i]
        work = step.gil * (step.gil_split if phase == GIL_A else 1.0 - step.gil_split)
        self._push(self.gil_class if self.machine.gil else self.cpu_class, work, i, phase)

    def _granted(self, i: int, phase: int) -> None:
        """Worker i holds the mutex (lock) for its read or its update."""
        if phase == READ:
            self.t_read[i] = self.version
            self.copies_held += 1
            self._buffers()
            self._push(self.copy_class, self.steps[i].read, i, READ)
        else:
            self.base[i] = self.version
            self._push(self.copy_class, self.steps[i].update, i, UPDATE)

    def _buffers(self) -> None:
        if self.discipline == "leashed":
            live = len(self.held) + (self.version not in self.held) + self.attempts_open
        elif self.discipline == "lock":
            live = 1 + self.copies_held
        else:
            live = 1
        if live > self.peak_buffers:
            self.peak_buffers = live

    def _attempt(self, i: int) -> None:
        """Leashed: a CAS attempt on the latest version."""
        self.base[i] = self.version
        self.held[self.version] += 1
        self.attempts_open += 1
        self._buffers()
        self._push(self.copy_class, self.steps[i].update, i, UPDATE)

    def _unhold(self, version: int) -> None:
        self.held[version] -= 1
        if not self.held[version]:
            del self.held[version]

    # -- phases ---------------------------------------------------------------
    def _begin(self, i: int, phase: int) -> None:
        d = self.discipline
        if phase in (GIL_A, GIL_B):
            self._gil(i, phase)
        elif phase == READ:
            if d == "lock":
                self.mutex.request(i, READ)
            else:
                self.t_read[i] = self.version
                if d == "leashed":
                    self.held[self.version] += 1
                    self._buffers()
                self._begin(i, GRADIENT)
        elif phase == GRADIENT:
            self._push(self.grad_class, self.draws.next(i), i, GRADIENT)
        elif d == "lock":
            self.mutex.request(i, UPDATE)
        elif d == "leashed":
            self.tries[i] = 1
            self._attempt(i)
        else:  # hogwild: in place, no waiting
            self.base[i] = self.version
            self._push(self.copy_class, self.steps[i].update, i, UPDATE)

    def _finish(self, i: int, phase: int) -> None:
        d = self.discipline
        if phase in (GIL_A, GIL_B):
            if self.machine.gil:
                self.gil.release()
            self._begin(i, READ if phase == GIL_A else UPDATE)
        elif phase == READ:  # lock: the snapshot copy is done
            self.mutex.release()
            self._begin(i, GRADIENT)
        elif phase == GRADIENT:  # the snapshot is released once the gradient is ready
            if d == "leashed":
                self._unhold(self.t_read[i])
            elif d == "lock":
                self.copies_held -= 1
            self._begin(i, GIL_B)
        elif d == "leashed":
            self._unhold(self.base[i])
            self.attempts_open -= 1
            if self.version == self.base[i]:  # nothing published meanwhile: the CAS succeeds
                self._applied(i, self.base[i] - self.t_read[i], self.tries[i])
                self._begin(i, GIL_A)
            elif self.persistence >= 0 and self.tries[i] > self.persistence:
                self._record_drop(self.tries[i])
                self._begin(i, GIL_A)
            else:
                self.tries[i] += 1
                self._attempt(i)
        else:
            self._applied(i, self.base[i] - self.t_read[i], 1)
            if d == "lock":
                self.mutex.release()
            self._begin(i, GIL_A)

    def _applied(self, i: int, tau: int, tries: int) -> None:
        if self.version >= self.burn_in:
            self.taus.append(tau)
            self.workers.append(i)
            self.attempts.append(tries)
        elif self.version == self.burn_in - 1:
            self.t_start = self.now
            self._start_measuring()
        self.version += 1
        self.t_last = self.now

    def _record_drop(self, tries: int) -> None:
        if self.version >= self.burn_in:
            self.attempts.append(tries)
            self.dropped += 1

    def _start_measuring(self) -> None:
        self.gil_time = self.copy_area = self.run_area = 0.0

    # -- the loop -------------------------------------------------------------
    def run(self, n: int, burn_in: int) -> MachineResult:
        self.burn_in, total = burn_in, n + burn_in
        self.t_start = self.t_last = 0.0
        self._start_measuring()
        machine = self.machine
        classes = [self.gil_class, self.copy_class, self.grad_class]
        if self.cpu_class is not self.gil_class:
            classes.append(self.cpu_class)
        gil_c, copy_c, grad_c, cpu_c = self.gil_class, self.copy_class, self.grad_class, self.cpu_class
        for i in range(len(self.steps)):
            self._begin(i, GIL_A)
        pop, memo = heapq.heappop, {}
        while self.version < total:
            n_copy, n_grad = len(copy_c.heap), len(grad_c.heap)
            n_cpu = len(gil_c.heap) + (len(cpu_c.heap) if cpu_c is not gil_c else 0)
            runnable = n_cpu + n_copy + n_grad
            key = (n_cpu, n_copy, n_grad)
            rates = memo.get(key)
            if rates is None:
                demand = n_cpu + n_copy + machine.intra_op * n_grad
                rates = memo[key] = (machine.cpu_share(demand),
                                     machine.copy_speed(demand, n_copy),
                                     machine.gradient_speed(demand, n_grad))
            gil_c.rate = cpu_c.rate = rates[0]
            copy_c.rate, grad_c.rate = rates[1], rates[2]
            best, dt = None, math.inf
            for c in classes:
                if c.heap:
                    wait = (c.heap[0][0] - c.v) / c.rate
                    if wait < dt:
                        best, dt = c, wait
            if best is None:
                raise RuntimeError("deadlock: no job under way")  # a bug, not an input error
            dt = max(dt, 0.0)
            for c in classes:
                c.v += c.rate * dt
            self.now += dt
            if self.version >= burn_in:
                self.gil_time += dt * bool(gil_c.heap) * machine.gil
                self.copy_area += dt * n_copy
                self.run_area += dt * runnable
            _, _, i, phase = pop(best.heap)
            self._finish(i, phase)
        span = self.t_last - self.t_start
        sim = simulator._result(self.taus, self.workers, self.attempts, self.dropped,
                                self.t_start, self.t_last, len(self.steps))
        scale = 1.0 / span if span > 0 else 0.0
        return MachineResult(sim, self.peak_buffers, self.gil_time * scale,
                             self.copy_area * scale, self.run_area * scale)


def ceilings(machine: Machine, step: Step, threads: int, discipline: str) -> dict:
    """Closed-form bounds on updates/s: ``ideal`` = min(m, P) / step time (every
    step in parallel, nothing shared); ``gil`` = 1 / GIL time per step (the GIL
    serialises its share of every step); ``mutex`` (lock) = 1 / (read + update)."""
    out = {"ideal": min(threads, machine.cores) / step.time}
    out["gil"] = 1.0 / step.gil if machine.gil and step.gil > 0 else math.inf
    hold = step.read + step.update
    out["mutex"] = 1.0 / hold if discipline == "lock" and hold > 0 else math.inf
    return out
