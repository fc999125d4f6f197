"""The shared parameter vector: a Python class over the C store (``ckernels/pstore.c``).

Three modes (see ``ckernels/README.md`` for the protocols and invariants):

``"leashed"``  lock-free and consistent: every snapshot is one published version;
               an update copies the latest version, applies ``x + s*u`` and publishes
               it with a CAS, retrying at most ``persistence`` more times.
``"hogwild"``  lock-free and inconsistent: one shared buffer updated in place without
               synchronisation; ``acquire()`` gives the shared buffer itself.
``"locked"``   one shared buffer behind a mutex; ``acquire()`` copies it.

Typical worker loop::

    store = ParameterStore(d, mode="leashed", init=x0)
    scales = np.array([lr / (1 + tau) for tau in range(64)], np.float32)
    with store.acquire() as snap:              # consistent, zero-copy, 64-byte aligned
        g = grad_fn(jax.device_put(snap.array)) # keep the snapshot until g is ready
        t_read = snap.version
        leaves = [np.asarray(l) for l in jax.tree_util.tree_leaves(g)]
    res = store.update(leaves, scales, t_read)  # applies x <- x + scales[min(tau, 63)] * u

All per-element work runs in C with the GIL released. Errors are Python
exceptions (ValueError, TypeError, MemoryError, StoreClosedError, StoreError).

Per-attempt scale: two APIs, for two kinds of rule.
``update(u, scales, ...)`` takes a table of scales indexed by the staleness
tau of each attempt (clamped to the last entry). It is the fast path: the
whole retry loop runs in one C call, without the GIL and without Python per
attempt, and every rule of the form s(tau) is a table computed once.
``begin()/commit()`` and ``update_with(fn, ...)`` are a two-phase API for
update rules that are not ``x + s(tau) u`` (DC-ASGD needs theta_now -
theta_read per attempt); they cost one Python round-trip per attempt.
"""
from __future__ import annotations

import operator
import threading
import weakref
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np

try:  # the compiled kernel (built by `pip install -e .` or `python ckernels/build_store.py`)
    from asgd._pstore import ffi as _ffi, lib as _lib
    _IMPORT_ERROR = None
except ImportError as _e:  # pragma: no cover - exercised only without a build
    _ffi = _lib = None
    _IMPORT_ERROR = _e

__all__ = [
    "ParameterStore", "Snapshot", "Attempt", "UpdateResult", "StoreError",
    "StoreClosedError", "MODES", "available", "aligned_empty", "build_info",
]

MODES = {"leashed": 0, "hogwild": 1, "locked": 2}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_F32 = np.dtype(np.float32)
ALIGN = 64


class StoreError(RuntimeError):
    """An error of the store that is not a bad argument (e.g. buffer cap reached)."""


class StoreClosedError(StoreError):
    """The store was closed."""


class UpdateResult(NamedTuple):
    applied: bool     # False: dropped after persistence+1 failed attempts
    attempts: int     # CAS attempts (1 in hogwild / locked)
    staleness: int    # tau = t(latest at the successful CAS) - t_read (last attempt if dropped)
    version: int      # the version this update produced (0 if dropped)


def available() -> bool:
    """True if the compiled kernel ``asgd._pstore`` can be imported."""
    return _lib is not None


def native():
    """(ffi, lib) of the compiled kernel, for the other C objects it holds
    (tickets and workers, ckernels/pworker.h)."""
    _need_lib()
    return _ffi, _lib


def build_info() -> dict:
    """How the C kernel was built and what it runs here: {"compiler", "cflags",
    "vector" (the widest vector set of the baseline build), "clones" (the sets
    the element loops were also compiled for, e.g. "avx512f,avx2,default", or
    "none"), "dispatch" (the clone this CPU runs, or "none")}."""
    _need_lib()
    text = _ffi.string(_lib.pstore_build_info()).decode()
    info = dict(item.split("=", 1) for item in text.split(";"))
    info["dispatch"] = _ffi.string(_lib.pstore_dispatch()).decode()
    return info


def _need_lib():
    if _lib is None:
        raise ImportError(
            "the C parameter store asgd._pstore is not built. Install the package with "
            "`pip install -e .` from the repository root (needs a C compiler, e.g. gcc), "
            "or build in place with `python ckernels/build_store.py`. "
            f"(import error: {_IMPORT_ERROR})"
        ) from _IMPORT_ERROR


def aligned_empty(n: int) -> np.ndarray:
    """An uninitialised float32 array of n elements whose data is 64-byte aligned."""
    raw = np.empty(n + ALIGN // 4, dtype=np.float32)
    off = (-raw.ctypes.data % ALIGN) // 4
    return raw[off:off + n]


def _raise(code: int, what: str):
    msg = f"{what}: {_ffi.string(_lib.pstore_strerror(code)).decode()}"
    if code == _lib.PSTORE_EINVAL:
        raise ValueError(msg)
    if code == _lib.PSTORE_ENOMEM:
        raise MemoryError(msg)
    if code == _lib.PSTORE_ECLOSED:
        raise StoreClosedError(msg)
    raise StoreError(msg)


class _ViewBase:
    """Owner of a numpy view on C memory: keeps the store (hence the memory) alive.

    Every array on the memory (the view and any slice or alias of it) holds
    this object, so it lives exactly as long as something can read the memory.
    """

    __slots__ = ("__array_interface__", "store", "__weakref__")

    def __init__(self, store, addr, n, readonly):
        self.store = store
        self.__array_interface__ = {"data": (addr, readonly), "shape": (n,),
                                    "typestr": "<f4", "version": 3}


class Snapshot:
    """A held reference to one version. ``array`` is a read-only float32 view on
    the C buffer (no copy, 64-byte aligned), valid until ``release()``; keep the
    snapshot until everything that reads the array (e.g. an asynchronous JAX
    computation) is done. Use as a context manager."""

    __slots__ = ("array", "version", "handle", "generation", "_store", "_tok")

    def __init__(self, store, array, version, handle, generation):
        self._store = store
        self.array = array
        self.version = version
        self.handle = handle
        self.generation = generation
        self._tok = [handle]  # list.pop is atomic: release exactly once

    def release(self) -> None:
        try:
            h = self._tok.pop()
        except IndexError:
            raise StoreError("snapshot released twice") from None
        self.array = None
        rc = _lib.pstore_release(self._store._h, h)
        if rc:
            _raise(rc, "release")

    @property
    def released(self) -> bool:
        return not self._tok

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._tok:
            self.release()

    def __repr__(self):
        state = "released" if not self._tok else f"buffer {self.handle}"
        return f"<Snapshot version={self.version} {state}>"


class Attempt:
    """One open two-phase update. ``base``: read-only view of the version this
    attempt is based on (LEASHED: the latest when it began; LOCKED: the shared
    buffer, which nobody else changes while the attempt holds the writer lock;
    HOGWILD: the shared buffer, which others keep writing); ``out``: writable
    view of a private buffer (pre-filled with a copy of base unless
    ``prefill=False``); ``staleness``: base_version - t_read. Write the new
    vector into ``out`` and ``commit()``, or give it as segments to
    ``commit_segments``."""

    __slots__ = ("_store", "_a", "_prefill", "base", "out", "_open")

    def __init__(self, store, a, prefill):
        self._store = store
        self._a = a
        self._prefill = prefill
        self._open = True
        self._refresh()

    def _refresh(self):
        st, a = self._store, self._a
        self.base = st._view(a.base_handle, a.base, False)
        self.out = st._view(a.out_handle, a.out, True)

    @property
    def staleness(self) -> int:
        return self._a.staleness

    @property
    def base_version(self) -> int:
        return self._a.base_version

    @property
    def attempts(self) -> int:
        return self._a.attempts

    @property
    def overwritten(self) -> int:
        """HOGWILD: updates applied between begin and commit (their writes are lost)."""
        return self._a.overwritten

    @property
    def is_open(self) -> bool:
        return self._open

    def commit(self, rebase: bool = True) -> bool:
        """CAS latest from base to out. True: published (the attempt is over).
        False: another update won; with rebase the attempt now sits on the new
        latest (base, out re-filled, staleness updated) and can be retried; without,
        it must be aborted."""
        if not self._open:
            raise StoreError("attempt is not open")
        return self._committed(
            _lib.pstore_commit(self._store._h, self._a, int(bool(rebase)), self._prefill))

    def commit_segments(self, segments, rebase: bool = True) -> bool:
        """Commit the new vector given as float32 segments concatenating to d
        (e.g. the leaves of a params pytree) instead of ``out``; as ``commit``,
        except that ``out`` is not re-filled on a rebase."""
        if not self._open:
            raise StoreError("attempt is not open")
        segs, lens, n = self._store._segments(segments)
        return self._committed(
            _lib.pstore_commit_segments(self._store._h, self._a, segs, lens, n, int(bool(rebase))))

    def _committed(self, r: int) -> bool:
        """A commit's C result: closed on success, moved onto the new latest otherwise."""
        if r < 0:
            _raise(r, "commit")
        if r == 1:
            self._open = False
            self.base = self.out = None
            return True
        self._refresh()
        return False

    def abort(self, dropped: bool = False) -> None:
        if not self._open:
            raise StoreError("attempt is not open")
        self._open = False
        self.base = self.out = None
        rc = _lib.pstore_abort(self._store._h, self._a, int(bool(dropped)))
        if rc:
            _raise(rc, "abort")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._open:
            self.abort()


ScaleSpec = Union[float, np.ndarray, Sequence[float]]


class ParameterStore:
    """A shared float32 vector of dimension d in C memory. Thread-safe."""

    def __init__(self, d: int, mode: str = "leashed", init=None, max_buffers: int = 0):
        _need_lib()
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"d must be an integer, not {type(d).__name__}") from None
        if d < 1 or d > _lib.PSTORE_MAX_D:
            raise ValueError(f"d must be in [1, {_lib.PSTORE_MAX_D}], got {d}")
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        max_buffers = operator.index(max_buffers)
        if max_buffers < 0 or max_buffers > _lib.PSTORE_MAX_BUFFERS:
            raise ValueError(f"max_buffers must be in [0, {_lib.PSTORE_MAX_BUFFERS}]")
        self.d = d
        self.mode = mode.lower()
        self._closed = True
        initp = _ffi.NULL
        if init is not None:
            init = np.ascontiguousarray(init, dtype=np.float32)
            if init.shape != (d,):
                raise ValueError(f"init must have shape ({d},), got {init.shape}")
            initp = _ffi.from_buffer("float[]", init)
        pp = _ffi.new("pstore **")
        rc = _lib.pstore_create(d, MODES[self.mode], initp, max_buffers, pp)
        if rc:
            _raise(rc, f"create(d={d}, mode={self.mode!r})")
        # destroyed when the last Python reference (store, snapshot, attempt) goes
        self._h = _ffi.gc(pp[0], _lib.pstore_destroy)
        self._closed = False
        st = self.stats()
        self.max_buffers = st["max_buffers"]
        self._views = {}  # (handle, writable) -> ndarray; buffer addresses never move
        # view creation and close(); reentrant: a weakref callback may run
        # inside the locked section of the thread that drops the last array
        self._views_lock = threading.RLock()
        self._outside = set()  # after close(): weakrefs of the views' bases still referenced
        self._scales = (None, _ffi.NULL, 0)  # last scales table: (object, cdata, n)
        self._nbytes = 4 * d

    # ------------------------------------------------------------ internals
    def _view(self, handle: int, ptr, writable: bool) -> np.ndarray:
        """The numpy view of buffer ``handle`` (whose data is at ``ptr``). Only
        called by a thread that holds the buffer.

        Buffer addresses never move until the memory is freed, so there is one
        view per (buffer, writable), cached. It is built under a lock, so
        threads that meet a buffer for the first time at once share one view,
        and close() sees every view handed out. Each view's base is a
        _ViewBase that references this store, so the C memory can not be freed
        (by the store's finalizer) while any array on it is alive; close()
        frees it at once only if none is. A view first built after close()
        (by a call already under way) keeps the memory until the finalizer.
        """
        key = (handle, writable)
        with self._views_lock:
            v = self._views.get(key)
            if v is None:
                addr = int(_ffi.cast("uintptr_t", ptr))
                v = np.asarray(_ViewBase(self, addr, self.d, not writable))
                assert v.ctypes.data == addr and v.flags.writeable == writable
                if self._closed:  # a call that began before close(): keep the memory for it
                    _lib.pstore_close(self._h, 0)  # safe: the caller holds the buffer
                    self._outside.add(weakref.ref(v.base, self._array_gone))
                else:
                    self._views[key] = v
        return v

    def _array_gone(self, ref) -> None:
        """After close(): the last array on one view died; free once none is left."""
        with self._views_lock:
            self._outside.discard(ref)
            if not self._outside:
                _lib.pstore_close(self._h, 1)  # now, or at the last release

    def _check_open(self):
        if self._closed:
            raise StoreClosedError("the store is closed")

    # ------------------------------------------------------------ reading
    def acquire(self, copy: bool = False) -> Snapshot:
        """A consistent snapshot (LEASHED: a reference to the latest version, no
        copy; LOCKED: a copy made under the lock). HOGWILD: the shared buffer
        itself, which other threads keep writing, or a racy private copy if
        ``copy=True``. Release it (or use ``with``) when done."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        sn = _lib.pstore_acquire(self._h, 1 if copy else 0)
        if sn.status:
            _raise(sn.status, "acquire")
        h = sn.handle
        v = self._views.get((h, False))
        if v is None:
            v = self._view(h, sn.data, False)
        return Snapshot(self, v, sn.version, h, sn.generation)

    def read_copy(self, out: np.ndarray | None = None) -> np.ndarray:
        """A consistent copy of the latest version (HOGWILD: a racy copy) into
        ``out`` or a new 64-byte aligned array."""
        self._check_open()
        if out is None:
            out = aligned_empty(self.d)
        elif out.dtype != _F32 or out.shape != (self.d,) or not out.flags.c_contiguous \
                or not out.flags.writeable:
            raise ValueError(f"out must be a writable contiguous float32 array of shape ({self.d},)")
        vp = _ffi.new("int64_t *")
        rc = _lib.pstore_read_copy(self._h, _ffi.from_buffer("float[]", out, require_writable=True), vp)
        if rc:
            _raise(rc, "read_copy")
        return out

    def read_copy_versioned(self) -> tuple[np.ndarray, int]:
        """Like read_copy, and the version it holds."""
        self._check_open()
        out = aligned_empty(self.d)
        vp = _ffi.new("int64_t *")
        rc = _lib.pstore_read_copy(self._h, _ffi.from_buffer("float[]", out, require_writable=True), vp)
        if rc:
            _raise(rc, "read_copy")
        return out, vp[0]

    @property
    def version(self) -> int:
        if self._closed:
            raise StoreClosedError("the store is closed")
        v = _lib.pstore_version(self._h)
        if v < 0:
            _raise(v, "version")
        return v

    # ------------------------------------------------------------ updating
    def _scale_args(self, scales):
        cached = self._scales
        if scales is cached[0]:
            return 0.0, cached[1], cached[2]
        if isinstance(scales, (float, int, np.floating, np.integer)):
            return float(scales), _ffi.NULL, 0
        if isinstance(scales, np.ndarray):
            if scales.dtype != _F32 or scales.ndim != 1 or not scales.flags.c_contiguous:
                raise TypeError("scales must be a contiguous 1-D float32 array (or a float)")
            arr = scales
        else:
            arr = np.ascontiguousarray(scales, dtype=np.float32)
            if arr.ndim != 1:
                raise TypeError("scales must be a float or a 1-D sequence of floats")
        if arr.size == 0:
            raise ValueError("scales table is empty")
        cd = _ffi.from_buffer("float[]", arr)
        if arr is scales:  # cache only arrays the caller owns; identity check next call
            self._scales = (scales, cd, arr.size)
        return 0.0, cd, arr.size

    def _segments(self, u):
        """(segment cdata list, lengths, count) for the C call. Hot path: a list
        of float32 ndarrays costs ~0.15 us per leaf (ffi.from_buffer + len)."""
        fb = _ffi.from_buffer
        try:
            if type(u) is np.ndarray:
                if u.dtype is not _F32 and u.dtype != _F32:
                    raise TypeError(f"update must be float32, got {u.dtype}")
                cd = fb("float[]", u)
                return (cd,), (len(cd),), 1
            if type(u) is not list and type(u) is not tuple:
                if hasattr(u, "__array__"):  # one array-like, e.g. a jax array
                    return self._segments(self._leaf(u))
                u = list(u)
            for a in u:
                if type(a) is not np.ndarray or a.dtype is not _F32:
                    u = [self._leaf(a) for a in u]  # slow path: convert / check
                    break
            segs = [fb("float[]", a) for a in u]
        except ValueError as e:  # from_buffer: not C-contiguous
            raise ValueError(f"update arrays must be C-contiguous: {e}") from None
        if not segs:
            raise ValueError("update is an empty list")
        return segs, [len(c) for c in segs], len(segs)

    @staticmethod
    def _leaf(a):
        if type(a) is not np.ndarray:
            a = np.asarray(a)  # e.g. a jax array on the CPU: zero-copy
        if a.dtype != _F32:
            raise TypeError(f"update segments must be float32, got {a.dtype}")
        return a

    def update(self, u, scales: ScaleSpec, t_read: int, persistence: int = -1) -> UpdateResult:
        """Apply x <- x + s*u. ``u``: one float32 array of d elements, or a list of
        C-contiguous float32 arrays (e.g. gradient leaves) whose concatenation has d
        elements. ``scales``: a float, or a float32 table; the attempt with staleness
        tau uses ``scales[min(tau, len-1)]``. ``t_read``: the version the gradient was
        computed on (<= current version). ``persistence``: -1 retry until applied,
        p >= 0 at most p+1 attempts (LEASHED only; the other modes always apply)."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        if persistence < -1:
            raise ValueError(f"persistence must be >= -1, got {persistence}")
        if t_read < 0:
            raise ValueError(f"t_read must be >= 0, got {t_read}")
        segs, lens, n = self._segments(u)
        sc, scp, ns = self._scale_args(scales)
        r = _lib.pstore_update(self._h, segs, lens, n, sc, scp, ns, t_read, persistence)
        if r.status:
            if r.status == _lib.PSTORE_EINVAL:
                total = sum(lens)
                if total != self.d:
                    raise ValueError(f"update has {total} elements, the store has d={self.d}")
                raise ValueError(f"t_read={t_read} is newer than the store's version {self.version}")
            _raise(r.status, "update")
        return UpdateResult(r.applied != 0, r.attempts, r.staleness, r.version)

    def begin(self, t_read: int, prefill: bool = True) -> Attempt:
        """Open a two-phase update: see Attempt. In LOCKED mode it holds the
        writer lock until commit or abort."""
        self._check_open()
        if t_read < 0:
            raise ValueError(f"t_read must be >= 0, got {t_read}")
        a = _ffi.new("pstore_attempt *")
        rc = _lib.pstore_begin(self._h, t_read, int(bool(prefill)), a)
        if rc:
            if rc == _lib.PSTORE_EINVAL:
                raise ValueError(f"t_read={t_read} is newer than the store's version {self.version}")
            _raise(rc, "begin")
        return Attempt(self, a, int(bool(prefill)))

    def update_with(self, fn: Callable[[np.ndarray, int], None], t_read: int,
                    persistence: int = -1, prefill: bool = True) -> UpdateResult:
        """Two-phase retry loop for arbitrary update rules: per attempt,
        ``fn(out, staleness)`` writes the new vector into ``out`` in place (``out``
        holds a copy of the base version unless prefill=False); then commit
        publishes it (LEASHED: a CAS, retried as ``update`` does with
        ``persistence``; LOCKED and HOGWILD: always applied)."""
        if persistence < -1:
            raise ValueError(f"persistence must be >= -1, got {persistence}")
        att = self.begin(t_read, prefill)
        try:
            while True:
                fn(att.out, att.staleness)
                last = persistence >= 0 and att.attempts >= persistence
                tau = att.staleness
                if att.commit(rebase=not last):
                    return UpdateResult(True, att.attempts, tau, att.base_version + 1)
                if last:
                    n = att.attempts
                    att.abort(dropped=True)
                    return UpdateResult(False, n, tau, 0)
        except BaseException:
            if att.is_open:
                att.abort()
            raise

    # ------------------------------------------------------------ admin
    def stats(self) -> dict:
        st = _ffi.new("pstore_stats *")
        rc = _lib.pstore_get_stats(self._h, st)
        if rc:
            _raise(rc, "stats")
        out = {k: getattr(st, k) for k in (
            "allocated", "live", "peak_live", "applied", "cas_attempts", "cas_failures",
            "dropped", "held", "acquires", "version", "max_buffers", "d", "freed")}
        out["mode"] = _MODE_NAMES[st.mode]
        out["live_hist"] = self._live_hist(st.max_buffers)
        return out

    def _live_hist(self, max_buffers: int) -> list[int]:
        """Counts of applied updates by the live buffers seen right after their publish.

        ``[k]`` = updates after which k buffers were live; the largest k is at
        most ``peak_live`` (the exact peak at any instant, which may fall
        between publishes). Exact once no update is running.
        """
        n = max_buffers + 1
        hist = _ffi.new("int64_t[]", n)
        bins = _lib.pstore_live_hist(self._h, hist, n)
        if bins < 0:
            _raise(bins, "live_hist")
        return [int(hist[k]) for k in range(bins)]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the store: later calls raise StoreClosedError. Snapshots and
        attempts still held can be released. The C memory is freed as soon as
        nothing is held and no array on it (a snapshot's ``array``, a slice or
        alias of it, an attempt's views) is referenced: at once, at the last
        release, or when the last such array is dropped. So a stale view never
        reads freed memory. Idempotent."""
        with self._views_lock:
            if self._closed:
                return
            self._closed = True
            # Drop the cache's references; the views that outlive that are
            # referenced from outside (their memory may still be read).
            refs = [weakref.ref(v.base) for v in self._views.values()]
            self._views.clear()
            alive = [base for base in (ref() for ref in refs) if base is not None]
            self._outside = {weakref.ref(base, self._array_gone) for base in alive}
            del alive
            _lib.pstore_close(self._h, 0 if self._outside else 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"version {self.version}"
        return f"<ParameterStore d={self.d} mode={self.mode!r} {state}>"
