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
    const ember_kernel_set *k = ember_tile_kernels(type);
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
// pass, prefetched block by block alongside (the row itself where no row follows: a prefetch
// of a line being read costs less than a branch per block and row).
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
            prefetch_block(next[i] + b * bytes, bytes);
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

// Q4_0 rows AXPY_Q4_0_NR at a time, in integers. Per 32-column block, the group's products
// s_i = c_i · d_i (coefficient times the row's block scale) are rounded to steps of
// max|s_i| / 127; the nibbles of two rows at a time are multiplied by those 8-bit steps and
// summed in 16-bit lanes (vpmaddubsw), and one FMA per 8 columns adds the sum times the step.
// That rounding is the one the row kernels make on their activations (Q8_0: steps of a
// block's largest value / 127), and PowerInfer's own Q4_0 down rounds its coefficients to
// 8 bits too; the float path converted every weight and took 1.8x the time (Zen3, one thread,
// 4096 columns, 10 % of 11008 rows: 4.9 -> 2.7 ns per row block). Bounds: |Σ_i q_i·n_i| <=
// 8 · 127 · 15 and |8 · Σ_i q_i| <= 8 · 8 · 127 fit 16 bits. Rows past `m` are padding: their
// products are masked to zero, so whatever their scales hold adds nothing.
enum { AXPY_Q4_0_NR = 8 };

static AVX2 void axpy_q4_0_int(int64_t n, const uint8_t *const *w, const float *c, int m,
                               const uint8_t *const *next, float *y) {
    float lanes[AXPY_Q4_0_NR];
    for (int i = 0; i < AXPY_Q4_0_NR; i++) lanes[i] = i < m ? c[i] : 0;
    const __m256 coefficients = _mm256_loadu_ps(lanes);
    const __m256 used = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps((float)m), _CMP_LT_OQ);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / 32; b++) {
        const size_t at = (size_t)b * 18;
        uint16_t h[AXPY_Q4_0_NR];
        UNROLL
        for (int i = 0; i < AXPY_Q4_0_NR; i++) {
            memcpy(&h[i], w[i] + at, 2);
            prefetch_block(next[i] + at, 18);
        }
        __m128i halves = _mm_setr_epi16(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
        __m256 s = _mm256_and_ps(_mm256_mul_ps(_mm256_cvtph_ps(halves), coefficients), used);
        __m256 a = _mm256_and_ps(s, magnitude);
        __m128 top = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        top = _mm_max_ps(top, _mm_movehl_ps(top, top));
        top = _mm_max_ss(top, _mm_movehdup_ps(top));
        float largest = _mm_cvtss_f32(top);
        if (!(largest > 0)) continue;  // every product zero (or not a number: nothing sane to add)
        // s · 127 / largest rounded to nearest: integers in [-127, 127].
        __m256i q = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_mul_ps(s, _mm256_set1_ps(127)), _mm256_set1_ps(largest)));
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        __m128i sum = _mm_madd_epi16(q16, _mm_set1_epi16(1));
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));
        const __m256i offset = _mm256_set1_epi16((short)(8 * _mm_cvtsi128_si32(sum)));  // the nibbles' -8
        const __m256i q8 = _mm256_broadcastsi128_si256(_mm_packs_epi16(q16, q16));
        // lo: columns 0-7 (low lane) and 16-23 (high lane); hi: 8-15 and 24-31.
        __m256i lo = _mm256_setzero_si256(), hi = lo;
        UNROLL
        for (int p = 0; p < AXPY_Q4_0_NR / 2; p++) {
            __m256i pair = _mm256_shuffle_epi8(q8, _mm256_set1_epi16((short)((2 * p) | ((2 * p + 1) << 8))));
            __m256i r0 = nibbles32(w[2 * p] + at + 2), r1 = nibbles32(w[2 * p + 1] + at + 2);
            lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(_mm256_unpacklo_epi8(r0, r1), pair));
            hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(_mm256_unpackhi_epi8(r0, r1), pair));
        }
        lo = _mm256_sub_epi16(lo, offset);
        hi = _mm256_sub_epi16(hi, offset);
        const __m256 step = _mm256_set1_ps(largest / 127);
        const __m128i parts[4] = {_mm256_castsi256_si128(lo), _mm256_castsi256_si128(hi),
                                  _mm256_extracti128_si256(lo, 1), _mm256_extracti128_si256(hi, 1)};
        float *yb = y + 32 * b;
        UNROLL
        for (int j = 0; j < 4; j++) {
            __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(parts[j]));
            _mm256_storeu_ps(yb + 8 * j, _mm256_fmadd_ps(f, step, _mm256_loadu_ps(yb + 8 * j)));
        }
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
    if (type == EMBER_TYPE_Q4_0) {
        const uint8_t *cur[AXPY_Q4_0_NR], *next[AXPY_Q4_0_NR];
        for (int64_t k = 0; k < count; k += AXPY_Q4_0_NR) {
            int m = count - k < AXPY_Q4_0_NR ? (int)(count - k) : AXPY_Q4_0_NR;
            for (int i = 0; i < AXPY_Q4_0_NR; i++) {
                cur[i] = w + (size_t)rows[k + (i < m ? i : 0)] * row_bytes;
                int64_t t = k + AXPY_Q4_0_NR + i;
                next[i] = t < count ? w + (size_t)rows[t] * row_bytes : cur[i];
            }
            axpy_q4_0_int(n, cur, coef + k, m, next, y);
        }
        return 1;
    }
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
            next[i] = t < count ? w + (size_t)rows[t] * row_bytes : cur[i];
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

int ember_axpy_group(int type) {
#if defined(__x86_64__) || defined(__i386__)
    if (type == EMBER_TYPE_Q4_0) return AXPY_Q4_0_NR;
    return AXPY_NR;
#else
    (void)type;
    return 1;
#endif
}

void ember_axpy_gather(int type, int64_t n, const void *w, size_t row_bytes,
                       const int32_t *rows, const float *coef, int64_t count, float *y) {
    if (count <= 0 || ember_block_size(type) == 0) return;
#if defined(__x86_64__) || defined(__i386__)
    if (ember_has_avx2() && axpy_gather_avx2(type, n, w, row_bytes, rows, coef, count, y)) return;
#endif
    axpy_gather_generic(type, n, w, row_bytes, rows, coef, count, y);
}
