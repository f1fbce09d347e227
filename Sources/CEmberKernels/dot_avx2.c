// AVX2 + FMA + F16C tile kernels. Compiled for those features per function (target attribute)
// and only called when the CPU has them, so the library still runs on any x86-64.
//
// Integer dots use vpmaddubsw (unsigned 8-bit x signed 8-bit -> pairs summed to int16) then
// vpmaddwd (int16 pairs -> int32). Signed weights use the sign trick: |w| * (x * sign(w)).
// Every tile shape keeps one accumulator per (row, column) and performs the same operations
// on it in the same order, so any tile shape gives bit-identical results to the 1x1 tile.
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) AVX2
// Loops over rows, columns and sub-blocks have constant trip counts after inlining; fully
// unrolled they keep accumulators in registers and shuffle masks become constants.
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1  // into L2: measured ~1.5x faster from DRAM than T0
#endif
#ifndef PF_ROWS
#define PF_ROWS 4
#endif
#define UNROLL _Pragma("GCC unroll 16")

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float h2f(const void *p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
static inline uint32_t load_u32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }

// Software prefetch of a weight block PF_ROWS rows further on (in a matvec, the next tile's
// rows). A tile reads several short rows at once, which the hardware prefetchers follow
// poorly; without this, quantized matvec ran at about half the memory bandwidth.
INLINE void prefetch_block(const uint8_t *p, int bytes) {
    UNROLL
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, PF_HINT);
}

// 16 bytes of packed nibbles -> 32 bytes 0..15: low nibbles first (elements 0-15), then high.
INLINE __m256i nibbles32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

// Bit j of a 32-bit mask -> byte j = 0xFF (set) or 0x00.
INLINE __m256i bits_to_bytes(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// ---------------------------------------------------------------------------------------
// 32-element block formats against Q8_0 / Q8_1 activations.
// ---------------------------------------------------------------------------------------
enum { K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0 };

INLINE void b32_tile(const int kind, const int nr, const int nc, int64_t n, const uint8_t *w,
                     size_t rb, const uint8_t *act, size_t as, float *y, int64_t ldy) {
    const int has_min = kind == K_Q4_1 || kind == K_Q5_1;  // unsigned quants + offset m
    const int wbytes = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : kind == K_Q5_0 ? 22
                     : kind == K_Q5_1 ? 24 : 34;
    const int abytes = has_min ? (int)sizeof(block_q8_1) : (int)sizeof(block_q8_0);
    const int aqs = has_min ? 4 : 2;  // offset of qs in the activation block
    __m256 acc[4][4];
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) acc[i][c] = _mm256_setzero_ps();

    for (int64_t b = 0; b < n / 32; b++) {
        UNROLL
        for (int i = 0; i < nr; i++) {
            const uint8_t *wb = w + i * rb + b * wbytes;
            prefetch_block(wb + PF_ROWS * rb, wbytes);
            // Q4_0/Q5_0 stay unsigned (0..15, 0..31); their offset of 8 or 16 is taken off
            // afterwards as offset * sum(x), which costs one op per column instead of the sign
            // trick's two per (row, column).
            __m256i q;
            switch (kind) {
            case K_Q4_0: case K_Q4_1: q = nibbles32(wb + (kind == K_Q4_0 ? 2 : 4)); break;
            case K_Q5_0: case K_Q5_1: {
                int o = kind == K_Q5_0 ? 2 : 4;
                q = _mm256_or_si256(nibbles32(wb + o + 4), _mm256_and_si256(
                        bits_to_bytes(wb + o), _mm256_set1_epi8(16)));
                break;
            }
            default: q = _mm256_loadu_si256((const __m256i *)(wb + 2)); break;  // signed
            }
            const int offset = kind == K_Q4_0 ? 8 : kind == K_Q5_0 ? 16 : 0;
            __m256i qabs = kind == K_Q8_0 ? _mm256_sign_epi8(q, q) : q;
            // Blocks start with half d (Q4_1/Q5_1: d, m; Q8_1: d, s). Converting the first two
            // halves of weight and activation blocks at once and multiplying gives
            // [d_w*d_a, m*s] (lane 1 is junk for the other kinds and unused).
            __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(wb)));
            UNROLL
            for (int c = 0; c < nc; c++) {
                const uint8_t *ab = act + c * as + b * abytes;
                __m256i x = _mm256_loadu_si256((const __m256i *)(ab + aqs));
                __m256i p16;
                if (kind == K_Q8_0) {
                    p16 = _mm256_maddubs_epi16(qabs, _mm256_sign_epi8(x, q));
                } else {
                    p16 = _mm256_maddubs_epi16(q, x);
                    if (offset)  // pairs of offset * x, same int16 layout as p16
                        p16 = _mm256_sub_epi16(p16, _mm256_maddubs_epi16(_mm256_set1_epi8((char)offset), x));
                }
                __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
                __m128 p = _mm_mul_ps(dm, _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(ab))));
                acc[i][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(p), s, acc[i][c]);
                if (has_min)  // m * (d_a * sum(x)) goes into lane 1
                    acc[i][c] = _mm256_add_ps(acc[i][c], _mm256_zextps128_ps256(
                                                  _mm_blend_ps(_mm_setzero_ps(), p, 2)));
            }
        }
    }
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) y[c * ldy + i] = hsum(acc[i][c]);
}

// ---------------------------------------------------------------------------------------
// Super-block formats against Q8_K activations.
// ---------------------------------------------------------------------------------------
enum { K_Q4_K, K_Q5_K, K_Q6_K };

// Q4_K/Q5_K scales: the 12 packed bytes as three little-endian words give all eight 6-bit
// scales (low 8 bytes of *sc) and mins (*mn) in four word operations.
INLINE void unpack_k_scales(const uint8_t *p, uint64_t *sc, uint64_t *mn) {
    uint32_t s0, s1, s2;
    memcpy(&s0, p, 4); memcpy(&s1, p + 4, 4); memcpy(&s2, p + 8, 4);
    uint32_t sc_lo = s0 & 0x3f3f3f3f, mn_lo = s1 & 0x3f3f3f3f;
    uint32_t sc_hi = (s2 & 0x0f0f0f0f) | ((s0 >> 6) & 0x03030303) << 4;
    uint32_t mn_hi = ((s2 >> 4) & 0x0f0f0f0f) | ((s1 >> 6) & 0x03030303) << 4;
    *sc = sc_lo | (uint64_t)sc_hi << 32;
    *mn = mn_lo | (uint64_t)mn_hi << 32;
}

// Shuffle masks picking int16 word j of a 128-bit lane into all 8 words of a lane. For
// Q4_K/Q5_K sub-block j fills a whole 32-element vector: both lanes use word j. For Q6_K a
// 32-element vector spans groups 2k (lane 0) and 2k + 1 (lane 1).
#define WORD_MASK(a, b) _mm256_setr_epi8(2*(a), 2*(a)+1, 2*(a), 2*(a)+1, 2*(a), 2*(a)+1, \
    2*(a), 2*(a)+1, 2*(a), 2*(a)+1, 2*(a), 2*(a)+1, 2*(a), 2*(a)+1, 2*(a), 2*(a)+1,        \
    2*(b), 2*(b)+1, 2*(b), 2*(b)+1, 2*(b), 2*(b)+1, 2*(b), 2*(b)+1, 2*(b), 2*(b)+1,        \
    2*(b), 2*(b)+1, 2*(b), 2*(b)+1, 2*(b), 2*(b)+1)

// Loop order: block, row, then each 32-weight chunk is decoded once and dotted with all the
// tile's columns (integer sums per column in sumi[]), then one float update per column.
INLINE void k_tile(const int kind, const int nr, const int nc, int64_t n, const uint8_t *w,
                   size_t rb, const uint8_t *act, size_t as, float *y, int64_t ldy) {
    const int wbytes = kind == K_Q4_K ? 144 : kind == K_Q5_K ? 176 : 210;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4][4];
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) acc[i][c] = _mm256_setzero_ps();
    const block_q8_K *a0 = (const block_q8_K *)act;

    for (int64_t b = 0; b < n / QK_K; b++) {
        UNROLL
        for (int i = 0; i < nr; i++) {
            const uint8_t *wb = w + i * rb + b * wbytes;
            prefetch_block(wb + PF_ROWS * rb, wbytes);
            const block_q8_K *a[4];
            __m256i sumi[4];
            UNROLL
            for (int c = 0; c < nc; c++) a[c] = (const block_q8_K *)((const uint8_t *)a0 + c * as) + b;

            if (kind == K_Q6_K) {
                const block_q6_K *q6 = (const block_q6_K *)wb;
                __m256i sc_all = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q6->scales));
                // sum(sc * (q - 32) * x) = sum(sc * q * x) - 32 * sum(sc * bsum)
                UNROLL
                for (int c = 0; c < nc; c++) {
                    __m256i bs = _mm256_loadu_si256((const __m256i *)a[c]->bsums);
                    sumi[c] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                               _mm256_slli_epi32(_mm256_madd_epi16(bs, sc_all), 5));
                }
                UNROLL
                for (int h = 0; h < 2; h++) {
                    __m256i sc_half = _mm256_broadcastsi128_si256(
                        h ? _mm256_extracti128_si256(sc_all, 1) : _mm256_castsi256_si128(sc_all));
                    const uint8_t *ql = q6->ql + 64 * h;
                    __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
                    __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                    __m256i hb = _mm256_loadu_si256((const __m256i *)(q6->qh + 32 * h));
                    const __m256i m2 = _mm256_set1_epi8(0x30);
                    __m256i q[4] = {
                        _mm256_or_si256(_mm256_and_si256(l0, m4),
                                        _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2)),
                        _mm256_or_si256(_mm256_and_si256(l1, m4),
                                        _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                        _mm256_and_si256(hb, m2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                        _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2))};
                    UNROLL
                    for (int k = 0; k < 4; k++) {
                        __m256i s = _mm256_shuffle_epi8(sc_half, WORD_MASK(2 * k, 2 * k + 1));
                        UNROLL
                        for (int c = 0; c < nc; c++) {
                            __m256i xk = _mm256_loadu_si256((const __m256i *)(a[c]->qs + 128 * h + 32 * k));
                            __m256i p = _mm256_maddubs_epi16(q[k], xk);
                            sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, s));
                        }
                    }
                }
                float dw = h2f(&q6->d);
                UNROLL
                for (int c = 0; c < nc; c++)
                    acc[i][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[c]->d),
                                                _mm256_cvtepi32_ps(sumi[c]), acc[i][c]);
                continue;
            }

            // Q4_K / Q5_K (same header: d, dmin, scales[12])
            const block_q4_K *q4 = (const block_q4_K *)wb;
            const uint8_t *qs = kind == K_Q4_K ? q4->qs : ((const block_q5_K *)wb)->qs;
            uint64_t sc, mn;
            unpack_k_scales(q4->scales, &sc, &mn);
            __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
            __m256i h = kind == K_Q5_K
                ? _mm256_loadu_si256((const __m256i *)((const block_q5_K *)wb)->qh)
                : _mm256_setzero_si256();
            UNROLL
            for (int c = 0; c < nc; c++) sumi[c] = _mm256_setzero_si256();
            UNROLL
            for (int k = 0; k < 4; k++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(raw, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                if (kind == K_Q5_K) {  // bits 2k and 2k+1 of qh, moved to bit 4
                    const __m256i b4 = _mm256_set1_epi8(16);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), b4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), b4));
                    h = _mm256_srli_epi16(h, 2);
                }
                __m256i s0 = _mm256_shuffle_epi8(sc16, WORD_MASK(2 * k, 2 * k));
                __m256i s1 = _mm256_shuffle_epi8(sc16, WORD_MASK(2 * k + 1, 2 * k + 1));
                UNROLL
                for (int c = 0; c < nc; c++) {
                    __m256i x0 = _mm256_loadu_si256((const __m256i *)(a[c]->qs + 64 * k));
                    __m256i x1 = _mm256_loadu_si256((const __m256i *)(a[c]->qs + 64 * k + 32));
                    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(p0, p1));
                }
            }
            // Min term: sum_j m_j * (bsum[2j] + bsum[2j+1]), with the mins paired up as int16.
            __m128i mn8 = _mm_cvtsi64_si128((long long)mn);
            __m256i mn_pairs = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
            float d = h2f(&q4->d), dmin = h2f(&q4->dmin);
            UNROLL
            for (int c = 0; c < nc; c++) {
                __m256i bs = _mm256_loadu_si256((const __m256i *)a[c]->bsums);
                __m256i msum = _mm256_madd_epi16(bs, mn_pairs);
                acc[i][c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[c]->d), _mm256_cvtepi32_ps(sumi[c]), acc[i][c]);
                acc[i][c] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * a[c]->d), _mm256_cvtepi32_ps(msum), acc[i][c]);
            }
        }
    }
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) y[c * ldy + i] = hsum(acc[i][c]);
}

// ---------------------------------------------------------------------------------------
// Float formats against F32 activations. Rows need not be a multiple of 8 long: the tail is
// added in scalar code after the vector sum (same order for every tile shape).
// ---------------------------------------------------------------------------------------
enum { K_F32, K_F16, K_BF16 };

INLINE __m256 load8(const int kind, const uint8_t *p) {
    switch (kind) {
    case K_F32: return _mm256_loadu_ps((const float *)p);
    case K_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    default:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    }
}

INLINE float load1(const int kind, const uint8_t *p) {
    uint16_t h;
    float f;
    switch (kind) {
    case K_F32: memcpy(&f, p, 4); return f;
    case K_F16: memcpy(&h, p, 2); return _cvtsh_ss(h);
    default: memcpy(&h, p, 2); return ember_bf2f(h);
    }
}

INLINE void f_tile(const int kind, const int nr, const int nc, int64_t n, const uint8_t *w,
                   size_t rb, const uint8_t *act, size_t as, float *y, int64_t ldy) {
    const int eb = kind == K_F32 ? 4 : 2;
    __m256 acc[4][4];
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) acc[i][c] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        UNROLL
        for (int i = 0; i < nr; i++) {
            __m256 wv = load8(kind, w + i * rb + j * eb);
            UNROLL
            for (int c = 0; c < nc; c++) {
                const float *x = (const float *)(act + c * as) + j;
                acc[i][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x), acc[i][c]);
            }
        }
    UNROLL
    for (int i = 0; i < nr; i++)
        UNROLL
        for (int c = 0; c < nc; c++) {
            float s = hsum(acc[i][c]);
            const float *x = (const float *)(act + c * as);
            for (int64_t t = j; t < n; t++) s += load1(kind, w + i * rb + t * eb) * x[t];
            y[c * ldy + i] = s;
        }
}

// ---------------------------------------------------------------------------------------
// Instantiation: one function per (type, shape). Shapes: up to 4 rows for a single column
// (matvec), up to 2 rows x 4 columns for matmul.
// ---------------------------------------------------------------------------------------
#define SHAPES(X, name, impl, kind) \
    X(name, impl, kind, 1, 1) X(name, impl, kind, 2, 1) X(name, impl, kind, 3, 1) \
    X(name, impl, kind, 4, 1) X(name, impl, kind, 1, 2) X(name, impl, kind, 2, 2) \
    X(name, impl, kind, 1, 3) X(name, impl, kind, 2, 3) X(name, impl, kind, 1, 4) \
    X(name, impl, kind, 2, 4)

#define DEFINE_TILE(name, impl, kind, NR, NC)                                                 \
    static AVX2 void name##_##NR##x##NC(int64_t n, const uint8_t *w, size_t rb,               \
                                        const uint8_t *act, size_t as, float *y, int64_t ldy) { \
        impl(kind, NR, NC, n, w, rb, act, as, y, ldy);                                       \
    }
#define TILE_ENTRY(name, impl, kind, NR, NC) [NR - 1][NC - 1] = name##_##NR##x##NC,

#define ALL_TYPES(X)                                                                \
    X(EMBER_TYPE_F32, f32, f_tile, K_F32) X(EMBER_TYPE_F16, f16, f_tile, K_F16)      \
    X(EMBER_TYPE_BF16, bf16, f_tile, K_BF16) X(EMBER_TYPE_Q4_0, q4_0, b32_tile, K_Q4_0) \
    X(EMBER_TYPE_Q4_1, q4_1, b32_tile, K_Q4_1) X(EMBER_TYPE_Q5_0, q5_0, b32_tile, K_Q5_0) \
    X(EMBER_TYPE_Q5_1, q5_1, b32_tile, K_Q5_1) X(EMBER_TYPE_Q8_0, q8_0, b32_tile, K_Q8_0) \
    X(EMBER_TYPE_Q4_K, q4_K, k_tile, K_Q4_K) X(EMBER_TYPE_Q5_K, q5_K, k_tile, K_Q5_K)    \
    X(EMBER_TYPE_Q6_K, q6_K, k_tile, K_Q6_K)

#define DEFINE_TYPE(code, name, impl, kind) SHAPES(DEFINE_TILE, name, impl, kind)
ALL_TYPES(DEFINE_TYPE)

#define DEFINE_SET(code, name, impl, kind) \
    static const ember_kernel_set name##_set = {{SHAPES(TILE_ENTRY, name, impl, kind)}};
ALL_TYPES(DEFINE_SET)

const ember_kernel_set *ember_avx2_kernels(int type) {
#define CASE_TYPE(code, name, impl, kind) case code: return &name##_set;
    switch (type) { ALL_TYPES(CASE_TYPE) default: return NULL; }
#undef CASE_TYPE
}

// ---------------------------------------------------------------------------------------
// Prefill path for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: 8 rows repacked so that one 256-bit vector holds
// the same 4 weights of each of the 8 rows (row r in 32-bit lane r). Broadcasting 4
// activation bytes then gives all 8 rows' partial dots in one vpmaddubsw, with no
// horizontal sums, and the 8 results land in one float vector. The repack is paid once per
// band of 8 rows and reused by every column.
// ---------------------------------------------------------------------------------------

// Quants (Q4: 0..15, Q5: 0..31 unsigned; Q8_0 signed) of 8 rows, block by block: 256 bytes per block,
// step s (weights 4s..4s+3) at bytes 32s..32s+31. Scales: d[8] then m[8] (Q4_1/Q5_1 min;
// 0 for Q4_0/Q5_0, whose offset of 8/16 is applied in integers by the kernel).
AVX2 void ember_avx2_repack8(int type, int64_t n, const uint8_t *w, size_t rb,
                             uint8_t *q8, float *dm) {
    const int wbytes = ember_block_bytes(type);
    for (int64_t b = 0; b < n / 32; b++) {
        __m256i rows[8];
        UNROLL
        for (int r = 0; r < 8; r++) {
            const uint8_t *wb = w + r * rb + b * wbytes;
            float d = h2f(wb), m;
            switch (type) {
            case EMBER_TYPE_Q8_0: rows[r] = _mm256_loadu_si256((const __m256i *)(wb + 2)); m = 0; break;
            case EMBER_TYPE_Q4_0: rows[r] = nibbles32(wb + 2); m = 0; break;
            case EMBER_TYPE_Q4_1: rows[r] = nibbles32(wb + 4); m = h2f(wb + 2); break;
            case EMBER_TYPE_Q5_0:
                rows[r] = _mm256_or_si256(nibbles32(wb + 6), _mm256_and_si256(
                              bits_to_bytes(wb + 2), _mm256_set1_epi8(16)));
                m = 0;
                break;
            default:
                rows[r] = _mm256_or_si256(nibbles32(wb + 8), _mm256_and_si256(
                              bits_to_bytes(wb + 4), _mm256_set1_epi8(16)));
                m = h2f(wb + 2);
                break;
            }
            dm[b * 16 + r] = d;
            dm[b * 16 + 8 + r] = m;
        }
        // 8 x 8 transpose of 32-bit elements: output vector s = element s of every row.
        __m256i t[8], u[8];
        UNROLL
        for (int k = 0; k < 4; k++) {
            t[2 * k] = _mm256_unpacklo_epi32(rows[2 * k], rows[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_epi32(rows[2 * k], rows[2 * k + 1]);
        }
        UNROLL
        for (int h = 0; h < 2; h++) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
            u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
            u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
        }
        __m256i *out = (__m256i *)(q8 + b * 256);
        UNROLL
        for (int k = 0; k < 4; k++) {
            _mm256_storeu_si256(out + k, _mm256_permute2x128_si256(u[k], u[4 + k], 0x20));
            _mm256_storeu_si256(out + 4 + k, _mm256_permute2x128_si256(u[k], u[4 + k], 0x31));
        }
    }
}

// y[c*ldy + r] for the 8 repacked rows and NC columns. Integer sums stay in int16 for up to
// 8 steps for Q4 (8 * 2 * 15 * 127 = 30480 fits) and 4 steps for Q5 (4 * 2 * 31 * 127 = 31496).
INLINE void gemm8_tile(const int type, const int nc, int64_t n, const uint8_t *q8,
                       const float *dm, const int32_t *xsum, const uint8_t *act, size_t as,
                       float *y, int64_t ldy) {
    const int has_min = type == EMBER_TYPE_Q4_1 || type == EMBER_TYPE_Q5_1;
    const int offset = type == EMBER_TYPE_Q4_0 ? 8 : type == EMBER_TYPE_Q5_0 ? 16 : 0;
    const int q8_0 = type == EMBER_TYPE_Q8_0;  // signed weights: sign trick, int32 every step
    const int group = type == EMBER_TYPE_Q4_0 || type == EMBER_TYPE_Q4_1 ? 8 : q8_0 ? 1 : 4;
    const int abytes = has_min ? (int)sizeof(block_q8_1) : (int)sizeof(block_q8_0);
    const int aqs = has_min ? 4 : 2;
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256 acc[4];
    UNROLL
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *qb = q8 + b * 256;
        __m256i sumi[4], part[4];
        UNROLL
        for (int c = 0; c < nc; c++) sumi[c] = part[c] = _mm256_setzero_si256();
        UNROLL
        for (int s = 0; s < 8; s++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qb + 32 * s));
            __m256i qabs = q8_0 ? _mm256_sign_epi8(q, q) : q;
            UNROLL
            for (int c = 0; c < nc; c++) {
                const uint8_t *xq = act + c * as + b * abytes + aqs + 4 * s;
                __m256i x = _mm256_set1_epi32((int)load_u32(xq));
                if (q8_0) x = _mm256_sign_epi8(x, q);
                part[c] = _mm256_add_epi16(part[c], _mm256_maddubs_epi16(qabs, x));
                if ((s + 1) % group == 0) {
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(part[c], ones16));
                    part[c] = _mm256_setzero_si256();
                }
            }
        }
        __m256 d = _mm256_loadu_ps(dm + 16 * b);
        UNROLL
        for (int c = 0; c < nc; c++) {
            const uint8_t *ab = act + c * as + b * abytes;
            if (offset)  // q - offset: subtract offset * sum(x) from every row's sum
                sumi[c] = _mm256_sub_epi32(sumi[c], _mm256_set1_epi32(offset * xsum[c * (n / 32) + b]));
            __m256 da = _mm256_set1_ps(h2f(ab));
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            if (has_min)
                acc[c] = _mm256_fmadd_ps(_mm256_loadu_ps(dm + 16 * b + 8), _mm256_set1_ps(h2f(ab + 2)), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < nc; c++) _mm256_storeu_ps(y + c * ldy, acc[c]);
}

#define GEMM8(type, name)                                                                   \
    static AVX2 void gemm8_##name(int nc, int64_t n, const uint8_t *q8, const float *dm,    \
                                  const int32_t *xs, const uint8_t *act, size_t as,        \
                                  float *y, int64_t ldy) {                                 \
        switch (nc) {                                                                       \
        case 1: gemm8_tile(type, 1, n, q8, dm, xs, act, as, y, ldy); break;                     \
        case 2: gemm8_tile(type, 2, n, q8, dm, xs, act, as, y, ldy); break;                     \
        case 3: gemm8_tile(type, 3, n, q8, dm, xs, act, as, y, ldy); break;                     \
        default: gemm8_tile(type, 4, n, q8, dm, xs, act, as, y, ldy); break;                    \
        }                                                                                   \
    }
GEMM8(EMBER_TYPE_Q4_0, q4_0) GEMM8(EMBER_TYPE_Q4_1, q4_1)
GEMM8(EMBER_TYPE_Q5_0, q5_0) GEMM8(EMBER_TYPE_Q5_1, q5_1) GEMM8(EMBER_TYPE_Q8_0, q8_0)

// The same scheme for Q4_K/Q5_K/Q6_K. Per super-block and band of 8 rows (K8_BLOCK_BYTES):
// quants of 32-element chunk j at 256*j (8 steps of 32 bytes, as above); int16 scale vectors
// (lanes 2r, 2r+1 = row r's scale of sub-block j (Q4_K/Q5_K, 8 of them) or group g (Q6_K,
// 16)); pair vectors for the min / offset term (lanes 2r, 2r+1 = row r's mins 2k, 2k+1
// (4 vectors) or Q6_K scales 2k, 2k+1 (8)); then d[8] and dmin[8] as floats.
enum { K8_Q = 0, K8_SC = 2048, K8_MN = 2048 + 512, K8_D = 2048 + 512 + 256, K8_BLOCK_BYTES = K8_D + 64 };

INLINE void transpose8x32(const __m256i rows[8], uint8_t *dst) {
    __m256i t[8], u[8];
    UNROLL
    for (int k = 0; k < 4; k++) {
        t[2 * k] = _mm256_unpacklo_epi32(rows[2 * k], rows[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_epi32(rows[2 * k], rows[2 * k + 1]);
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
        u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
    }
    __m256i *out = (__m256i *)dst;
    UNROLL
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_si256(out + k, _mm256_permute2x128_si256(u[k], u[4 + k], 0x20));
        _mm256_storeu_si256(out + 4 + k, _mm256_permute2x128_si256(u[k], u[4 + k], 0x31));
    }
}

AVX2 void ember_avx2_repack8_k(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *out) {
    const int wbytes = ember_block_bytes(type);
    const __m256i m4 = _mm256_set1_epi8(15), b4 = _mm256_set1_epi8(16);
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t *o = out + b * K8_BLOCK_BYTES;
        int16_t *sc16 = (int16_t *)(o + K8_SC), *mn16 = (int16_t *)(o + K8_MN);
        float *d = (float *)(o + K8_D);
        __m256i sub[8][8];  // [chunk j][row r]
        for (int r = 0; r < 8; r++) {
            const uint8_t *wb = w + r * rb + b * wbytes;
            if (type == EMBER_TYPE_Q6_K) {
                const block_q6_K *q6 = (const block_q6_K *)wb;
                const __m256i m2 = _mm256_set1_epi8(0x30);
                for (int hf = 0; hf < 2; hf++) {  // see k_tile for the bit layout
                    __m256i l0 = _mm256_loadu_si256((const __m256i *)(q6->ql + 64 * hf));
                    __m256i l1 = _mm256_loadu_si256((const __m256i *)(q6->ql + 64 * hf + 32));
                    __m256i hb = _mm256_loadu_si256((const __m256i *)(q6->qh + 32 * hf));
                    sub[4 * hf + 0][r] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                             _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2));
                    sub[4 * hf + 1][r] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                             _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2));
                    sub[4 * hf + 2][r] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                             _mm256_and_si256(hb, m2));
                    sub[4 * hf + 3][r] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                             _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2));
                }
                for (int g = 0; g < 16; g++) sc16[16 * g + 2 * r] = sc16[16 * g + 2 * r + 1] = q6->scales[g];
                for (int k = 0; k < 8; k++) {
                    mn16[16 * k + 2 * r] = q6->scales[2 * k];
                    mn16[16 * k + 2 * r + 1] = q6->scales[2 * k + 1];
                }
                d[r] = h2f(&q6->d);
                d[8 + r] = 0;
                continue;
            }
            const block_q4_K *q4 = (const block_q4_K *)wb;
            const uint8_t *qs = type == EMBER_TYPE_Q4_K ? q4->qs : ((const block_q5_K *)wb)->qs;
            __m256i h = type == EMBER_TYPE_Q5_K
                ? _mm256_loadu_si256((const __m256i *)((const block_q5_K *)wb)->qh) : _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                if (type == EMBER_TYPE_Q5_K) {
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), b4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), b4));
                    h = _mm256_srli_epi16(h, 2);
                }
                sub[2 * k][r] = lo;
                sub[2 * k + 1][r] = hi;
            }
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 8; j++) k_scale_min(j, q4->scales, &sc[j], &mn[j]);
            for (int j = 0; j < 8; j++) sc16[16 * j + 2 * r] = sc16[16 * j + 2 * r + 1] = sc[j];
            for (int k = 0; k < 4; k++) {
                mn16[16 * k + 2 * r] = mn[2 * k];
                mn16[16 * k + 2 * r + 1] = mn[2 * k + 1];
            }
            d[r] = h2f(&q4->d);
            d[8 + r] = h2f(&q4->dmin);
        }
        for (int j = 0; j < 8; j++) transpose8x32(sub[j], o + K8_Q + 256 * j);
    }
}

INLINE void gemm8k_tile(const int type, const int nc, int64_t n, const uint8_t *packed,
                        const uint8_t *act, size_t as, float *y, int64_t ldy) {
    // int16-safe steps (see gemm8_tile): Q5_K 4 * 2 * 31 * 127, Q6_K 2 * 2 * 63 * 127. Q6_K
    // also changes scale every 4 steps (groups of 16).
    const int q6 = type == EMBER_TYPE_Q6_K;
    const int group = type == EMBER_TYPE_Q4_K ? 8 : type == EMBER_TYPE_Q5_K ? 4 : 2;
    __m256 acc[4];
    UNROLL
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *o = packed + b * K8_BLOCK_BYTES;
        const block_q8_K *a[4];
        __m256i sumi[4];
        UNROLL
        for (int c = 0; c < nc; c++) {
            a[c] = (const block_q8_K *)(act + c * as) + b;
            sumi[c] = _mm256_setzero_si256();
        }
        for (int j = 0; j < 8; j++) {
            const __m256i *scp = (const __m256i *)(o + K8_SC) + (q6 ? 2 * j : j);
            __m256i part[4];
            UNROLL
            for (int c = 0; c < nc; c++) part[c] = _mm256_setzero_si256();
            UNROLL
            for (int s = 0; s < 8; s++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(o + K8_Q + 256 * j + 32 * s));
                UNROLL
                for (int c = 0; c < nc; c++) {
                    __m256i x = _mm256_set1_epi32((int)load_u32(a[c]->qs + 32 * j + 4 * s));
                    part[c] = _mm256_add_epi16(part[c], _mm256_maddubs_epi16(q, x));
                    if ((s + 1) % group == 0) {
                        __m256i scv = _mm256_loadu_si256(scp + (q6 && s >= 4));
                        sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(part[c], scv));
                        part[c] = _mm256_setzero_si256();
                    }
                }
            }
        }
        __m256 d = _mm256_loadu_ps((const float *)(o + K8_D));
        __m256 dmin = _mm256_loadu_ps((const float *)(o + K8_D) + 8);
        UNROLL
        for (int c = 0; c < nc; c++) {
            __m256i msum = _mm256_setzero_si256();
            __m256 da = _mm256_set1_ps(a[c]->d);
            if (q6) {  // -32 * sum_g scale_g * bsum_g, scales in pairs against bsum pairs
                UNROLL
                for (int k = 0; k < 8; k++) {
                    const int16_t *bs = a[c]->bsums + 2 * k;
                    uint32_t pair = (uint16_t)bs[0] | (uint32_t)(uint16_t)bs[1] << 16;
                    msum = _mm256_add_epi32(msum, _mm256_madd_epi16(
                               _mm256_loadu_si256((const __m256i *)(o + K8_MN) + k), _mm256_set1_epi32((int)pair)));
                }
                sumi[c] = _mm256_sub_epi32(sumi[c], _mm256_slli_epi32(msum, 5));
                acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
                continue;
            }
            UNROLL
            for (int k = 0; k < 4; k++) {  // mins 2k, 2k+1 times the bsum pairs of sub-blocks 2k, 2k+1
                const int16_t *bs = a[c]->bsums + 4 * k;
                uint32_t pair = (uint16_t)(bs[0] + bs[1]) | (uint32_t)(uint16_t)(bs[2] + bs[3]) << 16;
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(
                           _mm256_loadu_si256((const __m256i *)(o + K8_MN) + k), _mm256_set1_epi32((int)pair)));
            }
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(msum), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < nc; c++) _mm256_storeu_ps(y + c * ldy, acc[c]);
}

#define GEMM8K(type, name)                                                                  \
    static AVX2 void gemm8k_##name(int nc, int64_t n, const uint8_t *p, const uint8_t *act, \
                                   size_t as, float *y, int64_t ldy) {                      \
        switch (nc) {                                                                       \
        case 1: gemm8k_tile(type, 1, n, p, act, as, y, ldy); break;                         \
        case 2: gemm8k_tile(type, 2, n, p, act, as, y, ldy); break;                         \
        case 3: gemm8k_tile(type, 3, n, p, act, as, y, ldy); break;                         \
        default: gemm8k_tile(type, 4, n, p, act, as, y, ldy); break;                        \
        }                                                                                   \
    }
GEMM8K(EMBER_TYPE_Q4_K, q4_K) GEMM8K(EMBER_TYPE_Q5_K, q5_K) GEMM8K(EMBER_TYPE_Q6_K, q6_K)

AVX2 void ember_avx2_gemm8_k(int type, int64_t n, const uint8_t *packed, const uint8_t *act,
                             size_t as, int64_t ncols, float *y, int64_t ldy) {
    for (int64_t c = 0; c < ncols; c += 4) {
        int nc = ncols - c < 4 ? (int)(ncols - c) : 4;
        if (type == EMBER_TYPE_Q4_K) gemm8k_q4_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
        else if (type == EMBER_TYPE_Q5_K) gemm8k_q5_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
        else gemm8k_q6_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
    }
}

size_t ember_avx2_repack8_k_bytes(int64_t n) { return (size_t)(n / QK_K) * K8_BLOCK_BYTES; }

// 8 rows x ncols through the repacked path (nc up to 4 per pass); 0 if `type` has none.
AVX2 int ember_avx2_gemm8(int type, int64_t n, const uint8_t *q8, const float *dm,
                          const int32_t *xsum, const uint8_t *act, size_t as, int64_t ncols,
                          float *y, int64_t ldy) {
    void (*f)(int, int64_t, const uint8_t *, const float *, const int32_t *, const uint8_t *,
              size_t, float *, int64_t);
    switch (type) {
    case EMBER_TYPE_Q4_0: f = gemm8_q4_0; break;
    case EMBER_TYPE_Q4_1: f = gemm8_q4_1; break;
    case EMBER_TYPE_Q5_0: f = gemm8_q5_0; break;
    case EMBER_TYPE_Q5_1: f = gemm8_q5_1; break;
    case EMBER_TYPE_Q8_0: f = gemm8_q8_0; break;
    default: return 0;
    }
    for (int64_t c = 0; c < ncols; c += 4) {
        int nc = ncols - c < 4 ? (int)(ncols - c) : 4;
        f(nc, n, q8, dm, xsum ? xsum + c * (n / 32) : NULL, act + c * as, as, y + c * ldy, ldy);
    }
    return 1;
}

#else
int ember_avx2_gemm8(int type, int64_t n, const uint8_t *q8, const float *dm,
                     const int32_t *xsum, const uint8_t *act, size_t as, int64_t ncols,
                     float *y, int64_t ldy) {
    (void)type; (void)n; (void)q8; (void)dm; (void)xsum; (void)act; (void)as; (void)ncols;
    (void)y; (void)ldy;
    return 0;
}
void ember_avx2_repack8(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *q8, float *dm) {
    (void)type; (void)n; (void)w; (void)rb; (void)q8; (void)dm;
}
void ember_avx2_repack8_k(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *out) {
    (void)type; (void)n; (void)w; (void)rb; (void)out;
}
void ember_avx2_gemm8_k(int type, int64_t n, const uint8_t *packed, const uint8_t *act,
                        size_t as, int64_t ncols, float *y, int64_t ldy) {
    (void)type; (void)n; (void)packed; (void)act; (void)as; (void)ncols; (void)y; (void)ldy;
}
size_t ember_avx2_repack8_k_bytes(int64_t n) { (void)n; return 0; }
const ember_kernel_set *ember_avx2_kernels(int type) { (void)type; return NULL; }
#endif

