// x86 tile kernels: AVX2 + FMA + F16C, and the same code again for AVX-512 VL/BW + VNNI when
// x86_vnni.c includes this file (see avx2_util.h). Compiled for those features per function
// (target attribute) and only called when the CPU has them, so the library runs on any x86-64.
//
// Integer dots go through dot4_add (unsigned 8-bit x signed 8-bit, four products summed to
// int32: vpdpbusd, or vpmaddubsw + vpmaddwd) and dot2_add (int16 pairs: vpdpwssd or vpmaddwd);
// both forms give the same integers. Signed weights use the sign trick: |w| * (x * sign(w)).
// Every tile shape keeps one accumulator per (row, column) and performs the same operations
// on it in the same order, so any tile shape gives bit-identical results to the 1x1 tile.
// Quantized tiles reduce each block's (or super-block's) integer dot to one number per row
// and then take the float steps of the repacked matrix-matrix kernels (gemm_avx2.c) in their
// order, so a product gives the same bits whichever path computes it: a sequence decoding
// alone and the same sequence among many in one batch get the same logits, and the AVX2 and
// VNNI builds agree bit for bit.
#include "avx2_util.h"

#if defined(__x86_64__) || defined(__i386__)

// ---------------------------------------------------------------------------------------
// 32-element block formats against Q8_0 / Q8_1 activations.
// ---------------------------------------------------------------------------------------
enum { K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0 };

INLINE void b32_tile(const int kind, const int nr, const int nc, const int run, int64_t n, const uint8_t *const *w,
                     const uint8_t *const *next, const uint8_t *act, size_t as, float *y, int64_t ldy) {
    const int has_min = kind == K_Q4_1 || kind == K_Q5_1;  // unsigned quants + offset m
    const int wbytes = kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : kind == K_Q5_0 ? 22
                     : kind == K_Q5_1 ? 24 : 34;
    const int abytes = has_min ? (int)sizeof(block_q8_1) : (int)sizeof(block_q8_0);
    const int aqs = has_min ? 4 : 2;  // offset of qs in the activation block
    __m128 acc[4];  // lane i: row i
    UNROLL
    for (int c = 0; c < nc; c++) acc[c] = _mm_setzero_ps();

    const int offset = kind == K_Q4_0 ? 8 : kind == K_Q5_0 ? 16 : 0;
    for (int64_t b = 0; b < n / 32; b++) {
        __m256i x[4], base[4];  // per column: the activation quants, and where its sums start
        UNROLL
        for (int c = 0; c < nc; c++) {
            x[c] = _mm256_loadu_si256((const __m256i *)(act + c * as + b * abytes + aqs));
            // Q4_0/Q5_0 stay unsigned (0..15, 0..31); their offset of 8 or 16 is taken off
            // as -offset·x, once per column, instead of the sign trick per (row, column).
            base[c] = offset ? _mm256_sub_epi32(_mm256_setzero_si256(), dot4_add(_mm256_setzero_si256(),
                                                    _mm256_set1_epi8((char)offset), x[c]))
                             : _mm256_setzero_si256();
        }
        __m256i sumi[4][4];  // [column][row]: the block's integer dot
        UNROLL
        for (int i = 0; i < nr; i++) {
            const uint8_t *wb = w[i] + b * wbytes;
            if (run)
                prefetch_block(next[0] + (b * nr + i) * 2 * wbytes, 2 * wbytes);
            else
                prefetch_block(next[i] + b * wbytes, wbytes);
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
            __m256i qabs = kind == K_Q8_0 ? _mm256_sign_epi8(q, q) : q;
            UNROLL
            for (int c = 0; c < nc; c++)
                sumi[c][i] = dot4_add(base[c], qabs, kind == K_Q8_0 ? _mm256_sign_epi8(x[c], q) : x[c]);
        }
        // The float steps of the repacked kernel (gemm8_tile), lane i for row i: the block's
        // exact integer dot, then acc += (d_w·d_a)·dot, or for Q4_1/Q5_1
        // acc += m·s + (d_w·d_a)·dot. Row i's d is lane i of d (its m, lane i of m).
        __m128 d, m = _mm_setzero_ps();
        if (has_min) {
            __m256 dm = row_half_pairs(nr, w, b * wbytes);
            d = _mm256_castps256_ps128(dm);
            m = _mm256_extractf128_ps(dm, 1);
        } else {
            d = row_halves(nr, w, b * wbytes);
        }
        UNROLL
        for (int c = 0; c < nc; c++) {
            // The activation block's d and (Q8_1) s; movd leaves no false dependency on acc.
            __m128 ds = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(act + c * as + b * abytes)));
            __m128 dot = _mm_cvtepi32_ps(row_totals(nr, sumi[c]));
            __m128 dd = _mm_mul_ps(d, _mm_permute_ps(ds, 0x00));
            if (has_min)  // the block's value first: one add on the accumulator's chain
                acc[c] = _mm_add_ps(acc[c], _mm_fmadd_ps(m, _mm_permute_ps(ds, 0x55), _mm_mul_ps(dd, dot)));
            else
                acc[c] = _mm_fmadd_ps(dd, dot, acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < nc; c++) {
        float lanes[4];
        _mm_storeu_ps(lanes, acc[c]);
        UNROLL
        for (int i = 0; i < nr; i++) y[c * ldy + i] = lanes[i];
    }
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
// tile's columns (integer sums per column in sumi[]); then per column the super-block's
// totals and the float steps of the repacked kernel (gemm8k_tile), so both give the same bits.
INLINE void k_tile(const int kind, const int nr, const int nc, const int run, int64_t n, const uint8_t *const *w,
                   const uint8_t *const *next, const uint8_t *act, size_t as, float *y, int64_t ldy) {
    const int wbytes = kind == K_Q4_K ? 144 : kind == K_Q5_K ? 176 : 210;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m128 acc[4];  // lane i: row i
    UNROLL
    for (int c = 0; c < nc; c++) acc[c] = _mm_setzero_ps();
    const block_q8_K *a0 = (const block_q8_K *)act;

    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i dots[4][4], mins[4][4];  // [column][row]: integer sums of the min / offset term
        const block_q8_K *a[4];
        UNROLL
        for (int c = 0; c < nc; c++) a[c] = (const block_q8_K *)((const uint8_t *)a0 + c * as) + b;
        UNROLL
        for (int i = 0; i < nr; i++) {
            const uint8_t *wb = w[i] + b * wbytes;
            if (run)
                prefetch_block(next[0] + (b * nr + i) * 2 * wbytes, 2 * wbytes);
            else
                prefetch_block(next[i] + b * wbytes, wbytes);
            __m256i sumi[4];

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
                            sumi[c] = dot2_add(sumi[c], _mm256_maddubs_epi16(q[k], xk), s);
                        }
                    }
                }
                UNROLL
                for (int c = 0; c < nc; c++) dots[c][i] = sumi[c];
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
                    sumi[c] = dot2_add(sumi[c], _mm256_maddubs_epi16(lo, x0), s0);
                    sumi[c] = dot2_add(sumi[c], _mm256_maddubs_epi16(hi, x1), s1);
                }
            }
            // Min term: sum_j m_j * (bsum[2j] + bsum[2j+1]), with the mins paired up as int16.
            __m128i mn8 = _mm_cvtsi64_si128((long long)mn);
            __m256i mn_pairs = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
            UNROLL
            for (int c = 0; c < nc; c++) {
                dots[c][i] = sumi[c];
                mins[c][i] = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a[c]->bsums), mn_pairs);
            }
        }
        // The float steps of the repacked kernel (gemm8k_tile), lane i for row i:
        // acc += (d·d_a)·dot, then acc -= (dmin·d_a)·mins for Q4_K/Q5_K.
        // Row i's d is lane i of d (Q4_K/Q5_K: its dmin, lane i of dmin).
        __m256 dd = kind == K_Q6_K
            ? _mm256_castps128_ps256(row_halves(nr, w, b * wbytes + (int64_t)offsetof(block_q6_K, d)))
            : row_half_pairs(nr, w, b * wbytes);
        __m128 d = _mm256_castps256_ps128(dd), dmin = _mm256_extractf128_ps(dd, 1);
        UNROLL
        for (int c = 0; c < nc; c++) {
            __m128 da = _mm_set1_ps(a[c]->d);
            acc[c] = _mm_fmadd_ps(_mm_mul_ps(d, da), _mm_cvtepi32_ps(row_totals(nr, dots[c])), acc[c]);
            if (kind != K_Q6_K)
                acc[c] = _mm_fnmadd_ps(_mm_mul_ps(dmin, da), _mm_cvtepi32_ps(row_totals(nr, mins[c])), acc[c]);
        }
    }
    UNROLL
    for (int c = 0; c < nc; c++) {
        float lanes[4];
        _mm_storeu_ps(lanes, acc[c]);
        UNROLL
        for (int i = 0; i < nr; i++) y[c * ldy + i] = lanes[i];
    }
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

INLINE void f_tile(const int kind, const int nr, const int nc, const int run, int64_t n, const uint8_t *const *w,
                   const uint8_t *const *next, const uint8_t *act, size_t as, float *y, int64_t ldy) {
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
            if (run)  // 16 elements per step
                prefetch_block(next[0] + ((j / 8) * nr + i) * 16 * eb, 16 * eb);
            else
                _mm_prefetch((const char *)next[i] + j * eb, PF_HINT);  // 2 (F32) or 4 (16-bit) per line
            __m256 wv = load8(kind, w[i] + j * eb);
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
            for (int64_t t = j; t < n; t++) s += load1(kind, w[i] + t * eb) * x[t];
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
    static AVX2 void name##_##NR##x##NC(int64_t n, const uint8_t *const *w, const uint8_t *const *next, \
                                        const uint8_t *act, size_t as, float *y, int64_t ldy) { \
        if (prefetches_run(NR, w, next))  /* two loops: a test inside cost 7 % */             \
            impl(kind, NR, NC, 1, n, w, next, act, as, y, ldy);                              \
        else                                                                                 \
            impl(kind, NR, NC, 0, n, w, next, act, as, y, ldy);                              \
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

const ember_kernel_set *X86_NAME(kernels)(int type) {
#define CASE_TYPE(code, name, impl, kind) case code: return &name##_set;
    switch (type) { ALL_TYPES(CASE_TYPE) default: return NULL; }
#undef CASE_TYPE
}

#else
const ember_kernel_set *X86_NAME(kernels)(int type) { (void)type; return NULL; }
#endif
