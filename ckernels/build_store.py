"""cffi (API mode) builder for the C parameter store: module ``asgd._pstore``.

Used two ways:

* by setuptools at install time (``setup.py``: ``cffi_modules=["ckernels/build_store.py:ffibuilder"]``),
  so ``pip install .``, ``pip install -e .`` or ``python -m build`` compiles the kernel;
* directly for development, building in place into ``asgd/`` (needs setuptools,
  which cffi compiles with on Python >= 3.12; the ``test`` extra installs it)::

      python ckernels/build_store.py

Compiler flags. The update loops must be vectorised to run at memory speed
(gcc 12 at plain -O2 did not vectorise them: 4x slower). The default build,
``-std=c11 -O3 -fopenmp-simd``, is portable: its baseline is plain x86-64
(SSE2), and the element loops are also compiled for AVX2 and AVX-512F and
chosen at run time (``target_clones`` in pstore.c), so one wheel runs on any
x86-64 CPU and uses AVX-512 where it has it. ``-std=c11`` also keeps
``x + s*u`` unfused (no FMA contraction), so every build rounds alike.

* ``ASGD_PSTORE_NATIVE=1``: add ``-march=native``, a build for this CPU only
  (no clones when it has AVX-512; the binary may not run on another CPU);
* ``ASGD_PSTORE_CFLAGS="..."``: replace the flags altogether.

The flags are written into the generated C source, so a build folder left
from another build is recompiled when they change (setuptools compares file
times only).
"""
import glob
import os
import re
import shlex
import shutil

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEFAULT_CFLAGS = "-std=c11 -O3 -fopenmp-simd"
NATIVE_FLAG = "-march=native"

HEADERS = ("pstore.h", "pworker.h")
SOURCES = ("pstore.c", "pworker.c", "pworker_ffi.c")


def ffi_include() -> list[str]:
    """Where ``xla/ffi/api/c_api.h`` comes from: ``ASGD_JAXLIB_INCLUDE`` if set,
    else the copy in ckernels/xla/ (XLA's FFI C API 0.1, from jaxlib 0.5.3, the
    oldest jax asgd supports). A handler reports the API version of the header
    it was built with, and XLA refuses one newer than its own: built against a
    newer jaxlib's header (0.3 in jaxlib 0.10), the kernel failed to register
    on jaxlib 0.6 (0.1). Built against the oldest, one wheel serves them all."""
    override = os.environ.get("ASGD_JAXLIB_INCLUDE")
    return [override] if override else []


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


def cflags(environ=os.environ) -> list[str]:
    """The compiler flags of this build (see the module docstring)."""
    if environ.get("ASGD_PSTORE_CFLAGS"):
        return shlex.split(environ["ASGD_PSTORE_CFLAGS"])
    flags = shlex.split(DEFAULT_CFLAGS)
    if environ.get("ASGD_PSTORE_NATIVE", "") not in ("", "0"):
        flags.append(NATIVE_FLAG)
    return flags


def make_builder(absolute=False, flags=None, module="asgd._pstore"):
    """The FFI builder of ``module`` compiled with ``flags`` (default: ``cflags()``).

    Paths are relative to the repository root (setuptools wants relative
    source paths and runs this from the directory of setup.py); absolute for
    the in-place build, where cffi compiles from inside its temporary directory.
    """
    flags = cflags() if flags is None else list(flags)
    quoted = " ".join(flags).replace("\\", "/").replace('"', "'")
    base = ROOT if absolute else ""
    b = FFI()
    b.cdef(header_cdef())
    b.set_source(
        module,
        # the flags in the source: a change of flags changes this generated
        # file, which makes setuptools rebuild the extension
        f'/* built with: {quoted} */\n#include "pstore.h"\n#include "pworker.h"',
        sources=[os.path.join(base, "ckernels", c) for c in SOURCES],
        include_dirs=[*ffi_include(), os.path.join(base, "ckernels")],
        depends=[os.path.join(base, "ckernels", h) for h in HEADERS],
        extra_compile_args=flags,
        define_macros=[("PSTORE_CFLAGS", f'"{quoted}"')],
        extra_link_args=["-pthread"],
    )
    return b


ffibuilder = make_builder()


def compile_module(tmpdir: str, flags=None, module="asgd._pstore", verbose=False) -> str:
    """Compile ``module`` with ``flags`` in ``tmpdir``; returns the path of the extension."""
    try:
        import setuptools  # noqa: F401  (cffi compiles through it on Python >= 3.12)
    except ImportError:
        raise SystemExit("building the C kernel in place needs setuptools: "
                         "pip install setuptools (or pip install -e '.[test]')") from None
    return make_builder(absolute=True, flags=flags, module=module).compile(
        tmpdir=tmpdir, verbose=verbose)


def build_inplace(verbose=True):
    """Compile into ckernels/_build and copy the extension into asgd/."""
    so = compile_module(os.path.join(ROOT, "ckernels", "_build"), verbose=verbose)
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
