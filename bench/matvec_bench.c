// Decode matrix-vector bandwidth against the machine's read bandwidth (not a test).
// Build and run:
//   clang -O3 -fno-math-errno -pthread -I Sources/CEmberKernels/include \
//      Sources/CEmberKernels/*.c bench/matvec_bench.c -o /tmp/matvec_bench -lm -ldl
//   /tmp/matvec_bench [threads (default 2)] [type filter, e.g. Q4_0,Q6_K] [gather share, e.g. 0.1]
// Read bandwidth: each thread sums its half of a 512 MB buffer (as Kernels/MemoryBandwidth.swift,
// the figure `ember bench` reports), best of 4. Matvec: 4096x4096 and 11008x4096 matrices, as
// many copies as fill 512 MB (so nothing is served from the 32 MB L3), run one after the other
// as a decode step runs its layers; rows split over threads in multiples of 16 as
// ForwardPass.linear does, each thread quantizing the activations itself first. Best of 5
// passes, GB/s of weight bytes and the share of the read bandwidth. With a gather share g, also
// ember_matvec_gather over a random g of the rows (sorted ids), split over threads by rows.
#include "ember_kernels.h"
#include "ember_sparse.h"
#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { POOL_BYTES = 512 << 20 };

// ---- read bandwidth, the way MemoryBandwidth.swift measures it ----
typedef float v8 __attribute__((vector_size(32)));
static v8 *buffer;
static int64_t buffer_count;
static volatile float sink[MAX_THREADS];  // volatile: the sums must be computed
static void read_job(int thread) {
    int64_t share_count = buffer_count / nthreads;
    const v8 *p = buffer + thread * share_count;
    v8 a = {0}, b = {0}, c = {0}, d = {0};
    for (int64_t i = 0; i + 4 <= share_count; i += 4) { a += p[i]; b += p[i + 1]; c += p[i + 2]; d += p[i + 3]; }
    v8 s = a + b + c + d;
    sink[thread] = s[0] + s[7];
}
static double read_bandwidth(void) {
    buffer_count = (int64_t)POOL_BYTES / sizeof(v8);
    buffer = aligned_alloc(64, POOL_BYTES);
    for (int64_t i = 0; i < buffer_count; i++) buffer[i] = (v8){1, 1, 1, 1, 1, 1, 1, 1};
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now();
        run(read_job);
        double bw = (double)(buffer_count / nthreads * nthreads) * sizeof(v8) / (now() - t0);
        if (bw > best) best = bw;
    }
    free(buffer);
    return best;
}

// ---- matvec over copies of one matrix ----
static int type, act_type;
static int64_t rows, cols, copies, gathered;
static size_t row_bytes, matrix_bytes;
static uint8_t *weights;
static const float *x;
static uint8_t *acts[MAX_THREADS];
static float *y;
static int32_t *ids;
static int prequantized;

static void matvec_job(int thread) {
    int64_t lo, hi;
    share(rows, thread, 16, &lo, &hi);
    for (int64_t m = 0; m < copies; m++) {
        if (!prequantized || m == 0) ember_quantize_activations(act_type, x, acts[thread], cols);
        if (hi > lo) ember_matvec(type, cols, weights + m * matrix_bytes, row_bytes, acts[thread], y + lo, lo, hi);
    }
}

static void gather_job(int thread) {
    int64_t lo, hi;
    share(gathered, thread, 1, &lo, &hi);
    for (int64_t m = 0; m < copies; m++) {
        ember_quantize_activations(act_type, x, acts[thread], cols);
        if (hi > lo)
            ember_matvec_gather(type, cols, weights + m * matrix_bytes, row_bytes, acts[thread], ids + lo, hi - lo, y + lo);
    }
}

static double best_of(void (*f)(int), int reps) {
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        run(f);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    const char *filter = argc > 2 ? argv[2] : "Q4_0,Q4_K,Q6_K,Q8_0";
    double share_active = argc > 3 ? atof(argv[3]) : 0;
    if (threads < 1 || threads > MAX_THREADS) return 1;
    pool_start(threads);
    double bw = read_bandwidth();
    printf("threads %d, avx2 %d, read bandwidth %.1f GB/s\n", threads, ember_has_avx2(), bw / 1e9);

    const int types[] = {EMBER_TYPE_Q4_0, EMBER_TYPE_Q4_K, EMBER_TYPE_Q6_K, EMBER_TYPE_Q8_0, EMBER_TYPE_Q5_0,
                         EMBER_TYPE_Q4_1, EMBER_TYPE_Q5_K, EMBER_TYPE_F16};
    const char *names[] = {"Q4_0", "Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_1", "Q5_K", "F16"};
    const int64_t shapes[][2] = {{4096, 4096}, {11008, 4096}};
    float *xs = malloc(sizeof(float) * 11008), *tmp = malloc(sizeof(float) * 11008);
    for (int i = 0; i < 11008; i++) xs[i] = frand();
    x = xs;
    y = malloc(sizeof(float) * 11008);
    ids = malloc(sizeof(int32_t) * 11008);
    for (int t = 0; t < MAX_THREADS; t++) acts[t] = aligned_alloc(64, 64 * 1024);
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        if (!strstr(filter, names[ti])) continue;
        type = types[ti];
        act_type = ember_activation_type(type);
        for (int si = 0; si < 2; si++) {
            rows = shapes[si][0];
            cols = shapes[si][1];
            row_bytes = ember_row_bytes(type, cols);
            matrix_bytes = (row_bytes * rows + 4095) / 4096 * 4096;
            copies = POOL_BYTES / matrix_bytes;
            weights = aligned_alloc(4096, matrix_bytes * copies);
            // 64 quantized rows repeated: the contents do not change the speed.
            for (int64_t r = 0; r < 64; r++) {
                for (int64_t i = 0; i < cols; i++) tmp[i] = frand();
                ember_quantize_row(type, tmp, weights + r * row_bytes, cols);
            }
            for (int64_t r = 64; r < rows; r++) memcpy(weights + r * row_bytes, weights + (r % 64) * row_bytes, row_bytes);
            for (int64_t m = 1; m < copies; m++) memcpy(weights + m * matrix_bytes, weights, matrix_bytes);
            double total = (double)row_bytes * rows * copies;
            prequantized = 0;
            double t = best_of(matvec_job, 5);
            prequantized = 1;
            double tq = best_of(matvec_job, 5);
            printf("%-5s %5lldx%lld  matvec %6.1f GB/s  %5.1f %% of read  (activations quantized once: %5.1f %%)"
                   "  %6.1f us per matrix\n",
                   names[ti], (long long)rows, (long long)cols, total / t / 1e9, 100 * total / t / bw,
                   100 * total / tq / bw, t / copies * 1e6);
            if (share_active > 0) {
                gathered = 0;
                for (int64_t r = 0; r < rows; r++)
                    if ((frand() + 1) / 2 < share_active) ids[gathered++] = (int32_t)r;
                double tg = best_of(gather_job, 5), bytes = (double)gathered * row_bytes * copies;
                printf("%-5s %5lldx%lld  gather %4.1f %% of rows  %6.1f GB/s  %5.1f %% of read\n", names[ti],
                       (long long)rows, (long long)cols, 100.0 * gathered / rows, bytes / tg / 1e9, 100 * bytes / tg / bw);
            }
            free(weights);
        }
    }
    pool_stop();
    return 0;
}
