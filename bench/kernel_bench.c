// Kernel micro-benchmark (not a test). Build and run:
//   clang -O3 -fno-math-errno -pthread -I Sources/CEmberKernels/include \
//      Sources/CEmberKernels/*.c bench/kernel_bench.c -o /tmp/kernel_bench -lm
//   /tmp/kernel_bench [rows (default 16384)] [type filter, e.g. Q4_1,Q4_K]
// Rows of 2048 elements: 16384 rows (~19 MB of Q4_1) stay in this machine's 32 MB L3,
// 65536 rows come from DRAM.
// Reports single-thread matvec weight bandwidth (GB/s of weight bytes read) for a matrix far
// larger than cache, and matmul time per column relative to matvec, plus a quick AVX2 vs
// portable agreement check.
#include "ember_kernels.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

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

typedef struct { int ty; int64_t n; const uint8_t *w; size_t rb; const uint8_t *a; float *y; int64_t r0, r1; } job;
static void *run_job(void *p) {
    job *j = p;
    ember_matvec(j->ty, j->n, j->w, j->rb, j->a, j->y + j->r0, j->r0, j->r1);
    return NULL;
}
// matvec with rows split over two threads (the second thread is created per call, as a
// rough stand-in for a thread pool; creation costs ~20 us).
static void matvec2(int ty, int64_t n, const uint8_t *w, size_t rb, const uint8_t *a, float *y, int64_t rows) {
    job j0 = {ty, n, w, rb, a, y, 0, rows / 2}, j1 = {ty, n, w, rb, a, y, rows / 2, rows};
    pthread_t t;
    pthread_create(&t, NULL, run_job, &j1);
    run_job(&j0);
    pthread_join(t, NULL);
}

int main(int argc, char **argv) {
    int types[] = {EMBER_TYPE_Q4_0, EMBER_TYPE_Q4_1, EMBER_TYPE_Q5_0, EMBER_TYPE_Q5_1,
                   EMBER_TYPE_Q8_0, EMBER_TYPE_Q4_K, EMBER_TYPE_Q5_K, EMBER_TYPE_Q6_K,
                   EMBER_TYPE_F16, EMBER_TYPE_BF16, EMBER_TYPE_F32};
    const char *names[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                           "F16", "BF16", "F32"};
    const int64_t n = 2048, rows = argc > 1 ? atoi(argv[1]) : 16384;  // ~ 18-134 MB of weights
    const int ncols = argc > 3 ? atoi(argv[3]) : 8;  // matmul columns
    printf("avx2: %d, n=%lld rows=%lld\n", ember_has_avx2(), (long long)n, (long long)rows);
    float *x = malloc(sizeof(float) * n * ncols), *tmp = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n * ncols; i++) x[i] = frand();
    float *y = malloc(sizeof(float) * rows * ncols), *y2 = malloc(sizeof(float) * rows);
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        if (argc > 2 && !strstr(argv[2], names[t])) continue;  // optional filter, e.g. "Q4_K,Q6_K"
        int ty = types[t], at = ember_activation_type(ty);
        size_t rb = ember_row_bytes(ty, n), ab = (ember_activation_bytes(at, n) + 63) / 64 * 64;
        uint8_t *w = aligned_alloc(64, (rb * rows + 63) / 64 * 64), *a = aligned_alloc(64, ab * ncols);
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t i = 0; i < n; i++) tmp[i] = frand();
            ember_quantize_row(ty, tmp, w + r * rb, n);
        }
        for (int c = 0; c < ncols; c++) ember_quantize_activations(at, x + c * n, a + c * ab, n);

        // agreement check on a few rows
        float maxd = 0;
        for (int r = 0; r < 16; r++) {
            float v1 = ember_dot(ty, n, w + r * rb, a);
            ember_force_portable(1);
            float v2 = ember_dot(ty, n, w + r * rb, a);
            ember_force_portable(0);
            maxd = fmaxf(maxd, fabsf(v1 - v2));
        }

        double best = 1e9;
        for (int rep = 0; rep < 40; rep++) {
            double t0 = now();
            ember_matvec(ty, n, w, rb, a, y2, 0, rows);
            double dt = now() - t0;
            if (dt < best) best = dt;
        }
        double best2 = 1e9;
        for (int rep = 0; rep < 10; rep++) {
            double t0 = now();
            matvec2(ty, n, w, rb, a, y, rows);
            double dt = now() - t0;
            if (dt < best2) best2 = dt;
        }
        double bestmm = 1e9;
        for (int rep = 0; rep < 10; rep++) {
            double t0 = now();
            ember_matmul(ty, n, w, rb, a, ab, ncols, y, rows, 0, rows);
            double dt = now() - t0;
            if (dt < bestmm) bestmm = dt;
        }
        ember_force_portable(1);
        double t0 = now();
        ember_matvec(ty, n, w, rb, a, y2, 0, rows);
        double portable = now() - t0;
        ember_force_portable(0);
        printf("%-5s matvec 2 threads %6.1f GB/s\n", names[t], rb * rows / best2 / 1e9);
        printf("%-5s matvec %6.2f ms %6.1f GB/s | matmul x%-2d %6.2f ms/col -> %.2fx faster per col"
               " | portable matvec %6.1f GB/s | |avx2-portable| %.2g\n",
               names[t], best * 1e3, rb * rows / best / 1e9, ncols, bestmm / ncols * 1e3,
               best / (bestmm / ncols), rb * rows / portable / 1e9, maxd);
        free(w); free(a);
    }
    return 0;
}
