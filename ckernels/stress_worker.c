/*
 * stress_worker.c: multi-threaded invariant checks for ptickets and pworker
 * (pworker.h), the C side of the compiled worker loop.
 *
 *   stress_worker [--short]
 *
 * tickets   m threads take and finish tickets, dropping a random share (a
 *           dropped ticket goes back, as a dropped Leashed update does), with
 *           (a) num_updates: exactly num_updates applied, every minibatch
 *           number handed out once, the reason PT_NUM_UPDATES set with nothing
 *           in flight (T1, T2, T4); (b) max_batches: every minibatch below the
 *           cap handed out once, none above, PT_EPOCHS (T2, T4); (c) a stop
 *           from another thread mid-run: no ticket after it, applied_at_stop
 *           and applied_after_stop add up to applied (T3).
 * workers   m workers (pworker_read / pworker_update) over a LEASHED and a
 *           LOCKED store with gradient = ones and a scale table that a
 *           controller thread keeps swapping between two tables (all -1 and
 *           all -2), while a monitor thread reads every worker's published
 *           records: each record below a published count must be the one the
 *           worker wrote (invariant P: the loss of gradient i is i, its
 *           timings are >= 0, attempts >= 1, staleness >= 0). At the end: the
 *           store's version = applied updates = num_updates, every parameter
 *           is equal (no torn update) and between -2 and -1 times the number
 *           of updates (each used one whole table), and the counts add up
 *           (recorded gradients = updates, updates = applied + dropped).
 *
 * Exit status 0 if every check passed, 1 otherwise. Run under ThreadSanitizer
 * and AddressSanitizer+UBSan by the Makefile (make tsan / asan).
 */
#define _POSIX_C_SOURCE 200809L
#include "pworker.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            pthread_mutex_lock(&fail_mu);                                  \
            if (failures++ < 20) {                                         \
                fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);     \
                fprintf(stderr, __VA_ARGS__);                              \
                fprintf(stderr, "\n");                                     \
            }                                                              \
            pthread_mutex_unlock(&fail_mu);                                \
        }                                                                  \
    } while (0)

static uint64_t next_random(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* ------------------------------------------------------------ tickets */

typedef struct {
    ptickets *t;
    int id;
    int64_t count;        /* minibatches handed to this thread */
    int64_t *batches;     /* their numbers */
    int64_t capacity;
    int64_t applied;
} ticket_arg;

static void *ticket_thread(void *p) {
    ticket_arg *a = p;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(a->id + 1);
    for (;;) {
        int64_t b = ptickets_take(a->t, 1, 0);
        if (b < 0) break;
        if (a->count < a->capacity) a->batches[a->count] = b;
        a->count++;
        int applied = next_random(&rng) % 8 != 0;   /* 1 in 8 dropped */
        a->applied += applied;
        ptickets_finish(a->t, applied);
    }
    return NULL;
}

/* Every number in [0, n) handed out exactly once across the threads. */
static void check_each_once(ticket_arg *args, int m, int64_t n) {
    char *seen = calloc((size_t)n + 1, 1);
    for (int k = 0; k < m; k++)
        for (int64_t i = 0; i < args[k].count && i < args[k].capacity; i++) {
            int64_t b = args[k].batches[i];
            CHECK(b >= 0 && b < n, "minibatch %lld outside [0, %lld)", (long long)b, (long long)n);
            if (b >= 0 && b < n) {
                CHECK(!seen[b], "minibatch %lld handed out twice", (long long)b);
                seen[b] = 1;
            }
        }
    for (int64_t b = 0; b < n; b++) CHECK(seen[b], "minibatch %lld never handed out", (long long)b);
    free(seen);
}

static void run_tickets(int m, int64_t num_updates, int64_t max_batches) {
    ptickets *t;
    CHECK(ptickets_create(num_updates, max_batches, &t) == PSTORE_OK, "create");
    int64_t capacity = 4 * (num_updates ? num_updates : max_batches) + 16;
    ticket_arg args[32];
    pthread_t th[32];
    for (int k = 0; k < m; k++) {
        args[k] = (ticket_arg){.t = t, .id = k, .capacity = capacity};
        args[k].batches = malloc(sizeof(int64_t) * (size_t)capacity);
        pthread_create(&th[k], NULL, ticket_thread, &args[k]);
    }
    int64_t applied = 0;
    for (int k = 0; k < m; k++) {
        pthread_join(th[k], NULL);
        applied += args[k].applied;
    }
    ptickets_state s;
    ptickets_get_state(t, &s);
    CHECK(s.in_flight == 0, "in_flight %lld at the end", (long long)s.in_flight);
    CHECK(s.applied == applied, "applied %lld, threads applied %lld", (long long)s.applied,
          (long long)applied);
    if (num_updates) {
        CHECK(s.applied == num_updates, "applied %lld != num_updates %lld", (long long)s.applied,
              (long long)num_updates);
        CHECK(s.reason == PT_NUM_UPDATES, "reason %d, want PT_NUM_UPDATES", s.reason);
    } else {
        CHECK(s.next_batch == max_batches, "next_batch %lld != max_batches %lld",
              (long long)s.next_batch, (long long)max_batches);
        CHECK(s.reason == PT_EPOCHS, "reason %d, want PT_EPOCHS", s.reason);
    }
    check_each_once(args, m, s.next_batch);
    printf("tickets m=%-2d num_updates=%-7lld max_batches=%-7lld handed=%-7lld applied=%-7lld ok\n",
           m, (long long)num_updates, (long long)max_batches, (long long)s.next_batch,
           (long long)s.applied);
    for (int k = 0; k < m; k++) free(args[k].batches);
    ptickets_destroy(t);
}

typedef struct {
    ptickets *t;
    int64_t after;        /* stop once this many are applied */
} stopper_arg;

static void *stopper(void *p) {
    stopper_arg *a = p;
    ptickets_state s;
    do {
        ptickets_get_state(a->t, &s);
    } while (s.applied < a->after && s.reason == PT_RUNNING);
    ptickets_stop(a->t, PT_TIME_BUDGET);
    return NULL;
}

static void run_stop(int m) {
    ptickets *t;
    ptickets_create(0, 0, &t);
    ticket_arg args[32];
    pthread_t th[32], st;
    stopper_arg sa = {t, 2000};
    pthread_create(&st, NULL, stopper, &sa);
    for (int k = 0; k < m; k++) {
        args[k] = (ticket_arg){.t = t, .id = k, .capacity = 1 << 20};
        args[k].batches = malloc(sizeof(int64_t) << 20);
        pthread_create(&th[k], NULL, ticket_thread, &args[k]);
    }
    for (int k = 0; k < m; k++) pthread_join(th[k], NULL);
    pthread_join(st, NULL);
    ptickets_state s;
    ptickets_get_state(t, &s);
    CHECK(s.reason == PT_TIME_BUDGET, "reason %d", s.reason);
    CHECK(ptickets_take(t, 1, 0) == PT_NONE, "a ticket after the stop");
    CHECK(ptickets_stop(t, PT_EPOCHS) == PT_TIME_BUDGET, "the first reason must win");
    CHECK(s.applied_at_stop + s.applied_after_stop == s.applied,
          "applied_at_stop %lld + after %lld != applied %lld", (long long)s.applied_at_stop,
          (long long)s.applied_after_stop, (long long)s.applied);
    CHECK(s.in_flight == 0, "in_flight %lld", (long long)s.in_flight);
    printf("tickets m=%-2d stop after %lld applied: applied=%lld after_stop=%lld ok\n", m,
           (long long)sa.after, (long long)s.applied, (long long)s.applied_after_stop);
    for (int k = 0; k < m; k++) free(args[k].batches);
    ptickets_destroy(t);
}

/* ------------------------------------------------------------ workers */

#define NSCALES 4

typedef struct {
    pworker *w;
    pworker_arrays a;
    float *params, *grad;
    int64_t d;
} worker_arg;

static void *worker_thread(void *p) {
    worker_arg *a = p;
    float *segs[2] = {a->grad, a->grad + a->d / 2};
    int64_t lens[2] = {a->d / 2, a->d - a->d / 2};
    int32_t meta[4], status[4];
    float step = 0;
    for (;;) {
        CHECK(pworker_read(a->w, a->params, meta) == PSTORE_OK, "read failed");
        if (meta[0] != PW_GO) {
            CHECK(meta[0] == PW_STOP, "read status %d with room in the records", meta[0]);
            break;
        }
        for (int64_t i = 1; i < a->d; i++)   /* a consistent read: all equal */
            if (a->params[i] != a->params[0]) {
                CHECK(0, "read a torn version (%g != %g)", a->params[i], a->params[0]);
                break;
            }
        CHECK(pworker_update(a->w, meta, step, segs, lens, 2, status) == PSTORE_OK, "update failed");
        step += 1;   /* the loss of gradient i is i */
    }
    return NULL;
}

typedef struct {
    worker_arg *workers;
    int m;
    _Atomic int *done;
    float *tables[2];
} watch_arg;

/* The monitor: reads the published records of every worker while they run. */
static void *monitor_thread(void *p) {
    watch_arg *a = p;
    int64_t checked = 0;
    while (!atomic_load(a->done)) {
        for (int k = 0; k < a->m; k++) {
            pworker_counts c;
            pworker_get_counts(a->workers[k].w, &c);
            const pworker_arrays *r = &a->workers[k].a;
            for (int64_t i = c.gradients > 64 ? c.gradients - 64 : 0; i < c.gradients; i++) {
                CHECK(r->loss[i] == (float)i, "worker %d loss[%lld] = %g", k, (long long)i,
                      r->loss[i]);
                CHECK(r->read_s[i] >= 0 && r->compute_s[i] >= 0, "negative timing");
            }
            for (int64_t j = c.updates > 64 ? c.updates - 64 : 0; j < c.updates; j++)
                CHECK(r->attempts[j] >= 1 && r->update_s[j] >= 0, "bad update record %lld",
                      (long long)j);
            for (int64_t j = c.applied > 64 ? c.applied - 64 : 0; j < c.applied; j++)
                CHECK(r->staleness[j] >= 0, "negative staleness");
            checked++;
        }
    }
    return NULL;
}

/* The controller: keeps swapping the workers' scale table. */
static void *controller_thread(void *p) {
    watch_arg *a = p;
    unsigned flip = 0;
    while (!atomic_load(a->done)) {
        flip ^= 1;
        for (int k = 0; k < a->m; k++) pworker_set_scales(a->workers[k].w, a->tables[flip]);
    }
    return NULL;
}

static void run_workers(int mode, int m, int64_t num_updates, int64_t d) {
    pstore *s;
    CHECK(pstore_create(d, mode, NULL, 0, &s) == PSTORE_OK, "pstore_create");
    ptickets *t;
    ptickets_create(num_updates, 0, &t);
    float table_a[NSCALES], table_b[NSCALES];
    for (int i = 0; i < NSCALES; i++) table_a[i] = -1.0f, table_b[i] = -2.0f;
    worker_arg w[32];
    pthread_t th[32], mon, ctl;
    _Atomic int done = 0;
    for (int k = 0; k < m; k++) {
        int64_t cap = num_updates + 1;
        memset(&w[k], 0, sizeof w[k]);
        w[k].d = d;
        w[k].params = malloc(sizeof(float) * (size_t)d);
        w[k].grad = malloc(sizeof(float) * (size_t)d);
        for (int64_t i = 0; i < d; i++) w[k].grad[i] = 1.0f;
        w[k].a = (pworker_arrays){
            .loss = calloc((size_t)cap, sizeof(float)), .read_s = calloc((size_t)cap, sizeof(double)),
            .compute_s = calloc((size_t)cap, sizeof(double)), .cap_grad = cap,
            .attempts = calloc((size_t)cap, sizeof(int32_t)),
            .update_s = calloc((size_t)cap, sizeof(double)), .cap_update = cap,
            .staleness = calloc((size_t)cap, sizeof(int32_t)), .cap_applied = cap};
        CHECK(pworker_create(s, t, table_a, NSCALES, mode == PSTORE_LEASHED ? k % 2 : -1,
                             &w[k].w) == PSTORE_OK, "pworker_create");
        pworker_set_arrays(w[k].w, &w[k].a);
    }
    watch_arg wa = {w, m, &done, {table_a, table_b}};
    pthread_create(&mon, NULL, monitor_thread, &wa);
    pthread_create(&ctl, NULL, controller_thread, &wa);
    for (int k = 0; k < m; k++) pthread_create(&th[k], NULL, worker_thread, &w[k]);
    for (int k = 0; k < m; k++) pthread_join(th[k], NULL);
    atomic_store(&done, 1);
    pthread_join(mon, NULL);
    pthread_join(ctl, NULL);

    int64_t grads = 0, updates = 0, applied = 0, dropped = 0, discarded = 0;
    for (int k = 0; k < m; k++) {
        pworker_counts c;
        pworker_get_counts(w[k].w, &c);
        CHECK(c.gradients == c.updates, "worker %d: recorded gradients != updates", k);
        CHECK(c.updates == c.applied + c.dropped, "worker %d: updates != applied + dropped", k);
        grads += c.gradients, updates += c.updates, applied += c.applied;
        dropped += c.dropped, discarded += c.discarded;
    }
    ptickets_state ts;
    ptickets_get_state(t, &ts);
    CHECK(applied == num_updates && ts.applied == num_updates, "applied %lld, want %lld",
          (long long)applied, (long long)num_updates);
    CHECK(pstore_version(s) == num_updates, "version %lld", (long long)pstore_version(s));
    float *x = malloc(sizeof(float) * (size_t)d);
    int64_t version;
    pstore_read_copy(s, x, &version);
    for (int64_t i = 1; i < d; i++)
        if (x[i] != x[0]) {
            CHECK(0, "parameters differ: x[%lld] = %g, x[0] = %g", (long long)i, x[i], x[0]);
            break;
        }
    CHECK(x[0] <= -(float)num_updates && x[0] >= -2.0f * (float)num_updates,
          "x = %g outside [-2, -1] x %lld updates", x[0], (long long)num_updates);
    printf("workers %-7s m=%-2d updates=%-6lld applied=%-6lld dropped=%-5lld discarded=%lld "
           "x=%g ok\n", mode == PSTORE_LEASHED ? "LEASHED" : "LOCKED", m, (long long)updates,
           (long long)applied, (long long)dropped, (long long)discarded, x[0]);
    (void)grads;
    free(x);
    for (int k = 0; k < m; k++) {
        pworker_destroy(w[k].w);
        free(w[k].params), free(w[k].grad);
        free(w[k].a.loss), free(w[k].a.read_s), free(w[k].a.compute_s);
        free(w[k].a.attempts), free(w[k].a.update_s), free(w[k].a.staleness);
    }
    ptickets_destroy(t);
    pstore_close(s, 1);
    pstore_destroy(s);
}

int main(int argc, char **argv) {
    int short_run = argc > 1 && strcmp(argv[1], "--short") == 0;
    int64_t n = short_run ? 20000 : 1000000;
    int threads[] = {2, 4, 8};
    for (int i = 0; i < 3; i++) {
        int m = threads[i];
        run_tickets(m, n, 0);
        run_tickets(m, 0, n);
        run_stop(m);
        run_workers(PSTORE_LEASHED, m, n / 10, 257);
        run_workers(PSTORE_LOCKED, m, n / 10, 257);
    }
    printf(failures ? "FAILED: %d failed checks\n" : "PASSED: %d failed checks\n", failures);
    return failures ? 1 : 0;
}
