/* The thread pool behind lk_parallel: one per process, started lazily, grown by lk_set_threads.
 *
 * A job is (fn, ctx, n_tasks); the caller and the workers take task indices from one atomic counter, so
 * uneven tasks balance themselves. Workers spin for a short while after a job (matmuls of one token come
 * back within microseconds), then sleep on a condition variable: an idle pool costs no CPU. One job runs
 * at a time (a mutex serializes callers from several threads).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "k_internal.h"

#define LK_MAX_THREADS 256
#define LK_SPIN_NS 200000 /* how long an idle worker spins before sleeping */

static struct {
    pthread_mutex_t mu;       /* guards gen/sleepers for the condition variable */
    pthread_cond_t cv;
    pthread_mutex_t job_mu;   /* one job at a time */
    int n_threads;            /* caller + workers taking part */
    int n_started;            /* workers running */
    atomic_uint_fast64_t gen; /* bumped for every job */
    int sleepers;
    lk_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;          /* next task index */
    atomic_int active;        /* workers still in the current job */
    int job_workers;          /* workers taking part in the current job */
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 1, 0};

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

static void run_tasks(void) {
    int i;
    while ((i = atomic_fetch_add_explicit(&P.next, 1, memory_order_relaxed)) < P.n_tasks) P.fn(P.ctx, i, P.n_tasks);
}

static void *worker(void *arg) {
    const int me = (int)(intptr_t)arg; /* 0-based worker index */
    uint_fast64_t seen = atomic_load(&P.gen);
    for (;;) {
        int64_t t0 = now_ns();
        int spins = 0;
        while (atomic_load_explicit(&P.gen, memory_order_acquire) == seen) {
            cpu_relax();
            if ((++spins & 255) == 0 && now_ns() - t0 > LK_SPIN_NS) {
                pthread_mutex_lock(&P.mu);
                while (atomic_load(&P.gen) == seen) {
                    P.sleepers++;
                    pthread_cond_wait(&P.cv, &P.mu);
                    P.sleepers--;
                }
                pthread_mutex_unlock(&P.mu);
                break;
            }
        }
        seen = atomic_load(&P.gen);
        if (me < P.job_workers) {
            run_tasks();
            atomic_fetch_sub_explicit(&P.active, 1, memory_order_release);
        }
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
    P.n_threads = P.n_started + 1 < n ? P.n_started + 1 : n;
    pthread_mutex_unlock(&P.job_mu);
    return P.n_threads;
}

LK_API int lk_get_threads(void) { return P.n_threads; }

LK_API void lk_parallel(lk_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    pthread_mutex_lock(&P.job_mu);
    int workers = P.n_threads - 1 < n_tasks - 1 ? P.n_threads - 1 : n_tasks - 1;
    if (workers <= 0) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, n_tasks);
        pthread_mutex_unlock(&P.job_mu);
        return;
    }
    P.fn = fn;
    P.ctx = ctx;
    P.n_tasks = n_tasks;
    P.job_workers = workers;
    atomic_store(&P.next, 0);
    atomic_store(&P.active, workers);
    pthread_mutex_lock(&P.mu);
    atomic_fetch_add_explicit(&P.gen, 1, memory_order_release);
    if (P.sleepers) pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    run_tasks();
    while (atomic_load_explicit(&P.active, memory_order_acquire) > 0) cpu_relax();
    pthread_mutex_unlock(&P.job_mu);
}
