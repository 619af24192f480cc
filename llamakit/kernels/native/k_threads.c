/* The thread pool behind lk_parallel: one per process, started lazily, grown by lk_set_threads.
 *
 * A job is (fn, ctx, n_tasks). Its tasks are claimed from one 64-bit word, `work` = job number << 32 |
 * next task index, with a compare-and-swap that only succeeds while that job is the current one, so a
 * worker that wakes late (a busy machine) can never run a task of the wrong job. The caller claims tasks
 * too and returns when all tasks are *done*, not when every worker has checked in: a descheduled worker
 * delays nothing. Workers spin for a short while after a job (the matmuls of one token come back within
 * microseconds), then sleep on a condition variable, so an idle pool costs no CPU. One job runs at a time
 * (a mutex serializes callers from several threads).
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
    atomic_uint_fast64_t work; /* job << 32 | next task index */
    lk_task_fn fn;            /* the current job (written before `work` publishes it) */
    void *ctx;
    int n_tasks;
    atomic_int done;          /* tasks of the current job finished */
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

static inline uint32_t job_of(uint_fast64_t w) { return (uint32_t)(w >> 32); }

/* claim and run tasks of job `job` until none is left (or another job is current) */
static void run_tasks(uint32_t job) {
    for (;;) {
        uint_fast64_t w = atomic_load_explicit(&P.work, memory_order_acquire);
        if (job_of(w) != job || (int)(uint32_t)w >= P.n_tasks) return;
        if (!atomic_compare_exchange_weak_explicit(&P.work, &w, w + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        P.fn(P.ctx, (int)(uint32_t)w, P.n_tasks); /* stable: the job cannot change before this task is done */
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
    P.n_tasks = n_tasks;
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    uint32_t job = job_of(atomic_load(&P.work)) + 1;
    if (job == 0) job = 1; /* after 2^32 jobs: 0 is the workers' "none seen yet" */
    pthread_mutex_lock(&P.mu);
    atomic_store_explicit(&P.work, (uint_fast64_t)job << 32, memory_order_release);
    if (P.sleepers) pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    run_tasks(job);
    for (int spins = 0; atomic_load_explicit(&P.done, memory_order_acquire) < n_tasks; spins++) {
        if (spins < 4096) cpu_relax();
        else sched_yield(); /* a worker holding a task was descheduled (a busy machine): let it run */
    }
    pthread_mutex_unlock(&P.job_mu);
}
