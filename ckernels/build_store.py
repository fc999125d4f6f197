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
import shlex
import shutil

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEFAULT_CFLAGS = "-std=c11 -O3 -march=native -fopenmp-simd"

CDEF = r"""
enum { PSTORE_LEASHED = 0, PSTORE_HOGWILD = 1, PSTORE_LOCKED = 2 };
enum {
    PSTORE_OK = 0, PSTORE_EINVAL = -1, PSTORE_ENOMEM = -2, PSTORE_ECLOSED = -3,
    PSTORE_EBUFS = -4, PSTORE_EMODE = -5
};
#define PSTORE_MAX_D ...
#define PSTORE_MAX_BUFFERS ...
#define PSTORE_ALIGN ...

typedef struct pstore pstore;

typedef struct {
    float *data;
    int64_t version;
    int64_t generation;
    int32_t handle;
    int32_t status;
} pstore_snapshot;

typedef struct {
    int32_t status;
    int32_t applied;
    int32_t attempts;
    int32_t pad_;
    int64_t staleness;
    int64_t version;
} pstore_result;

typedef struct {
    int64_t d, mode, version, allocated, live, peak_live, applied,
            cas_attempts, cas_failures, dropped, held, acquires, max_buffers;
} pstore_stats;

typedef struct {
    const float *base;
    float *out;
    int64_t base_version;
    int64_t staleness;
    int64_t t_read;
    int32_t base_handle;
    int32_t out_handle;
    int32_t attempts;
    int32_t status;
} pstore_attempt;

int pstore_create(int64_t d, int32_t mode, const float *init, int32_t max_buffers,
                  pstore **out);
int pstore_close(pstore *s, int32_t free_memory);
void pstore_destroy(pstore *s);
pstore_snapshot pstore_acquire(pstore *s, int32_t copy);
int pstore_release(pstore *s, int32_t handle);
pstore_result pstore_update(pstore *s, float *const *segs, const int64_t *lens,
                            int32_t nseg, float scale, const float *scales,
                            int32_t nscales, int64_t t_read, int64_t persistence);
int pstore_begin(pstore *s, int64_t t_read, int32_t prefill, pstore_attempt *a);
int pstore_commit(pstore *s, pstore_attempt *a, int32_t rebase, int32_t prefill);
int pstore_abort(pstore *s, pstore_attempt *a, int32_t count_dropped);
int pstore_read_copy(pstore *s, float *dst, int64_t *version);
int64_t pstore_version(pstore *s);
int pstore_get_stats(pstore *s, pstore_stats *st);
int64_t pstore_dim(pstore *s);
int64_t pstore_generation(pstore *s, int32_t handle);
void pstore_ref_copy_axpy(float *y, const float *x, const float *u, float s, int64_t n);
void pstore_ref_memcpy_axpy(float *y, const float *x, const float *u, float s, int64_t n);
const char *pstore_strerror(int code);
"""


def _cflags():
    return shlex.split(os.environ.get("ASGD_PSTORE_CFLAGS", DEFAULT_CFLAGS))


def make_builder(absolute=False):
    """The FFI builder. Paths are relative to the repository root (setuptools
    wants relative source paths and runs this from the directory of
    setup.py); absolute for the in-place build, where cffi compiles from
    inside its temporary directory."""
    base = ROOT if absolute else ""
    b = FFI()
    b.cdef(CDEF)
    b.set_source(
        "asgd._pstore",
        '#include "pstore.h"',
        sources=[os.path.join(base, "ckernels", "pstore.c")],
        include_dirs=[os.path.join(base, "ckernels")],
        depends=[os.path.join(base, "ckernels", "pstore.h")],
        extra_compile_args=_cflags(),
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
