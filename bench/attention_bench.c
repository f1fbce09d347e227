// Attention micro-benchmark (not a test): the per-head kernel the forward pass used
// (ember_attention_head, one query row and head at a time over an F32 cache) against the tiled
// kernel (ember_attention / ember_attention_partial), SmolLM2-shaped: 9 query heads, 3 kv
// heads, head dim 64. Build and run:
//   clang -O3 -fno-math-errno -pthread -I Sources/CEmberKernels/include \
//      Sources/CEmberKernels/*.c bench/attention_bench.c -o /tmp/attention_bench -lm -ldl
//   /tmp/attention_bench [context (default 4096)] [threads (default 2)] [layers (default 30)]
// Prefill: `context` tokens in batches of 64 rows (as the session runs a prompt), each batch
// attending over the cache so far. Decode: one row at position `context`. Both for one layer,
// best of a few runs, and scaled to `layers` layers. The work split mirrors
// Sources/EmberCore/Kernels/Attention.swift: kv heads x blocks of 16 rows balanced by keys for
// batches, kv heads x key chunks plus a merge for one row.
#include "ember_attention.h"
#include "ember_kernels.h"
#include "ember_vector.h"
#include "bench_util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { HEADS = 9, KV_HEADS = 3, HD = 64, BATCH = 64, ROWS_PER_ITEM = 16 };

// ---- the state of one measured call ----
static float *kf32, *vf32, *queries, *out, *out_old, *partials;
static uint8_t *kc, *vc;
static int64_t *positions;
static int64_t rows, context;
static ember_attention_args args;
static void *scratch[MAX_THREADS];
static float *scores[MAX_THREADS];

// Old: one ember_attention_head per (row, head) over the F32 cache, items shared evenly.
static void old_job(int thread) {
    int64_t lo, hi;
    share(rows * HEADS, thread, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        int64_t t = item / HEADS, h = item % HEADS, g = h / (HEADS / KV_HEADS);
        ember_attention_head(queries + t * HEADS * HD + h * HD, kf32 + g * HD, KV_HEADS * HD,
                             vf32 + g * HD, KV_HEADS * HD, positions[t] + 1, HD, HD, 0.125f,
                             scores[thread], out_old + t * HEADS * HD + h * HD);
    }
}

// New, batch: items (kv head, 16 rows), kv-head-major, given to threads by cumulative keys.
static void new_batch_job(int thread) {
    int64_t blocks = (rows + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM, items = KV_HEADS * blocks;
    double total = 0;
    for (int64_t t = 0; t < rows; t++) total += (double)(positions[t] + 1) * KV_HEADS;
    double before = 0;
    for (int64_t item = 0; item < items; item++) {
        int64_t g = item / blocks, t0 = item % blocks * ROWS_PER_ITEM;
        int64_t t1 = t0 + ROWS_PER_ITEM < rows ? t0 + ROWS_PER_ITEM : rows;
        double cost = 0;
        for (int64_t t = t0; t < t1; t++) cost += (double)(positions[t] + 1);
        int owner = (int)((before + cost / 2) * nthreads / total);
        if (owner >= nthreads) owner = nthreads - 1;
        before += cost;
        if (owner == thread) ember_attention(&args, g, t0, t1, scratch[thread]);
    }
}

// New, one row: kv heads x key chunks (at most 16 chunks of a multiple of 64 keys per kv head).
static int64_t chunk_keys(int64_t count) { return 64 * ((count + 16 * 64 - 1) / (16 * 64)); }
static void new_decode_job(int thread) {
    int64_t count = positions[0] + 1, chunk = chunk_keys(count), chunks = (count + chunk - 1) / chunk;
    int64_t lo, hi, pf = HEADS / KV_HEADS * (HD + 2);
    share(KV_HEADS * chunks, thread, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        int64_t g = item / chunks, c = item % chunks;
        ember_attention_partial(&args, g, 0, c * chunk, (c + 1) * chunk,
                                partials + (g * chunks + c) * pf, scratch[thread]);
    }
}
static void merge_job(int thread) {
    int64_t count = positions[0] + 1, chunk = chunk_keys(count), chunks = (count + chunk - 1) / chunk;
    int64_t lo, hi, group = HEADS / KV_HEADS;
    share(HEADS, thread, 1, &lo, &hi);
    for (int64_t h = lo; h < hi; h++) {
        int64_t g = h / group, j = h % group;
        ember_attention_merge(partials + (g * chunks * group + j) * (HD + 2), chunks, group * (HD + 2), HD,
                              out + h * HD);
    }
}

static double time_prefill(int old) {
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int64_t start = 0; start < context; start += BATCH) {
            rows = context - start < BATCH ? context - start : BATCH;
            for (int64_t t = 0; t < rows; t++) positions[t] = start + t;
            args.queries = queries;
            args.out = out;
            run(old ? old_job : new_batch_job);
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static double time_decode(int old) {
    double best = 1e9;
    rows = 1;
    positions[0] = context;
    for (int rep = 0; rep < 50; rep++) {
        double t0 = now();
        if (old) run(old_job);
        else { run(new_decode_job); run(merge_job); }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    context = argc > 1 ? atoll(argv[1]) : 4096;
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    int layers = argc > 3 ? atoi(argv[3]) : 30;
    if (threads < 1 || threads > MAX_THREADS || context < 1) return 1;
    nthreads = threads;
    int64_t cap = context + 1, kvlen = KV_HEADS * HD;
    kf32 = malloc(sizeof(float) * cap * kvlen);
    vf32 = malloc(sizeof(float) * cap * kvlen);
    kc = malloc(sizeof(float) * cap * kvlen);
    vc = malloc(sizeof(float) * cap * kvlen);
    queries = malloc(sizeof(float) * BATCH * HEADS * HD);
    out = malloc(sizeof(float) * BATCH * HEADS * HD);
    out_old = malloc(sizeof(float) * BATCH * HEADS * HD);
    positions = malloc(sizeof(int64_t) * BATCH);
    partials = malloc(sizeof(float) * KV_HEADS * 16 * HEADS * (HD + 2));
    for (int64_t i = 0; i < cap * kvlen; i++) { kf32[i] = frand(); vf32[i] = frand(); }
    for (int64_t i = 0; i < BATCH * HEADS * HD; i++) queries[i] = 2 * frand();
    for (int t = 0; t < MAX_THREADS; t++) scores[t] = malloc(sizeof(float) * cap);
    pool_start(nthreads);

    printf("avx2 %d, threads %d, context %lld, heads %d/%d, head dim %d, batches of %d rows\n",
           ember_has_avx2(), nthreads, (long long)context, HEADS, KV_HEADS, HD, BATCH);
    const int types[] = {EMBER_TYPE_F32, EMBER_TYPE_F16, EMBER_TYPE_Q8_0};
    const char *names[] = {"F32", "F16", "Q8_0"};
    double old_prefill = time_prefill(1), old_decode = time_decode(1);
    printf("old  F32  prefill %8.1f ms/layer (%6.2f s for %d layers)   decode %7.1f us/layer (%6.2f ms for %d)\n",
           old_prefill * 1e3, old_prefill * layers, layers, old_decode * 1e6, old_decode * layers * 1e3, layers);
    for (int ti = 0; ti < 3; ti++) {
        int type = types[ti];
        size_t rb = ember_kv_row_bytes(type, kvlen);
        for (int64_t p = 0; p < cap; p++) {
            ember_kv_store(type, kf32 + p * kvlen, kc + p * rb, kvlen);
            ember_kv_store(type, vf32 + p * kvlen, vc + p * rb, kvlen);
        }
        args = (ember_attention_args){.cache_type = type, .keys = kc, .values = vc, .key_stride = rb,
                                      .value_stride = rb, .queries = queries, .query_stride = HEADS * HD,
                                      .positions = positions, .window = 0, .out = out,
                                      .out_stride = HEADS * HD, .head_count = HEADS,
                                      .kv_head_count = KV_HEADS, .head_dim = HD, .value_dim = HD,
                                      .scale = 0.125f};
        for (int t = 0; t < nthreads; t++) scratch[t] = aligned_alloc(64, (ember_attention_scratch_bytes(&args) + 63) / 64 * 64);
        // Agreement with the old kernel on the last batch and on decode (F32: float rounding
        // only; F16/Q8_0: the cache's rounding too).
        double worst = 0;
        rows = BATCH < context ? BATCH : context;
        for (int64_t t = 0; t < rows; t++) positions[t] = context - rows + t;
        run(old_job);
        run(new_batch_job);
        for (int64_t i = 0; i < rows * HEADS * HD; i++) worst = fmax(worst, fabs(out[i] - out_old[i]));
        rows = 1;
        positions[0] = context;
        run(old_job);
        run(new_decode_job);
        run(merge_job);
        for (int64_t i = 0; i < HEADS * HD; i++) worst = fmax(worst, fabs(out[i] - out_old[i]));
        double prefill = time_prefill(0), decode = time_decode(0);
        printf("new  %-4s prefill %8.1f ms/layer (%6.2f s for %d layers)   decode %7.1f us/layer (%6.2f ms for %d)"
               "   %.1fx / %.1fx   max |new - old| %.2g\n",
               names[ti], prefill * 1e3, prefill * layers, layers, decode * 1e6, decode * layers * 1e3, layers,
               old_prefill / prefill, old_decode / decode, worst);
        for (int t = 0; t < nthreads; t++) free(scratch[t]);
    }
    pool_stop();
    return 0;
}
