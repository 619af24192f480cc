/* The thread pool behind lk_parallel: one per process, started lazily, grown by lk_set_threads.
 *
 * A job is (fn, ctx, n_tasks). Its tasks are claimed from one 64-bit word that describes the job by itself:
 *
 *     work = job number (32 bits) << 32 | task count (16 bits) << 16 | next task index (16 bits)
 *
 * A worker claims task `next` with a compare-and-swap of that word while next < count, reading both from
 * the word it swaps, never from the pool's other fields. So a worker that wakes late (a busy machine) and
 * still holds the word of a finished job can claim nothing: that word's next already equals its count, and
 * any newer word makes its swap fail. (An earlier pool compared `next` with the pool's task count, which the
 * next job overwrites before publishing its word: a late worker could claim task n of a 2-task job once a
 * 7-task job had written its count, run the new job's fn on a half-written context and bump its `done`, and
 * the caller then returned while a task still ran on its stack; `llamakit serve` segfaulted after a few
 * hundred requests. tests/test_native_threads.py checks this.) fn and ctx are written before the word is
 * published (release) and read after a successful swap (acquire), and cannot change until that task is done.
 * A job of more than 65535 tasks runs as consecutive chunks, each a job of its own.
 *
 * The caller claims tasks too and returns when all tasks are *done*, not when every worker has checked in: a
 * descheduled worker delays nothing. Workers spin for a short while after a job (the matmuls of one token come
 * back within microseconds), then sleep on a condition variable, so an idle pool costs no CPU. One job runs at
 * a time (a mutex serializes callers from several threads).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "k_internal.h"

#define LK_MAX_THREADS 256
#define LK_SPIN_NS 200000 /* how long an idle worker spins before sleeping */

static struct {
    pthread_mutex_t mu;       /* guards `sleepers` and the condition variable's predicate */
    pthread_cond_t cv;
    pthread_mutex_t job_mu;   /* one job at a time; also guards thread creation */
    atomic_int n_threads;     /* caller + workers taking part */
    int n_started;            /* workers running */
    int sleepers;
    atomic_uint_fast64_t work; /* job << 32 | task count << 16 | next task index */
    lk_task_fn fn;            /* the current job (written before `work` publishes it) */
    void *ctx;
    int base, n_total;        /* this chunk's first task index; the caller's n_tasks */
    atomic_int done;          /* tasks of the current chunk finished */
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 1};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define LK_CHUNK 0xFFFF /* most tasks one word describes */

static inline uint32_t job_of(uint_fast64_t w) { return (uint32_t)(w >> 32); }
static inline int count_of(uint_fast64_t w) { return (int)((w >> 16) & 0xFFFF); }
static inline int next_of(uint_fast64_t w) { return (int)(w & 0xFFFF); }

/* claim and run tasks of job `job` until none is left (or another job is current) */
static void run_tasks(uint32_t job) {
    for (;;) {
        uint_fast64_t w = atomic_load_explicit(&P.work, memory_order_acquire);
        if (job_of(w) != job || next_of(w) >= count_of(w)) return;
        if (!atomic_compare_exchange_weak_explicit(&P.work, &w, w + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        P.fn(P.ctx, P.base + next_of(w), P.n_total); /* stable: the job cannot change before this task is done */
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    const int me = (int)(intptr_t)arg; /* worker i takes part while n_threads > i + 1 */
    uint32_t seen = 0;                 /* jobs are numbered from 1 */
    for (;;) {
        const int64_t t0 = now_ns();
        for (int spins = 0; job_of(atomic_load_explicit(&P.work, memory_order_acquire)) == seen;) {
            cpu_relax();
            if ((++spins & 255) == 0 && now_ns() - t0 > LK_SPIN_NS) {
                pthread_mutex_lock(&P.mu);
                while (job_of(atomic_load(&P.work)) == seen) {
                    P.sleepers++;
                    pthread_cond_wait(&P.cv, &P.mu);
                    P.sleepers--;
                }
                pthread_mutex_unlock(&P.mu);
                break;
            }
        }
        seen = job_of(atomic_load_explicit(&P.work, memory_order_acquire));
        if (me + 1 < atomic_load(&P.n_threads)) run_tasks(seen);
    }
    return NULL;
}

LK_API int lk_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > LK_MAX_THREADS) n = LK_MAX_THREADS;
    pthread_mutex_lock(&P.job_mu);
    while (P.n_started < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker, (void *)(intptr_t)P.n_started);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        P.n_started++;
    }
    atomic_store(&P.n_threads, P.n_started + 1 < n ? P.n_started + 1 : n);
    pthread_mutex_unlock(&P.job_mu);
    return atomic_load(&P.n_threads);
}

LK_API int lk_get_threads(void) { return atomic_load(&P.n_threads); }

LK_API void lk_parallel(lk_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    pthread_mutex_lock(&P.job_mu);
    if (atomic_load(&P.n_threads) <= 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, n_tasks);
        pthread_mutex_unlock(&P.job_mu);
        return;
    }
    P.fn = fn;
    P.ctx = ctx;
    P.n_total = n_tasks;
    for (int base = 0; base < n_tasks; base += LK_CHUNK) {
        const int count = n_tasks - base < LK_CHUNK ? n_tasks - base : LK_CHUNK;
        P.base = base;
        atomic_store_explicit(&P.done, 0, memory_order_relaxed);
        uint32_t job = job_of(atomic_load(&P.work)) + 1;
        if (job == 0) job = 1; /* after 2^32 jobs: 0 is the workers' "none seen yet" */
        pthread_mutex_lock(&P.mu);
        atomic_store_explicit(&P.work, (uint_fast64_t)job << 32 | (uint_fast64_t)count << 16, memory_order_release);
        if (P.sleepers) pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
        run_tasks(job);
        for (int spins = 0; atomic_load_explicit(&P.done, memory_order_acquire) < count; spins++) {
            if (spins < 4096) cpu_relax();
            else sched_yield(); /* a worker holding a task was descheduled (a busy machine): let it run */
        }
    }
    pthread_mutex_unlock(&P.job_mu);
}

/* ---- a self-test of the job hand-off (tests/test_native_threads.py) ------------------------------
 * Runs `jobs` jobs of alternating task counts, each with its context on this stack frame, and counts
 * violations: a task run twice or not at all, a task that sees another job's context or task count, and
 * a task still running after lk_parallel returned (it would find `closed` set, or bump the next job's
 * counts); then one job of more than 65535 tasks (run as chunks). A pool that lets a late worker claim a
 * task of a finished job fails this within ~1e5 jobs. */
typedef struct {
    atomic_int *hits; /* one counter per task */
    atomic_int closed;
    int n;
} st_ctx;

static atomic_long st_errors;

static void st_task(void *p, int i, int n_tasks) {
    st_ctx *c = p;
    if (atomic_load(&c->closed) || n_tasks != c->n || i < 0 || i >= c->n) {
        atomic_fetch_add(&st_errors, 1);
        return;
    }
    atomic_fetch_add(&c->hits[i], 1);
}

/* run one job of n tasks over `hits` (zeroed here) and count the tasks not run exactly once */
static void st_job(st_ctx *c, atomic_int *hits, int n) {
    for (int i = 0; i < n; i++) atomic_store(&hits[i], 0);
    c->hits = hits;
    c->n = n;
    atomic_store(&c->closed, 0);
    lk_parallel(st_task, c, n);
    atomic_store(&c->closed, 1);
    for (int i = 0; i < n; i++)
        if (atomic_load(&hits[i]) != 1) atomic_fetch_add(&st_errors, 1);
}

LK_API int64_t lk_parallel_selftest(int64_t jobs) {
    atomic_store(&st_errors, 0);
    for (int64_t j = 0; j < jobs; j++) {
        st_ctx c; /* on this frame, as the kernels' contexts are */
        atomic_int hits[16];
        /* a short job, then a longer one: a stale index of the short one looks valid in the long one */
        st_job(&c, hits, (j & 1) ? 2 : 3 + (int)(j % 13));
    }
    /* one job of more than LK_CHUNK tasks: it runs as chunks, and fn still sees indices 0..n-1 and n */
    enum { BIG = 2 * LK_CHUNK + 7 };
    atomic_int *big = calloc(BIG, sizeof(atomic_int));
    if (!big) return -1;
    st_ctx c;
    st_job(&c, big, BIG);
    free(big);
    return atomic_load(&st_errors);
}
