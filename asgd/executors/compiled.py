"""The asynchronous worker loop compiled whole: no Python, no GIL per step.

Each worker thread makes one call into a jitted ``lax.while_loop`` that runs
training steps until the run stops (or the worker's record arrays fill up,
or its minibatches leave the window it holds). A step is

  1. ``asgd_worker_read`` (XLA FFI, ckernels/pworker_ffi.c): take a ticket
     from the C ``Tickets`` and copy a consistent version of the parameters
     (HOGWILD: a racy copy) into an XLA buffer;
  2. gather the ticket's minibatch by index from the training set held by
     JAX, and compute loss and gradient;
  3. ``asgd_worker_update``: record loss and timings, then (unless the run has
     stopped) apply x <- x + s(tau) g with the store's per-tau scale table,
     retrying a failed CAS up to ``persistence`` times (leashed), and record
     tau and the attempts.

The records go into numpy arrays the C side appends to and the monitor reads
while the worker runs (``CompiledLog``). The step-size table lives in C
memory that the ``ScaleController`` swaps. Minibatch i is the same as the
Python-driven executors' (``asgd.data.Batches``): the permutations of the
epochs in the worker's window are computed the same way.

The loop serves sequential, lock, hogwild and leashed with a scale-table
rule; DC-ASGD and sync keep their Python-driven executors.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from asgd import models
from asgd.data import Batches
from asgd.executors.base import Monitor, Tickets, run_threads
from asgd.executors.scales import ScaleController, schedule
from asgd.specs import ExecutorSpec, RunSpec

READ, UPDATE = "asgd_worker_read", "asgd_worker_update"
BEGIN, COMMIT = "asgd_worker_begin", "asgd_worker_commit"
GO, STOP, YIELD = 0, 1, 2
ATTEMPT = 0             # begin/commit: compute the next version from the base and commit it
WINDOW_BATCHES = 2048     # minibatches per permutation window (at least 2 epochs): each
                          # new window costs ~25 ns of numpy per index, holding the GIL
FIRST_CAPACITY = 4096     # records per worker before the first growth


@functools.cache
def register() -> None:
    """Register the two FFI handlers with XLA (once per process)."""
    from asgd.store import native
    ffi, lib = native()
    for name, handler in ((READ, lib.pworker_ffi_read_handler()),
                          (UPDATE, lib.pworker_ffi_update_handler()),
                          (BEGIN, lib.pworker_ffi_begin_handler()),
                          (COMMIT, lib.pworker_ffi_commit_handler())):
        address = int(ffi.cast("uintptr_t", handler))
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(address), platform="cpu")


def address_operand(pointer) -> np.ndarray:
    """A C pointer as the uint32[2] operand the handlers read it from."""
    from asgd.store import native
    ffi, _ = native()
    return np.frombuffer(np.uint64(int(ffi.cast("uintptr_t", pointer))).tobytes(), np.uint32)


def make_loop(problem, batch_size: int, per_epoch: int, versioned=None):
    """The jitted worker: (ctx, train x, train y, permutations, first epoch) -> meta.

    ``meta[0]`` says why the loop ended: STOP (the run stopped) or YIELD (the
    records are full or the next minibatch is outside the window). With
    ``versioned`` (``asgd.optimizers.Versioned``) an update is the optimizer's
    step on the latest version of parameters and state, committed whole and
    retried after a lost CAS, instead of the store's x + s(tau) g.
    """
    register()
    layout = problem.layout
    d = layout.size
    model_apply = problem.model_apply
    read = jax.ffi.ffi_call(READ, (jax.ShapeDtypeStruct((d,), jnp.float32),
                                   jax.ShapeDtypeStruct((4,), jnp.int32)), has_side_effect=True)
    update = jax.ffi.ffi_call(UPDATE, jax.ShapeDtypeStruct((4,), jnp.int32), has_side_effect=True)
    if versioned is not None:
        attempt_shapes = (jax.ShapeDtypeStruct((versioned.size,), jnp.float32),
                          jax.ShapeDtypeStruct((), jnp.float32),
                          jax.ShapeDtypeStruct((4,), jnp.int32))
        begin = jax.ffi.ffi_call(BEGIN, attempt_shapes, has_side_effect=True)
        commit = jax.ffi.ffi_call(COMMIT, attempt_shapes, has_side_effect=True)

        def update(ctx, meta, loss, *grad_leaves):  # noqa: F811 (the stateful update)
            grads = jax.tree.unflatten(layout.treedef, grad_leaves)

            def attempt(carry):
                base, scale, ameta = carry
                # The barriers keep XLA from fusing the step with the loop around it,
                # so it compiles as it does on its own (the same float32 rounding as
                # a plain optax step, where a fused multiply-add could differ).
                inputs = jax.lax.optimization_barrier((base, grads, scale))
                leaves = jax.lax.optimization_barrier(versioned.step(*inputs))
                return commit(ctx, ameta, *leaves)

            first = begin(ctx, meta, loss)
            return jax.lax.while_loop(lambda c: c[2][0] == ATTEMPT, attempt, first)[2]

    def loss_of(params, x, y):
        return models.cross_entropy(model_apply(params, x), y)

    @jax.jit
    def run(ctx, train_x, train_y, perms, first_epoch):
        def step(carry):
            flat, meta = carry
            batch = meta[1]
            row = batch // per_epoch - first_epoch
            index = jax.lax.dynamic_slice(perms[row], ((batch % per_epoch) * batch_size,),
                                          (batch_size,))
            loss, grads = jax.value_and_grad(loss_of)(layout.unravel(flat), train_x[index],
                                                      train_y[index])
            status = update(ctx, meta, loss, *jax.tree.leaves(grads))
            return read(ctx, status)

        first = read(ctx, jnp.zeros(4, jnp.int32))
        _, meta = jax.lax.while_loop(lambda carry: carry[1][0] == GO, step, first)
        return meta

    return run


def compiled_loop(problem, batch_size: int, per_epoch: int, epochs: int, versioned=None,
                  optimizer_key=None):
    """The worker loop compiled for these shapes (and optimizer), with the training
    set on the device; kept in ``problem.compiled`` so runs of one problem
    compile once. ``optimizer_key`` names ``versioned``'s optimizer in that cache."""
    key = ("loop", batch_size, per_epoch, epochs, optimizer_key)
    if key not in problem.compiled:
        if "train" not in problem.compiled:
            problem.compiled["train"] = (jnp.asarray(problem.train.x), jnp.asarray(problem.train.y))
        train_x, train_y = problem.compiled["train"]
        loop = make_loop(problem, batch_size, per_epoch, versioned)
        perms = np.zeros((epochs, len(problem.train.y)), np.int32)
        problem.compiled[key] = loop.lower(np.zeros(2, np.uint32), train_x, train_y, perms,
                                           np.int32(0)).compile()
    return problem.compiled[key], problem.compiled["train"]


class CompiledLog:
    """One compiled worker's records, read like a ``WorkerLog``.

    The fields are numpy views below the counts the C worker has published
    (ckernels/pworker.c, invariant P), so the monitor reads them while the
    worker runs; ``grow`` gives the worker larger arrays between its calls.
    """

    _FIELDS = {"loss": np.float32, "read_s": np.float64, "compute_s": np.float64,
               "attempts": np.int32, "update_s": np.float64, "staleness": np.int32}

    def __init__(self, ffi, lib, worker, capacity: int):
        self._ffi, self._lib, self._worker = ffi, lib, worker
        self._counts = ffi.new("pworker_counts *")
        self._arrays: dict[str, np.ndarray] = {}
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Arrays of ``capacity`` entries holding what was recorded; only between calls."""
        counts = self.counts()
        used = {"loss": counts.gradients, "read_s": counts.gradients,
                "compute_s": counts.gradients, "attempts": counts.updates,
                "update_s": counts.updates, "staleness": counts.applied}
        arrays = {}
        for name, dtype in self._FIELDS.items():
            array = np.zeros(capacity, dtype)
            if name in self._arrays:
                array[:used[name]] = self._arrays[name][:used[name]]
            arrays[name] = array
        c = self._ffi.new("pworker_arrays *")
        pointer = lambda name, kind: self._ffi.cast(kind, arrays[name].ctypes.data)
        c.loss, c.read_s, c.compute_s = (pointer("loss", "float *"), pointer("read_s", "double *"),
                                         pointer("compute_s", "double *"))
        c.attempts, c.update_s = pointer("attempts", "int32_t *"), pointer("update_s", "double *")
        c.staleness = pointer("staleness", "int32_t *")
        c.cap_grad = c.cap_update = c.cap_applied = capacity
        self._arrays = arrays   # the old arrays stay alive in views readers still hold
        self._lib.pworker_set_arrays(self._worker, c)
        self.capacity = capacity

    def counts(self):
        self._lib.pworker_get_counts(self._worker, self._counts)
        return self._counts

    def full(self) -> bool:
        c = self.counts()
        return max(c.gradients, c.updates, c.applied) >= self.capacity

    def _view(self, name: str, count: int) -> np.ndarray:
        return self._arrays[name][:count]

    @property
    def loss(self):
        return self._view("loss", self.counts().gradients)

    @property
    def read_s(self):
        return self._view("read_s", self.counts().gradients)

    @property
    def compute_s(self):
        return self._view("compute_s", self.counts().gradients)

    @property
    def attempts(self):
        return self._view("attempts", self.counts().updates)

    @property
    def update_s(self):
        return self._view("update_s", self.counts().updates)

    @property
    def staleness(self):
        return self._view("staleness", self.counts().applied)

    @property
    def dropped(self) -> int:
        return self.counts().dropped

    @property
    def discarded(self) -> int:
        return self.counts().discarded

    @property
    def overwritten(self) -> int:
        return self.counts().overwritten


class Window(NamedTuple):
    """The epochs of minibatch permutations a worker's computation holds."""

    first_epoch: int
    perms: np.ndarray     # int32 [epochs, n]


class CompiledWorker:
    """One worker thread's C context, records and minibatch window."""

    def __init__(self, store, tickets: Tickets, scales: np.ndarray, persistence: int,
                 capacity: int, read_count: int = 0):
        from asgd.store import native
        self._ffi, self._lib = native()
        out = self._ffi.new("pworker **")
        rc = self._lib.pworker_create(store._h, tickets.handle, self._table(scales), scales.size,
                                      persistence, out)
        if rc:
            raise ValueError(f"pworker_create failed ({rc})")
        self.handle = self._ffi.gc(out[0], self._lib.pworker_destroy)
        if read_count:   # the parameters only, before an optimizer's state
            self._lib.pworker_set_read_count(self.handle, read_count)
        self.ctx = address_operand(self.handle)
        self.store, self.tickets = store, tickets   # the C worker uses them: keep them alive
        self.log = CompiledLog(self._ffi, self._lib, self.handle, capacity)
        self.window: Window | None = None
        self.python_s = 0.0     # wall time of its thread outside the compiled loop

    def _table(self, scales: np.ndarray):
        if scales.dtype != np.float32 or not scales.flags.c_contiguous:
            raise TypeError("scales must be a contiguous float32 array")
        return self._ffi.cast("float *", scales.ctypes.data)

    def set_scales(self, scales: np.ndarray) -> None:
        """Swap the step-size table (the caller keeps ``scales`` alive)."""
        self._lib.pworker_set_scales(self.handle, self._table(scales))

    def move_window(self, batches: Batches, epochs: int) -> None:
        """Hold the permutations of ``epochs`` epochs from the next minibatch's."""
        first = self.tickets.state().next_batch // batches.per_epoch
        n = len(batches.data.y)
        perms = np.stack([np.random.default_rng([batches.seed, e]).permutation(n)
                          for e in range(first, first + epochs)]).astype(np.int32)
        self.window = Window(first, perms)
        self._lib.pworker_set_window(self.handle, first * batches.per_epoch,
                                     epochs * batches.per_epoch)


def window_epochs(per_epoch: int, max_batches: int) -> int:
    """Epochs per permutation window: about WINDOW_BATCHES minibatches, at least 2."""
    epochs = max(2, math.ceil(WINDOW_BATCHES / per_epoch))
    if max_batches:
        epochs = min(epochs, math.ceil(max_batches / per_epoch) + 1)
    return epochs


def worker_thread(loop, worker: CompiledWorker, batches: Batches, epochs: int,
                  train_x, train_y) -> None:
    """Call the compiled loop until the run stops; grow records and move windows between calls.

    ``worker.python_s`` adds up the wall time this thread spends outside the
    compiled loop (Python, so at most the time it can hold the GIL).
    """
    clock = time.perf_counter
    began = clock()
    worker.move_window(batches, epochs)
    inside = 0.0
    try:
        while True:
            entered = clock()
            meta = loop(worker.ctx, train_x, train_y, worker.window.perms,
                        np.int32(worker.window.first_epoch))
            status = int(meta[0])    # waits for the loop: the GIL is released meanwhile
            inside += clock() - entered
            if status == STOP:
                return
            if worker.log.full():
                worker.log.grow(2 * worker.log.capacity)
            else:
                worker.move_window(batches, epochs)
    finally:
        worker.python_s = clock() - began - inside


def run(spec: ExecutorSpec, run_spec: RunSpec, problem, writer, rule, store,
        versioned=None) -> dict:
    """Run ``spec.threads`` compiled workers over the C ``store``; returns the summary.

    With ``versioned`` the store holds parameters and optimizer state
    (``asgd.optimizers``), and every update is the optimizer's step.
    """
    batches = Batches(problem.train, spec.batch_size, spec.seed)
    stop = run_spec.stop
    max_batches = stop.epochs * batches.per_epoch
    tickets = Tickets(stop.num_updates, max_batches)
    capacity = min(FIRST_CAPACITY, stop.num_updates + 1) if stop.num_updates else FIRST_CAPACITY
    scale_schedule = schedule(rule.transform)
    tables = [np.ascontiguousarray(scale_schedule.table(), np.float32)]  # every table stays alive
    d = problem.layout.size
    workers = [CompiledWorker(store, tickets, tables[0], spec.persistence, capacity,
                              read_count=d if versioned is not None else 0)
               for _ in range(spec.threads)]
    logs = [w.log for w in workers]
    scales = ScaleController(scale_schedule, logs)
    evaluate = problem.evaluate if versioned is None else (lambda flat: problem.evaluate(flat[:d]))
    monitor = Monitor(run_spec, {"algorithm": spec.algorithm, "threads": spec.threads},
                      evaluate, store, tickets, logs, writer, max_batches,
                      parts=[scales.summary, lambda: {
                          "worker": "compiled",
                          "worker_python_s": [w.python_s for w in workers],
                          **({"optimizer_state_size": versioned.size - d,
                              "optimizer_overwritten": sum(w.log.overwritten for w in workers)}
                             if versioned is not None else {})}])

    def refresh_scales():
        if scales.poll():
            tables.append(scales.array)
            for w in workers:
                w.set_scales(scales.array)

    epochs = window_epochs(batches.per_epoch, max_batches)
    loop, (train_x, train_y) = compiled_loop(problem, spec.batch_size, batches.per_epoch, epochs,
                                             versioned, rule.optimizer)
    run_threads([functools.partial(worker_thread, loop, w, batches, epochs, train_x, train_y)
                 for w in workers], monitor, pollers=[refresh_scales])
    return monitor.summary()
