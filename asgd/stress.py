"""Run the C parameter store's stress tests (``ckernels/stress.c``).

    python -m asgd.stress            # full: m = 2,4,8,16 threads, 1e6 updates per configuration
    python -m asgd.stress --short    # a few seconds
    python -m asgd.stress --tsan     # short run under ThreadSanitizer (fails on any report)
    python -m asgd.stress --asan     # short run under AddressSanitizer + UBSan
    python -m asgd.stress --check    # short + tsan + asan (what CI runs)

It runs ``make -C ckernels <target>`` in the source tree (needs make and a C
compiler; works from a git checkout or an editable install). Exit status is
that of make: nonzero if any invariant check or sanitizer report failed.
"""
import argparse
import os
import shutil
import subprocess
import sys


def ckernels_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    d = os.path.join(os.path.dirname(here), "ckernels")
    if not os.path.isfile(os.path.join(d, "Makefile")):
        raise SystemExit(
            f"ckernels/Makefile not found next to the asgd package ({d}); the stress tests "
            "run from a source checkout (git clone + pip install -e .)")
    return d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m asgd.stress", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--short", action="store_true", help="short run (seconds)")
    g.add_argument("--tsan", action="store_true", help="short run under ThreadSanitizer")
    g.add_argument("--asan", action="store_true", help="short run under ASan + UBSan")
    g.add_argument("--check", action="store_true", help="short + tsan + asan")
    p.add_argument("--args", default="", help="extra arguments for the stress program, "
                   "e.g. --args '--threads 2,4 --updates 200000'")
    a = p.parse_args(argv)
    target = ("stress-short" if a.short else "tsan" if a.tsan else "asan" if a.asan
              else "check" if a.check else "stress")
    make = shutil.which("make")
    if make is None:
        raise SystemExit("`make` is not installed; build by hand: see ckernels/README.md")
    cmd = [make, "-C", ckernels_dir(), target]
    if a.args:
        cmd.append(f"STRESS_ARGS={a.args}")
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
