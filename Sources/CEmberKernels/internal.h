// Private declarations shared by the kernel files: GGUF block layouts, half-float helpers and
// the per-type kernel tables. Nothing here is visible to Swift.
#ifndef EMBER_KERNELS_INTERNAL_H
#define EMBER_KERNELS_INTERNAL_H

#include "ember_kernels.h"
#include <string.h>

// ---------------------------------------------------------------------------------------
// Block layouts, byte for byte as GGUF stores them. `d`, `m`, `dmin`, `s` are IEEE half
// floats kept as raw bits. Within a 32-element block of Q4/Q5, byte j of `qs` holds element
// j in its low nibble and element j + 16 in its high nibble.
// ---------------------------------------------------------------------------------------

// x = (q - 8) * d
typedef struct { uint16_t d; uint8_t qs[16]; } block_q4_0;               // 18 bytes
// x = q * d + m
typedef struct { uint16_t d, m; uint8_t qs[16]; } block_q4_1;            // 20 bytes
// x = (q - 16) * d, q = nibble | (bit j of qh) << 4 (qh little-endian 32-bit mask)
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;       // 22 bytes
// x = q * d + m, q as in Q5_0
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1;    // 24 bytes
// x = q * d
typedef struct { uint16_t d; int8_t qs[32]; } block_q8_0;                // 34 bytes
// Activation format for Q4_1/Q5_1: s = d * sum(qs) carries the offset term.
typedef struct { uint16_t d, s; int8_t qs[32]; } block_q8_1;             // 36 bytes

#define QK_K 256
// Super-block of 8 sub-blocks of 32: x = d * sc[j] * q - dmin * m[j], q 4-bit.
// scales[12] packs eight 6-bit scales and eight 6-bit mins (see k_scale_min).
// qs: 4 chunks of 32 bytes; chunk c has sub-block 2c in low nibbles, 2c+1 in high nibbles.
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;  // 144
// As Q4_K plus a fifth bit: element l + 32*j takes bit j of qh[l] (l < 32, j < 8).
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }
    block_q5_K;                                                                          // 176
// 16 sub-blocks of 16: x = d * scales[j] * (q - 32), q 6-bit = 4 low bits from ql, 2 from qh.
// Each half of 128 elements uses 64 bytes of ql and 32 of qh: for l < 32,
//   element l      : ql[l] low nibble,      qh[l] bits 0-1
//   element l + 32 : ql[l + 32] low nibble, qh[l] bits 2-3
//   element l + 64 : ql[l] high nibble,     qh[l] bits 4-5
//   element l + 96 : ql[l + 32] high nibble, qh[l] bits 6-7
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } block_q6_K; // 210
// Activation format for K-quants: float scale, and sums of each 16 quants for the min terms.
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;   // 292

_Static_assert(sizeof(block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K");

// Q4_K/Q5_K 6-bit scale j and min j (j < 8). Bytes 0-3 hold scales 0-3 (low 6 bits) and
// bytes 4-7 mins 0-3; for j >= 4 the low 4 bits come from byte j + 4 (scale low nibble,
// min high nibble) and the top 2 bits from the spare high bits of bytes j - 4 and j.
static inline void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// ---------------------------------------------------------------------------------------
// Scalar conversions (portable; the AVX2 file uses F16C instead).
// ---------------------------------------------------------------------------------------
static inline float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float ember_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, mant = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        float v = (float)mant * (1.0f / 16777216.0f);
        return bits_to_f32(f32_to_bits(v) | sign);
    }
    if (exp == 31) return bits_to_f32(sign | 0x7f800000 | (mant << 13));
    return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest even, like the F16C instruction with default rounding.
static inline uint16_t ember_f2h(float f) {
    uint32_t u = f32_to_bits(f), sign = (u >> 16) & 0x8000, a = u & 0x7fffffff;
    if (a >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000 ? 0x200 : 0));
    if (a >= 0x477ff000) return (uint16_t)(sign | 0x7c00);         // rounds to >= 65520: inf
    if (a < 0x38800000) {                                            // below 2^-14: subnormal
        // Scale so the half's unit (2^-24) becomes 1.0 and let float rounding do the work.
        float v = bits_to_f32(a) * 16777216.0f;
        uint32_t r = (uint32_t)(v + 8388608.0f - 8388608.0f);       // nearest even, v < 2^10
        return (uint16_t)(sign | r);
    }
    uint32_t mant_odd = (a >> 13) & 1;
    a += 0xfff + mant_odd;                                           // round half to even
    return (uint16_t)(sign | (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ff));
}

static inline float ember_bf2f(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }
static inline uint16_t ember_f2bf(float f) {
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64);  // keep NaN a NaN
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// Nearest integer, ties to even, for |x| < 2^22: adding 1.5 * 2^23 pushes the fraction out of
// the mantissa under the FPU's default rounding. Avoids a libm call on baseline x86-64.
static inline int ember_nearest_int(float x) {
    float v = x + 12582912.0f;
    return (int)(f32_to_bits(v) & 0x007fffff) - 0x00400000;
}

// ---------------------------------------------------------------------------------------
// Kernels. A tile computes an nr x nc block of dot products: rows w[i] (i < nr) against
// activations act + c*act_stride (c < nc), writing y[c*ldy + i]. `n` is the row length in
// elements. Rows come as pointers, so the same tile serves a dense matrix (consecutive rows)
// and a gather (the active rows, anywhere); next[i] is the row whose blocks the tile
// prefetches alongside row i (the row the caller will hand it next in that slot; w[i] itself
// when there is none; when the rows and next rows are one contiguous run of short rows, the
// AVX2 tiles prefetch that run in order instead, see prefetches_run). ember_dot, ember_matvec
// and ember_matvec_gather go through tiles, and every (row, column) pair uses the same
// summation order whatever the tile shape, so they agree bit for bit. ember_matmul uses tiles
// too, except for the repacked 8-row AVX2 paths declared at the end, which give the same bits
// (same integer sums per block, same float steps in the same order).
// ---------------------------------------------------------------------------------------
typedef void (*ember_tile_fn)(int64_t n, const uint8_t *const *w, const uint8_t *const *next,
                              const uint8_t *act, size_t act_stride, float *y, int64_t ldy);

enum { EMBER_MAX_NR = 4, EMBER_MAX_NC = 4 };

// Dense drivers prefetch PF_ROWS rows ahead of each row (with 4-row tiles: the next tile's).
#ifndef PF_ROWS
#define PF_ROWS 4
#endif

// Rows up to this many bytes are prefetched as one run when a tile's rows and the next
// tile's lie end to end (dense drivers); see prefetches_run in avx2_util.h. Measured
// crossover on Zen3: Q8_0 × 2048 (2176 bytes) gains, Q4_0 × 4096 (2304 bytes) loses.
#define LINEAR_PREFETCH_MAX_ROW 2200

// tiles[nr-1][nc-1]; entries may be NULL when a shape is not provided (1x1 always is).
typedef struct { ember_tile_fn tiles[EMBER_MAX_NR][EMBER_MAX_NC]; } ember_kernel_set;

// The constant kernel table of a weight type for each path; NULL if the path lacks the type.
const ember_kernel_set *ember_portable_kernels(int type);
// The tile table the drivers use for a type: the best family the CPU has (ember_kernel_level)
// that provides it, else the portable one.
const ember_kernel_set *ember_tile_kernels(int type);

// The x86 kernels, declared once per build of dot_avx2.c / gemm_avx2.c: ember_avx2_* (AVX2 +
// FMA + F16C) and ember_vnni_* (AVX-512 VL/BW + VNNI, x86_vnni.c); both give the same bits.
//   P_kernels: the tile table of a type (NULL if the build lacks it).
//   Prefill path for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: P_repack8 repacks 8 rows (q8: 256 bytes per
//   block, dm: 16 floats per block), then P_gemm8 writes y[c*ldy + r] for r < 8, c < ncols.
//   For Q4_0/Q5_0, xsum holds each activation block's sum of quants (column c at
//   xsum + c*(n/32)). P_gemm8 returns 0 if the type has no such path.
//   The same for Q4_K/Q5_K/Q6_K: P_repack8_k repacks 8 rows into P_repack8_k_bytes(n) bytes,
//   then P_gemm8_k writes y[c*ldy + r] for r < 8, c < ncols.
#define EMBER_DECLARE_X86_KERNELS(P)                                                             \
    const ember_kernel_set *P##_kernels(int type);                                               \
    void P##_repack8(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *q8, float *dm); \
    int P##_gemm8(int type, int64_t n, const uint8_t *q8, const float *dm, const int32_t *xsum,  \
                  const uint8_t *act, size_t as, int64_t ncols, float *y, int64_t ldy);          \
    size_t P##_repack8_k_bytes(int64_t n);                                                       \
    void P##_repack8_k(int type, int64_t n, const uint8_t *w, size_t rb, uint8_t *out);          \
    void P##_gemm8_k(int type, int64_t n, const uint8_t *packed, const uint8_t *act, size_t as,  \
                     int64_t ncols, float *y, int64_t ldy);
EMBER_DECLARE_X86_KERNELS(ember_avx2)
EMBER_DECLARE_X86_KERNELS(ember_vnni)

#endif
