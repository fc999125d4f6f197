"""cffi (API mode) builder for the C parameter store: module ``asgd._pstore``.

Used two ways:

* by setuptools at install time (``setup.py``: ``cffi_modules=["ckernels/build_store.py:ffibuilder"]``),
  so ``pip install -e .`` or ``pip install .`` compiles the kernel;
* directly for development, building in place into ``asgd/``::

      python ckernels/build_store.py

Compiler flags: the update loop must be vectorised to run at memory speed
(gcc 12 at plain -O2 did not vectorise it: 4x slower). By default we build
for the machine that builds: ``-O3 -march=native -fopenmp-simd``. Set
``ASGD_PSTORE_CFLAGS`` to override, e.g. ``ASGD_PSTORE_CFLAGS="-O2 -fopenmp-simd"``
for a portable build (still vectorised, with SSE2 only).
"""
import glob
import os
import re
import shlex
import shutil

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEFAULT_CFLAGS = "-std=c11 -O3 -march=native -fopenmp-simd"

HEADERS = ("pstore.h", "pworker.h")
SOURCES = ("pstore.c", "pworker.c", "pworker_ffi.c")


def jaxlib_include() -> str:
    """XLA's FFI headers as jaxlib ships them (``jax.ffi.include_dir()``), found
    without importing jax; ``ASGD_JAXLIB_INCLUDE`` overrides. The handlers in
    pworker_ffi.c report the API version of these headers, so build against a
    jaxlib no newer than the one that runs them (normally the same)."""
    import importlib.util
    override = os.environ.get("ASGD_JAXLIB_INCLUDE")
    if override:
        return override
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("building asgd's C kernel needs jaxlib's XLA FFI headers: "
                           "pip install jaxlib (or set ASGD_JAXLIB_INCLUDE)")
    return os.path.join(list(spec.submodule_search_locations)[0], "include")


def header_cdef(paths=tuple(os.path.join(HERE, h) for h in HEADERS)) -> str:
    """The cffi cdef, read from the headers so the two can never drift apart.

    Comments, the ``extern "C"`` guards and preprocessor lines are dropped;
    ``#define PSTORE_NAME value`` becomes ``#define PSTORE_NAME ...`` (cffi
    takes the value from the compiler).
    """
    text = ""
    for path in paths:
        with open(path) as f:
            text += re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S) + "\n"
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        define = re.match(r"\s*#define\s+(PSTORE_\w+)\s+\S", line)
        if define:
            lines.append(f"#define {define.group(1)} ...")
        elif not line.lstrip().startswith("#"):
            lines.append(line)
    return "\n".join(lines)


def _cflags():
    return shlex.split(os.environ.get("ASGD_PSTORE_CFLAGS", DEFAULT_CFLAGS))


def make_builder(absolute=False):
    """The FFI builder. Paths are relative to the repository root (setuptools
    wants relative source paths and runs this from the directory of
    setup.py); absolute for the in-place build, where cffi compiles from
    inside its temporary directory."""
    base = ROOT if absolute else ""
    b = FFI()
    b.cdef(header_cdef())
    b.set_source(
        "asgd._pstore",
        '#include "pstore.h"\n#include "pworker.h"',
        sources=[os.path.join(base, "ckernels", c) for c in SOURCES],
        include_dirs=[os.path.join(base, "ckernels"), jaxlib_include()],
        depends=[os.path.join(base, "ckernels", h) for h in HEADERS],
        extra_compile_args=_cflags(),
        define_macros=[("PSTORE_CFLAGS", '"' + " ".join(_cflags()).replace('"', "'") + '"')],
        extra_link_args=["-pthread"],
    )
    return b


ffibuilder = make_builder()


def build_inplace(verbose=True):
    """Compile into ckernels/_build and copy the extension into asgd/."""
    tmp = os.path.join(ROOT, "ckernels", "_build")
    so = make_builder(absolute=True).compile(tmpdir=tmp, verbose=verbose)
    dest = os.path.join(ROOT, "asgd", os.path.basename(so))
    # remove other builds (e.g. _pstore.abi3.so from pip install -e): Python
    # would pick one of them by suffix order, possibly a stale one
    for f in glob.glob(os.path.join(ROOT, "asgd", "_pstore.*")):
        if f.endswith((".so", ".pyd")) and f != dest:
            os.remove(f)
    shutil.copy2(so, dest)
    return dest


if __name__ == "__main__":
    print("built", build_inplace())
