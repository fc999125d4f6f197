/*
 * pworker.c: tickets and one worker's step, in C (see pworker.h).
 *
 * ============================== ptickets =================================
 * One mutex guards every field. Invariants, true whenever the mutex is free:
 *   T1  applied + in_flight <= num_updates (when num_updates > 0): a ticket is
 *       handed out only while it holds, so exactly num_updates updates are
 *       applied; a dropped or discarded update gives its ticket back
 *       (in_flight - 1, applied unchanged) for another worker to take.
 *   T2  next_batch <= max_batches (when max_batches > 0), and every minibatch
 *       number below next_batch was handed out exactly once.
 *   T3  reason, once set, never changes (the first reason wins);
 *       applied_at_stop is `applied` at that moment, and applied_after_stop
 *       counts the updates finished as applied afterwards.
 *   T4  reason is set to PT_NUM_UPDATES / PT_EPOCHS only when nothing is in
 *       flight: the limit is reached and every handed-out minibatch has been
 *       applied, dropped or discarded. Workers told PT_NONE while others still
 *       hold tickets just leave; the last one to ask sets the reason.
 * The critical sections are a few loads and stores; a lock-free design would
 * have to keep T1 over two counters at once, which a mutex states plainly.
 *
 * =============================== pworker =================================
 * Records: the worker appends to its arrays and then publishes the new count
 * with a release store; the monitor loads a count with acquire
 * (pworker_get_counts) and reads only entries below it. Invariant P: every
 * entry below a published count is completely written and never written
 * again. The arrays themselves change only while the worker is not running
 * (pworker_set_arrays), and the caller keeps the old arrays alive for
 * readers that loaded them.
 * Scales: an atomic pointer, swapped whole by the controller (release) and
 * loaded once per update by the worker (acquire): an update uses one table,
 * old or new, never a mix. The caller keeps every table alive until the run
 * ends.
 * Everything else in a pworker is touched by its one worker thread only.
 */
#define _POSIX_C_SOURCE 200809L
#include "pworker.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct ptickets {
    pthread_mutex_t mu;
    int64_t num_updates, max_batches;
    int64_t next_batch, applied, in_flight, applied_after_stop, applied_at_stop;
    int32_t reason;
};

int ptickets_create(int64_t num_updates, int64_t max_batches, ptickets **out) {
    if (!out || num_updates < 0 || max_batches < 0) return PSTORE_EINVAL;
    *out = NULL;
    ptickets *t = calloc(1, sizeof *t);
    if (!t) return PSTORE_ENOMEM;
    if (pthread_mutex_init(&t->mu, NULL)) {
        free(t);
        return PSTORE_ENOMEM;
    }
    t->num_updates = num_updates;
    t->max_batches = max_batches;
    *out = t;
    return PSTORE_OK;
}

void ptickets_destroy(ptickets *t) {
    if (!t) return;
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Holds t->mu. T3: the first reason wins. */
static void set_reason(ptickets *t, int32_t reason) {
    if (t->reason == PT_RUNNING) {
        t->reason = reason;
        t->applied_at_stop = t->applied;
    }
}

int64_t ptickets_take(ptickets *t, int64_t count, int64_t limit) {
    int64_t first = PT_NONE;
    pthread_mutex_lock(&t->mu);
    if (t->reason != PT_RUNNING || count < 1) {
        /* stopped: no ticket */
    } else if (t->num_updates && t->applied + t->in_flight >= t->num_updates) {
        if (t->in_flight == 0) set_reason(t, PT_NUM_UPDATES);          /* T1, T4 */
    } else if (t->max_batches && t->next_batch + count > t->max_batches) {
        if (t->in_flight == 0) set_reason(t, PT_EPOCHS);               /* T2, T4 */
    } else if (limit > 0 && t->next_batch + count > limit) {
        first = PT_LATER;
    } else {
        first = t->next_batch;
        t->next_batch += count;
        t->in_flight += 1;
    }
    pthread_mutex_unlock(&t->mu);
    return first;
}

void ptickets_finish(ptickets *t, int32_t applied) {
    pthread_mutex_lock(&t->mu);
    t->in_flight -= 1;
    if (applied) {
        t->applied += 1;
        if (t->reason != PT_RUNNING) t->applied_after_stop += 1;       /* T3 */
    }
    pthread_mutex_unlock(&t->mu);
}

int32_t ptickets_stop(ptickets *t, int32_t reason) {
    pthread_mutex_lock(&t->mu);
    set_reason(t, reason);
    int32_t now = t->reason;
    pthread_mutex_unlock(&t->mu);
    return now;
}

int32_t ptickets_reason(ptickets *t) {
    pthread_mutex_lock(&t->mu);
    int32_t r = t->reason;
    pthread_mutex_unlock(&t->mu);
    return r;
}

void ptickets_get_state(ptickets *t, ptickets_state *out) {
    pthread_mutex_lock(&t->mu);
    out->next_batch = t->next_batch;
    out->applied = t->applied;
    out->in_flight = t->in_flight;
    out->applied_after_stop = t->applied_after_stop;
    out->applied_at_stop = t->applied_at_stop;
    out->reason = t->reason;
    out->pad_ = 0;
    pthread_mutex_unlock(&t->mu);
}

/* ------------------------------------------------------------------------ */

struct pworker {
    pstore *store;
    ptickets *tickets;
    _Atomic(const float *) scales;   /* swapped whole: see the header comment */
    int32_t nscales;
    int64_t persistence;
    int64_t d;
    pworker_arrays a;                /* changed only while not running */
    _Atomic int64_t n_grad, n_update, n_applied, dropped, discarded;  /* invariant P */
    int64_t window_first, window_count;
    int64_t read_count;              /* floats pworker_read copies */
    double t_begin, t_read, t_computed;  /* the step in progress (this thread only) */
    int64_t t_read_version;          /* the version its gradient read */
    pstore_attempt attempt;          /* the open stateful update (this thread only) */
    _Atomic int64_t overwritten;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int pworker_create(pstore *store, ptickets *tickets, const float *scales, int32_t nscales,
                   int64_t persistence, pworker **out) {
    if (!out || !store || !tickets || !scales || nscales < 1 || persistence < -1)
        return PSTORE_EINVAL;
    *out = NULL;
    pworker *w = calloc(1, sizeof *w);
    if (!w) return PSTORE_ENOMEM;
    w->store = store;
    w->tickets = tickets;
    atomic_init(&w->scales, scales);
    w->nscales = nscales;
    w->persistence = persistence;
    w->d = pstore_dim(store);
    w->read_count = w->d;
    *out = w;
    return PSTORE_OK;
}

void pworker_destroy(pworker *w) { free(w); }

void pworker_set_arrays(pworker *w, const pworker_arrays *arrays) { w->a = *arrays; }

void pworker_set_scales(pworker *w, const float *scales) {
    atomic_store_explicit(&w->scales, scales, memory_order_release);
}

void pworker_set_window(pworker *w, int64_t first, int64_t count) {
    w->window_first = first;
    w->window_count = count;
}

void pworker_get_counts(pworker *w, pworker_counts *out) {
    out->gradients = atomic_load_explicit(&w->n_grad, memory_order_acquire);
    out->updates = atomic_load_explicit(&w->n_update, memory_order_acquire);
    out->applied = atomic_load_explicit(&w->n_applied, memory_order_acquire);
    out->dropped = atomic_load_explicit(&w->dropped, memory_order_relaxed);
    out->discarded = atomic_load_explicit(&w->discarded, memory_order_relaxed);
    out->overwritten = atomic_load_explicit(&w->overwritten, memory_order_relaxed);
}

int64_t pworker_dim(pworker *w) { return w->d; }

void pworker_set_read_count(pworker *w, int64_t count) {
    w->read_count = count >= 1 && count <= w->d ? count : w->d;
}

int64_t pworker_read_count(pworker *w) { return w->read_count; }

/* The worker's own counts: only it writes them, a relaxed load is exact. */
static inline int64_t own(_Atomic int64_t *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Invariant P: write the entry, then publish the count with release. */
static inline void publish_count(_Atomic int64_t *c, int64_t n) {
    atomic_store_explicit(c, n, memory_order_release);
}

int pworker_read(pworker *w, float *params, int32_t meta[4]) {
    meta[0] = PW_YIELD;
    meta[1] = meta[2] = meta[3] = 0;
    if (own(&w->n_grad) >= w->a.cap_grad || own(&w->n_update) >= w->a.cap_update ||
        own(&w->n_applied) >= w->a.cap_applied)
        return PSTORE_OK;                      /* records full: the caller grows them */
    int64_t limit = w->window_count > 0 ? w->window_first + w->window_count : 0;
    int64_t batch = ptickets_take(w->tickets, 1, limit);
    if (batch == PT_LATER) return PSTORE_OK;   /* minibatch outside the window */
    if (batch == PT_NONE) {
        meta[0] = PW_STOP;
        return PSTORE_OK;
    }
    if (batch > INT32_MAX) {
        ptickets_finish(w->tickets, 0);
        return PSTORE_EINVAL;
    }
    w->t_begin = now_s();
    int64_t version = 0;
    int rc = pstore_read_prefix(w->store, params, w->read_count, &version);
    w->t_read = now_s();
    if (rc || version > INT32_MAX) {
        ptickets_finish(w->tickets, 0);        /* give the ticket back */
        return rc ? rc : PSTORE_EINVAL;
    }
    meta[0] = PW_GO;
    meta[1] = (int32_t)batch;
    meta[2] = (int32_t)version;
    return PSTORE_OK;
}

/* Record a computed gradient; 0 if it is to be applied, 1 if it was discarded
 * (its ticket given back): a gradient that finds the run stopping is not
 * recorded (the loss series ends at the stop), a non-finite one is recorded
 * and stops the run. */
static int record_gradient(pworker *w, float loss) {
    w->t_computed = now_s();
    if (ptickets_reason(w->tickets) != PT_RUNNING) {
        atomic_fetch_add_explicit(&w->discarded, 1, memory_order_relaxed);
        ptickets_finish(w->tickets, 0);
        return 1;
    }
    int64_t i = own(&w->n_grad);
    w->a.loss[i] = loss;
    w->a.read_s[i] = w->t_read - w->t_begin;
    w->a.compute_s[i] = w->t_computed - w->t_read;
    publish_count(&w->n_grad, i + 1);
    if (!isfinite(loss)) ptickets_stop(w->tickets, PT_DIVERGED_LOSS);
    if (ptickets_reason(w->tickets) != PT_RUNNING) {   /* stopping: discard */
        atomic_fetch_add_explicit(&w->discarded, 1, memory_order_relaxed);
        ptickets_finish(w->tickets, 0);
        return 1;
    }
    return 0;
}

/* Record a finished update (applied or dropped) and finish its ticket. */
static void record_update(pworker *w, int32_t applied, int32_t attempts, int64_t staleness) {
    int64_t j = own(&w->n_update);
    w->a.attempts[j] = attempts;
    w->a.update_s[j] = now_s() - w->t_computed;
    publish_count(&w->n_update, j + 1);
    if (applied) {
        int64_t k = own(&w->n_applied);
        w->a.staleness[k] = (int32_t)(staleness > INT32_MAX ? INT32_MAX : staleness);
        publish_count(&w->n_applied, k + 1);
    } else {
        atomic_fetch_add_explicit(&w->dropped, 1, memory_order_relaxed);
    }
    ptickets_finish(w->tickets, applied);
}

int pworker_update(pworker *w, const int32_t meta[4], float loss, float *const *segs,
                   const int64_t *lens, int32_t nseg, int32_t status[4]) {
    status[0] = 2;
    status[1] = status[2] = status[3] = 0;
    if (record_gradient(w, loss)) return PSTORE_OK;
    const float *scales = atomic_load_explicit(&w->scales, memory_order_acquire);
    pstore_result r = pstore_update(w->store, segs, lens, nseg, 0.0f, scales, w->nscales,
                                    (int64_t)meta[2], w->persistence);
    if (r.status) {
        ptickets_finish(w->tickets, 0);
        return r.status;
    }
    record_update(w, r.applied, r.attempts, r.staleness);
    status[0] = r.applied;
    status[1] = r.attempts;
    return PSTORE_OK;
}

/* The scale of an open attempt's staleness, from the current table. */
static float attempt_scale(pworker *w) {
    const float *scales = atomic_load_explicit(&w->scales, memory_order_acquire);
    int64_t tau = w->attempt.staleness;
    return scales[tau < w->nscales ? tau : w->nscales - 1];
}

int pworker_begin(pworker *w, const int32_t meta[4], float loss, float *base, float *scale,
                  int32_t ameta[4]) {
    ameta[0] = PW_DONE;
    ameta[1] = ameta[2] = ameta[3] = 0;
    *scale = 0.0f;
    if (record_gradient(w, loss)) return PSTORE_OK;
    int rc = pstore_begin(w->store, (int64_t)meta[2], 0, &w->attempt);
    if (rc) {
        ptickets_finish(w->tickets, 0);
        return rc;
    }
    pstore_copy_base(w->store, &w->attempt, base);
    *scale = attempt_scale(w);
    ameta[0] = PW_ATTEMPT;
    ameta[1] = (int32_t)w->attempt.staleness;
    return PSTORE_OK;
}

int pworker_commit(pworker *w, float *const *segs, const int64_t *lens, int32_t nseg,
                   float *base, float *scale, int32_t ameta[4]) {
    pstore_attempt *a = &w->attempt;
    int last = w->persistence >= 0 && a->attempts >= w->persistence;
    int64_t tau = a->staleness;
    int rc = pstore_commit_segments(w->store, a, segs, lens, nseg, !last);
    if (rc < 0) {
        if (a->out_handle >= 0) pstore_abort(w->store, a, 0);
        ptickets_finish(w->tickets, 0);
        return rc;
    }
    ameta[2] = a->attempts;
    if (rc == 1) {                                     /* applied */
        if (a->overwritten)
            atomic_fetch_add_explicit(&w->overwritten, a->overwritten, memory_order_relaxed);
        record_update(w, 1, a->attempts, a->staleness > tau ? a->staleness : tau);
        ameta[0] = PW_DONE;
        ameta[3] = 1;
    } else if (last) {                                 /* dropped */
        int32_t attempts = a->attempts;
        pstore_abort(w->store, a, 1);
        record_update(w, 0, attempts, tau);
        ameta[0] = PW_DONE;
        ameta[3] = 0;
    } else {                                           /* moved onto the new latest */
        pstore_copy_base(w->store, a, base);
        *scale = attempt_scale(w);
        ameta[0] = PW_ATTEMPT;
        ameta[1] = (int32_t)a->staleness;
    }
    return PSTORE_OK;
}
