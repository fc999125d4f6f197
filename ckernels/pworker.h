/*
 * pworker: what an asynchronous worker needs besides the parameter store, in C,
 * so that its whole loop can run inside one compiled computation (XLA FFI
 * custom calls, see pworker_ffi.c) without Python or the GIL per step.
 *
 *   ptickets   the run's minibatch tickets and its stop decision, shared by
 *              all workers (and by the Python-driven executors);
 *   pworker    one worker's context: its store, tickets, step-size table,
 *              persistence, minibatch window and its append-only records
 *              (loss, timings, staleness, CAS attempts) that the monitor
 *              reads while the worker runs.
 *
 * No global state; every shared protocol states its invariant in pworker.c.
 */
#ifndef ASGD_PWORKER_H
#define ASGD_PWORKER_H

#include <stdint.h>

#include "pstore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a run stopped (0 = it has not). The first reason given wins. */
enum {
    PT_RUNNING = 0,
    PT_NUM_UPDATES = 1,     /* num_updates applied */
    PT_EPOCHS = 2,          /* every minibatch of the allowed epochs used */
    PT_TIME_BUDGET = 3,
    PT_TARGET_LOSS = 4,
    PT_DIVERGED_LOSS = 5,   /* a non-finite minibatch loss */
    PT_DIVERGED_PARAMS = 6,
    PT_INTERRUPTED = 7,
    PT_ERROR = 8,
    PT_OTHER = 9
};

/* ptickets_take results other than a minibatch number (>= 0). */
enum { PT_NONE = -1,        /* no ticket: stop (the run stopped or is complete) */
       PT_LATER = -2 };     /* not below the caller's limit: come back later */

typedef struct ptickets ptickets;

typedef struct {
    int64_t next_batch;          /* minibatches handed out so far */
    int64_t applied;             /* updates applied */
    int64_t in_flight;           /* tickets taken and not finished */
    int64_t applied_after_stop;  /* applied after the stop reason was set */
    int64_t applied_at_stop;     /* `applied` when the stop reason was set */
    int32_t reason;              /* PT_* */
    int32_t pad_;
} ptickets_state;

/* num_updates: stop after exactly this many applied updates (0 = no limit);
 * max_batches: hand out at most this many minibatches (0 = no limit). */
int ptickets_create(int64_t num_updates, int64_t max_batches, ptickets **out);
void ptickets_destroy(ptickets *t);
/* The first of `count` consecutive minibatch numbers, PT_NONE, or (with
 * limit > 0) PT_LATER when the first number would be >= limit. */
int64_t ptickets_take(ptickets *t, int64_t count, int64_t limit);
/* A ticket's gradient was applied (1) or not (0: dropped or discarded). */
void ptickets_finish(ptickets *t, int32_t applied);
/* Set the stop reason if none is set; returns the reason now in force. */
int32_t ptickets_stop(ptickets *t, int32_t reason);
int32_t ptickets_reason(ptickets *t);
void ptickets_get_state(ptickets *t, ptickets_state *out);

/* One worker's records, in arrays the caller owns (numpy); the worker appends
 * and publishes the counts, the monitor reads below the counts it loaded. */
typedef struct {
    float *loss;          /* per recorded gradient (not those discarded at a stop) */
    double *read_s;       /* per computed gradient: the consistent read */
    double *compute_s;    /* per computed gradient: minibatch gather + gradient */
    int64_t cap_grad;
    int32_t *attempts;    /* per update (applied or dropped) */
    double *update_s;     /* per update */
    int64_t cap_update;
    int32_t *staleness;   /* per applied update */
    int64_t cap_applied;
} pworker_arrays;

typedef struct {
    int64_t gradients, updates, applied, dropped, discarded;
    int64_t overwritten;  /* HOGWILD stateful updates: others' updates they wrote over */
} pworker_counts;

typedef struct pworker pworker;

/* A worker over `store` and `tickets` (not owned; they must outlive it).
 * scales: nscales floats, -alpha(tau) (the caller keeps them alive; swap with
 * pworker_set_scales). */
int pworker_create(pstore *store, ptickets *tickets, const float *scales, int32_t nscales,
                   int64_t persistence, pworker **out);
void pworker_destroy(pworker *w);
/* Give the worker (new, larger) record arrays; the first `counts` entries
 * must already hold what was recorded (the caller copies them). Only while
 * the worker is not running. */
void pworker_set_arrays(pworker *w, const pworker_arrays *arrays);
/* Replace the step-size table (same length); safe while the worker runs. */
void pworker_set_scales(pworker *w, const float *scales);
/* Minibatches [first, first + count) are in the window the worker's
 * computation holds; outside it pworker_read answers "later". Only while
 * the worker is not running. */
void pworker_set_window(pworker *w, int64_t first, int64_t count);
void pworker_get_counts(pworker *w, pworker_counts *out);
int64_t pworker_dim(pworker *w);   /* the store's d */
/* pworker_read copies the first `count` floats only (the parameters, when
 * the store also holds an optimizer's state after them). Default: all d. */
void pworker_set_read_count(pworker *w, int64_t count);
int64_t pworker_read_count(pworker *w);

/* pworker_read status (meta[0]) */
enum { PW_GO = 0, PW_STOP = 1, PW_YIELD = 2 };

/* One step, first half: take a ticket, then copy a consistent version of the
 * parameters (HOGWILD: a racy copy) into params (d floats).
 * meta[0] = PW_*, meta[1] = minibatch number, meta[2] = version read.
 * Returns PSTORE_OK or an error (e.g. PSTORE_ECLOSED). */
int pworker_read(pworker *w, float *params, int32_t meta[4]);
/* Second half: record the gradient's loss and timings; unless the run has
 * stopped (then the gradient is discarded), apply x <- x + s(tau) g with the
 * gradient given as nseg segments. meta: what pworker_read returned.
 * status[0] = 1 applied, 0 dropped, 2 discarded. Returns PSTORE_OK or an error. */
int pworker_update(pworker *w, const int32_t meta[4], float loss, float *const *segs,
                   const int64_t *lens, int32_t nseg, int32_t status[4]);

/* A stateful update (e.g. an optimizer's new parameters and state, computed
 * by the caller from the latest version): begin, the caller's computation,
 * commit; retried after a lost CAS (LEASHED) up to the persistence bound.
 * ameta[0]: PW_ATTEMPT (compute from base and commit) or PW_DONE;
 * ameta[1]: tau of the attempt; ameta[2]: attempts so far; ameta[3]: 1 if
 * applied (when done). */
enum { PW_ATTEMPT = 0, PW_DONE = 1 };
/* Record the gradient's loss and timings (as pworker_update); unless the run
 * stopped (then it is discarded: PW_DONE), open an attempt on the latest
 * version: copy it into base (d floats), *scale = s(tau). */
int pworker_begin(pworker *w, const int32_t meta[4], float loss, float *base, float *scale,
                  int32_t ameta[4]);
/* Publish the new vector (nseg segments concatenating to d). On a lost CAS
 * with attempts left, the attempt moves onto the new latest: base and *scale
 * are refreshed and ameta[0] = PW_ATTEMPT; otherwise it ends (applied or
 * dropped) and is recorded. */
int pworker_commit(pworker *w, float *const *segs, const int64_t *lens, int32_t nseg,
                   float *base, float *scale, int32_t ameta[4]);

/* The XLA FFI handlers of pworker_read, pworker_update, pworker_begin and
 * pworker_commit (pworker_ffi.c). */
void *pworker_ffi_read_handler(void);
void *pworker_ffi_update_handler(void);
void *pworker_ffi_begin_handler(void);
void *pworker_ffi_commit_handler(void);

#ifdef __cplusplus
}
#endif
#endif
