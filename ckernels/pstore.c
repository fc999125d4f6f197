/*
 * pstore.c: the shared parameter store (see pstore.h for the API).
 *
 * C11 atomics, no global state. Every shared-memory protocol below carries
 * its invariant in a comment next to it.
 *
 * ======================= LEASHED: the protocol ===========================
 *
 * Buffers. A store owns up to max_buffers buffer headers `bufs[i]`; the data
 * of buffer i is allocated the first time i is needed and freed only at
 * close. A buffer is in exactly one of these states:
 *   FREE      on the free stack (Treiber stack with a tag, below);
 *   PRIVATE   taken from the stack (or just allocated) by one writer, who is
 *             the only thread touching its data and header;
 *   PUBLISHED it is `latest`, or it was `latest` and is still referenced.
 *             Its data and version never change while PUBLISHED.
 *
 * latest. One 64-bit atomic word: bits 0..15 the index of the current
 * version's buffer, bits 16..63 an "external" count of the references taken
 * on that publication (split reference counting):
 *   - acquire  = fetch_add(latest, 1<<16): one atomic RMW, it can not fail
 *                and can not race with recycling, because the index and the
 *                reference are taken in the same atomic step;
 *   - release  = fetch_sub(bufs[i].rc, 1)  (internal count);
 *   - publish  = CAS(latest: (i, n) -> (j, 0)) by the writer of j; the
 *                writer that replaced publication (i, n) then adds n to
 *                bufs[i].rc ("retire").
 * Invariant R (reference count): for a PUBLISHED buffer i,
 *       refs(i) = [n if i is still latest, else 0] + rc(i)
 *   where refs(i) is the number of references held on i and n the external
 *   count in latest. rc(i) is 0 at publication and goes negative while i is
 *   latest (releases before the retire); after the retire rc(i) = refs(i) >= 0.
 *   Hence "rc reaches 0 after the retire" <=> "nobody holds i and it is not
 *   latest": exactly one thread observes the transition to 0 (the release
 *   that brings it there, or the retire if everybody had released already)
 *   and that thread pushes i on the free stack. A release before the retire
 *   leaves rc <= -1, never 0, so it can not free a buffer that is latest.
 *
 * No buffer reuse under a reader: a buffer is pushed to the free stack only
 * when rc hits 0 after its retire, i.e. when refs(i) = 0 (invariant R).
 *
 * No ABA: a writer copies from base i while holding a reference on i, and
 * its CAS compares only the index field of latest (the count may change
 * under it because of readers; that is retried internally and is not a
 * failed attempt). While the writer holds its reference, i can not be
 * recycled (above), so "latest has index i" implies "latest is the very
 * publication of i the writer copied from": a buffer recycled and
 * republished between the read and the CAS would need refs(i) = 0 first.
 *
 * Memory ordering: publish is a release CAS and acquire an acquire RMW, so a
 * reader sees the complete data and version of what it acquired (never a
 * partially written version). All RMWs on rc are acq_rel, so the thread that
 * sees rc hit 0 has every reader's reads of the data happen-before its push;
 * push is a release CAS, pop an acquire CAS, so the next writer's writes
 * happen after all reads of the previous life of the buffer.
 *
 * Memory bound: a buffer is allocated only when the free stack is empty.
 * At any instant when a writer finds it empty, every allocated buffer is
 * latest, held by a reference, or PRIVATE to a writer (or in transit inside
 * the call that drops its last reference). Hence
 *       allocated <= 1 + H + W
 * with H the largest number of references held at once (snapshots held by
 * callers + the one base reference inside each running update) and W the
 * largest number of updates running at once (one PRIVATE buffer each). For
 * m threads that each hold at most one snapshot and release it before they
 * update (acquire -> gradient -> release -> update): H <= m, W <= m, so
 * allocated <= 2m + 1. If a thread keeps its snapshot across its update
 * (e.g. DC-ASGD needs theta_read): allocated <= 3m + 1. The stress test
 * checks both. max_buffers caps it: past the cap an update fails with
 * PSTORE_EBUFS (a leak of references) instead of allocating without end.
 *
 * ===================== the per-attempt scale (API choice) =================
 * The staleness tau is known only inside an attempt (after the base is
 * acquired), and it changes between retries. We offer both designs:
 *   1. pstore_update takes a table of scales indexed by tau (clamped to the
 *      last entry): one C call per update, the whole retry loop runs in C
 *      with the GIL released and no Python per attempt. This is the fast path
 *      and covers every step-size rule of the form s(tau) (constant, 1/tau,
 *      exponential, ...): the caller precomputes the table once.
 *   2. pstore_begin/commit: a two-phase attempt that hands the caller the base
 *      (latest) and a private out buffer, for update rules that are not
 *      x + s(tau) u (DC-ASGD needs theta_now - theta_read per attempt). It
 *      costs one Python round-trip per attempt.
 * ==========================================================================
 */
#define _POSIX_C_SOURCE 200809L
#include "pstore.h"

#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define IDX_BITS 16
#define IDX_MASK ((uint64_t)0xFFFF)
#define CNT_ONE ((uint64_t)1 << IDX_BITS)
#define NIL_IDX 0xFFFF
#define CACHELINE 64

/* HOGWILD races on the data by design. Tell ThreadSanitizer not to
 * instrument the few functions that touch the shared data without
 * synchronisation (their races are the algorithm, not a bug). */
#if defined(__SANITIZE_THREAD__)
#define PSTORE_RACY __attribute__((no_sanitize("thread"), noinline))
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PSTORE_RACY __attribute__((no_sanitize("thread"), noinline))
#endif
#endif
#ifndef PSTORE_RACY
#define PSTORE_RACY
#endif

typedef struct {
    float *data;                  /* written once, before the index is shared */
    int64_t version;              /* written only while PRIVATE */
    _Atomic int64_t rc;           /* LEASHED internal count, invariant R */
    _Atomic int32_t next_free;    /* free-stack link */
    int32_t pad_;
    _Atomic int64_t generation;   /* +1 each time the buffer becomes PRIVATE */
    char pad[CACHELINE - 40];
} pbuf;

struct pstore {
    int64_t d;
    size_t nbytes;
    int32_t mode;
    int32_t max_buffers;
    pbuf *bufs;

    alignas(CACHELINE) _Atomic uint64_t latest;     /* LEASHED: idx | count<<16 */
    alignas(CACHELINE) _Atomic uint64_t free_head;  /* idx | tag<<16 */
    alignas(CACHELINE) _Atomic int64_t ver;         /* HOGWILD/LOCKED version */
    pthread_mutex_t mu;                             /* LOCKED data lock */
    sem_t writer;                                   /* LOCKED: one read-modify-write at a time */
    pthread_mutex_t alloc_mu;                       /* allocation only (rare) */
    _Atomic int32_t nalloc;                         /* buffers with data */

    /* counters, relaxed: exact once all threads are quiescent */
    alignas(CACHELINE) _Atomic int64_t live, peak_live, applied, cas_attempts,
        cas_failures, dropped, acquires;
    alignas(CACHELINE) _Atomic int64_t held;
    /* live_hist[k]: publishes (applied updates) that saw k live buffers right
     * after publishing; max_buffers + 1 bins, see count_publish */
    _Atomic int64_t *live_hist;
    /* close protocol, see pstore_close */
    alignas(CACHELINE) _Atomic int32_t inflight;
    _Atomic int32_t closed, drained, freeing, freed, keep_memory;
};

#ifndef PSTORE_CFLAGS
#define PSTORE_CFLAGS "unknown"
#endif
/* the widest vector set the compiler may use everywhere (the baseline) */
#if defined(__AVX512F__)
#define PSTORE_VECTOR "avx512f"
#elif defined(__AVX2__)
#define PSTORE_VECTOR "avx2"
#elif defined(__SSE2__)
#define PSTORE_VECTOR "sse2"
#else
#define PSTORE_VECTOR "none"
#endif

/* Run-time dispatch of the vector kernels. The element loops below are
 * compiled three times (GCC/Clang target_clones): for AVX-512F, AVX2 and the
 * baseline the rest of the file is built for; the dynamic loader picks one per
 * function once, by the CPU it runs on (an ifunc resolver), so one binary runs
 * on any x86-64 and uses AVX-512 where the CPU has it. Left out when the
 * baseline is already AVX-512 (e.g. -march=native on such a CPU: nothing wider
 * to dispatch to), off x86-64 or ELF, and with -DPSTORE_NO_CLONES. */
#if defined(__has_attribute) && !defined(PSTORE_NO_CLONES) && \
    defined(__x86_64__) && defined(__ELF__) && !defined(__AVX512F__)
#if __has_attribute(target_clones)
#define PSTORE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define PSTORE_CLONE_LIST "avx512f,avx2,default"
#define PSTORE_HAVE_CLONES 1
#endif
#endif
#ifndef PSTORE_CLONES
#define PSTORE_CLONES
#define PSTORE_CLONE_LIST "none"
#endif

const char *pstore_build_info(void) {
    return "compiler=" __VERSION__ ";cflags=" PSTORE_CFLAGS ";vector=" PSTORE_VECTOR
           ";clones=" PSTORE_CLONE_LIST;
}

const char *pstore_dispatch(void) {
#ifdef PSTORE_HAVE_CLONES
    /* the resolver's rule: the first clone, in this order, the CPU supports */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports("avx2")) return "avx2";
    return "default";
#else
    return "none";
#endif
}

const char *pstore_strerror(int code) {
    switch (code) {
    case PSTORE_OK: return "ok";
    case PSTORE_EINVAL: return "invalid argument";
    case PSTORE_ENOMEM: return "out of memory";
    case PSTORE_ECLOSED: return "store is closed";
    case PSTORE_EBUFS: return "buffer cap reached (references leaked?)";
    case PSTORE_EMODE: return "operation not available in this mode";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------------------------ */
/* kernels                                                                   */

PSTORE_CLONES static void copy_axpy(float *restrict y, const float *restrict x,
                      const float *restrict u, float s, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = x[i] + s * u[i];
}

PSTORE_CLONES static void axpy_private(float *restrict y, const float *restrict u, float s,
                         int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += s * u[i];
}

/* HOGWILD in-place update: unsynchronised read-modify-write of shared floats.
 * Aligned float loads/stores do not tear on the targets we build for; what
 * may happen is a lost update of an element (two threads read the same old
 * value), which is what Hogwild! accepts. */
PSTORE_RACY PSTORE_CLONES static void axpy_racy(float *restrict y, const float *restrict u,
                                  float s, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += s * u[i];
}

PSTORE_RACY PSTORE_CLONES static void copy_racy(float *restrict dst, const float *restrict src,
                                  int64_t n) {
    /* a loop, not memcpy: the sanitizer intercepts memcpy */
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

void pstore_ref_copy_axpy(float *y, const float *x, const float *u, float s,
                          int64_t n) {
    copy_axpy(y, x, u, s, n);
}

void pstore_ref_memcpy_axpy(float *y, const float *x, const float *u, float s,
                            int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
    axpy_private(y, u, s, n);
}

/* out = base + s*u with u in segments (validated by the caller) */
static void apply_segments(float *restrict out, const float *restrict base,
                           float *const *segs, const int64_t *lens,
                           int32_t nseg, float s) {
    int64_t off = 0;
    for (int32_t k = 0; k < nseg; k++) {
        copy_axpy(out + off, base + off, segs[k], s, lens[k]);
        off += lens[k];
    }
}

/* ------------------------------------------------------------------------ */
/* counters                                                                  */

static inline void cnt_add(_Atomic int64_t *c, int64_t v) {
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static void peak_raise(pstore *s, int64_t v) {
    int64_t p = atomic_load_explicit(&s->peak_live, memory_order_relaxed);
    while (v > p && !atomic_compare_exchange_weak_explicit(
                        &s->peak_live, &p, v, memory_order_relaxed,
                        memory_order_relaxed)) {
    }
}

/* One applied update: counts it and samples the live-buffer count into
 * live_hist. Called once per publish, after it, by the publishing thread.
 * Invariant H: sum(live_hist) == applied once every update call has returned
 * (both are incremented here, once per applied update, never elsewhere).
 * Relaxed, like every counter: the sampled value is the count some moment
 * after this thread's publish saw it (other threads may take or return
 * buffers meanwhile). live also counts takers that have not got a buffer yet
 * (see take_buffer), so it can briefly exceed the buffers that exist; the
 * sample is clamped to the allocated count, which bounds the buffers out of
 * the pool and only grows to peak_live (invariant P), so every bin lies in
 * 0..peak_live. */
static void count_publish(pstore *s) {
    cnt_add(&s->applied, 1);
    int64_t l = atomic_load_explicit(&s->live, memory_order_relaxed);
    int64_t allocated = atomic_load_explicit(&s->nalloc, memory_order_relaxed);
    if (l < 0) l = 0;
    if (l > allocated) l = allocated;
    cnt_add(&s->live_hist[l], 1);
}

/* ------------------------------------------------------------------------ */
/* free stack: Treiber stack of buffer indices, head = idx | tag<<16.
 * Invariant F: every buffer index is on the stack at most once; the tag in
 * the head changes with every successful push and pop, so a pop that read
 * `next` of an index that was popped and pushed again in between fails its
 * CAS (no ABA; the 48-bit tag would need 2^48 operations to wrap).
 * push is release, pop acquire: the previous owner's accesses to the data
 * happen-before the next owner's. */

static void pool_push(pstore *s, int32_t i) {
    uint64_t h = atomic_load_explicit(&s->free_head, memory_order_relaxed);
    do {
        atomic_store_explicit(&s->bufs[i].next_free, (int32_t)(h & IDX_MASK),
                              memory_order_relaxed);
    } while (!atomic_compare_exchange_weak_explicit(
        &s->free_head, &h, ((h >> IDX_BITS) + 1) << IDX_BITS | (uint64_t)i,
        memory_order_release, memory_order_relaxed));
    cnt_add(&s->live, -1);
}

static int32_t pool_pop(pstore *s) {
    uint64_t h = atomic_load_explicit(&s->free_head, memory_order_acquire);
    for (;;) {
        uint32_t i = (uint32_t)(h & IDX_MASK);
        if (i == NIL_IDX) return -1;
        int32_t nx = atomic_load_explicit(&s->bufs[i].next_free,
                                          memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(
                &s->free_head, &h,
                ((h >> IDX_BITS) + 1) << IDX_BITS | (uint64_t)(uint32_t)nx,
                memory_order_acquire, memory_order_acquire))
            return (int32_t)i;
    }
}

static int32_t alloc_buffer(pstore *s) {
    /* Rare (<= the memory bound times per store): a mutex keeps it simple.
     * The data pointer is written before the index is shared with anybody. */
    pthread_mutex_lock(&s->alloc_mu);
    int32_t i = atomic_load_explicit(&s->nalloc, memory_order_relaxed);
    if (i >= s->max_buffers) {
        pthread_mutex_unlock(&s->alloc_mu);
        return PSTORE_EBUFS;
    }
    float *p = aligned_alloc(PSTORE_ALIGN, s->nbytes);
    if (!p) {
        pthread_mutex_unlock(&s->alloc_mu);
        return PSTORE_ENOMEM;
    }
    s->bufs[i].data = p;
    atomic_store_explicit(&s->nalloc, i + 1, memory_order_release);
    pthread_mutex_unlock(&s->alloc_mu);
    return i;
}

/* Take a buffer: from the pool, or allocate only if the pool is empty. The
 * buffer becomes PRIVATE to the caller. Returns index or error (<0). */
static int32_t take_buffer(pstore *s) {
    /* live is counted up before the buffer is taken and down after it is
     * pushed back, so it never under-counts the buffers not on the stack; it
     * may also count takers that have not got a buffer yet (some of which
     * fail at the cap), so the peak is not taken from it.
     * Invariant P: peak_live = allocated once the allocating call returns. A
     * buffer is allocated only when the free stack is empty, i.e. when every
     * allocated buffer is out at once, so the allocated count is the peak of
     * buffers out of the pool; a failed allocation changes neither. */
    cnt_add(&s->live, 1);
    int32_t i = pool_pop(s);
    if (i < 0) {
        i = alloc_buffer(s);
        if (i < 0) {
            cnt_add(&s->live, -1);
            return i;
        }
        peak_raise(s, (int64_t)i + 1); /* nalloc after this allocation */
    }
    atomic_fetch_add_explicit(&s->bufs[i].generation, 1, memory_order_relaxed);
    atomic_store_explicit(&s->bufs[i].rc, 0, memory_order_relaxed);
    return i;
}

/* ------------------------------------------------------------------------ */
/* LEASHED references (invariant R above)                                    */

static inline int32_t ref_latest(pstore *s) {
    uint64_t w = atomic_fetch_add_explicit(&s->latest, CNT_ONE,
                                           memory_order_acquire);
    return (int32_t)(w & IDX_MASK);
}

static inline void ref_drop(pstore *s, int32_t i, int64_t n) {
    /* drop n references on a buffer that was published (n may be negative
     * by the retire's transfer: rc += ext - 1 is ref_drop(i, 1 - ext)) */
    int64_t r = atomic_fetch_sub_explicit(&s->bufs[i].rc, n,
                                          memory_order_acq_rel) - n;
    if (r == 0) pool_push(s, i);
}

/* Publish private buffer j in place of base i (the caller holds a reference
 * on i). Returns 1 and does the retire on success, 0 if latest is no longer
 * i. In both cases the caller's reference on i is consumed. */
static int publish(pstore *s, int32_t i, int32_t j) {
    uint64_t w = atomic_load_explicit(&s->latest, memory_order_relaxed);
    for (;;) {
        if ((int32_t)(w & IDX_MASK) != i) {
            ref_drop(s, i, 1);
            return 0;
        }
        /* only the reader count may differ from what we saw: retry */
        if (atomic_compare_exchange_weak_explicit(&s->latest, &w, (uint64_t)j,
                                                  memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            int64_t ext = (int64_t)(w >> IDX_BITS);
            /* retire: rc(i) += ext, and drop our own reference */
            ref_drop(s, i, 1 - ext);
            return 1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* close protocol.
 * Every call does op_enter/op_exit around its work (inflight count).
 * Invariant C: once `freed` is set, no call touches the buffers: op_enter
 * increments inflight *then* reads freed, the freer sets freed *then* waits
 * for inflight to drop to itself (both seq_cst: one of them sees the other).
 * close sets `closed` (new acquires/updates/begins fail), waits until every
 * call that entered before has left (`drained`); from then on `held` can
 * only go down. The buffers are freed by whoever sees held == 0 after
 * drained: close itself, or the release/abort that drops the last reference
 * (drained and held are both seq_cst, so at least one of the two sees the
 * other; `freeing` makes it exactly one). */

static int op_enter(pstore *s, int allow_closed) {
    atomic_fetch_add(&s->inflight, 1);
    if ((!allow_closed && atomic_load(&s->closed)) || atomic_load(&s->freed)) {
        atomic_fetch_sub(&s->inflight, 1);
        return PSTORE_ECLOSED;
    }
    return PSTORE_OK;
}

static void op_exit(pstore *s) { atomic_fetch_sub(&s->inflight, 1); }

static void free_buffers(pstore *s) {
    int32_t n = atomic_load(&s->nalloc);
    for (int32_t i = 0; i < n; i++) {
        free(s->bufs[i].data);
        s->bufs[i].data = NULL;
    }
}

static void try_free(pstore *s) {
    if (!atomic_load(&s->drained) || atomic_load(&s->held) != 0 ||
        atomic_load(&s->keep_memory))
        return;
    if (atomic_exchange(&s->freeing, 1)) return;
    atomic_store(&s->freed, 1);
    while (atomic_load(&s->inflight) > 1) sched_yield();
    free_buffers(s);
}

static void held_dec(pstore *s) {
    if (atomic_fetch_sub(&s->held, 1) == 1 && atomic_load(&s->closed))
        try_free(s);
}

int pstore_close(pstore *s, int32_t free_memory) {
    if (!s) return PSTORE_EINVAL;
    if (op_enter(s, 1) != PSTORE_OK) return PSTORE_OK; /* already freed */
    /* keep_memory is set before closed, so try_free (which runs only after
     * drained, set after closed) always sees it */
    if (!free_memory) atomic_store(&s->keep_memory, 1);
    if (atomic_exchange(&s->closed, 1)) {
        /* Already closed: this call decides again. Lifting the keep frees the
         * buffers now if nothing is held (else at the last release). Setting
         * it again after close is safe only while the caller holds a reference
         * (held > 0 keeps every try_free from passing its check until that
         * reference is released, which happens after this store). */
        if (free_memory) {
            atomic_store(&s->keep_memory, 0);
            try_free(s);
        }
        op_exit(s);
        return PSTORE_OK;
    }
    while (atomic_load(&s->inflight) > 1) sched_yield();
    atomic_store(&s->drained, 1);
    try_free(s);
    op_exit(s);
    return PSTORE_OK;
}

void pstore_destroy(pstore *s) {
    if (!s) return;
    if (!atomic_load(&s->freed)) free_buffers(s);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->alloc_mu);
    sem_destroy(&s->writer);
    free(s->bufs);
    free(s->live_hist);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* creation                                                                  */

static int64_t phys_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || psz <= 0) return INT64_MAX;
    return (int64_t)pages * (int64_t)psz;
}

int pstore_create(int64_t d, int32_t mode, const float *init,
                  int32_t max_buffers, pstore **out) {
    if (!out) return PSTORE_EINVAL;
    *out = NULL;
    if (d < 1 || d > PSTORE_MAX_D) return PSTORE_EINVAL;
    if (mode != PSTORE_LEASHED && mode != PSTORE_HOGWILD && mode != PSTORE_LOCKED)
        return PSTORE_EINVAL;
    if (max_buffers < 0 || max_buffers > PSTORE_MAX_BUFFERS) return PSTORE_EINVAL;
    size_t nbytes = (size_t)d * sizeof(float);
    nbytes = (nbytes + PSTORE_ALIGN - 1) / PSTORE_ALIGN * PSTORE_ALIGN;
    int64_t phys = phys_bytes();
    if ((int64_t)nbytes > phys) return PSTORE_ENOMEM;
    if (max_buffers == 0) {
        /* default cap: what fits in physical memory, at most 4096 */
        int64_t fit = phys / (int64_t)nbytes;
        max_buffers = (int32_t)(fit > 4096 ? 4096 : fit < 4 ? 4 : fit);
    }
    if (max_buffers < 1) return PSTORE_EINVAL;

    pstore *s = aligned_alloc(CACHELINE, (sizeof(pstore) + CACHELINE - 1) /
                                             CACHELINE * CACHELINE);
    if (!s) return PSTORE_ENOMEM;
    memset(s, 0, sizeof(*s));
    s->bufs = aligned_alloc(CACHELINE, sizeof(pbuf) * (size_t)max_buffers);
    if (!s->bufs) {
        free(s);
        return PSTORE_ENOMEM;
    }
    memset(s->bufs, 0, sizeof(pbuf) * (size_t)max_buffers);
    s->live_hist = calloc((size_t)max_buffers + 1, sizeof(*s->live_hist));
    if (!s->live_hist) {
        free(s->bufs);
        free(s);
        return PSTORE_ENOMEM;
    }
    s->d = d;
    s->nbytes = nbytes;
    s->mode = mode;
    s->max_buffers = max_buffers;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->alloc_mu, NULL);
    sem_init(&s->writer, 0, 1);
    atomic_init(&s->free_head, (uint64_t)NIL_IDX);

    int32_t b = take_buffer(s); /* buffer 0: the initial version / shared */
    if (b < 0) {
        pstore_destroy(s);
        return b;
    }
    float *x = s->bufs[b].data;
    if (init) memcpy(x, init, (size_t)d * sizeof(float));
    else memset(x, 0, (size_t)d * sizeof(float));
    s->bufs[b].version = 0;
    atomic_init(&s->latest, (uint64_t)b); /* published with count 0, rc 0 */
    atomic_init(&s->ver, 0);
    *out = s;
    return PSTORE_OK;
}

int64_t pstore_dim(pstore *s) { return s ? s->d : PSTORE_EINVAL; }

/* ------------------------------------------------------------------------ */
/* acquire / release                                                         */

pstore_snapshot pstore_acquire(pstore *s, int32_t copy) {
    pstore_snapshot r = {0};
    if (!s) { r.status = PSTORE_EINVAL; return r; }
    if ((r.status = op_enter(s, 0)) != PSTORE_OK) return r;
    switch (s->mode) {
    case PSTORE_LEASHED: {
        int32_t i = ref_latest(s);
        r.handle = i;
        r.data = s->bufs[i].data;
        r.version = s->bufs[i].version;
        r.generation = atomic_load_explicit(&s->bufs[i].generation,
                                            memory_order_relaxed);
        break;
    }
    case PSTORE_HOGWILD:
        if (!copy) {
            r.handle = 0; /* the shared buffer itself */
            r.data = s->bufs[0].data;
            r.version = atomic_load_explicit(&s->ver, memory_order_acquire);
            r.generation = atomic_load_explicit(&s->bufs[0].generation,
                                                memory_order_relaxed);
            break;
        }
        /* fall through - a racy private copy */
    case PSTORE_LOCKED: {
        int32_t j = take_buffer(s);
        if (j < 0) { r.status = j; op_exit(s); return r; }
        if (s->mode == PSTORE_LOCKED) {
            pthread_mutex_lock(&s->mu);
            memcpy(s->bufs[j].data, s->bufs[0].data, (size_t)s->d * sizeof(float));
            r.version = atomic_load_explicit(&s->ver, memory_order_relaxed);
            pthread_mutex_unlock(&s->mu);
        } else {
            r.version = atomic_load_explicit(&s->ver, memory_order_acquire);
            copy_racy(s->bufs[j].data, s->bufs[0].data, s->d);
        }
        r.handle = j;
        r.data = s->bufs[j].data;
        r.generation = atomic_load_explicit(&s->bufs[j].generation,
                                            memory_order_relaxed);
        break;
    }
    }
    atomic_fetch_add(&s->held, 1);
    cnt_add(&s->acquires, 1);
    op_exit(s);
    return r;
}

int pstore_release(pstore *s, int32_t handle) {
    if (!s) return PSTORE_EINVAL;
    int rc = op_enter(s, 1);
    if (rc != PSTORE_OK) return rc;
    if (handle < 0 || handle >= atomic_load(&s->nalloc)) {
        op_exit(s);
        return PSTORE_EINVAL;
    }
    if (s->mode == PSTORE_LEASHED) ref_drop(s, handle, 1);
    else if (handle != 0) pool_push(s, handle); /* private copy */
    held_dec(s);
    op_exit(s);
    return PSTORE_OK;
}

int64_t pstore_generation(pstore *s, int32_t handle) {
    if (!s || handle < 0 || handle >= atomic_load(&s->nalloc)) return PSTORE_EINVAL;
    return atomic_load_explicit(&s->bufs[handle].generation, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* update                                                                    */

/* LOCKED writer lock: a semaphore, not a mutex, because a two-phase update
 * (begin ... commit) may be finished by another thread than the one that
 * began it (XLA runs the two custom calls on whichever of its threads). */
static void sem_wait_all(pstore *s) {
    while (sem_wait(&s->writer) != 0) { /* EINTR: try again */ }
}

static inline float scale_for(int64_t tau, float scale, const float *scales,
                              int32_t nscales) {
    if (nscales <= 0) return scale;
    return scales[tau < nscales ? tau : nscales - 1];
}

pstore_result pstore_update(pstore *s, float *const *segs, const int64_t *lens,
                            int32_t nseg, float scale, const float *scales,
                            int32_t nscales, int64_t t_read,
                            int64_t persistence) {
    pstore_result r = {0};
    if (!s || !segs || !lens || nseg < 1 || t_read < 0 || persistence < -1 ||
        (nscales > 0 && !scales)) {
        r.status = PSTORE_EINVAL;
        return r;
    }
    int64_t total = 0;
    for (int32_t k = 0; k < nseg; k++) {
        if (lens[k] < 0 || (lens[k] > 0 && !segs[k])) {
            r.status = PSTORE_EINVAL;
            return r;
        }
        total += lens[k];
    }
    if (total != s->d) { r.status = PSTORE_EINVAL; return r; }
    if ((r.status = op_enter(s, 0)) != PSTORE_OK) return r;

    if (s->mode == PSTORE_HOGWILD) {
        int64_t t = atomic_load_explicit(&s->ver, memory_order_relaxed);
        if (t_read > t) { r.status = PSTORE_EINVAL; goto out; }
        float sc = scale_for(t - t_read, scale, scales, nscales);
        float *x = s->bufs[0].data;
        int64_t off = 0;
        for (int32_t k = 0; k < nseg; k++) {
            axpy_racy(x + off, segs[k], sc, lens[k]);
            off += lens[k];
        }
        r.version = atomic_fetch_add_explicit(&s->ver, 1, memory_order_acq_rel) + 1;
        r.applied = 1; r.attempts = 1; r.staleness = t - t_read;
        count_publish(s); cnt_add(&s->cas_attempts, 1);
        goto out;
    }
    if (s->mode == PSTORE_LOCKED) {
        sem_wait_all(s);
        pthread_mutex_lock(&s->mu);
        int64_t t = atomic_load_explicit(&s->ver, memory_order_relaxed);
        if (t_read > t) {
            pthread_mutex_unlock(&s->mu);
            sem_post(&s->writer);
            r.status = PSTORE_EINVAL;
            goto out;
        }
        float sc = scale_for(t - t_read, scale, scales, nscales);
        float *x = s->bufs[0].data;
        int64_t off = 0;
        for (int32_t k = 0; k < nseg; k++) {
            axpy_private(x + off, segs[k], sc, lens[k]);
            off += lens[k];
        }
        atomic_store_explicit(&s->ver, t + 1, memory_order_release);
        pthread_mutex_unlock(&s->mu);
        sem_post(&s->writer);
        r.version = t + 1;
        r.applied = 1; r.attempts = 1; r.staleness = t - t_read;
        count_publish(s); cnt_add(&s->cas_attempts, 1);
        goto out;
    }

    /* LEASHED: copy latest + apply into a private buffer, CAS, retry */
    int32_t j = take_buffer(s);
    if (j < 0) { r.status = j; goto out; }
    float *y = s->bufs[j].data;
    for (int32_t attempt = 1;; attempt++) {
        int32_t i = ref_latest(s);
        int64_t t = s->bufs[i].version;
        if (t_read > t) { /* versions only grow: can only happen at attempt 1 */
            ref_drop(s, i, 1);
            pool_push(s, j);
            r.status = PSTORE_EINVAL;
            goto out;
        }
        r.staleness = t - t_read;
        apply_segments(y, s->bufs[i].data, segs, lens, nseg,
                       scale_for(r.staleness, scale, scales, nscales));
        s->bufs[j].version = t + 1;
        r.attempts = attempt;
        if (publish(s, i, j)) {
            r.applied = 1;
            r.version = t + 1;
            count_publish(s);
            break;
        }
        cnt_add(&s->cas_failures, 1);
        if (persistence >= 0 && attempt > persistence) {
            pool_push(s, j);
            cnt_add(&s->dropped, 1);
            break;
        }
    }
    cnt_add(&s->cas_attempts, r.attempts);
out:
    op_exit(s);
    return r;
}

/* ------------------------------------------------------------------------ */
/* two-phase API: a read-modify-write computed by the caller                 */
/*
 * LEASHED  begin takes a reference to latest (base) and a private buffer
 *          (out); commit CASes latest from base to out (protocol above).
 * LOCKED   begin takes the writer lock (a semaphore, held until commit or
 *          abort) and a private out buffer; base is the shared buffer, which
 *          only the holder of the writer lock changes, so it is stable and
 *          consistent. commit writes the new vector into the shared buffer
 *          under the data mutex (readers copy under it), increments the
 *          version and releases the writer lock. Invariant L: between begin
 *          and commit no other update is applied, so tau = base_version -
 *          t_read and nothing is lost.
 * HOGWILD  begin takes a private out buffer; base is the shared buffer, which
 *          others keep writing (racy reads, as Hogwild! reads). commit writes
 *          the new vector into the shared buffer without synchronisation and
 *          increments the version; a->overwritten counts the updates applied
 *          between begin and commit, whose effect on the elements this one
 *          rewrites is lost (reported, not prevented).
 */

static int attempt_rebase(pstore *s, pstore_attempt *a, int32_t prefill) {
    int32_t i = ref_latest(s);
    a->base_handle = i;
    a->base = s->bufs[i].data;
    a->base_version = s->bufs[i].version;
    a->staleness = a->base_version - a->t_read;
    if (prefill) memcpy(a->out, a->base, (size_t)s->d * sizeof(float));
    return PSTORE_OK;
}

int pstore_begin(pstore *s, int64_t t_read, int32_t prefill, pstore_attempt *a) {
    if (!s || !a || t_read < 0) return PSTORE_EINVAL;
    memset(a, 0, sizeof(*a));
    a->base_handle = a->out_handle = -1;
    int rc = op_enter(s, 0);
    if (rc != PSTORE_OK) return a->status = rc;
    int32_t j = take_buffer(s);
    if (j < 0) { rc = j; goto out; }
    a->out_handle = j;
    a->out = s->bufs[j].data;
    a->t_read = t_read;
    if (s->mode == PSTORE_LEASHED) {
        attempt_rebase(s, a, 0);
    } else {
        if (s->mode == PSTORE_LOCKED) sem_wait_all(s);          /* invariant L */
        a->base_handle = 0;                                     /* the shared buffer */
        a->base = s->bufs[0].data;
        a->base_version = atomic_load_explicit(&s->ver, memory_order_acquire);
        a->staleness = a->base_version - t_read;
    }
    if (t_read > a->base_version) {
        if (s->mode == PSTORE_LEASHED) ref_drop(s, a->base_handle, 1);
        if (s->mode == PSTORE_LOCKED) sem_post(&s->writer);
        pool_push(s, j);
        a->base_handle = a->out_handle = -1;
        a->base = NULL; a->out = NULL;
        rc = PSTORE_EINVAL;
        goto out;
    }
    if (prefill) pstore_copy_base(s, a, a->out);
    atomic_fetch_add(&s->held, 1);
out:
    op_exit(s);
    return a->status = rc;
}

void pstore_copy_base(pstore *s, const pstore_attempt *a, float *dst) {
    if (s->mode == PSTORE_HOGWILD) copy_racy(dst, a->base, s->d);
    else memcpy(dst, a->base, (size_t)s->d * sizeof(float));
}

/* The attempt is over: give back out and (LEASHED) the base reference. */
static void attempt_end(pstore *s, pstore_attempt *a) {
    if (a->base_handle >= 0 && s->mode == PSTORE_LEASHED) ref_drop(s, a->base_handle, 1);
    if (a->out_handle >= 0) pool_push(s, a->out_handle);
    a->base_handle = a->out_handle = -1;
    a->base = NULL; a->out = NULL;
    held_dec(s);
}

/* LOCKED / HOGWILD commit: the new vector (segments) into the shared buffer. */
static int commit_shared(pstore *s, pstore_attempt *a, float *const *segs,
                         const int64_t *lens, int32_t nseg) {
    float *x = s->bufs[0].data;
    int64_t off = 0;
    a->attempts++;
    cnt_add(&s->cas_attempts, 1);
    if (s->mode == PSTORE_LOCKED) {
        pthread_mutex_lock(&s->mu);
        for (int32_t k = 0; k < nseg; k++) {
            memcpy(x + off, segs[k], (size_t)lens[k] * sizeof(float));
            off += lens[k];
        }
        atomic_store_explicit(&s->ver, a->base_version + 1, memory_order_release);
        pthread_mutex_unlock(&s->mu);
        sem_post(&s->writer);                                   /* invariant L */
    } else {
        for (int32_t k = 0; k < nseg; k++) {
            copy_racy(x + off, segs[k], lens[k]);
            off += lens[k];
        }
        int64_t t = atomic_fetch_add_explicit(&s->ver, 1, memory_order_acq_rel);
        a->overwritten = t - a->base_version;
        a->staleness = t - a->t_read;
    }
    a->base_handle = -1;                                        /* nothing to drop */
    attempt_end(s, a);
    count_publish(s);  /* after the private buffer went back, as in the fused update */
    return 1;
}

int pstore_commit_segments(pstore *s, pstore_attempt *a, float *const *segs,
                           const int64_t *lens, int32_t nseg, int32_t rebase) {
    if (!s || !a || a->out_handle < 0 || a->base_handle < 0 || nseg < 1) return PSTORE_EINVAL;
    int64_t total = 0;
    for (int32_t k = 0; k < nseg; k++) {
        if (lens[k] < 0 || (lens[k] > 0 && !segs[k])) return PSTORE_EINVAL;
        total += lens[k];
    }
    if (total != s->d) return PSTORE_EINVAL;
    int rc = op_enter(s, 0);
    if (rc != PSTORE_OK) return rc;
    if (s->mode != PSTORE_LEASHED) {
        rc = commit_shared(s, a, segs, lens, nseg);
        op_exit(s);
        return rc;
    }
    int64_t off = 0;
    for (int32_t k = 0; k < nseg; k++) {
        if (segs[k] != a->out + off) memcpy(a->out + off, segs[k], (size_t)lens[k] * sizeof(float));
        off += lens[k];
    }
    s->bufs[a->out_handle].version = a->base_version + 1;
    a->attempts++;
    cnt_add(&s->cas_attempts, 1);
    int32_t i = a->base_handle;
    a->base_handle = -1; /* publish consumes the reference */
    if (publish(s, i, a->out_handle)) {
        count_publish(s);
        a->out_handle = -1;
        a->base = NULL; a->out = NULL;
        held_dec(s);
        op_exit(s);
        return 1;
    }
    cnt_add(&s->cas_failures, 1);
    if (rebase) attempt_rebase(s, a, 0);
    else {
        /* keep the attempt open on a fresh reference: the caller aborts it */
        a->base_handle = ref_latest(s);
        a->base = s->bufs[a->base_handle].data;
        a->base_version = s->bufs[a->base_handle].version;
        a->staleness = a->base_version - a->t_read;
    }
    op_exit(s);
    return 0;
}

int pstore_commit(pstore *s, pstore_attempt *a, int32_t rebase, int32_t prefill) {
    if (!s || !a || a->out_handle < 0 || a->base_handle < 0) return PSTORE_EINVAL;
    float *segs[1] = {a->out};
    int64_t lens[1] = {s->d};
    int rc = pstore_commit_segments(s, a, segs, lens, 1, rebase);
    if (rc == 0 && rebase && prefill) memcpy(a->out, a->base, (size_t)s->d * sizeof(float));
    return rc;
}

int pstore_abort(pstore *s, pstore_attempt *a, int32_t count_dropped) {
    if (!s || !a || a->out_handle < 0 || a->base_handle < 0) return PSTORE_EINVAL;
    int rc = op_enter(s, 1);
    if (rc != PSTORE_OK) return rc;
    if (s->mode == PSTORE_LOCKED) sem_post(&s->writer);        /* invariant L */
    attempt_end(s, a);
    if (count_dropped) cnt_add(&s->dropped, 1);
    op_exit(s);
    return PSTORE_OK;
}

/* ------------------------------------------------------------------------ */
/* reads and stats                                                           */

int pstore_read_copy(pstore *s, float *dst, int64_t *version) {
    return s ? pstore_read_prefix(s, dst, s->d, version) : PSTORE_EINVAL;
}

int pstore_read_prefix(pstore *s, float *dst, int64_t count, int64_t *version) {
    if (!s || !dst || count < 1 || count > s->d) return PSTORE_EINVAL;
    int rc = op_enter(s, 0);
    if (rc != PSTORE_OK) return rc;
    int64_t v = 0;
    size_t n = (size_t)count * sizeof(float);
    if (s->mode == PSTORE_LEASHED) {
        int32_t i = ref_latest(s);
        memcpy(dst, s->bufs[i].data, n);
        v = s->bufs[i].version;
        ref_drop(s, i, 1);
    } else if (s->mode == PSTORE_LOCKED) {
        pthread_mutex_lock(&s->mu);
        memcpy(dst, s->bufs[0].data, n);
        v = atomic_load_explicit(&s->ver, memory_order_relaxed);
        pthread_mutex_unlock(&s->mu);
    } else {
        v = atomic_load_explicit(&s->ver, memory_order_acquire);
        copy_racy(dst, s->bufs[0].data, count);
    }
    if (version) *version = v;
    op_exit(s);
    return PSTORE_OK;
}

int64_t pstore_version(pstore *s) {
    if (!s) return PSTORE_EINVAL;
    int rc = op_enter(s, 0);
    if (rc != PSTORE_OK) return rc;
    int64_t v;
    if (s->mode == PSTORE_LEASHED) {
        int32_t i = ref_latest(s); /* a reference pins the header */
        v = s->bufs[i].version;
        ref_drop(s, i, 1);
    } else {
        v = atomic_load_explicit(&s->ver, memory_order_acquire);
    }
    op_exit(s);
    return v;
}

int pstore_get_stats(pstore *s, pstore_stats *st) {
    if (!s || !st) return PSTORE_EINVAL;
    memset(st, 0, sizeof(*st));
    st->d = s->d;
    st->mode = s->mode;
    st->max_buffers = s->max_buffers;
    /* counters stay readable after close (they are not freed) */
    int64_t v = pstore_version(s);
    st->version = v < 0 ? -1 : v;
    st->allocated = atomic_load(&s->nalloc);
    st->live = atomic_load(&s->live);
    st->peak_live = atomic_load(&s->peak_live);
    st->applied = atomic_load(&s->applied);
    st->cas_attempts = atomic_load(&s->cas_attempts);
    st->cas_failures = atomic_load(&s->cas_failures);
    st->dropped = atomic_load(&s->dropped);
    st->held = atomic_load(&s->held);
    st->acquires = atomic_load(&s->acquires);
    st->freed = atomic_load(&s->freed);
    return PSTORE_OK;
}

int32_t pstore_live_hist(pstore *s, int64_t *out, int32_t n) {
    if (!s || !out || n < 0) return PSTORE_EINVAL;
    int32_t bins = n < s->max_buffers + 1 ? n : s->max_buffers + 1, last = 0;
    for (int32_t k = 0; k < bins; k++) {
        out[k] = atomic_load_explicit(&s->live_hist[k], memory_order_relaxed);
        if (out[k]) last = k + 1;
    }
    return last;
}
