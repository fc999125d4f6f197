"""Update throughput of the C parameter store, from Python (prints figures; not a test).

    python bench/store_throughput.py [--reps 7] [--seconds 0.3] [--dims 134794,10000000]
                                     [--variants portable,native]

For each d (134,794 = the MLP 784-128-128-128-10; 10^7) it measures, in the same run:

* ``ref``: a plain C copy+axpy ``y = x + s*u`` (one fused pass, 64-byte aligned
  arrays), called through cffi like the store is;
* LEASHED / HOGWILD / LOCKED ``store.update`` from 1 and 2 Python threads
  (persistence -1, a scale table indexed by staleness). For d = 134,794 the
  update is given as the 8 leaves of the MLP's gradient pytree (what the
  executors pass) and, for LEASHED, also as one array;

for each build of the kernel in ``--variants``, compiled afresh for this run:
``portable`` (the default flags: baseline x86-64 with AVX2 / AVX-512F clones
chosen at run time), ``native`` (the same plus -march=native), or
``installed`` (the asgd._pstore this Python imports, as it is). It prints the
median over --reps rounds of updates/s, us per update, the ratio of the
per-update time to the same build's reference (1 thread), and the CAS failure
rate; then, per configuration, the time ratio portable / native (> 1: the
portable build is slower). Each round runs every configuration of every
variant once, interleaved, and the ratios are taken within the round, so
bursts of load from other processes on a shared machine hit all of them alike.
With 2 threads "ratio" is (time per update per thread) / ref, i.e. > 1 means
each thread is slowed by the other; a 2-thread reference with private arrays
is given to show the machine's own parallel limit (memory bandwidth). Data are
real pages (not zero pages) and every configuration is warmed up.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

import asgd.store

MLP_LEAVES = [784 * 128, 128, 128 * 128, 128, 128 * 128, 128, 128 * 10, 10]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_variant(name: str, tmpdir: str):
    """(module like asgd.store bound to the build ``name``, its ffi, its lib)."""
    if name == "installed":
        from asgd._pstore import ffi, lib
        return asgd.store, ffi, lib
    sys.path.insert(0, os.path.join(REPO, "ckernels"))
    import build_store
    flags = build_store.cflags({"ASGD_PSTORE_NATIVE": "1" if name == "native" else ""})
    module = f"asgd._pstore_{name}"
    path = build_store.compile_module(os.path.join(tmpdir, name), flags, module)
    spec = importlib.util.spec_from_file_location(module, path)
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    # A copy of asgd.store whose `from asgd._pstore import ffi, lib` finds this
    # build: the measured Python code is the very same, only the kernel differs.
    saved = sys.modules.get("asgd._pstore")
    sys.modules["asgd._pstore"] = kernel
    try:
        spec = importlib.util.spec_from_file_location(f"asgd_store_{name}", asgd.store.__file__)
        store = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(store)
    finally:
        if saved is not None:
            sys.modules["asgd._pstore"] = saved
        else:
            del sys.modules["asgd._pstore"]
    return store, kernel.ffi, kernel.lib


def filled(n, v):
    a = asgd.store.aligned_empty(n)
    a[:] = v
    return a


def run_threads(n_threads, body, seconds):
    """Run body(stop_event) -> count in n_threads threads for `seconds`; total count/s."""
    counts = [0] * n_threads
    barrier = threading.Barrier(n_threads + 1)
    stop = threading.Event()

    def w(k):
        barrier.wait()
        counts[k] = body(stop)

    ths = [threading.Thread(target=w, args=(k,)) for k in range(n_threads)]
    for t in ths:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ths:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def ref_body(ffi, lib, d):
    x, y, u = filled(d, 1.0), filled(d, 0.0), filled(d, 0.5)
    xp, yp, up = (ffi.from_buffer("float[]", a) for a in (x, y, u))
    f = lib.pstore_ref_copy_axpy

    def body(stop):
        n = 0
        while not stop.is_set():
            for _ in range(8):
                f(yp, xp, up, 0.5, d)
            n += 8
        return n
    return body


def store_body(st, u, scales):
    def body(stop):
        n = 0
        upd = st.update
        while not stop.is_set():
            upd(u, scales, 0, -1)
            n += 1
        return n
    return body


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7, help="rounds (figures are medians over them)")
    p.add_argument("--seconds", type=float, default=0.3, help="seconds per configuration and round")
    p.add_argument("--dims", default="134794,10000000", help="comma-separated d")
    p.add_argument("--variants", default="portable,native",
                   help="builds to compare: portable, native, installed (comma-separated)")
    a = p.parse_args()
    dims = [int(x) for x in a.dims.split(",")]
    names = [v for v in a.variants.split(",") if v]
    scales = np.array([0.01 / (1 + t) for t in range(64)], np.float32)
    tmp = tempfile.TemporaryDirectory(prefix="asgd-bench-")
    variants = {name: load_variant(name, tmp.name) for name in names}
    print(f"# pstore update throughput; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    for name, (store, _, _) in variants.items():
        info = store.build_info()
        print(f"# {name}: cflags {info['cflags']}; clones {info['clones']}; runs {info['dispatch']}; "
              f"baseline {info['vector']}")
    print(f"# {a.reps} rounds; each round runs every configuration of every variant once for "
          f"{a.seconds}s, interleaved; figures are medians over rounds.")
    print("# ratio = (us per update per thread) / (ref us, 1 thread, same build, same round)")
    hdr = (f"{'d':>9} {'variant':<9} {'what':<26} {'thr':>3} {'updates/s':>11} {'us/upd':>9} "
           f"{'ratio':>6} {'CAS fail':>8}")
    print(hdr)
    print("-" * len(hdr))
    for d in dims:
        u_one = filled(d, 0.5)
        if d == sum(MLP_LEAVES):
            leaves, off = [], 0
            for n in MLP_LEAVES:
                leaves.append(u_one[off:off + n])
                off += n
            forms = [("leashed", "8 leaves", leaves), ("leashed", "1 array", u_one),
                     ("hogwild", "8 leaves", leaves), ("locked", "8 leaves", leaves)]
        else:
            forms = [(m, "1 array", u_one) for m in ("leashed", "hogwild", "locked")]
        # configurations: (variant, label, threads, body factory, store or None); the
        # variants of one configuration are adjacent, so each pair runs back to back
        labels = [("ref C copy+axpy", 1, None, None), ("ref C copy+axpy (private)", 2, None, None)]
        labels += [(f"{mode.upper()} ({form})", nt, mode, u) for mode, form, u in forms for nt in (1, 2)]
        configs = []
        for label, nt, mode, u in labels:
            for name, (store, ffi, lib) in variants.items():
                if mode is None:
                    configs.append((name, label, nt, (lambda ffi=ffi, lib=lib: ref_body(ffi, lib, d)),
                                    None))
                else:
                    st = store.ParameterStore(d, mode, init=filled(d, 1.0))
                    configs.append((name, label, nt, (lambda st=st, u=u: store_body(st, u, scales)),
                                    st))
        rates = [[] for _ in configs]
        fails = [[] for _ in configs]
        ratios = [[] for _ in configs]
        for _, _, nt, mk, _ in configs:  # warm-up: buffers, page faults
            run_threads(nt, mk(), 0.1)
        for _ in range(a.reps):
            for i, (_, _, nt, mk, st) in enumerate(configs):
                s0 = st.stats() if st else None
                rates[i].append(run_threads(nt, mk(), a.seconds))
                if st:
                    s1 = st.stats()
                    att = s1["cas_attempts"] - s0["cas_attempts"]
                    fails[i].append((s1["cas_failures"] - s0["cas_failures"]) / att if att else 0.0)
            ref_rate = {configs[i][0]: rates[i][-1] for i in range(len(names))}  # the first label
            for i, (name, _, nt, _, _) in enumerate(configs):
                ratios[i].append(ref_rate[name] / rates[i][-1] * nt)
        for i, (name, what, nt, _, st) in enumerate(configs):
            rate = statistics.median(rates[i])
            us = 1e6 / rate * nt  # wall time per update per thread
            fs = (f"{100 * statistics.median(fails[i]):7.2f}%" if st is not None
                  and st.mode == "leashed" else f"{'-':>8}")
            print(f"{d:>9} {name:<9} {what:<26} {nt:>3} {rate:>11.0f} {us:>9.2f} "
                  f"{statistics.median(ratios[i]):>6.2f} {fs}")
            if st:
                st.close()
        if "portable" in variants and "native" in variants:
            print(f"{d:>9} time portable / native (median of per-round ratios; > 1: portable slower)")
            by = {(name, what, nt): i for i, (name, what, nt, _, _) in enumerate(configs)}
            for label, nt, _, _ in labels:
                p_i, n_i = by[("portable", label, nt)], by[("native", label, nt)]
                ratio = statistics.median(rn / rp for rp, rn in zip(rates[p_i], rates[n_i]))
                print(f"{d:>9} {'':<9} {label:<26} {nt:>3} {ratio:>6.3f}")
        print(flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
