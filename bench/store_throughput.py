"""Update throughput of the C parameter store, from Python (prints figures; not a test).

    python bench/store_throughput.py [--reps 7] [--seconds 0.3] [--dims 134794,10000000]

For each d (134,794 = the MLP 784-128-128-128-10; 10^7) it measures, in the same run:

* ``ref``: a plain C copy+axpy ``y = x + s*u`` (one fused pass, 64-byte aligned
  arrays), called through cffi like the store is;
* LEASHED / HOGWILD / LOCKED ``store.update`` from 1 and 2 Python threads
  (persistence -1, a scale table indexed by staleness). For d = 134,794 the
  update is given as the 8 leaves of the MLP's gradient pytree (what the
  executors pass) and, for LEASHED, also as one array;

and prints the median over --reps rounds of updates/s, us per update, the
ratio of the per-update time to the reference (1 thread), and the CAS failure
rate. Each round runs every configuration once, interleaved, and the ratio is
taken within the round, so bursts of load from other processes on a shared
machine hit the reference and the store alike. With 2 threads "ratio" is (time per update per thread) / ref, i.e. > 1
means each thread is slowed by the other; a 2-thread reference with private
arrays is given to show the machine's own parallel limit (memory bandwidth).
Data are real pages (not zero pages) and every configuration is warmed up.
"""
import argparse
import os
import statistics
import threading
import time

import numpy as np

from asgd.store import ParameterStore, aligned_empty
from asgd._pstore import ffi, lib

MLP_LEAVES = [784 * 128, 128, 128 * 128, 128, 128 * 128, 128, 128 * 10, 10]


def filled(n, v):
    a = aligned_empty(n)
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


def ref_body(d):
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
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--dims", default="134794,10000000")
    a = p.parse_args()
    dims = [int(x) for x in a.dims.split(",")]
    scales = np.array([0.01 / (1 + t) for t in range(64)], np.float32)
    print(f"# pstore update throughput; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
          f"ASGD_PSTORE_CFLAGS="
          f"{os.environ.get('ASGD_PSTORE_CFLAGS', '(default -O3 -march=native -fopenmp-simd)')}")
    print(f"# {a.reps} rounds; each round runs every configuration once for {a.seconds}s, "
          "interleaved; figures are medians over rounds.")
    print("# ratio = (us per update per thread) / (ref us, 1 thread, same round)")
    hdr = (f"{'d':>9} {'what':<26} {'thr':>3} {'updates/s':>11} {'us/upd':>9} "
           f"{'ratio':>6} {'CAS fail':>8}")
    print(hdr)
    print("-" * len(hdr))
    for d in dims:
        u_one = filled(d, 0.5)
        variants = []
        if d == sum(MLP_LEAVES):
            leaves, off = [], 0
            for n in MLP_LEAVES:
                leaves.append(u_one[off:off + n])
                off += n
            variants = [("leashed", "8 leaves", leaves), ("leashed", "1 array", u_one),
                        ("hogwild", "8 leaves", leaves), ("locked", "8 leaves", leaves)]
        else:
            variants = [(m, "1 array", u_one) for m in ("leashed", "hogwild", "locked")]
        # configurations: (label, threads, body factory, store or None)
        configs = [("ref C copy+axpy", 1, lambda: ref_body(d), None),
                   ("ref C copy+axpy (private)", 2, lambda: ref_body(d), None)]
        for mode, form, u in variants:
            for nt in (1, 2):
                st = ParameterStore(d, mode, init=filled(d, 1.0))
                configs.append((f"{mode.upper()} ({form})", nt,
                                (lambda st=st, u=u: store_body(st, u, scales)), st))
        rates = [[] for _ in configs]
        fails = [[] for _ in configs]
        ratios = [[] for _ in configs]
        for _, nt, mk, st in configs:  # warm-up: buffers, page faults
            run_threads(nt, mk(), 0.1)
        for _ in range(a.reps):
            for i, (_, nt, mk, st) in enumerate(configs):
                s0 = st.stats() if st else None
                rates[i].append(run_threads(nt, mk(), a.seconds))
                if st:
                    s1 = st.stats()
                    att = s1["cas_attempts"] - s0["cas_attempts"]
                    fails[i].append((s1["cas_failures"] - s0["cas_failures"]) / att if att else 0.0)
            ref_rate = rates[0][-1]
            for i, (_, nt, _, _) in enumerate(configs):
                ratios[i].append(ref_rate / rates[i][-1] * nt)
        for i, (what, nt, _, st) in enumerate(configs):
            rate = statistics.median(rates[i])
            us = 1e6 / rate * nt  # wall time per update per thread
            fs = (f"{100 * statistics.median(fails[i]):7.2f}%" if st is not None
                  and st.mode == "leashed" else f"{'-':>8}")
            print(f"{d:>9} {what:<26} {nt:>3} {rate:>11.0f} {us:>9.2f} "
                  f"{statistics.median(ratios[i]):>6.2f} {fs}")
            if st:
                st.close()
        print(flush=True)


if __name__ == "__main__":
    main()
