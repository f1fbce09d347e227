// x86 prefill (matmul) kernels working on 8 rows at a time: the rows' quants are repacked
// so that row r sits in 32-bit lane r, and one vpmaddubsw (VNNI: vpdpbusd) against 4 broadcast
// activation bytes advances all 8 dot products with no horizontal sums. The repack is done
// once per band of 8 rows per ember_matmul call and reused by every column. Compiled for AVX2
// and again for AVX-512 VNNI (x86_vnni.c, see avx2_util.h); both give the same bits.
#include "avx2_util.h"

#if defined(__x86_64__) || defined(__i386__)

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
AVX2 void X86_NAME(repack8)(int type, int64_t n, const uint8_t *w, size_t rb,
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
        transpose8x32(rows, q8 + b * 256);
    }
}

// y[c*ldy + r] for the 8 repacked rows and NC columns. On AVX2 integer sums stay in int16 for
// up to 8 steps for Q4 (8 * 2 * 15 * 127 = 30480 fits) and 4 steps for Q5 (4 * 2 * 31 * 127 =
// 31496); Q8_0 (2 * 128 * 127 per step) widens to int32 every step. VNNI sums into int32 at
// every step in one instruction. The integers are the same either way.
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
                if (X86_VNNI) {
                    sumi[c] = dot4_add(sumi[c], qabs, x);
                    continue;
                }
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
            __m256 dd = _mm256_mul_ps(d, _mm256_set1_ps(h2f(ab)));
            __m256 dot = _mm256_cvtepi32_ps(sumi[c]);
            if (has_min) {  // m·s + (d_w·d_a)·dot, then one add on the accumulator's chain
                __m256 m = _mm256_loadu_ps(dm + 16 * b + 8);
                acc[c] = _mm256_add_ps(acc[c], _mm256_fmadd_ps(m, _mm256_set1_ps(h2f(ab + 2)), _mm256_mul_ps(dd, dot)));
            } else {
                acc[c] = _mm256_fmadd_ps(dd, dot, acc[c]);
            }
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

AVX2 void X86_NAME(repack8_k)(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *out) {
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
    // int16-safe steps on AVX2 (see gemm8_tile): Q5_K 4 * 2 * 31 * 127, Q6_K 2 * 2 * 63 * 127.
    // Q6_K also changes scale every 4 steps (groups of 16). VNNI sums a scale's steps in int32
    // and multiplies by the scale once (its 16-bit pair's high half, sign-extended).
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
                    const int last = X86_VNNI ? s == 7 || (q6 && s == 3) : (s + 1) % group == 0;
                    if (X86_VNNI)
                        part[c] = dot4_add(part[c], q, x);
                    else
                        part[c] = _mm256_add_epi16(part[c], _mm256_maddubs_epi16(q, x));
                    if (last) {
                        __m256i scv = _mm256_loadu_si256(scp + (q6 && s >= 4));
                        if (X86_VNNI)
                            sumi[c] = _mm256_add_epi32(sumi[c],
                                                       _mm256_mullo_epi32(part[c], _mm256_srai_epi32(scv, 16)));
                        else
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

AVX2 void X86_NAME(gemm8_k)(int type, int64_t n, const uint8_t *packed, const uint8_t *act,
                            size_t as, int64_t ncols, float *y, int64_t ldy) {
    for (int64_t c = 0; c < ncols; c += 4) {
        int nc = ncols - c < 4 ? (int)(ncols - c) : 4;
        if (type == EMBER_TYPE_Q4_K) gemm8k_q4_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
        else if (type == EMBER_TYPE_Q5_K) gemm8k_q5_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
        else gemm8k_q6_K(nc, n, packed, act + c * as, as, y + c * ldy, ldy);
    }
}

size_t X86_NAME(repack8_k_bytes)(int64_t n) { return (size_t)(n / QK_K) * K8_BLOCK_BYTES; }

// 8 rows x ncols through the repacked path (nc up to 4 per pass); 0 if `type` has none.
AVX2 int X86_NAME(gemm8)(int type, int64_t n, const uint8_t *q8, const float *dm,
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
int X86_NAME(gemm8)(int type, int64_t n, const uint8_t *q8, const float *dm,
                    const int32_t *xsum, const uint8_t *act, size_t as, int64_t ncols,
                    float *y, int64_t ldy) {
    (void)type; (void)n; (void)q8; (void)dm; (void)xsum; (void)act; (void)as; (void)ncols;
    (void)y; (void)ldy;
    return 0;
}
void X86_NAME(repack8)(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *q8, float *dm) {
    (void)type; (void)n; (void)w; (void)rb; (void)q8; (void)dm;
}
void X86_NAME(repack8_k)(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *out) {
    (void)type; (void)n; (void)w; (void)rb; (void)out;
}
void X86_NAME(gemm8_k)(int type, int64_t n, const uint8_t *packed, const uint8_t *act,
                       size_t as, int64_t ncols, float *y, int64_t ldy) {
    (void)type; (void)n; (void)packed; (void)act; (void)as; (void)ncols; (void)y; (void)ldy;
}
size_t X86_NAME(repack8_k_bytes)(int64_t n) { (void)n; return 0; }
#endif
