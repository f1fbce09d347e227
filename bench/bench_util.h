// Shared by the benchmarks in bench/: a clock, a seeded generator and a minimal spinning
// thread pool (the caller is thread 0; workers spin between jobs, as Ember's ThreadPool does
// for the short jobs of a decode step).
#ifndef EMBER_BENCH_UTIL_H
#define EMBER_BENCH_UTIL_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ULL;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1;
}

enum { MAX_THREADS = 8 };
static int nthreads = 2;
static void (*job)(int);
static int generation, pending, stopping;
static pthread_t workers[MAX_THREADS];

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg, seen = 0;
    for (;;) {
        int g;
        while ((g = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen) __builtin_ia32_pause();
        seen = g;
        if (__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) return NULL;
        job(index);
        __atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL);
    }
}

static void pool_start(int threads) {
    nthreads = threads;
    for (int t = 1; t < nthreads; t++) pthread_create(&workers[t], NULL, worker, (void *)(intptr_t)t);
}

static void pool_stop(void) {
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL);
    for (int t = 1; t < nthreads; t++) pthread_join(workers[t], NULL);
}

// Runs f(thread) on every thread and waits for all.
static void run(void (*f)(int)) {
    job = f;
    __atomic_store_n(&pending, nthreads - 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL);
    f(0);
    while (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0) __builtin_ia32_pause();
}

// The part [*lo, *hi) of count that `thread` takes, in multiples of granularity (as
// ThreadPool.share).
static void share(int64_t count, int thread, int64_t granularity, int64_t *lo, int64_t *hi) {
    int64_t units = (count + granularity - 1) / granularity;
    *lo = units * thread / nthreads * granularity;
    *hi = units * (thread + 1) / nthreads * granularity;
    if (*lo > count) *lo = count;
    if (*hi > count) *hi = count;
}

#endif
