/*
 * pstore: a shared float32 parameter vector for asynchronous parallel SGD.
 *
 * Three modes, chosen at creation:
 *
 *   PSTORE_LEASHED  lock-free and consistent. An atomic word `latest` names an
 *                   immutable published version (buffer + version number t).
 *                   An update copies latest into a private buffer, applies
 *                   x <- x + s*u, and CASes latest from the copied version to
 *                   the new one; retired versions are recycled by reference
 *                   counting. See pstore.c for the protocol and invariants.
 *   PSTORE_HOGWILD  lock-free and inconsistent: one shared buffer, updated in
 *                   place without synchronisation (the data races are the
 *                   point). The version counter is an atomic fetch-add.
 *   PSTORE_LOCKED   one shared buffer behind a mutex; acquire copies it into
 *                   the reader's buffer under the lock.
 *
 * All functions are thread-safe with respect to each other on one store, and
 * return PSTORE_OK (0) or a negative PSTORE_E* code. No global state.
 */
#ifndef ASGD_PSTORE_H
#define ASGD_PSTORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PSTORE_LEASHED = 0, PSTORE_HOGWILD = 1, PSTORE_LOCKED = 2 };

enum {
    PSTORE_OK = 0,
    PSTORE_EINVAL = -1,   /* bad argument (d, mode, sizes, t_read, persistence) */
    PSTORE_ENOMEM = -2,   /* allocation failed, or d exceeds physical memory   */
    PSTORE_ECLOSED = -3,  /* the store was closed                              */
    PSTORE_EBUFS = -4,    /* more buffers needed than max_buffers (leaked refs) */
    PSTORE_EMODE = -5     /* operation not available in this mode              */
};

/* Largest d accepted (2^34 floats = 64 GiB per buffer); larger is "absurd". */
#define PSTORE_MAX_D (INT64_C(1) << 34)
/* Hard cap on buffers per store (the index field of `latest` is 16 bits). */
#define PSTORE_MAX_BUFFERS 65535
/* Buffers are 64-byte aligned (zero-copy for jax.device_put / dlpack). */
#define PSTORE_ALIGN 64

typedef struct pstore pstore;

/* A held reference to a version (LEASHED), to the shared buffer (HOGWILD
 * without copy), or to a private copy (LOCKED, HOGWILD with copy). Valid until
 * pstore_release(handle). */
typedef struct {
    float *data;          /* d floats, 64-byte aligned; do not write */
    int64_t version;      /* t of this snapshot (HOGWILD: counter at acquire) */
    int64_t generation;   /* buffer generation at acquire (for stress checks) */
    int32_t handle;       /* buffer index, pass to pstore_release */
    int32_t status;       /* PSTORE_OK or error */
} pstore_snapshot;

typedef struct {
    int32_t status;       /* PSTORE_OK or error; other fields valid only if OK */
    int32_t applied;      /* 1 applied, 0 dropped (persistence exhausted) */
    int32_t attempts;     /* CAS attempts (1 in HOGWILD / LOCKED) */
    int32_t pad_;
    int64_t staleness;    /* tau = t(latest at the successful CAS) - t_read;
                             if dropped: tau of the last attempt */
    int64_t version;      /* version this update produced (if applied) */
} pstore_result;

typedef struct {
    int64_t d;
    int64_t mode;
    int64_t version;
    int64_t allocated;    /* buffers ever allocated (never freed before close) */
    int64_t live;         /* buffers not in the free pool now */
    int64_t peak_live;    /* most buffers out of the free pool at once (= allocated) */
    int64_t applied;      /* updates applied */
    int64_t cas_attempts; /* LEASHED: CAS attempts; others: update calls */
    int64_t cas_failures; /* LEASHED: failed CAS attempts; others: 0 */
    int64_t dropped;      /* updates dropped after persistence was exhausted */
    int64_t held;         /* snapshots + open attempts held now */
    int64_t acquires;     /* successful acquires */
    int64_t max_buffers;
    int64_t freed;        /* 1 once the buffers' memory has been freed (after close) */
} pstore_stats;

/* Two-phase attempt (LEASHED only): base is a held reference to the latest
 * version, out a private buffer (pre-filled with a copy of base when asked).
 * The caller writes the new vector into out, then commits. */
typedef struct {
    const float *base;    /* latest version at begin (read-only) */
    float *out;           /* private buffer, writable */
    int64_t base_version;
    int64_t staleness;    /* base_version - t_read */
    int64_t t_read;
    int32_t base_handle;
    int32_t out_handle;
    int32_t attempts;     /* commits tried so far */
    int32_t status;
    int64_t overwritten;  /* HOGWILD: updates applied between begin and commit */
} pstore_attempt;

/* Create a store of dimension d (1..PSTORE_MAX_D) in `mode`. init: d floats or
 * NULL for zeros. max_buffers: cap on buffers (0 = default 4096 or fewer for
 * large d); reaching it makes updates fail with PSTORE_EBUFS instead of
 * allocating without limit. Returns the status; *out is NULL on error. */
int pstore_create(int64_t d, int32_t mode, const float *init, int32_t max_buffers,
                  pstore **out);

/* Close: further calls return PSTORE_ECLOSED, except pstore_release and
 * pstore_abort of what is still held. If free_memory, the buffers are freed
 * as soon as nothing is held and no call is in flight (now, or at the last
 * release); otherwise they stay until pstore_destroy (the Python wrapper does
 * that while numpy views on them may still be referenced). A later call on a
 * closed store decides again: free_memory = 1 lets the buffers be freed as
 * above; 0 keeps them, which is safe only while the caller holds a snapshot
 * or attempt. Once freed, further calls do nothing. */
int pstore_close(pstore *s, int32_t free_memory);

/* Free everything including the handle. Only when no other thread can call
 * into the store any more (the Python wrapper calls it from its finalizer). */
void pstore_destroy(pstore *s);

/* copy: HOGWILD only, 1 = racy private copy instead of the shared buffer. */
pstore_snapshot pstore_acquire(pstore *s, int32_t copy);
int pstore_release(pstore *s, int32_t handle);

/* x <- x + scale_tau * u, u given as nseg segments whose concatenation has
 * length d. scale_tau = scales[min(tau, nscales-1)] if nscales > 0, else
 * `scale`. persistence: -1 retry until applied, p >= 0 at most p+1 attempts.
 * t_read must be <= the current version. */
pstore_result pstore_update(pstore *s, float *const *segs, const int64_t *lens,
                            int32_t nseg, float scale, const float *scales,
                            int32_t nscales, int64_t t_read, int64_t persistence);

/* Two-phase API, for update rules computed by the caller. begin: take a
 * private buffer `out` and the current version `base` (LEASHED: a reference
 * to latest; LOCKED: the shared buffer, under a writer lock held until commit
 * or abort; HOGWILD: the shared buffer, racy); if prefill, copy base into out.
 * commit: publish out (LEASHED: CAS latest from base to out; LOCKED and
 * HOGWILD: write it into the shared buffer, which always succeeds). Returns 1
 * applied (attempt finished), 0 CAS failed (LEASHED), <0 error. On 0 with
 * rebase != 0 the attempt is moved onto the new latest (base re-acquired,
 * out re-filled if prefill, staleness updated) and stays open; with rebase ==
 * 0 it stays open on the old base and must be aborted. abort: give back the
 * buffers (and the writer lock); count_dropped adds to the dropped counter. */
int pstore_begin(pstore *s, int64_t t_read, int32_t prefill, pstore_attempt *a);
int pstore_commit(pstore *s, pstore_attempt *a, int32_t rebase, int32_t prefill);
int pstore_abort(pstore *s, pstore_attempt *a, int32_t count_dropped);
/* commit with the new vector given as nseg segments (concatenating to d)
 * instead of out; rebase as for pstore_commit (out is not re-filled). */
int pstore_commit_segments(pstore *s, pstore_attempt *a, float *const *segs,
                           const int64_t *lens, int32_t nseg, int32_t rebase);
/* Copy an open attempt's base into dst (d floats; HOGWILD: racy). */
void pstore_copy_base(pstore *s, const pstore_attempt *a, float *dst);

/* Consistent copy (HOGWILD: racy copy) into dst (d floats). *version out. */
int pstore_read_copy(pstore *s, float *dst, int64_t *version);
/* The same for the first count floats only (1 <= count <= d). */
int pstore_read_prefix(pstore *s, float *dst, int64_t count, int64_t *version);
int64_t pstore_version(pstore *s);          /* <0 if closed */
int pstore_get_stats(pstore *s, pstore_stats *st);
/* Live-buffer histogram: out[k] = applied updates after whose publish k
 * buffers were live (not in the free pool). Copies min(n, max_buffers + 1)
 * bins; returns 1 + the largest k with out[k] > 0 (0 if none), or <0 on
 * error. Exact once all update calls have returned; sum(out) == applied. */
int32_t pstore_live_hist(pstore *s, int64_t *out, int32_t n);
int64_t pstore_dim(pstore *s);
/* Current generation of a buffer (stress checks: a held buffer must keep the
 * generation it had at acquire). */
int64_t pstore_generation(pstore *s, int32_t handle);

/* Reference kernels for the benchmark: y = x + s*u (one fused pass), and
 * memcpy(y, x) followed by y += s*u. */
void pstore_ref_copy_axpy(float *y, const float *x, const float *u, float s, int64_t n);
void pstore_ref_memcpy_axpy(float *y, const float *x, const float *u, float s, int64_t n);

const char *pstore_strerror(int code);

/* How this library was built: "compiler=...;cflags=...;vector=...;clones=..."
 * (static string): vector is the widest vector set of the baseline build,
 * clones the instruction sets the element loops were also compiled for
 * ("avx512f,avx2,default", or "none" without run-time dispatch). */
const char *pstore_build_info(void);
/* The clone the element loops run on this CPU ("avx512f", "avx2", "default"),
 * or "none" when the build has no clones (static string). */
const char *pstore_dispatch(void);

#ifdef __cplusplus
}
#endif
#endif
