// Drivers: runtime choice between the x86 (AVX-512 VNNI, AVX2) and portable kernels, and the
// row/column tiling of ember_dot, ember_matvec and ember_matmul over the per-type tile kernels.
#include "internal.h"
#include <stdlib.h>

// The cap ember_limit_kernels sets; -1: none.
static int kernel_cap = -1;

// Matmul tile: 2 rows x 4 columns (8 accumulators) measured best among 2x4, 3x4, 4x2, 3x3.
#define MM_NC 4
#define MM_NR 2

static int detect_kernel_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
        return EMBER_KERNELS_PORTABLE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"))
        return EMBER_KERNELS_AVX512_VNNI;
    return EMBER_KERNELS_AVX2;
#else
    return EMBER_KERNELS_PORTABLE;
#endif
}

// Both values are read by every kernel call, possibly from several threads: relaxed atomics
// (the CPU check gives the same answer in every thread, so a repeated first check is fine).
int ember_cpu_kernel_level(void) {
    static int cached = -1;
    int level = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (level < 0) {
        level = detect_kernel_level();
        __atomic_store_n(&cached, level, __ATOMIC_RELAXED);
    }
    return level;
}

int ember_kernel_level(void) {
    int level = ember_cpu_kernel_level();
    int cap = __atomic_load_n(&kernel_cap, __ATOMIC_RELAXED);
    return cap >= 0 && cap < level ? cap : level;
}

void ember_limit_kernels(int level) { __atomic_store_n(&kernel_cap, level < 0 ? -1 : level, __ATOMIC_RELAXED); }

int ember_has_avx2(void) { return ember_kernel_level() >= EMBER_KERNELS_AVX2; }

void ember_force_portable(int on) { ember_limit_kernels(on ? EMBER_KERNELS_PORTABLE : -1); }

const ember_kernel_set *ember_tile_kernels(int type) {
    const ember_kernel_set *k = NULL;
    switch (ember_kernel_level()) {
    case EMBER_KERNELS_AVX512_VNNI: k = ember_vnni_kernels(type); break;
    case EMBER_KERNELS_AVX2: k = ember_avx2_kernels(type); break;
    default: break;
    }
    return k ? k : ember_portable_kernels(type);
}

float ember_dot(int type, int64_t n, const void *row, const void *act) {
    const ember_kernel_set *k = ember_tile_kernels(type);
    float y = 0;
    const uint8_t *w = row;
    if (k) k->tiles[0][0](n, &w, &w, act, 0, &y, 0);
    return y;
}

// The tallest tile with nc columns that the set provides, at most `rows` tall.
static int pick_rows(const ember_kernel_set *k, int nc, int64_t rows) {
    for (int nr = nc == 1 ? EMBER_MAX_NR : MM_NR; nr > 1; nr--)
        if (nr <= rows && k->tiles[nr - 1][nc - 1]) return nr;
    return 1;
}

// y[c*ldy + (r - r0)] for r in [r0, r1), c in [0, ncols).
static void run_tiles(const ember_kernel_set *k, int64_t n, const uint8_t *w, size_t row_bytes,
                      const uint8_t *act, size_t act_stride, int64_t ncols, float *y,
                      int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < ncols;) {
        int nc = ncols - c >= MM_NC ? MM_NC : (int)(ncols - c);
        while (nc > 1 && !k->tiles[0][nc - 1]) nc--;
        const uint8_t *a = act + c * act_stride;
        for (int64_t r = r0; r < r1;) {
            int nr = pick_rows(k, nc, r1 - r);
            const uint8_t *rows[EMBER_MAX_NR], *next[EMBER_MAX_NR];
            for (int i = 0; i < nr; i++) {
                rows[i] = w + (r + i) * row_bytes;
                next[i] = r + i + PF_ROWS < r1 ? rows[i] + PF_ROWS * row_bytes : rows[i];
            }
            k->tiles[nr - 1][nc - 1](n, rows, next, a, act_stride, y + c * ldy + (r - r0), ldy);
            r += nr;
        }
        c += nc;
    }
}

void ember_matvec(int type, int64_t n, const void *w, size_t row_bytes,
                  const void *act, float *y, int64_t r0, int64_t r1) {
    const ember_kernel_set *k = ember_tile_kernels(type);
    if (!k || r1 <= r0) return;
    run_tiles(k, n, w, row_bytes, act, 0, 1, y, 0, r0, r1);
}

// With enough columns the quantized types go through the repacked 8-row paths (gemm_avx2.c,
// AVX2 or VNNI). Both paths give the same bits, so the choice is speed alone: the column count
// from which repacking pays, ns per row, block and column, tiles against repacked, one thread.
// AVX2 (Zen3): Q4_0 4096 wide, 4 columns, from memory 1.13 / 0.82; short rows, whose tiles
// prefetch as one run, pay later (Q8_0 640 wide: 4 columns 1.09 / 1.25, 6 columns 1.13 /
// 0.99); K-quant super-blocks cost more to repack (Q4_K 2048 wide from cache, 4 columns 0.61 /
// 0.65, 6: 0.70 / 0.54; Q6_K 2048 wide, 4: 0.71 / 1.03, 8: 0.70 / 0.71).
// VNNI (Zen4, from memory): the repacked 4- and 5-bit kernels win from 3 columns at every row
// length (Q4_1 576 wide: 1.16 / 0.84; Q4_0 4096: 1.01 / 0.86; Q5_0 640: 1.49 / 1.13; at 2
// columns the tiles mostly win: Q4_0 1.10 / 1.22), Q8_0 as on AVX2 (640 wide, 4 columns 1.03 /
// 1.07, 6: 1.08 / 0.84); the K-quant tiles gain more than the repack does, which pays only from
// 12 columns (Q4_K 2048 wide, 8: 0.54 / 0.58, 12: 0.52 / 0.45) and for Q6_K from 16 (12: 0.72 /
// 0.74, 16: 0.68 / 0.51).
static int64_t repack_min_columns(int type, size_t row_bytes) {
    const int vnni = ember_kernel_level() >= EMBER_KERNELS_AVX512_VNNI;
    switch (type) {
    case EMBER_TYPE_Q6_K: return vnni ? 16 : 8;
    case EMBER_TYPE_Q4_K: case EMBER_TYPE_Q5_K: return vnni ? 12 : 6;
    case EMBER_TYPE_Q8_0: return row_bytes <= LINEAR_PREFETCH_MAX_ROW ? 6 : 4;
    default: return vnni ? 3 : row_bytes <= LINEAR_PREFETCH_MAX_ROW ? 6 : 4;
    }
}

// The repacked kernels read a band of 8 rows block by block across the rows, a pattern the
// hardware prefetchers follow poorly from memory: the next band is prefetched whole as one run
// while this one is repacked (Gemma 3's head, Q8_0, 640 x 262144, 4 columns, Zen3, one thread:
// without it 1.75 ns per row, block and column against 1.14 for the tiles).
static void prefetch_band(const uint8_t *w, size_t row_bytes, int64_t r, int64_t r1) {
    if (r + 8 > r1) return;
    const uint8_t *p = w + r * row_bytes;
    for (size_t o = 0; o < 8 * row_bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
}

static int matmul_gemm8(int type, int64_t n, const uint8_t *w, size_t row_bytes,
                        const uint8_t *act, size_t act_stride, int64_t ncols,
                        float *y, int64_t ldy, int64_t r0, int64_t r1) {
    int64_t nb = n / 32;
    int has_offset = type == EMBER_TYPE_Q4_0 || type == EMBER_TYPE_Q5_0;
    size_t xsum_bytes = has_offset ? (size_t)(ncols * nb) * sizeof(int32_t) : 0;
    uint8_t *q8 = malloc((size_t)nb * (256 + 16 * sizeof(float)) + xsum_bytes);
    if (!q8) return 0;
    float *dm = (float *)(q8 + nb * 256);
    int32_t *xsum = has_offset ? (int32_t *)(dm + 16 * nb) : NULL;
    for (int64_t c = 0; has_offset && c < ncols; c++) {  // Q8_0 activation block sums
        const block_q8_0 *a = (const block_q8_0 *)(act + c * act_stride);
        for (int64_t b = 0; b < nb; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += a[b].qs[j];
            xsum[c * nb + b] = sum;
        }
    }
    const int vnni = ember_kernel_level() >= EMBER_KERNELS_AVX512_VNNI;
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        prefetch_band(w, row_bytes, r + 8, r1);
        if (vnni) {
            ember_vnni_repack8(type, n, w + r * row_bytes, row_bytes, q8, dm);
            ember_vnni_gemm8(type, n, q8, dm, xsum, act, act_stride, ncols, y + r, ldy);
        } else {
            ember_avx2_repack8(type, n, w + r * row_bytes, row_bytes, q8, dm);
            ember_avx2_gemm8(type, n, q8, dm, xsum, act, act_stride, ncols, y + r, ldy);
        }
    }
    free(q8);
    if (r < r1)  // fewer than 8 rows left
        run_tiles(ember_tile_kernels(type), n, w, row_bytes, act, act_stride, ncols, y + r, ldy, r, r1);
    return 1;
}

static int matmul_gemm8_k(int type, int64_t n, const uint8_t *w, size_t row_bytes,
                          const uint8_t *act, size_t act_stride, int64_t ncols,
                          float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int vnni = ember_kernel_level() >= EMBER_KERNELS_AVX512_VNNI;
    uint8_t *packed = malloc(vnni ? ember_vnni_repack8_k_bytes(n) : ember_avx2_repack8_k_bytes(n));
    if (!packed) return 0;
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        prefetch_band(w, row_bytes, r + 8, r1);
        if (vnni) {
            ember_vnni_repack8_k(type, n, w + r * row_bytes, row_bytes, packed);
            ember_vnni_gemm8_k(type, n, packed, act, act_stride, ncols, y + r, ldy);
        } else {
            ember_avx2_repack8_k(type, n, w + r * row_bytes, row_bytes, packed);
            ember_avx2_gemm8_k(type, n, packed, act, act_stride, ncols, y + r, ldy);
        }
    }
    free(packed);
    if (r < r1)
        run_tiles(ember_tile_kernels(type), n, w, row_bytes, act, act_stride, ncols, y + r, ldy, r, r1);
    return 1;
}

// Columns outermost in groups of MM_NC; rows are taken in bands (~256 KB of weights, a
// quarter of L2) so each band is reused from cache by every column group.
void ember_matmul(int type, int64_t n, const void *w, size_t row_bytes,
                  const void *act, size_t act_stride, int64_t ncols,
                  float *y, int64_t ldy, int64_t r0, int64_t r1) {
    ember_matmul_path(type, n, w, row_bytes, act, act_stride, ncols, y, ldy, r0, r1, EMBER_MATMUL_AUTO);
}

void ember_matmul_path(int type, int64_t n, const void *w, size_t row_bytes,
                       const void *act, size_t act_stride, int64_t ncols,
                       float *y, int64_t ldy, int64_t r0, int64_t r1, int path) {
    const ember_kernel_set *k = ember_tile_kernels(type);
    if (!k || r1 <= r0 || ncols <= 0) return;
    int repack = path == EMBER_MATMUL_REPACKED ||
                 (path == EMBER_MATMUL_AUTO && ncols >= repack_min_columns(type, row_bytes));
    if (repack && r1 - r0 >= 8 && ember_has_avx2() &&
        (type == EMBER_TYPE_Q4_0 || type == EMBER_TYPE_Q4_1 || type == EMBER_TYPE_Q5_0 ||
         type == EMBER_TYPE_Q5_1 || type == EMBER_TYPE_Q8_0) &&
        matmul_gemm8(type, n, w, row_bytes, act, act_stride, ncols, y, ldy, r0, r1))
        return;
    if (repack && r1 - r0 >= 8 && ember_has_avx2() &&
        (type == EMBER_TYPE_Q4_K || type == EMBER_TYPE_Q5_K || type == EMBER_TYPE_Q6_K) &&
        matmul_gemm8_k(type, n, w, row_bytes, act, act_stride, ncols, y, ldy, r0, r1))
        return;
    int64_t band = row_bytes ? (int64_t)((256 * 1024) / row_bytes) : 64;
    if (band < 4) band = 4;
    for (int64_t b0 = r0; b0 < r1; b0 += band) {
        int64_t b1 = b0 + band < r1 ? b0 + band : r1;
        run_tiles(k, n, w, row_bytes, act, act_stride, ncols, y + b0, ldy, b0, b1);
    }
}
