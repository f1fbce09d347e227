// Portable C dot products for every weight type (1 row x 1 column tiles). Integer sums within
// a block, one float multiply-add per block: the same arithmetic as the AVX2 path, in a
// different summation order.
#include "internal.h"

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static float dot_f32(int64_t n, const uint8_t *w, const float *x) {
    const float *r = (const float *)w;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += r[i] * x[i];
    return s;
}

static float dot_f16(int64_t n, const uint8_t *w, const float *x) {
    const uint16_t *r = (const uint16_t *)w;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += ember_h2f(r[i]) * x[i];
    return s;
}

static float dot_bf16(int64_t n, const uint8_t *w, const float *x) {
    const uint16_t *r = (const uint16_t *)w;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += ember_bf2f(r[i]) * x[i];
    return s;
}

static float dot_q4_0(int64_t n, const block_q4_0 *w, const block_q8_0 *a) {
    float s = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += ((w[i].qs[j] & 15) - 8) * a[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        s += ember_h2f(w[i].d) * ember_h2f(a[i].d) * (float)sum;
    }
    return s;
}

// sum((q*dw + m) * qa*da) = dw*da*sum(q*qa) + m*(da*sum(qa)) and da*sum(qa) is Q8_1's s.
static float dot_q4_1(int64_t n, const block_q4_1 *w, const block_q8_1 *a) {
    float s = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (w[i].qs[j] & 15) * a[i].qs[j] + (w[i].qs[j] >> 4) * a[i].qs[j + 16];
        s += ember_h2f(w[i].d) * ember_h2f(a[i].d) * (float)sum + ember_h2f(w[i].m) * ember_h2f(a[i].s);
    }
    return s;
}

static float dot_q5_0(int64_t n, const block_q5_0 *w, const block_q8_0 *a) {
    float s = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        uint32_t qh = load_u32(w[i].qh);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int lo = ((w[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4) - 16;
            int hi = ((w[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - 16;
            sum += lo * a[i].qs[j] + hi * a[i].qs[j + 16];
        }
        s += ember_h2f(w[i].d) * ember_h2f(a[i].d) * (float)sum;
    }
    return s;
}

static float dot_q5_1(int64_t n, const block_q5_1 *w, const block_q8_1 *a) {
    float s = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        uint32_t qh = load_u32(w[i].qh);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (w[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            int hi = (w[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            sum += lo * a[i].qs[j] + hi * a[i].qs[j + 16];
        }
        s += ember_h2f(w[i].d) * ember_h2f(a[i].d) * (float)sum + ember_h2f(w[i].m) * ember_h2f(a[i].s);
    }
    return s;
}

static float dot_q8_0(int64_t n, const block_q8_0 *w, const block_q8_0 *a) {
    float s = 0;
    for (int64_t i = 0; i < n / 32; i++) {
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += w[i].qs[j] * a[i].qs[j];
        s += ember_h2f(w[i].d) * ember_h2f(a[i].d) * (float)sum;
    }
    return s;
}

// Min term: sum over sub-blocks j of m_j * sum(qa in j) uses the 16-element bsums in pairs.
static float dot_q4_K(int64_t n, const block_q4_K *w, const block_q8_K *a) {
    float s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sum = 0, msum = 0;
        for (int c = 0; c < 4; c++) {
            uint8_t sc0, m0, sc1, m1;
            k_scale_min(2 * c, w[i].scales, &sc0, &m0);
            k_scale_min(2 * c + 1, w[i].scales, &sc1, &m1);
            const uint8_t *q = w[i].qs + 32 * c;
            const int8_t *x = a[i].qs + 64 * c;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) { s0 += (q[l] & 15) * x[l]; s1 += (q[l] >> 4) * x[l + 32]; }
            sum += sc0 * s0 + sc1 * s1;
            msum += m0 * (a[i].bsums[4 * c] + a[i].bsums[4 * c + 1]) +
                    m1 * (a[i].bsums[4 * c + 2] + a[i].bsums[4 * c + 3]);
        }
        s += a[i].d * (ember_h2f(w[i].d) * (float)sum - ember_h2f(w[i].dmin) * (float)msum);
    }
    return s;
}

static float dot_q5_K(int64_t n, const block_q5_K *w, const block_q8_K *a) {
    float s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sum = 0, msum = 0;
        for (int c = 0; c < 4; c++) {
            uint8_t sc0, m0, sc1, m1;
            k_scale_min(2 * c, w[i].scales, &sc0, &m0);
            k_scale_min(2 * c + 1, w[i].scales, &sc1, &m1);
            const uint8_t *q = w[i].qs + 32 * c, *qh = w[i].qh;
            const int8_t *x = a[i].qs + 64 * c;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += ((q[l] & 15) | ((qh[l] >> (2 * c)) & 1) << 4) * x[l];
                s1 += ((q[l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4) * x[l + 32];
            }
            sum += sc0 * s0 + sc1 * s1;
            msum += m0 * (a[i].bsums[4 * c] + a[i].bsums[4 * c + 1]) +
                    m1 * (a[i].bsums[4 * c + 2] + a[i].bsums[4 * c + 3]);
        }
        s += a[i].d * (ember_h2f(w[i].d) * (float)sum - ember_h2f(w[i].dmin) * (float)msum);
    }
    return s;
}

// The -32 offset is folded in with the bsums: sum(sc*(q-32)*x) = sum(sc*q*x) - 32*sum(sc*bsum).
static float dot_q6_K(int64_t n, const block_q6_K *w, const block_q8_K *a) {
    float s = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sum = 0;
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w[i].ql + 64 * half, *qh = w[i].qh + 32 * half;
            const int8_t *x = a[i].qs + 128 * half;
            const int8_t *sc = w[i].scales + 8 * half;
            int g[8] = {0};  // groups of 16: quarter q, l >= 16 -> index 2q + (l >= 16)
            for (int l = 0; l < 32; l++) {
                int q0 = (ql[l] & 15) | (qh[l] & 3) << 4;
                int q1 = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
                int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                int h = l >= 16;
                g[0 + h] += q0 * x[l];
                g[2 + h] += q1 * x[l + 32];
                g[4 + h] += q2 * x[l + 64];
                g[6 + h] += q3 * x[l + 96];
            }
            for (int k = 0; k < 8; k++) sum += sc[k] * (g[k] - 32 * a[i].bsums[8 * half + k]);
        }
        s += a[i].d * ember_h2f(w[i].d) * (float)sum;
    }
    return s;
}

#define PORTABLE_TILE(name, call)                                                            \
    static void tile_##name(int64_t n, const uint8_t *const *rows, const uint8_t *const *next, \
                            const uint8_t *act, size_t as, float *y, int64_t ldy) {          \
        (void)next; (void)as; (void)ldy;                                                     \
        const uint8_t *w = rows[0];                                                          \
        *y = call;                                                                           \
    }

PORTABLE_TILE(f32, dot_f32(n, w, (const float *)act))
PORTABLE_TILE(f16, dot_f16(n, w, (const float *)act))
PORTABLE_TILE(bf16, dot_bf16(n, w, (const float *)act))
PORTABLE_TILE(q4_0, dot_q4_0(n, (const block_q4_0 *)w, (const block_q8_0 *)act))
PORTABLE_TILE(q4_1, dot_q4_1(n, (const block_q4_1 *)w, (const block_q8_1 *)act))
PORTABLE_TILE(q5_0, dot_q5_0(n, (const block_q5_0 *)w, (const block_q8_0 *)act))
PORTABLE_TILE(q5_1, dot_q5_1(n, (const block_q5_1 *)w, (const block_q8_1 *)act))
PORTABLE_TILE(q8_0, dot_q8_0(n, (const block_q8_0 *)w, (const block_q8_0 *)act))
PORTABLE_TILE(q4_K, dot_q4_K(n, (const block_q4_K *)w, (const block_q8_K *)act))
PORTABLE_TILE(q5_K, dot_q5_K(n, (const block_q5_K *)w, (const block_q8_K *)act))
PORTABLE_TILE(q6_K, dot_q6_K(n, (const block_q6_K *)w, (const block_q8_K *)act))

#define PORTABLE_SET(name) static const ember_kernel_set name##_set = {{[0][0] = tile_##name}};
PORTABLE_SET(f32) PORTABLE_SET(f16) PORTABLE_SET(bf16) PORTABLE_SET(q4_0) PORTABLE_SET(q4_1)
PORTABLE_SET(q5_0) PORTABLE_SET(q5_1) PORTABLE_SET(q8_0) PORTABLE_SET(q4_K) PORTABLE_SET(q5_K)
PORTABLE_SET(q6_K)

const ember_kernel_set *ember_portable_kernels(int type) {
    switch (type) {
    case EMBER_TYPE_F32: return &f32_set;
    case EMBER_TYPE_F16: return &f16_set;
    case EMBER_TYPE_BF16: return &bf16_set;
    case EMBER_TYPE_Q4_0: return &q4_0_set;
    case EMBER_TYPE_Q4_1: return &q4_1_set;
    case EMBER_TYPE_Q5_0: return &q5_0_set;
    case EMBER_TYPE_Q5_1: return &q5_1_set;
    case EMBER_TYPE_Q8_0: return &q8_0_set;
    case EMBER_TYPE_Q4_K: return &q4_K_set;
    case EMBER_TYPE_Q5_K: return &q5_K_set;
    case EMBER_TYPE_Q6_K: return &q6_K_set;
    default: return NULL;
    }
}
