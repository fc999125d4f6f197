"""Sequential SGD's store: one plain numpy vector with the parameter-store interface.

Sequential SGD is the asynchronous worker loop with one worker over this
store, so with the same seed and one thread every algorithm performs the
same updates; having no synchronisation at all, it is also the reference the
C kernel's stores are checked against.
"""

from __future__ import annotations

import numpy as np

from asgd.store import UpdateResult, aligned_empty


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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
