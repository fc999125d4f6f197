"""What every executor shares: tickets, the worker log, the monitor, the thread runner.

An executor runs worker threads over one parameter store. The main thread
polls: the *monitor* (``Monitor``) measures: it reads the workers' logs,
writes metrics.jsonl, evaluates a consistent snapshot every ``eval_every``
updates without stopping the workers, enforces the wall-clock budget and the
target loss, and finally writes summary.json. Control loops (the step-size
``ScaleController``) are polled beside it and own their own state.

Stopping. ``Tickets`` hands out minibatch numbers and is the one place that
decides to stop. The two count limits stop *handing out* tickets and let the
gradients in flight finish: with ``num_updates`` a ticket is handed out only
while ``applied + in_flight < num_updates``, so exactly ``num_updates``
updates are applied (a dropped update frees its ticket for another); with
``epochs`` the first ``epochs x per_epoch`` minibatches are handed out once
each and every one is applied or dropped, none discarded. The run stops
("num_updates" / "epochs") when the last worker asks for a ticket with none
in flight. On a wall-clock, target-loss, divergence or interrupt stop, a
worker that finishes its gradient afterwards discards it; a worker already
inside ``store.update`` when the flag is raised still applies its update, so
at most ``threads`` updates land after such a stop (counted in
``applied_after_stop``).

One training-loss series gives metrics.jsonl's ``train_loss``, the summary's
``time_to_target`` and ``final_train_loss`` (its last value): the mean of the
minibatch losses recorded between two events. ``WorkerLog`` (the Python
worker loops and the Ray server) does not record the loss of a gradient that
finds the run stopping, so there the series ends at the stop and every finite
loss in it belongs to a gradient that went to the store.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Sequence

import numpy as np

from asgd import metrics
from asgd.specs import RunSpec

POLL_S = 0.01


class RunAborted(RuntimeError):
    """The run could not go on (e.g. a lost parameter server); summary.json was written."""


class Tickets:
    """Hands out minibatch numbers; counts applied updates; decides the stop.

    The state lives in C (``ptickets`` in ckernels/pworker.c, invariants
    there) so that workers running inside a compiled loop take and finish
    tickets without Python; the Python-driven executors use the same object.
    The epoch limit stops handing out minibatches but lets the gradients in
    flight be applied: every minibatch handed out is applied, dropped or
    (after a stop for another reason) discarded.
    """

    _REASONS = {"num_updates": 1, "epochs": 2, "time_budget": 3, "target_loss": 4,
                "diverged: non-finite minibatch loss": 5, "diverged": 6, "interrupted": 7,
                "error": 8}

    def __init__(self, num_updates: int = 0, max_batches: int = 0):
        from asgd.store import native
        self._ffi, self._lib = native()
        out = self._ffi.new("ptickets **")
        rc = self._lib.ptickets_create(int(num_updates), int(max_batches), out)
        if rc:
            raise ValueError(f"tickets: num_updates and max_batches must be >= 0")
        self.handle = self._ffi.gc(out[0], self._lib.ptickets_destroy)
        self.num_updates, self.max_batches = int(num_updates), int(max_batches)
        self._message: str | None = None   # the text of a reason set from Python
        self._state = self._ffi.new("ptickets_state *")

    def take(self, count: int = 1) -> int | None:
        """First of ``count`` consecutive minibatch numbers, or None to stop."""
        first = self._lib.ptickets_take(self.handle, count, 0)
        return first if first >= 0 else None

    def finish(self, applied: bool) -> None:
        self._lib.ptickets_finish(self.handle, int(bool(applied)))

    def stop(self, reason: str) -> None:
        code = next((c for prefix, c in self._REASONS.items() if reason.startswith(prefix)), 9)
        if self._lib.ptickets_reason(self.handle) == 0 and \
                self._lib.ptickets_stop(self.handle, code) == code and self._message is None:
            self._message = reason

    def state(self):
        """A consistent copy of the C state (next_batch, applied, in_flight, ...)."""
        self._lib.ptickets_get_state(self.handle, self._state)
        return self._state

    @property
    def applied(self) -> int:
        return self.state().applied

    @property
    def applied_after_stop(self) -> int:
        return self.state().applied_after_stop

    @property
    def stopped(self) -> bool:
        return self._lib.ptickets_reason(self.handle) != 0

    @property
    def stop_reason(self) -> str | None:
        state = self.state()
        if state.reason == 0:
            return None
        if self._message is not None:
            return self._message
        return {1: "num_updates", 2: "epochs",
                5: f"diverged: non-finite minibatch loss at update {state.applied_at_stop}",
                }.get(state.reason, "stopped")


class WorkerLog:
    """One worker's per-update records; appended by its thread only.

    The monitor reads the lists concurrently: appends are atomic under the GIL
    and it only reads entries below a length it observed.
    """

    def __init__(self):
        self.loss: list[float] = []       # minibatch loss of every gradient recorded before the stop
        self.staleness: list[int] = []    # tau of every applied update
        self.attempts: list[int] = []     # CAS attempts of every update (applied or dropped)
        self.read_s: list[float] = []     # store.acquire call of every gradient (lock: wait + copy)
        self.compute_s: list[float] = []  # gradient computation only, snapshot in hand
        self.update_s: list[float] = []   # store.update call of every update (waits, retries)
        self.dropped = 0
        self.discarded = 0                # gradients not applied because of a stop (or a non-finite loss)

    def record(self, tickets: "Tickets", loss: float, read_s: float, compute_s: float) -> None:
        """Record one computed gradient; a non-finite loss stops the run (divergence)."""
        self.read_s.append(read_s)
        self.compute_s.append(compute_s)
        self.loss.append(loss)
        if not math.isfinite(loss):
            tickets.stop(f"diverged: non-finite minibatch loss at update {tickets.applied}")

    def gradient(self, tickets: "Tickets", loss: float, read_s: float, compute_s: float) -> bool:
        """Record one asynchronous gradient; False when it must be discarded.

        A gradient that finds the run stopping is discarded and its ticket
        returned unapplied; its timings are recorded, its loss is not (the
        training-loss series ends at the stop). A non-finite loss is recorded,
        stops the run (divergence) and its gradient is discarded too. Every
        other recorded loss belongs to a gradient that goes to the store.
        """
        if tickets.stopped:
            self.read_s.append(read_s)
            self.compute_s.append(compute_s)
            self._discard(tickets)
            return False
        self.record(tickets, loss, read_s, compute_s)
        if not math.isfinite(loss):
            self._discard(tickets)
            return False
        return True

    def _discard(self, tickets: "Tickets") -> None:
        self.discarded += 1
        tickets.finish(False)

    def update(self, tickets: "Tickets", result, update_s: float) -> None:
        """Record one store update (applied or dropped) and finish its ticket."""
        self.update_s.append(update_s)
        self.attempts.append(result.attempts)
        if result.applied:
            self.staleness.append(result.staleness)
        else:
            self.dropped += 1
        tickets.finish(result.applied)


class LogCursor:
    """The entries of one field of the workers' logs that are new since the last ``fresh()``.

    Readers on the main thread (the monitor, the scale controller) each keep
    their own cursor; workers only append, so a length read once bounds a
    consistent prefix.
    """

    def __init__(self, logs: Sequence[WorkerLog], field: str):
        self.logs, self.field = logs, field
        self._seen = [0] * len(logs)

    def fresh(self) -> list:
        out = []
        for k, log in enumerate(self.logs):
            values = getattr(log, self.field)
            end = len(values)
            out.extend(values[self._seen[k]:end])
            self._seen[k] = end
        return out


def run_threads(workers: Sequence[Callable[[], None]], monitor: "Monitor",
                pollers: Sequence[Callable[[], object]] = (),
                on_error: Callable[[], None] | None = None) -> None:
    """Start one thread per worker callable; poll the monitor (and ``pollers``) until all end.

    A worker's exception stops the run, calls ``on_error`` (e.g. to release
    threads waiting for it) and is raised here once every thread has ended.
    """
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # surfaced in the main thread below
                errors.append(e)
                monitor.tickets.stop(f"error: {type(e).__name__}: {e}")
                if on_error is not None:
                    on_error()
        return run

    threads = [threading.Thread(target=guarded(fn), name=f"asgd-worker-{i}", daemon=True)
               for i, fn in enumerate(workers)]
    monitor.start()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(POLL_S)
            for poll in pollers:
                poll()
            monitor.poll()
    except KeyboardInterrupt:
        monitor.tickets.stop("interrupted")
        for t in threads:
            t.join()
        monitor.finish()
        raise
    for t in threads:
        t.join()
    monitor.finish()
    if errors:
        raise errors[0]


class Monitor:
    """The main thread's view of a run: metrics, evaluation, stop conditions.

    Args:
      run: what to measure and when to stop (``RunSpec``).
      header: fields that open summary.json (algorithm, threads).
      evaluate: flat parameters -> (eval loss, eval accuracy).
      store: what holds the parameters (``read_copy``, ``stats``).
      tickets: the run's ``Tickets`` (or a stand-in with the same attributes).
      logs: one ``WorkerLog`` per worker.
      writer: the run folder's ``RunWriter``.
      max_batches: the minibatches the run may use (epochs x per epoch; 0 = no cap).
      parts: callables whose dicts are added to the summary when it is written.
    """

    def __init__(self, run: RunSpec, header: dict, evaluate: Callable, store, tickets,
                 logs: Sequence[WorkerLog], writer: metrics.RunWriter, max_batches: int = 0,
                 parts: Sequence[Callable[[], dict]] = ()):
        self.run, self.header, self.evaluate, self.store = run, dict(header), evaluate, store
        self.tickets, self.logs, self.writer, self.parts = tickets, logs, writer, tuple(parts)
        self.max_batches = max_batches
        stop = run.stop
        self.targets = sorted({*map(float, run.loss_targets),
                               *([stop.target_loss] if stop.target_loss > 0 else [])}, reverse=True)
        self._losses = LogCursor(logs, "loss")
        self.times: list[float] = []
        self.train_losses: list[float] = []
        self.last_eval: tuple[float, float] = (math.nan, math.nan)
        self.next_log = self.next_eval = 0
        self.progress = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        from tqdm import tqdm
        self.t0, self.t_end = time.perf_counter(), None
        if self._done() is None:  # target_loss only: no total, a count of updates
            self.progress = tqdm(unit="upd", dynamic_ncols=True, disable=bool(self.run.quiet),
                                 mininterval=0.5, leave=False)
        else:  # the share of the nearest limit, so tqdm's rate gives the ETA
            self.progress = tqdm(total=1.0, dynamic_ncols=True, disable=bool(self.run.quiet),
                                 mininterval=0.5, leave=False,
                                 bar_format="{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self._emit(force_eval=True)
        self.t0 = time.perf_counter()  # the clock starts after the initial evaluation

    def _done(self) -> float | None:
        """Share of the run done: the largest share of num_updates, epochs and time budget.

        Epochs count minibatches whose gradient was computed (sync: m per
        update). None when only ``target_loss`` can stop the run.
        """
        stop = self.run.stop
        shares = []
        if stop.num_updates:
            shares.append(self.tickets.applied / stop.num_updates)
        if self.max_batches:
            shares.append(sum(len(log.loss) for log in self.logs) / self.max_batches)
        if stop.time_budget_s > 0:
            shares.append(self._elapsed() / stop.time_budget_s)
        return min(1.0, max(shares)) if shares else None

    def poll(self) -> None:
        elapsed = self._elapsed()
        budget = self.run.stop.time_budget_s
        if budget > 0 and elapsed >= budget:
            self.tickets.stop("time_budget")
        applied = self.tickets.applied
        if applied >= self.next_log or applied >= self.next_eval:
            self._emit(force_eval=False)
        if self.progress is not None:
            done = self._done()
            done = applied if done is None else done
            if done > self.progress.n:
                self.progress.update(done - self.progress.n)  # redraws at most every 0.5 s

    def finish(self) -> None:
        self.t_end = time.perf_counter()  # the workers are done; the final eval is not timed
        final = self._emit(force_eval=True)
        if self.progress is not None:
            self.progress.close()
        self.writer.summary(self.summary())
        self.writer.step_times(self.logs)
        self.writer.params(final)

    # -- events -------------------------------------------------------------
    def _elapsed(self) -> float:
        """Training wall time: from after the initial evaluation to the workers' end."""
        return (self.t_end or time.perf_counter()) - self.t0

    def _emit(self, force_eval: bool) -> np.ndarray | None:
        """One metrics.jsonl event: train loss since the last one, maybe eval.

        Returns the evaluated parameters (None without an evaluation).
        """
        applied = self.tickets.applied
        elapsed = 0.0 if applied == 0 and self.t_end is None else self._elapsed()
        losses = self._losses.fresh()
        record = {"updates": applied, "wall_time_s": elapsed}
        if losses:
            train_loss = float(np.mean(losses))
            record["train_loss"] = train_loss
            self.times.append(elapsed)
            self.train_losses.append(train_loss)
            target = self.run.stop.target_loss
            if not math.isfinite(train_loss):
                self.tickets.stop(f"diverged: non-finite training loss by update {applied}")
            elif target > 0 and train_loss <= target:
                self.tickets.stop("target_loss")
        snapshot = None
        if force_eval or applied >= self.next_eval:
            snapshot = self.store.read_copy()
            if not np.isfinite(snapshot).all():
                self.tickets.stop(f"diverged: non-finite parameters by update {applied}")
                record["eval_loss"] = record["eval_accuracy"] = math.nan
            else:
                record["eval_loss"], record["eval_accuracy"] = self.evaluate(snapshot)
            self.last_eval = (record["eval_loss"], record["eval_accuracy"])
            self.next_eval = applied + max(1, self.run.eval_every)
        live = self.store.stats().get("live")
        if live is not None:
            record["live_buffers"] = live
        self.next_log = applied + max(1, self.run.log_every)
        self.writer.log(record)
        if self.progress is not None and "train_loss" in record:
            self.progress.set_postfix(upd=applied, loss=f"{record['train_loss']:.4f}",
                                      upd_s=f"{applied / max(elapsed, 1e-9):.0f}", refresh=False)
        return snapshot

    # -- summary ------------------------------------------------------------
    def summary(self) -> dict:
        elapsed = self._elapsed()
        applied = self.tickets.applied
        taus_per_worker = [np.asarray(log.staleness, np.int64) for log in self.logs]
        taus = np.concatenate(taus_per_worker) if taus_per_worker else np.zeros(0, np.int64)
        attempts = np.concatenate([np.asarray(log.attempts, np.int64) for log in self.logs])
        compute = np.concatenate([np.asarray(log.compute_s) for log in self.logs])
        stats = self.store.stats()
        summary = {
            **self.header,
            "updates": applied, "wall_time_s": elapsed,
            "updates_per_s": applied / max(elapsed, 1e-9),
            "updates_per_s_per_worker": [len(log.staleness) / max(elapsed, 1e-9) for log in self.logs],
            "eval_loss": self.last_eval[0], "eval_accuracy": self.last_eval[1],
            "final_train_loss": self.train_losses[-1] if self.train_losses else None,
            "time_to_target": metrics.time_to_targets(self.times, self.train_losses, self.targets),
            "stop_reason": self.tickets.stop_reason or "num_updates",
            "applied_after_stop": self.tickets.applied_after_stop,
            "discarded_after_stop": sum(log.discarded for log in self.logs),
            "staleness_hist": metrics.histogram(taus),
            "staleness_mean": float(taus.mean()) if taus.size else None,
            "staleness_max": int(taus.max()) if taus.size else None,
            "staleness_hist_per_worker": [metrics.histogram(t) for t in taus_per_worker],
            "cas_attempts_hist": metrics.histogram(attempts),
            "cas_failures": int(stats.get("cas_failures", 0)),
            "dropped_updates": sum(log.dropped for log in self.logs),
            "peak_live_buffers": stats.get("peak_live"),
            "live_buffers_hist": stats.get("live_hist"),
            "buffers_allocated": stats.get("allocated"),
            "peak_rss_mb": metrics.peak_rss_mb(),
            "mean_compute_s": float(compute.mean()) if compute.size else None,
        }
        for part in self.parts:
            summary.update(part())
        return summary
