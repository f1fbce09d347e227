// Shared helpers of the x86 kernel files (dot_avx2.c, gemm_avx2.c). Those files are compiled
// twice: on their own for AVX2 + FMA + F16C, and included by x86_vnni.c with EMBER_X86_VNNI
// defined for AVX-512 VL/BW + VNNI, which only changes the target attribute, the exported
// names (X86_NAME) and the integer dot steps below. Nothing here runs unless the CPU has the
// features (ember_kernel_level in matmul.c).
#ifndef EMBER_AVX2_UTIL_H
#define EMBER_AVX2_UTIL_H

#include "internal.h"

#ifdef EMBER_X86_VNNI
#define X86_NAME(name) ember_vnni_##name
#define X86_VNNI 1
#else
#define X86_NAME(name) ember_avx2_##name
#define X86_VNNI 0
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#if X86_VNNI
#define AVX2 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
#else
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#endif
#define INLINE static inline __attribute__((always_inline)) AVX2
// Software prefetch of weights into L2 (T1 was ~1.5x faster than T0 for DRAM-bound matvec on
// Zen3); the distance is the drivers' (PF_ROWS in internal.h, the gather's next rows).
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
// Loops over rows, columns and sub-blocks have constant trip counts after inlining; fully
// unrolled they keep accumulators in registers and shuffle masks become constants.
#define UNROLL _Pragma("GCC unroll 16")

// acc + the sums of each four byte products u·s (u unsigned, s signed), lane by lane in
// 32 bits. VNNI does it in one instruction; AVX2 sums pairs to 16 bits first, which saturates
// only beyond 2·32767, a range no caller reaches (weights ≤ 63 unsigned or the Q8_0 sign trick's
// |w| ≤ 128 against |x| ≤ 127), so both give the same integers and the same bits downstream.
INLINE __m256i dot4_add(__m256i acc, __m256i u, __m256i s) {
#if X86_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// acc + the sums of each two 16-bit products a·b, lane by lane in 32 bits (exact in both).
INLINE __m256i dot2_add(__m256i acc, __m256i a, __m256i b) {
#if X86_VNNI
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float h2f(const void *p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
static inline uint32_t load_u32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int load_u16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }

// Lane i (i < nr) of the result: the sum of v[i]'s eight lanes (exact, in integers). The
// matrix-vector tiles reduce each block's dot to one number per row this way, so that their
// float steps are the repacked kernels' (gemm_avx2.c) and both give the same bits.
INLINE __m128i row_totals(const int nr, const __m256i *v) {
    const __m256i z = _mm256_setzero_si256();
    __m256i a = v[0], b = nr > 1 ? v[1] : z, c = nr > 2 ? v[2] : z, d = nr > 3 ? v[3] : z;
    __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    __m256i s = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

// Lane i (i < nr): the half-precision number at w[i] + offset, as a float.
INLINE __m128 row_halves(const int nr, const uint8_t *const *w, int64_t offset) {
    __m128i h = _mm_cvtsi32_si128(load_u16(w[0] + offset));
    if (nr > 1) h = _mm_insert_epi16(h, load_u16(w[1] + offset), 1);
    if (nr > 2) h = _mm_insert_epi16(h, load_u16(w[2] + offset), 2);
    if (nr > 3) h = _mm_insert_epi16(h, load_u16(w[3] + offset), 3);
    return _mm_cvtph_ps(h);
}

// The two half-precision numbers at w[i] + offset: the first in lane i, the second in lane
// 4 + i (a block's d and its m or dmin).
INLINE __m256 row_half_pairs(const int nr, const uint8_t *const *w, int64_t offset) {
    __m128i h = _mm_cvtsi32_si128((int)load_u32(w[0] + offset));
    if (nr > 1) h = _mm_insert_epi32(h, (int)load_u32(w[1] + offset), 1);
    if (nr > 2) h = _mm_insert_epi32(h, (int)load_u32(w[2] + offset), 2);
    if (nr > 3) h = _mm_insert_epi32(h, (int)load_u32(w[3] + offset), 3);
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

// Software prefetch of a weight block of the row a tile will read next in the same slot. A
// tile reads several short rows at once, which the hardware prefetchers follow poorly;
// without this, quantized matvec ran at about half the memory bandwidth.
INLINE void prefetch_block(const uint8_t *p, int bytes) {
    UNROLL
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, PF_HINT);
}

// Whether a tile prefetches the next tile as one run: short rows (a Gemma 3 or SmolLM2 matrix)
// lying end to end with the next tile's (a dense matvec). The tile then prefetches two blocks'
// bytes per (block, row) step from the next tile's start, which covers it by mid-tile, rather
// than nr interleaved row streams of a few lines each, which the memory system served at two
// thirds of the speed (Zen3, one core, from memory: Q8_0 × 640 10 -> 13-15 GB/s, Q6_K × 2048
// 12 -> 17, Q4_K × 1024 12 -> 14-15). From 2 KB rows on nothing is gained, and 4096-wide Q4_0
// loses, hence the bound (LINEAR_PREFETCH_MAX_ROW).
INLINE int prefetches_run(int nr, const uint8_t *const *w, const uint8_t *const *next) {
    if (nr < 2) return 0;
    const int64_t row_bytes = w[1] - w[0];
    int run = row_bytes > 0 && row_bytes <= LINEAR_PREFETCH_MAX_ROW && next[0] == w[0] + nr * row_bytes;
    for (int i = 2; i < nr; i++) run = run && w[i] == w[0] + i * row_bytes;
    return run;
}

// e^x for 8 floats: x = k·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial (Taylor
// coefficients; relative error below 2e-7 on that range), 2^k built in the exponent bits.
// Inputs are clamped to [-87.3, 88.3], where float e^x is finite and normal.
INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - k·ln2 in two steps (ln2 split into a high and a low part) to keep r exact.
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// 16 bytes of packed nibbles -> 32 bytes 0..15: low nibbles first (elements 0-15), then high.
// The bytes are loaded into both lanes (a load, no shuffle) and the high lane shifted by 4:
// one op fewer than shifting a copy and inserting it, and none on the shuffle ports, which the
// tiles keep busy: the 4096-wide Q4_0 matvec went from 1.37 to 1.17 ns per row block from
// cache and from 1.62 to 1.32-1.42 from memory (Zen3, one thread).
INLINE __m256i nibbles32(const uint8_t *qs) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
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

// 8 x 8 transpose of 32-bit elements: output vector s (at dst + 32*s) holds element s of
// every input row, row r in lane r.
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

#endif
#endif
