"""Python-level tests of the C parameter store: the stress invariants driven
from several Python threads through cffi, the two-phase API, and error handling."""
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from asgd import store as store_mod
from asgd.store import (ParameterStore, StoreClosedError, StoreError, UpdateResult)

pytestmark = pytest.mark.skipif(not store_mod.available(),
                                reason="asgd._pstore not built (pip install -e .)")

MODES = ["leashed", "hogwild", "locked"]
TABLES = [np.array(t, np.float32) for t in ([1, 2, 3], [3, 1, 2], [2, 2, 1])]


def gen(st, snap):
    from asgd._pstore import lib
    return lib.pstore_generation(st._h, snap.handle)


# ----------------------------------------------------------------- basics

@pytest.mark.parametrize("mode", MODES)
def test_basic_update_and_read(mode):
    d = 1000
    x0 = np.arange(d, dtype=np.float32)
    with ParameterStore(d, mode, init=x0) as st:
        assert st.version == 0
        np.testing.assert_array_equal(st.read_copy(), x0)
        with st.acquire() as snap:
            assert snap.version == 0
            a = snap.array
            assert a.dtype == np.float32 and a.shape == (d,)
            assert a.ctypes.data % 64 == 0
            assert not a.flags.writeable
            np.testing.assert_array_equal(a, x0)
        u = np.ones(d, np.float32)
        r = st.update(u, np.array([0.5], np.float32), 0)
        assert r == UpdateResult(True, 1, 0, 1)
        r = st.update([u[:10], u[10:500], u[500:]], 2.0, 0)
        assert r.applied and r.staleness == 1 and r.version == 2
        np.testing.assert_array_equal(st.read_copy(), x0 + 2.5)
        s = st.stats()
        assert s["applied"] == 2 and s["dropped"] == 0 and s["held"] == 0
        assert s["version"] == 2 and s["mode"] == mode
        assert s["cas_attempts"] == s["applied"] + s["cas_failures"]


@pytest.mark.parametrize("mode, held_live", [("leashed", 2), ("locked", 2), ("hogwild", 1)])
def test_live_histogram_samples_every_publish(mode, held_live):
    """Each applied update adds one count at the live buffers seen right after it."""
    u = np.ones(8, np.float32)
    with ParameterStore(8, mode) as st:
        assert st.stats()["live_hist"] == []
        st.update(u, 1.0, 0)                   # nothing held: one live buffer
        st.update(u, 1.0, 1)
        with st.acquire() as snap:             # leashed: the old version stays live;
            st.update(u, 1.0, snap.version)    # locked: the reader's copy; hogwild: shared
        s = st.stats()
        hist = [0] * (held_live + 1)
        hist[1] += 2
        hist[held_live] += 1
        assert s["live_hist"] == hist
        assert sum(s["live_hist"]) == s["applied"] == 3
        assert len(s["live_hist"]) - 1 <= s["peak_live"]


def test_scale_table_indexed_by_staleness():
    st = ParameterStore(4, "leashed")
    u = np.ones(4, np.float32)
    sc = np.array([10, 20, 30], np.float32)
    for _ in range(5):
        st.update(u, 1.0, st.version)  # versions 1..5, tau = 0, value 5
    for t_read, expect in [(5, 10), (5, 20), (5, 30), (0, 30)]:  # tau 0, 1, 2, 6 (clamped)
        before = st.read_copy()[0]
        r = st.update(u, sc, t_read)
        assert st.read_copy()[0] - before == expect, (t_read, r)


def test_leaves_of_several_shapes():
    shapes = [(784, 128), (128,), (128, 128), (128,), (128, 10), (10,)]
    d = sum(int(np.prod(s)) for s in shapes)
    st = ParameterStore(d, "leashed")
    leaves = [np.full(s, i + 1, np.float32) for i, s in enumerate(shapes)]
    st.update(leaves, 1.0, 0)
    np.testing.assert_array_equal(st.read_copy(), np.concatenate([l.ravel() for l in leaves]))


def test_snapshot_is_zero_copy_and_stable():
    st = ParameterStore(256, "leashed")
    s1, s2 = st.acquire(), st.acquire()
    assert s1.array.ctypes.data == s2.array.ctypes.data  # same version, same buffer
    st.update(np.ones(256, np.float32), 1.0, 0)
    with st.acquire() as s3:
        assert s3.version == 1 and s3.array.ctypes.data != s1.array.ctypes.data
    s1.release(), s2.release()


def test_jax_device_put_aliases_snapshot():
    jax = pytest.importorskip("jax")
    st = ParameterStore(134794, "leashed", init=np.ones(134794, np.float32))
    with st.acquire() as snap:
        x = jax.device_put(snap.array)
        x.block_until_ready()
        assert x.unsafe_buffer_pointer() == snap.array.ctypes.data


def test_update_accepts_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    st = ParameterStore(10, "leashed")
    st.update(jnp.ones(10, jnp.float32), 1.0, 0)                  # one array
    st.update([jnp.ones(4, jnp.float32), jnp.ones((2, 3), jnp.float32)], 1.0, 1)  # leaves
    np.testing.assert_array_equal(st.read_copy(), np.full(10, 2.0))
    with pytest.raises(TypeError):
        st.update(jnp.ones(10, jnp.int32), 1.0, 0)


def test_hogwild_acquire_shared_or_copy():
    st = ParameterStore(64, "hogwild")
    with st.acquire() as a, st.acquire() as b, st.acquire(copy=True) as c:
        assert a.array.ctypes.data == b.array.ctypes.data != c.array.ctypes.data
        st.update(np.ones(64, np.float32), 1.0, 0)
        assert a.array[0] == 1.0 and c.array[0] == 0.0  # shared buffer sees the write


# ----------------------------------------------------------------- two-phase API

def test_two_phase_commit_conflict_and_rebase():
    st = ParameterStore(8, "leashed")
    u = np.ones(8, np.float32)
    att = st.begin(0)
    assert att.staleness == 0 and att.base_version == 0
    np.testing.assert_array_equal(att.out, att.base)
    att.out[:] += 5
    st.update(u, 1.0, 0)                 # another writer wins: latest is now v1
    assert att.commit() is False        # stale CAS fails...
    assert att.staleness == 1 and att.base_version == 1  # ...and the attempt moved on
    np.testing.assert_array_equal(att.out, np.full(8, 1.0))  # re-filled from v1
    att.out[:] += 5
    assert att.commit() is True
    np.testing.assert_array_equal(st.read_copy(), np.full(8, 6.0))
    s = st.stats()
    assert s["cas_failures"] == 1 and s["applied"] == 2 and s["held"] == 0 and s["live"] == 1


def test_update_with_persistence_and_drop():
    st = ParameterStore(8, "leashed")
    u = np.ones(8, np.float32)
    calls = []

    def interfering(n):
        def fn(out, tau):
            calls.append(tau)
            if len(calls) <= n:  # publish a competing version before our commit
                st.update(u, 1.0, st.version)
            out += 100
        return fn

    r = st.update_with(interfering(1), 0, persistence=0)
    assert r == UpdateResult(False, 1, 0, 0)
    assert st.stats()["dropped"] == 1 and st.version == 1
    np.testing.assert_array_equal(st.read_copy(), np.full(8, 1.0))  # drop left no trace
    calls.clear()
    r = st.update_with(interfering(2), 1, persistence=2)
    assert r.applied and r.attempts == 3 and r.staleness == 2 and r.version == 4
    assert calls == [0, 1, 2]
    np.testing.assert_array_equal(st.read_copy(), np.full(8, 103.0))
    s = st.stats()
    assert s["cas_attempts"] == s["applied"] + s["cas_failures"] and s["held"] == 0


def test_no_aba_recycled_buffer_cannot_validate_stale_cas():
    # The base of an open attempt is pinned, so however many versions are
    # published (and buffers recycled) meanwhile, the stale commit must fail.
    st = ParameterStore(16, "leashed")
    u = np.ones(16, np.float32)
    att = st.begin(0)
    base_gen_ptr = att.base.ctypes.data
    for _ in range(50):
        st.update(u, 1.0, st.version)
    assert st.stats()["allocated"] <= 4
    assert att.base.ctypes.data == base_gen_ptr
    att.out[:] = -1
    assert att.commit(rebase=False) is False
    att.abort()
    np.testing.assert_array_equal(st.read_copy(), np.full(16, 50.0))


def test_buffer_not_reused_while_held():
    st = ParameterStore(512, "leashed")
    u = np.ones(512, np.float32)
    snap = st.acquire()
    g0, data0 = gen(st, snap), snap.array.copy()
    for _ in range(100):
        st.update(u, 1.0, st.version)
    assert gen(st, snap) == g0
    np.testing.assert_array_equal(snap.array, data0)
    snap.release()
    assert st.stats()["held"] == 0


# ----------------------------------------------------------------- threads

def _run_threads(mode, m, n_per, d, hold):
    st = ParameterStore(d, mode)
    segs = [(0, 1), (1, d // 2), (d // 2, d)]
    ones = np.ones(d, np.float32)
    inc = {}
    inc_lock = threading.Lock()
    logs, errors = [], []
    counts = {"calls": 0, "applied": 0, "dropped": 0, "hw": 0.0}
    barrier = threading.Barrier(m)

    def worker(k):
        rng = np.random.default_rng(k)
        table = TABLES[k % 3]
        log = []
        calls = applied = dropped = 0
        hw = 0.0
        barrier.wait()
        for i in range(n_per):
            snap = st.acquire()
            a = snap.array
            if mode != "hogwild":
                v = a[0]
                if not (a == v).all():
                    errors.append(f"snapshot v{snap.version} mixes versions")
                log.append((snap.version, float(v)))
            tr = snap.version

            def do_update():
                nonlocal calls, applied, dropped, hw
                p = int(rng.choice([-1, -1, 0, 1, 3]))
                calls += 1
                if mode == "leashed" and k % 2 == 1:
                    def fn(out, tau):
                        out += table[min(tau, 2)]
                    r = st.update_with(fn, tr, p)
                else:
                    r = st.update([ones[s:e] for s, e in segs], table, tr, p)
                if not r.applied:
                    dropped += 1
                    return
                applied += 1
                s = float(table[min(r.staleness, 2)])
                if mode == "hogwild":
                    hw += s
                else:
                    with inc_lock:
                        if r.version in inc:
                            errors.append(f"version {r.version} produced twice")
                        inc[r.version] = s

            if hold:
                do_update()
            if mode != "hogwild":
                if not (a == v).all():
                    errors.append(f"snapshot v{snap.version} changed while held")
            snap.release()
            if not hold:
                do_update()
        with inc_lock:
            logs.extend(log)
            counts["calls"] += calls
            counts["applied"] += applied
            counts["dropped"] += dropped
            counts["hw"] += hw

    ths = [threading.Thread(target=worker, args=(k,)) for k in range(m)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return st, inc, logs, errors, counts


@pytest.mark.parametrize("mode,hold", [("leashed", 0), ("leashed", 1), ("locked", 0)])
def test_threads_invariants(mode, hold):
    # d large enough that the C calls (GIL released) overlap: CAS failures happen
    m, n_per, d = 4, 500, 30011
    st, inc, logs, errors, c = _run_threads(mode, m, n_per, d, hold)
    assert not errors, errors[:5]
    s = st.stats()
    print(mode, hold, s)
    V = st.version
    # version = number of applied updates; counters add up
    assert V == c["applied"] == s["applied"]
    assert c["applied"] + c["dropped"] == c["calls"] == m * n_per
    assert s["dropped"] == c["dropped"]
    if mode == "leashed":
        assert s["cas_attempts"] == s["applied"] + s["cas_failures"]
    assert s["held"] == 0 and s["live"] == 1
    assert sum(s["live_hist"]) == s["applied"] and s["live_hist"][0] == 0
    assert len(s["live_hist"]) - 1 <= s["peak_live"]
    # every version produced exactly once; no lost update
    assert sorted(inc) == list(range(1, V + 1))
    prefix = np.concatenate([[0.0], np.cumsum([inc[v] for v in range(1, V + 1)])])
    fin = st.read_copy()
    assert (fin == prefix[V]).all(), (fin[0], prefix[V])
    # every snapshot held exactly the value of its version
    bad = [(v, x) for v, x in logs if x != prefix[v]]
    assert not bad, bad[:5]
    # memory bound
    bound = (3 * m + 1 if hold else 2 * m + 1) if mode == "leashed" else m + 1
    assert s["allocated"] <= s["peak_live"] <= bound, s


def test_threads_hogwild_completes():
    m, n_per, d = 4, 400, 4099
    st, _, _, errors, c = _run_threads("hogwild", m, n_per, d, 0)
    assert not errors
    s = st.stats()
    assert st.version == s["applied"] == m * n_per and s["dropped"] == 0
    # Racy in-place adds may lose some of the applied increments, never invent any:
    # every element lies between 0 and the sum of the applied updates' scales.
    x = st.read_copy().astype(np.float64)
    assert x.min() >= 0.0 and x.max() <= c["hw"] * (1 + 1e-6), (x.min(), x.max(), c["hw"])


def test_concurrent_close_and_release_after_close():
    st = ParameterStore(1024, "leashed")
    snap = st.acquire()
    att = st.begin(0)
    st.close()
    st.close()  # idempotent
    assert st.closed
    for f in (lambda: st.acquire(), lambda: st.update(np.ones(1024, np.float32), 1.0, 0),
              lambda: st.read_copy(), lambda: st.version, lambda: st.begin(0)):
        with pytest.raises(StoreClosedError):
            f()
    assert snap.array[0] == 0.0  # still valid: held
    snap.release()
    att.abort()
    assert st.stats()["held"] == 0


def test_close_frees_the_memory_once_no_array_on_it_is_referenced():
    st = ParameterStore(4096, "leashed")
    with st.acquire() as snap:  # builds and caches a view of the buffer
        assert snap.array[0] == 0.0
    st.update(np.ones(4096, np.float32), 1.0, 0)
    assert st.stats()["freed"] == 0
    st.close()
    assert st.stats()["freed"] == 1  # at once: the cache held the only views


def test_close_keeps_the_memory_while_an_array_on_it_lives_then_frees_it():
    st = ParameterStore(4096, "leashed", init=np.full(4096, 2.0, np.float32))
    with st.acquire() as snap:
        tail = snap.array[10:]  # a slice: its base is the view's owner, not the view
    st.close()
    assert st.stats()["freed"] == 0 and tail[-1] == 2.0
    del tail
    assert st.stats()["freed"] == 1


def test_close_with_a_held_snapshot_frees_at_its_release():
    st = ParameterStore(4096, "hogwild")
    snap = st.acquire(copy=True)
    st.close()
    assert st.stats()["freed"] == 0 and snap.array[0] == 0.0
    snap.release()
    assert st.stats()["freed"] == 1


def test_a_view_first_built_after_close_keeps_the_memory_until_dropped():
    # An acquire that entered C before close() builds its view after it.
    from asgd._pstore import lib
    st = ParameterStore(4096, "leashed", init=np.full(4096, 5.0, np.float32))
    sn = lib.pstore_acquire(st._h, 0)
    st.close()
    view = st._view(sn.handle, sn.data, False)
    lib.pstore_release(st._h, sn.handle)
    assert st.stats()["freed"] == 0 and view[0] == 5.0
    del view
    assert st.stats()["freed"] == 1


def test_threads_meeting_a_buffer_first_share_one_view(monkeypatch):
    # Slow view construction: without the cache's lock every thread would
    # build (and hand out) its own view, and close() would miss all but one.
    built = []
    init = store_mod._ViewBase.__init__

    def slow_init(self, *args):
        built.append(1)
        time.sleep(0.05)
        init(self, *args)

    monkeypatch.setattr(store_mod._ViewBase, "__init__", slow_init)
    st = ParameterStore(1024, "leashed")
    barrier = threading.Barrier(4)
    arrays = []

    def reader():
        barrier.wait()
        with st.acquire() as snap:
            arrays.append(snap.array)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(a is arrays[0] for a in arrays)
    del arrays[:]
    st.close()
    assert st.stats()["freed"] == 1


def test_stale_view_after_close_or_gc_does_not_crash():
    import gc
    d = 1 << 21  # 8 MiB buffers: mmap'ed, so a freed one would be unmapped
    st = ParameterStore(d, init=np.full(d, 3.0, np.float32))
    with st.acquire() as snap:
        a = snap.array
    att = st.begin(0)
    b = att.out
    att.abort()
    st.close()
    assert a[-1] == 3.0 and b.shape == (d,)  # memory kept: views still referenced
    del st, snap, att
    gc.collect()
    assert a[0] == 3.0  # a view keeps the store (and its memory) alive
    del a, b
    gc.collect()


def test_close_while_threads_update():
    st = ParameterStore(20000, "leashed")
    u = np.ones(20000, np.float32)
    deadline = time.monotonic() + 30
    seen = []

    def worker():
        # Keep calling until the close is seen (a stop flag set after close()
        # let workers leave without ever calling into the closed store).
        try:
            while time.monotonic() < deadline:
                with st.acquire() as sn:
                    tr = sn.version
                st.update(u, 1.0, tr)
        except StoreClosedError:
            seen.append("closed")

    ths = [threading.Thread(target=worker) for _ in range(3)]
    for t in ths:
        t.start()
    while st.stats()["applied"] < 50:
        pass
    st.close()
    for t in ths:
        t.join()
    assert seen == ["closed"] * 3  # every thread got a Python exception, not a crash


# ----------------------------------------------------------------- errors

@pytest.mark.parametrize("d", [0, -5, 2**40])
def test_bad_d(d):
    with pytest.raises(ValueError):
        ParameterStore(d)


def test_bad_args():
    with pytest.raises(TypeError):
        ParameterStore(1.5)
    with pytest.raises(TypeError):
        ParameterStore("10")
    with pytest.raises(ValueError):
        ParameterStore(10, mode="fast")
    with pytest.raises(ValueError):
        ParameterStore(10, mode=3)
    with pytest.raises(ValueError):
        ParameterStore(10, init=np.zeros(9))
    with pytest.raises(ValueError):
        ParameterStore(10, max_buffers=-1)


@pytest.mark.parametrize("mode", MODES)
def test_bad_updates(mode):
    st = ParameterStore(10, mode)
    ok = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="11 elements"):
        st.update(np.ones(11, np.float32), 1.0, 0)
    with pytest.raises(ValueError, match="elements"):
        st.update([ok[:3], ok[:3]], 1.0, 0)
    with pytest.raises(TypeError):
        st.update(np.ones(10, np.float64), 1.0, 0)
    with pytest.raises(TypeError):
        st.update([ok[:5], np.ones(5, np.float64)], 1.0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        st.update(np.ones(20, np.float32)[::2], 1.0, 0)
    with pytest.raises(ValueError):
        st.update([], 1.0, 0)
    with pytest.raises(ValueError, match="persistence"):
        st.update(ok, 1.0, 0, persistence=-2)
    with pytest.raises(ValueError, match="t_read"):
        st.update(ok, 1.0, 5)
    with pytest.raises(ValueError, match="t_read"):
        st.update(ok, 1.0, -1)
    with pytest.raises(ValueError, match="empty"):
        st.update(ok, np.array([], np.float32), 0)
    with pytest.raises(TypeError):
        st.update(ok, np.array([1.0]), 0)  # float64 table
    assert st.version == 0 and st.stats()["applied"] == 0


def test_release_twice_and_attempt_misuse():
    st = ParameterStore(10)
    snap = st.acquire()
    snap.release()
    with pytest.raises(StoreError, match="twice"):
        snap.release()
    with st.acquire() as s2:
        s2.release()  # explicit release inside the with: exit does not release again
    att = st.begin(0)
    assert att.commit()
    with pytest.raises(StoreError):
        att.commit()
    with pytest.raises(StoreError):
        att.abort()
    with pytest.raises(ValueError):
        st.begin(7)
    with pytest.raises(ValueError):
        st.update_with(lambda o, t: None, 0, persistence=-3)
    assert st.stats()["held"] == 0


def test_update_with_exception_in_fn_releases():
    st = ParameterStore(10)

    def boom(out, tau):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        st.update_with(boom, 0)
    s = st.stats()
    assert s["held"] == 0 and s["live"] == 1 and st.version == 0


def test_buffer_cap_is_an_exception():
    st = ParameterStore(10, max_buffers=3)
    held = [st.acquire()]
    st.update(np.ones(10, np.float32), 1.0, 0)
    held.append(st.acquire())
    st.update(np.ones(10, np.float32), 1.0, 0)
    held.append(st.acquire())  # 3 versions held: every buffer is pinned
    with pytest.raises(StoreError, match="cap"):
        st.update(np.ones(10, np.float32), 1.0, 0)
    stats = st.stats()  # a failed allocation raises neither the peak nor the count
    assert stats["peak_live"] == stats["allocated"] == stats["max_buffers"] == 3
    assert stats["live"] == stats["held"] == 3
    for h in held:
        h.release()
    st.update(np.ones(10, np.float32), 1.0, 0)


def test_missing_build_message(monkeypatch):
    monkeypatch.setattr(store_mod, "_lib", None)
    monkeypatch.setattr(store_mod, "_IMPORT_ERROR", ImportError("x"))
    with pytest.raises(ImportError, match="pip install -e"):
        ParameterStore(10)


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                    reason="needs make and a C compiler")
@pytest.mark.parametrize("target", ["stress-short",
                                    pytest.param("tsan", marks=pytest.mark.slow),
                                    pytest.param("asan", marks=pytest.mark.slow)])
def test_c_stress_short_plain_and_under_sanitizers(target):
    """The C stress program's short run, plain, under TSan, and under ASan+UBSan.

    The Makefile makes any sanitizer report fatal (nonzero exit).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["make", "-s", "-C", os.path.join(root, "ckernels"), target],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    assert "WARNING: ThreadSanitizer" not in r.stdout + r.stderr
    assert "ERROR: AddressSanitizer" not in r.stdout + r.stderr
    assert "runtime error" not in r.stdout + r.stderr


@pytest.mark.parametrize("mode", ["leashed", "locked", "hogwild"])
def test_two_phase_update_with_segments_in_every_mode(mode):
    """begin -> new vector computed outside -> commit_segments, as a stateful optimizer does."""
    st = ParameterStore(6, mode, init=np.arange(6, dtype=np.float32))
    att = st.begin(0, prefill=False)
    np.testing.assert_array_equal(att.base, np.arange(6))
    new = np.asarray(att.base) * 2 + 1
    assert att.commit_segments([new[:2].copy(), new[2:].copy()])
    np.testing.assert_array_equal(st.read_copy(), np.arange(6) * 2 + 1)
    assert st.version == 1 and st.stats()["held"] == 0 and st.stats()["applied"] == 1
    with pytest.raises(ValueError):  # the segments must add up to d
        bad = st.begin(1)
        try:
            bad.commit_segments([new[:3].copy()])
        finally:
            bad.abort()
    assert st.stats()["held"] == 0


def test_locked_two_phase_holds_the_writer_lock_until_commit():
    """Another update waits for an open LOCKED attempt: nothing lands in between."""
    st = ParameterStore(4, "locked")
    att = st.begin(0, prefill=False)
    done = threading.Event()
    other = threading.Thread(target=lambda: (st.update(np.ones(4, np.float32), 1.0, 0), done.set()))
    other.start()
    assert not done.wait(0.2)          # blocked by the open attempt
    assert att.commit_segments([np.full(4, 5.0, np.float32)])
    other.join(5)
    assert done.is_set()
    np.testing.assert_array_equal(st.read_copy(), np.full(4, 6.0))
    assert st.version == 2


def test_hogwild_two_phase_reports_what_it_overwrote():
    st = ParameterStore(3, "hogwild")
    att = st.begin(0, prefill=False)
    st.update(np.ones(3, np.float32), 1.0, 0)      # lands between begin and commit
    assert att.commit_segments([np.full(3, 2.0, np.float32)])
    assert att.overwritten == 1
    np.testing.assert_array_equal(st.read_copy(), np.full(3, 2.0))  # the racing update is lost
