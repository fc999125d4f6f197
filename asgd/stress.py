"""Run the C parameter store's stress tests (``ckernels/stress.c``).

    python -m asgd.stress            # full: m = 2,4,8,16 threads, 1e6 updates per configuration
    python -m asgd.stress --short    # a few seconds
    python -m asgd.stress --tsan     # short run under ThreadSanitizer (fails on any report)
    python -m asgd.stress --asan     # short run under AddressSanitizer + UBSan
    python -m asgd.stress --check    # short + tsan + asan (what CI runs)

It runs ``make -C <sources> <target>`` (needs make and a C compiler) on the C
sources: the checkout's ``ckernels/``, or the copy installed with the package
(``asgd.ckernels``); binaries go to ``ckernels/bin`` in a checkout and to
``$XDG_CACHE_HOME/asgd/stress`` (default ``~/.cache/asgd/stress``) otherwise.
Exit status is that of make: nonzero if any invariant check or sanitizer
report failed.
"""
import argparse
import os
import shutil
import subprocess
import sys


def ckernels_dir() -> str:
    """The folder holding pstore.c, stress.c and the Makefile."""
    try:
        from asgd import ckernels  # a checkout (editable install) or the installed copy
        d = os.path.dirname(os.path.abspath(ckernels.__file__))
    except ImportError:  # a checkout used without installing: ckernels/ beside asgd/
        d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ckernels")
    if not os.path.isfile(os.path.join(d, "Makefile")):
        raise SystemExit(f"python -m asgd.stress: error: the C sources are not installed ({d} has "
                         "no Makefile); reinstall asgd, or run from a git checkout")
    return d


def bin_dir(sources: str) -> str:
    """Where the stress binaries go: beside the sources in a checkout, else a user cache
    (an installed package's folder may be read-only and is no place for build output)."""
    checkout = os.path.isfile(os.path.join(os.path.dirname(sources), "setup.py"))
    if checkout and os.access(sources, os.W_OK):
        return os.path.join(sources, "bin")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "asgd", "stress")


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
        raise SystemExit("python -m asgd.stress: error: `make` is not installed; "
                         "build by hand: see ckernels/README.md")
    sources = ckernels_dir()
    cmd = [make, "-C", sources, target, f"BIN={bin_dir(sources)}"]
    if a.args:
        cmd.append(f"STRESS_ARGS={a.args}")
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
