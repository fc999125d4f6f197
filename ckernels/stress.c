/*
 * stress.c: multi-threaded invariant checks for pstore.
 *
 *   stress [--short] [--updates N] [--d D] [--threads 2,4,8,16] [--mode all|leashed|locked|hogwild]
 *
 * For each mode and thread count m it runs N updates in total (N/m per
 * thread, >= 1e6 per configuration in the full run) and checks, in LEASHED
 * and LOCKED:
 *
 *  - no lost update / version = number of applied updates / consistent
 *    snapshots, all at once: u is all ones (given in 3 segments), the scale of
 *    an update is a small integer looked up by staleness in a per-thread
 *    table, so every version is a constant vector of an exact integer. The
 *    thread that produced version v records inc[v] = the scale it applied
 *    (recomputed from the staleness the store returned, which also checks
 *    that the store used the right per-attempt scale). Each snapshot logs
 *    (version, value) after checking that all elements are equal; after the
 *    join, every logged value must equal inc[1] + ... + inc[version], the
 *    final vector must equal inc[1] + ... + inc[V] with V = final version =
 *    number of applied updates, and every version 1..V must have been
 *    produced exactly once.
 *  - no buffer is written while a reader holds it: at release, the snapshot
 *    must still hold its value everywhere and the buffer's generation must
 *    be the one seen at acquire. Half the LEASHED runs keep the snapshot
 *    across the thread's own update (hold=1) to make this bite.
 *  - memory bound: allocated <= 2m+1 (hold=0), <= 3m+1 (hold=1); LOCKED:
 *    <= m+1 (one private copy per reader + the shared buffer).
 *  - counters add up: cas_attempts = applied + cas_failures, applied +
 *    dropped = update calls, live = 1 and held = 0 at the end; the
 *    live-buffer histogram counts every applied update once, within
 *    1..peak_live (all modes).
 * Odd threads in LEASHED and LOCKED use the two-phase begin/commit API (half
 * of them committing the new vector as segments), even threads the fused
 * update; persistence is drawn from {-1, 0, 1, 3}.
 * HOGWILD: the run must complete; lost updates are measured and reported.
 * CAP: with every buffer pinned, m threads' updates fail with PSTORE_EBUFS
 * and the counters stay consistent (peak_live = allocated = the cap).
 * CLOSE: close(1) frees at once or at the last release, close(0) keeps the
 * memory, and a later close(1) lifts the keep.
 *
 * Exit status: 0 if every check passed, 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include "pstore.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int64_t version;
    float value;
} sample;

typedef struct {
    pstore *s;
    int mode, hold, id, m;
    int64_t n_updates;
    int64_t d;
    float *ones;
    float *segs[3];
    int64_t lens[3];
    _Atomic int8_t *inc;   /* inc[v] = scale that produced version v */
    int64_t inc_cap;
    sample *log;
    int64_t nlog;
    int64_t calls, applied, dropped;
    double hw_expected;    /* HOGWILD: sum of applied scales */
    float *scratch;        /* d floats: the new vector of a segmented commit */
    int64_t errors;
    pthread_barrier_t *bar;
} targ;

static const float TABLES[3][3] = {{1, 2, 3}, {3, 1, 2}, {2, 2, 1}};

static atomic_int g_errprints;

#define FAIL(t, ...)                                                           \
    do {                                                                       \
        (t)->errors++;                                                         \
        if (atomic_fetch_add(&g_errprints, 1) < 20) {                         \
            fprintf(stderr, "FAIL [thread %d] ", (t)->id);                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

static uint64_t xorshift(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* every element equal to the first? returns the value or NAN on mismatch */
static int uniform(const float *p, int64_t d, float *v) {
    float a = p[0];
    for (int64_t i = 1; i < d; i++)
        if (p[i] != a) return 0;
    *v = a;
    return 1;
}

static float scale_of(const targ *t, int64_t tau) {
    if (t->id % 4 == 3) return 2.0f; /* threads using the scalar scale path */
    const float *tab = TABLES[t->id % 3];
    return tab[tau < 3 ? tau : 2];
}

static void record(targ *t, int64_t version, float s) {
    if (version < 1 || version >= t->inc_cap) {
        FAIL(t, "produced version %" PRId64 " out of range", version);
        return;
    }
    int8_t zero = 0;
    if (!atomic_compare_exchange_strong_explicit(&t->inc[version], &zero,
                                                 (int8_t)s, memory_order_relaxed,
                                                 memory_order_relaxed))
        FAIL(t, "version %" PRId64 " produced twice", version);
}

static int pick_persistence(uint64_t *rng) {
    switch (xorshift(rng) % 8) {
    case 0: return 0;
    case 1: return 1;
    case 2: return 3;
    default: return -1;
    }
}

static void do_update(targ *t, int64_t t_read, uint64_t *rng) {
    int p = pick_persistence(rng);
    t->calls++;
    if (t->mode != PSTORE_HOGWILD && (t->id & 1)) {
        /* two-phase API: out = base + s(tau) * 1; every other such thread builds
         * the new vector in its own scratch and commits it as two segments */
        int segmented = t->id % 4 == 3;
        pstore_attempt a;
        int rc = pstore_begin(t->s, t_read, !segmented, &a);
        if (rc != PSTORE_OK) { FAIL(t, "begin: %s", pstore_strerror(rc)); return; }
        for (int k = 0;; k++) {
            float sc = scale_of(t, a.staleness);
            int64_t produced = a.base_version + 1;
            if (segmented) {
                pstore_copy_base(t->s, &a, t->scratch);
                for (int64_t i = 0; i < t->d; i++) t->scratch[i] += sc;
                float *segs[2] = {t->scratch, t->scratch + t->d / 3};
                int64_t lens[2] = {t->d / 3, t->d - t->d / 3};
                rc = pstore_commit_segments(t->s, &a, segs, lens, 2, 1);
            } else {
                for (int64_t i = 0; i < t->d; i++) a.out[i] += sc;
                rc = pstore_commit(t->s, &a, 1, 1);
            }
            if (rc == 1) {
                record(t, produced, sc);
                t->applied++;
                return;
            }
            if (rc < 0) { FAIL(t, "commit: %s", pstore_strerror(rc)); return; }
            if (p >= 0 && k >= p) {
                pstore_abort(t->s, &a, 1);
                t->dropped++;
                return;
            }
        }
    }
    pstore_result r;
    if (t->id % 4 == 3)
        r = pstore_update(t->s, t->segs, t->lens, 3, 2.0f, NULL, 0, t_read, p);
    else
        r = pstore_update(t->s, t->segs, t->lens, 3, 0.0f, TABLES[t->id % 3], 3,
                          t_read, p);
    if (r.status != PSTORE_OK) { FAIL(t, "update: %s", pstore_strerror(r.status)); return; }
    if (p >= 0 && r.attempts > p + 1) FAIL(t, "%d attempts with persistence %d", r.attempts, p);
    if (!r.applied) {
        if (t->mode != PSTORE_LEASHED) FAIL(t, "update dropped in a mode without CAS");
        if (p < 0) FAIL(t, "update dropped with persistence -1");
        t->dropped++;
        return;
    }
    t->applied++;
    float sc = scale_of(t, r.staleness);
    if (t->mode == PSTORE_HOGWILD) t->hw_expected += sc;
    else record(t, r.version, sc);
}

static void *worker(void *arg) {
    targ *t = arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(t->id + 1);
    int consistent = t->mode != PSTORE_HOGWILD;
    float *tmp = malloc((size_t)t->d * sizeof(float));
    pthread_barrier_wait(t->bar);
    for (int64_t k = 0; k < t->n_updates; k++) {
        if (t->id == 0 && k % 64 == 63) {
            /* now and then a read_copy instead of a snapshot */
            int64_t v;
            float val;
            if (pstore_read_copy(t->s, tmp, &v) != PSTORE_OK) FAIL(t, "read_copy");
            else if (consistent) {
                if (!uniform(tmp, t->d, &val)) FAIL(t, "read_copy at v%" PRId64 " mixes versions", v);
                else t->log[t->nlog++] = (sample){v, val};
            }
            do_update(t, v, &rng);
            continue;
        }
        pstore_snapshot sn = pstore_acquire(t->s, t->mode == PSTORE_HOGWILD && (k & 1));
        if (sn.status != PSTORE_OK) { FAIL(t, "acquire: %s", pstore_strerror(sn.status)); continue; }
        if (((uintptr_t)sn.data & 63) != 0) FAIL(t, "snapshot not 64-byte aligned");
        float val = 0;
        int ok = 1;
        if (consistent) {
            ok = uniform(sn.data, t->d, &val);
            if (!ok) FAIL(t, "snapshot v%" PRId64 " is not one version", sn.version);
            else t->log[t->nlog++] = (sample){sn.version, val};
        }
        if (t->hold) do_update(t, sn.version, &rng);
        if (consistent && ok) {
            float v2;
            if (!uniform(sn.data, t->d, &v2) || v2 != val)
                FAIL(t, "snapshot v%" PRId64 " changed while held", sn.version);
            if (pstore_generation(t->s, sn.handle) != sn.generation)
                FAIL(t, "buffer %d recycled while held", sn.handle);
        }
        int64_t tr = sn.version;
        if (pstore_release(t->s, sn.handle) != PSTORE_OK) FAIL(t, "release");
        if (!t->hold) do_update(t, tr, &rng);
    }
    free(tmp);
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *MODE_NAMES[] = {"LEASHED", "HOGWILD", "LOCKED"};

static int64_t run_config(int mode, int hold, int m, int64_t total, int64_t d) {
    int64_t per = (total + m - 1) / m;
    pstore *s;
    int rc = pstore_create(d, mode, NULL, 0, &s);
    if (rc != PSTORE_OK) {
        fprintf(stderr, "create: %s\n", pstore_strerror(rc));
        return 1;
    }
    float *ones = malloc((size_t)d * sizeof(float));
    for (int64_t i = 0; i < d; i++) ones[i] = 1.0f;
    int64_t inc_cap = per * m + 2;
    _Atomic int8_t *inc = calloc((size_t)inc_cap, 1);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)m);
    targ *ts = calloc((size_t)m, sizeof(targ));
    pthread_t *th = calloc((size_t)m, sizeof(pthread_t));
    int64_t l0 = d > 2 ? 1 : 0, l1 = d / 2, l2 = d - l0 - l1;
    double t0 = now();
    for (int k = 0; k < m; k++) {
        targ *t = &ts[k];
        *t = (targ){.s = s, .mode = mode, .hold = hold, .id = k, .m = m,
                    .n_updates = per, .d = d, .ones = ones, .inc = inc,
                    .inc_cap = inc_cap, .bar = &bar};
        t->segs[0] = ones; t->lens[0] = l0;
        t->segs[1] = ones + l0; t->lens[1] = l1;
        t->segs[2] = ones + l0 + l1; t->lens[2] = l2;
        t->log = malloc(sizeof(sample) * (size_t)(per + 1));
        t->scratch = malloc(sizeof(float) * (size_t)d);
        pthread_create(&th[k], NULL, worker, t);
    }
    for (int k = 0; k < m; k++) pthread_join(th[k], NULL);
    double el = now() - t0;

    int64_t errors = 0, calls = 0, applied = 0, dropped = 0;
    double hw_expected = 0;
    for (int k = 0; k < m; k++) {
        errors += ts[k].errors;
        calls += ts[k].calls;
        applied += ts[k].applied;
        dropped += ts[k].dropped;
        hw_expected += ts[k].hw_expected;
    }
    pstore_stats st;
    pstore_get_stats(s, &st);
    float *fin = malloc((size_t)d * sizeof(float));
    int64_t V;
    pstore_read_copy(s, fin, &V);
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            errors++;                                                          \
            fprintf(stderr, "FAIL [%s m=%d hold=%d] ", MODE_NAMES[mode], m, hold); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)
    CHECK(st.applied == applied, "stats.applied %" PRId64 " != %" PRId64, st.applied, applied);
    CHECK(st.dropped == dropped, "stats.dropped %" PRId64 " != %" PRId64, st.dropped, dropped);
    CHECK(applied + dropped == calls, "applied + dropped != calls");
    CHECK(V == applied, "version %" PRId64 " != applied %" PRId64, V, applied);
    CHECK(st.held == 0, "held %" PRId64 " at the end", st.held);
    CHECK(st.live == 1, "live %" PRId64 " at the end (expected 1)", st.live);
    CHECK(st.allocated == st.peak_live, "allocated %" PRId64 " != peak_live %" PRId64,
          st.allocated, st.peak_live);
    int64_t bound = mode == PSTORE_LEASHED ? (hold ? 3 * m + 1 : 2 * m + 1) : m + 1;
    CHECK(st.allocated <= bound, "allocated %" PRId64 " > bound %" PRId64, st.allocated, bound);
    CHECK(st.peak_live <= bound, "peak_live %" PRId64 " > bound %" PRId64, st.peak_live, bound);
    if (mode == PSTORE_LEASHED)
        CHECK(st.cas_attempts == st.applied + st.cas_failures,
              "cas_attempts %" PRId64 " != applied + failures", st.cas_attempts);
    else
        CHECK(st.cas_failures == 0 && st.cas_attempts == calls, "attempt counters");

    {
        int64_t *hist = calloc((size_t)st.max_buffers + 1, sizeof(int64_t)), sum = 0;
        int32_t bins = pstore_live_hist(s, hist, (int32_t)st.max_buffers + 1);
        for (int32_t k = 0; k < bins; k++) sum += hist[k];
        CHECK(sum == st.applied, "live histogram counts %" PRId64 " != applied %" PRId64,
              sum, st.applied);
        CHECK(bins <= st.peak_live + 1 && (applied == 0 || hist[0] == 0),
              "live histogram outside 1..peak_live (%d bins, peak %" PRId64 ")",
              bins, st.peak_live);
        free(hist);
    }

    double lost_mean = 0;
    if (mode == PSTORE_HOGWILD) {
        double sum = 0;
        for (int64_t i = 0; i < d; i++) sum += fin[i];
        lost_mean = hw_expected - sum / (double)d;
        CHECK(lost_mean >= 0, "HOGWILD gained value: %.1f", -lost_mean);
    } else {
        /* prefix sums of inc: value of every version */
        double *pre = malloc(sizeof(double) * (size_t)(V + 1));
        pre[0] = 0;
        int64_t missing = 0;
        for (int64_t v = 1; v <= V; v++) {
            int8_t x = atomic_load(&inc[v]);
            if (x == 0) missing++;
            pre[v] = pre[v - 1] + x;
        }
        for (int64_t v = V + 1; v < inc_cap; v++)
            if (atomic_load(&inc[v]) != 0) missing++;
        CHECK(missing == 0, "%" PRId64 " versions not produced exactly once", missing);
        float fv;
        CHECK(uniform(fin, d, &fv) && (double)fv == pre[V],
              "final vector %.1f != initial + sum of applied updates %.1f", fin[0], pre[V]);
        int64_t bad = 0, nsamples = 0;
        for (int k = 0; k < m; k++)
            for (int64_t j = 0; j < ts[k].nlog; j++) {
                sample sm = ts[k].log[j];
                nsamples++;
                if (sm.version < 0 || sm.version > V || (double)sm.value != pre[sm.version]) bad++;
            }
        CHECK(bad == 0, "%" PRId64 " of %" PRId64 " snapshots do not match their version",
              bad, nsamples);
        free(pre);
    }
    double fail_rate = st.cas_attempts ? (double)st.cas_failures / (double)st.cas_attempts : 0;
    printf("%-7s m=%-2d hold=%d  updates=%-8" PRId64 " applied=%-8" PRId64
           " dropped=%-6" PRId64 " cas_fail=%5.1f%%  buffers=%2" PRId64 "/%-2" PRId64
           "  %8.0f upd/s",
           MODE_NAMES[mode], m, hold, calls, applied, dropped, 100 * fail_rate,
           st.allocated, bound, (double)calls / el);
    if (mode == PSTORE_HOGWILD)
        printf("  lost=%.0f of %.0f (%.2f%%)", lost_mean, hw_expected,
               hw_expected > 0 ? 100 * lost_mean / hw_expected : 0.0);
    printf("  %s\n", errors ? "FAIL" : "ok");
    fflush(stdout);

    /* close must work, free the memory and make later calls fail cleanly */
    pstore_close(s, 1);
    pstore_snapshot sn = pstore_acquire(s, 0);
    CHECK(sn.status == PSTORE_ECLOSED, "acquire after close did not fail");
    pstore_get_stats(s, &st);
    CHECK(st.freed == 1, "close(1) with nothing held did not free the memory");
    pstore_destroy(s);
    for (int k = 0; k < m; k++) free(ts[k].log), free(ts[k].scratch);
    free(ts); free(th); free(ones); free(fin); free((void *)inc);
    pthread_barrier_destroy(&bar);
    return errors;
}

/* The buffer cap under contention: with every buffer pinned by a held
 * snapshot, m threads' updates must all fail with PSTORE_EBUFS, and the
 * counters must stay consistent: peak_live = allocated = cap (a failed
 * allocation raises neither), live and held back to what is held, nothing
 * applied. After the snapshots are released, updates succeed again. */
typedef struct {
    pstore *s;
    float *u;
    int64_t d, tries, ebufs, other;
} cap_arg;

static void *cap_worker(void *arg) {
    cap_arg *a = arg;
    float *segs[1] = {a->u};
    int64_t lens[1] = {a->d};
    for (int64_t k = 0; k < a->tries; k++) {
        pstore_result r = pstore_update(a->s, segs, lens, 1, 1.0f, NULL, 0, 0, -1);
        if (r.status == PSTORE_EBUFS) a->ebufs++;
        else a->other++;
    }
    return NULL;
}

static int64_t run_cap(int m) {
    enum { CAP = 3 };
    int64_t errors = 0, d = 64;
    pstore *s;
    if (pstore_create(d, PSTORE_LEASHED, NULL, CAP, &s) != PSTORE_OK) {
        fprintf(stderr, "FAIL [cap] create\n");
        return 1;
    }
    float *u = calloc((size_t)d, sizeof(float));
    float *segs[1] = {u};
    int64_t lens[1] = {d};
    pstore_snapshot held[CAP];
    for (int k = 0; k < CAP; k++) { /* versions 0, 1, 2 held: every buffer pinned */
        held[k] = pstore_acquire(s, 0);
        if (k + 1 < CAP) pstore_update(s, segs, lens, 1, 1.0f, NULL, 0, k, -1);
    }
    cap_arg *args = calloc((size_t)m, sizeof(cap_arg));
    pthread_t *th = calloc((size_t)m, sizeof(pthread_t));
    for (int k = 0; k < m; k++) {
        args[k] = (cap_arg){s, u, d, 2000, 0, 0};
        pthread_create(&th[k], NULL, cap_worker, &args[k]);
    }
    int64_t ebufs = 0, other = 0;
    for (int k = 0; k < m; k++) {
        pthread_join(th[k], NULL);
        ebufs += args[k].ebufs;
        other += args[k].other;
    }
    pstore_stats st;
    pstore_get_stats(s, &st);
#define CAPCHECK(cond, ...)                                                    \
    do {                                                                       \
        if (!(cond)) {                                                         \
            errors++;                                                          \
            fprintf(stderr, "FAIL [cap m=%d] ", m);                            \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)
    CAPCHECK(ebufs == 2000 * m && other == 0, "%" PRId64 " of %d updates failed with EBUFS",
             ebufs, 2000 * m);
    CAPCHECK(st.allocated == CAP && st.peak_live == CAP,
             "allocated %" PRId64 ", peak_live %" PRId64 " (cap %d)", st.allocated, st.peak_live, CAP);
    CAPCHECK(st.live == CAP && st.held == CAP, "live %" PRId64 ", held %" PRId64, st.live, st.held);
    CAPCHECK(st.applied == CAP - 1, "applied %" PRId64, st.applied);
    for (int k = 0; k < CAP; k++) pstore_release(s, held[k].handle);
    pstore_result r = pstore_update(s, segs, lens, 1, 1.0f, NULL, 0, CAP - 1, -1);
    pstore_get_stats(s, &st);
    CAPCHECK(r.status == PSTORE_OK && r.applied, "update after release: %s",
             pstore_strerror(r.status));
    CAPCHECK(st.live == 1 && st.held == 0 && st.peak_live == CAP && st.allocated == CAP,
             "after release: live %" PRId64 ", held %" PRId64 ", peak_live %" PRId64,
             st.live, st.held, st.peak_live);
    printf("CAP     m=%-2d cap=%d  updates=%-8d failed=%-8" PRId64 " peak_live=%" PRId64
           " allocated=%" PRId64 "  %s\n", m, CAP, 2000 * m, ebufs, st.peak_live, st.allocated,
           errors ? "FAIL" : "ok");
    pstore_close(s, 1);
    pstore_destroy(s);
    free(u); free(args); free(th);
    return errors;
}

/* close(free_memory) and a later close deciding again: the memory is freed
 * exactly when the store is closed, the keep is lifted and nothing is held. */
static int64_t run_close(void) {
    int64_t errors = 0;
    pstore_stats st;
#define CLOSECHECK(cond, what)                                                 \
    do {                                                                       \
        if (!(cond)) {                                                         \
            errors++;                                                          \
            fprintf(stderr, "FAIL [close] %s\n", what);                        \
        }                                                                      \
    } while (0)
    for (int mode = 0; mode < 3; mode++) {
        pstore *s;
        pstore_create(257, mode, NULL, 0, &s);
        pstore_close(s, 1);
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 1, "close(1) with nothing held did not free");
        pstore_destroy(s);

        pstore_create(257, mode, NULL, 0, &s);
        pstore_snapshot sn = pstore_acquire(s, 1);
        pstore_close(s, 0);
        pstore_close(s, 0); /* idempotent */
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 0, "close(0) freed");
        pstore_close(s, 1); /* lift the keep while a snapshot is held */
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 0, "freed while a snapshot was held");
        CLOSECHECK(sn.data[256] == 0.0f, "held snapshot unreadable");
        pstore_release(s, sn.handle);
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 1 && st.held == 0, "the last release after close(1) did not free");
        pstore_close(s, 0); /* after the free: does nothing */
        pstore_destroy(s);

        pstore_create(257, mode, NULL, 0, &s);
        pstore_close(s, 0);
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 0, "close(0) freed");
        pstore_close(s, 1);
        pstore_get_stats(s, &st);
        CLOSECHECK(st.freed == 1, "close(1) after close(0), nothing held, did not free");
        pstore_destroy(s);
    }
    printf("CLOSE   keep / lift / free at the last release, 3 modes  %s\n", errors ? "FAIL" : "ok");
    return errors;
}

int main(int argc, char **argv) {
    int64_t total = 1000000, d = 1031;
    int threads[8] = {2, 4, 8, 16}, nthreads = 4;
    const char *modesel = "all";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--short")) { total = 20000; d = 257; }
        else if (!strcmp(argv[i], "--updates") && i + 1 < argc) total = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--d") && i + 1 < argc) d = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--mode") && i + 1 < argc) modesel = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            nthreads = 0;
            for (char *p = strtok(argv[++i], ","); p && nthreads < 8; p = strtok(NULL, ","))
                threads[nthreads++] = atoi(p);
        } else {
            fprintf(stderr, "usage: %s [--short] [--updates N] [--d D] "
                            "[--threads 2,4,8,16] [--mode all|leashed|locked|hogwild]\n", argv[0]);
            return 2;
        }
    }
    if (d < 3 || total < 1) { fprintf(stderr, "need d >= 3, updates >= 1\n"); return 2; }
    printf("pstore stress: %" PRId64 " updates per configuration, d=%" PRId64 "\n", total, d);
    int64_t errors = 0;
    double t0 = now();
    for (int ti = 0; ti < nthreads; ti++) {
        int m = threads[ti];
        if (m < 1) continue;
        if (!strcmp(modesel, "all") || !strcmp(modesel, "leashed")) {
            errors += run_config(PSTORE_LEASHED, 0, m, total, d);
            errors += run_config(PSTORE_LEASHED, 1, m, total, d);
        }
        if (!strcmp(modesel, "all") || !strcmp(modesel, "locked"))
            errors += run_config(PSTORE_LOCKED, 0, m, total, d);
        if (!strcmp(modesel, "all") || !strcmp(modesel, "hogwild"))
            errors += run_config(PSTORE_HOGWILD, 0, m, total, d);
        errors += run_cap(m);
    }
    errors += run_close();
    printf("%s: %" PRId64 " failed checks, %.1f s\n", errors ? "FAILED" : "PASSED",
           errors, now() - t0);
    return errors ? 1 : 0;
}
