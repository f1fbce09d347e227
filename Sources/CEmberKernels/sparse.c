// Neuron-aware sparse operators (ember_sparse.h): row gather for gate/up, column gather
// (axpy over neuron-major rows) for down.
#include "ember_sparse.h"
#include "ember_vector.h"
#include "avx2_util.h"
#include <stdlib.h>

// How far ahead, in gathered rows, whole rows are prefetched where the tiles do not prefetch
// (the first rows, the portable path). The active rows are scattered, so the hardware
// prefetcher cannot find them. Measured on Zen3 (Q4_0, 4096 columns, 10 % of rows): 1 to 16
// rows ahead all alike; hint T1 (locality 2) clearly ahead of T0 and NTA.
enum { GATHER_AHEAD = 4 };

static void prefetch_rows(const uint8_t *w, size_t row_bytes, const int32_t *rows, int64_t count) {
    for (int64_t k = 0; k < count; k++) {
        const uint8_t *p = w + (size_t)rows[k] * row_bytes;
        for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
    }
}

static const ember_kernel_set *kernels_for(int type) {
    const ember_kernel_set *k = ember_has_avx2() ? ember_avx2_kernels(type) : NULL;
    return k ? k : ember_portable_kernels(type);
}

// ---------------------------------------------------------------------------------------
// Row gather
// ---------------------------------------------------------------------------------------

// The dense tiles on row pointers (see internal.h): the gathered rows go through the tallest
// single-column tile the path has, four at a time on AVX2 for every type (four independent
// accumulator chains hide the FMA latency that bounds a single-row tile: Q4_0, 4096 columns,
// 10 % of 11008 rows, one thread, cold caches, 7.7x faster than dense against 5.1x with
// single-row tiles). Each tile prefetches, block by block, the rows of the group after it;
// the first group is prefetched whole. Tiles without their own prefetch (the portable ones)
// get whole rows prefetched GATHER_AHEAD rows ahead instead. Every result is bit-identical to
// ember_matvec's for that row: same tiles, and no result depends on the tile's other rows.
void ember_matvec_gather(int type, int64_t n, const void *w, size_t row_bytes,
                         const void *act, const int32_t *rows, int64_t count, float *y) {
    const ember_kernel_set *k = kernels_for(type);
    if (!k || count <= 0) return;
    const uint8_t *base = w;
    int nr = EMBER_MAX_NR;
    while (nr > 1 && !k->tiles[nr - 1][0]) nr--;
    int tiles_prefetch = k != ember_portable_kernels(type);
    prefetch_rows(base, row_bytes, rows, count < GATHER_AHEAD ? count : GATHER_AHEAD);
    for (int64_t i = 0; i < count; i += nr) {
        int m = count - i < nr ? (int)(count - i) : nr;
        const uint8_t *cur[EMBER_MAX_NR], *next[EMBER_MAX_NR];
        for (int j = 0; j < m; j++) {
            cur[j] = base + (size_t)rows[i + j] * row_bytes;
            next[j] = i + m + j < count ? base + (size_t)rows[i + m + j] * row_bytes : cur[j];
        }
        if (!tiles_prefetch && i + GATHER_AHEAD < count)
            prefetch_rows(base, row_bytes, rows + i + GATHER_AHEAD, count - i - GATHER_AHEAD < m ? count - i - GATHER_AHEAD : m);
        // The tail group may be shorter: every height up to nr exists when nr does (AVX2).
        k->tiles[m - 1][0](n, cur, next, act, 0, y + i, 0);
    }
}

// ---------------------------------------------------------------------------------------
// Column gather: y += Σ coef[k] · row rows[k]
// ---------------------------------------------------------------------------------------

// Any type: expand each row into a float scratch, then y += c · row (ember_vec_axpy picks
// AVX2 or portable code).
static void axpy_gather_generic(int type, int64_t n, const uint8_t *w, size_t row_bytes,
                                const int32_t *rows, const float *coef, int64_t count, float *y) {
    float *tmp = malloc((size_t)n * sizeof(float));
    if (!tmp) return;
    for (int64_t k = 0; k < count; k++) {
        if (k + GATHER_AHEAD < count) prefetch_rows(w, row_bytes, rows + k + GATHER_AHEAD, 1);
        ember_dequantize_row(type, w + (size_t)rows[k] * row_bytes, tmp, n);
        ember_vec_axpy(coef[k], tmp, y, n);
    }
    free(tmp);
}

#if defined(__x86_64__) || defined(__i386__)
enum { A_Q4_0, A_Q4_1, A_Q8_0, A_F16, A_F32 };

// Rows per pass over y: each 32-element stretch of y is loaded once into 4 registers, takes
// the FMAs of AXPY_NR rows, and is stored once, so y traffic is 1/AXPY_NR of the naive loop.
enum { AXPY_NR = 4 };

// 32 signed bytes -> 4 x 8 floats.
INLINE void bytes_to_floats(__m256i q, __m256 f[4]) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    f[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    f[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    f[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    f[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

// y[0 .. 32*(n/32)) += Σ_i c[i] · row i for nr rows. `next` are the rows of the following
// pass, prefetched block by block alongside (NULL entries: nothing to prefetch).
INLINE void axpy_rows(const int kind, const int nr, int64_t n, const uint8_t *const *w,
                      const float *c, const uint8_t *const *next, float *y) {
    const int bytes = kind == A_Q4_0 ? 18 : kind == A_Q4_1 ? 20 : kind == A_Q8_0 ? 34
                    : kind == A_F16 ? 64 : 128;  // float kinds: 32 elements per "block"
    for (int64_t b = 0; b < n / 32; b++) {
        float *yb = y + 32 * b;
        __m256 acc[4];
        UNROLL
        for (int j = 0; j < 4; j++) acc[j] = _mm256_loadu_ps(yb + 8 * j);
        float offset = 0;  // Q4_1: Σ c·m, the same for every element of the stretch
        UNROLL
        for (int i = 0; i < nr; i++) {
            const uint8_t *wb = w[i] + b * bytes;
            if (next[i]) prefetch_block(next[i] + b * bytes, bytes);
            __m256 f[4], scale;
            switch (kind) {
            case A_Q4_0:
                bytes_to_floats(_mm256_sub_epi8(nibbles32(wb + 2), _mm256_set1_epi8(8)), f);
                scale = _mm256_set1_ps(h2f(wb) * c[i]);
                break;
            case A_Q4_1:
                bytes_to_floats(nibbles32(wb + 4), f);
                scale = _mm256_set1_ps(h2f(wb) * c[i]);
                offset += h2f(wb + 2) * c[i];
                break;
            case A_Q8_0:
                UNROLL
                for (int j = 0; j < 4; j++)
                    f[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wb + 2 + 8 * j))));
                scale = _mm256_set1_ps(h2f(wb) * c[i]);
                break;
            case A_F16:
                UNROLL
                for (int j = 0; j < 4; j++) f[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wb + 16 * j)));
                scale = _mm256_set1_ps(c[i]);
                break;
            default:
                UNROLL
                for (int j = 0; j < 4; j++) f[j] = _mm256_loadu_ps((const float *)wb + 8 * j);
                scale = _mm256_set1_ps(c[i]);
                break;
            }
            UNROLL
            for (int j = 0; j < 4; j++) acc[j] = _mm256_fmadd_ps(f[j], scale, acc[j]);
        }
        if (kind == A_Q4_1) {
            UNROLL
            for (int j = 0; j < 4; j++) acc[j] = _mm256_add_ps(acc[j], _mm256_set1_ps(offset));
        }
        UNROLL
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(yb + 8 * j, acc[j]);
    }
}

#define AXPY_FN(name, kind)                                                                 \
    static AVX2 void name##_1(int64_t n, const uint8_t *const *w, const float *c,           \
                              const uint8_t *const *next, float *y) {                       \
        axpy_rows(kind, 1, n, w, c, next, y);                                               \
    }                                                                                       \
    static AVX2 void name##_4(int64_t n, const uint8_t *const *w, const float *c,           \
                              const uint8_t *const *next, float *y) {                       \
        axpy_rows(kind, AXPY_NR, n, w, c, next, y);                                         \
    }
AXPY_FN(axpy_q4_0, A_Q4_0)
AXPY_FN(axpy_q4_1, A_Q4_1)
AXPY_FN(axpy_q8_0, A_Q8_0)
AXPY_FN(axpy_f16, A_F16)
AXPY_FN(axpy_f32, A_F32)

typedef void (*axpy_fn)(int64_t, const uint8_t *const *, const float *, const uint8_t *const *, float *);

// Returns 0 when the type has no AVX2 path here.
static AVX2 int axpy_gather_avx2(int type, int64_t n, const uint8_t *w, size_t row_bytes,
                            const int32_t *rows, const float *coef, int64_t count, float *y) {
    axpy_fn f1, f4;
    switch (type) {
    case EMBER_TYPE_Q4_0: f1 = axpy_q4_0_1; f4 = axpy_q4_0_4; break;
    case EMBER_TYPE_Q4_1: f1 = axpy_q4_1_1; f4 = axpy_q4_1_4; break;
    case EMBER_TYPE_Q8_0: f1 = axpy_q8_0_1; f4 = axpy_q8_0_4; break;
    case EMBER_TYPE_F16: f1 = axpy_f16_1; f4 = axpy_f16_4; break;
    case EMBER_TYPE_F32: f1 = axpy_f32_1; f4 = axpy_f32_4; break;
    default: return 0;
    }
    int eb = type == EMBER_TYPE_F16 ? 2 : 4;
    int floats = type == EMBER_TYPE_F16 || type == EMBER_TYPE_F32;
    int64_t head = n / 32 * 32;  // float rows need not be a multiple of 32: scalar tail below
    const uint8_t *cur[AXPY_NR], *next[AXPY_NR];
    for (int64_t k = 0; k < count;) {
        int nr = count - k >= AXPY_NR ? AXPY_NR : 1;
        for (int i = 0; i < nr; i++) {
            cur[i] = w + (size_t)rows[k + i] * row_bytes;
            int64_t t = k + nr + i;
            next[i] = t < count ? w + (size_t)rows[t] * row_bytes : NULL;
        }
        (nr == AXPY_NR ? f4 : f1)(n, cur, coef + k, next, y);
        if (floats)
            for (int i = 0; i < nr; i++)
                for (int64_t t = head; t < n; t++) {
                    float v;
                    if (eb == 2) { uint16_t h; memcpy(&h, cur[i] + 2 * t, 2); v = _cvtsh_ss(h); }
                    else memcpy(&v, cur[i] + 4 * t, 4);
                    y[t] += coef[k + i] * v;
                }
        k += nr;  // the last < AXPY_NR rows go one at a time
    }
    return 1;
}
#endif

void ember_axpy_gather(int type, int64_t n, const void *w, size_t row_bytes,
                       const int32_t *rows, const float *coef, int64_t count, float *y) {
    if (count <= 0 || ember_block_size(type) == 0) return;
#if defined(__x86_64__) || defined(__i386__)
    if (ember_has_avx2() && axpy_gather_avx2(type, n, w, row_bytes, rows, coef, count, y)) return;
#endif
    axpy_gather_generic(type, n, w, row_bytes, rows, coef, count, y);
}
