"""Sequential SGD: one worker over a plain numpy vector. The reference.

It shares the worker loop with the asynchronous executors, so with the same
seed and one thread every algorithm performs the same updates; its store is
plain numpy with no synchronisation at all, which also makes it the
reference the C kernel's stores are checked against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from asgd.executors.asynchronous import run_async


def aligned_empty(size: int, alignment: int = 64) -> np.ndarray:
    """float32 [size] whose data pointer is ``alignment``-byte aligned.

    jax.device_put aliases a 64-byte aligned numpy buffer instead of copying.
    """
    raw = np.empty(size + alignment // 4, np.float32)
    offset = (-raw.ctypes.data % alignment) // 4
    return raw[offset:offset + size]


class Snapshot:
    """A snapshot of the single-threaded store: the vector itself."""

    def __init__(self, array: np.ndarray, version: int):
        self.array, self.version, self.released = array, version, False

    def release(self) -> None:
        self.released = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class UpdateResult(NamedTuple):
    applied: bool
    attempts: int
    staleness: int
    version: int


class NumpyStore:
    """Single-threaded parameter vector with the parameter-store interface."""

    def __init__(self, init: np.ndarray):
        self.x = aligned_empty(init.size)
        self.x[:] = init
        self.version = 0
        self._scaled = np.empty_like(self.x)

    def acquire(self) -> Snapshot:
        return Snapshot(self.x, self.version)

    def update(self, segments, scales: np.ndarray, t_read: int, persistence: int = -1) -> UpdateResult:
        """x <- x + scales[tau] * u, with u the concatenation of ``segments``."""
        tau = self.version - t_read
        scale = scales[min(tau, len(scales) - 1)]
        offset = 0
        for segment in segments:
            u = np.asarray(segment).reshape(-1)
            part = slice(offset, offset + u.size)
            np.multiply(u, scale, out=self._scaled[part])
            np.add(self.x[part], self._scaled[part], out=self.x[part])
            offset += u.size
        if offset != self.x.size:
            raise ValueError(f"update has {offset} elements, the store has {self.x.size}")
        self.version += 1
        return UpdateResult(True, 1, tau, self.version)

    def update_with(self, fn, t_read: int, persistence: int = -1) -> UpdateResult:
        """Two-phase update: ``fn(x, tau)`` writes the new vector in place."""
        tau = self.version - t_read
        fn(self.x, tau)
        self.version += 1
        return UpdateResult(True, 1, tau, self.version)

    def read_copy(self) -> np.ndarray:
        return self.x.copy()

    def stats(self) -> dict:
        return {"applied": self.version}

    def close(self) -> None:
        pass


def run(cfg, problem, writer, schedule) -> dict:
    """Plain SGD, one thread, ``cfg.threads`` ignored (must be 1)."""
    store = NumpyStore(problem.init_flat)
    dc_lambda = float(cfg.dc_lambda) if cfg.stepsize == "dc_asgd" else 0.0
    return run_async(cfg, problem, writer, store, schedule, threads=1, persistence=-1,
                     dc_lambda=dc_lambda)
