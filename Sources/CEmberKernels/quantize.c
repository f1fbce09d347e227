// Conversions between floats and every block format: weight dequantization, the reference
// round-to-nearest weight quantizers (for tests and synthetic models), and the activation
// quantizers whose numerics follow llama.cpp's (so our dots round like its dots).
#include "internal.h"
#include <math.h>

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// ---------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------

static void dequant_q4_0(const block_q4_0 *b, float *y) {
    float d = ember_h2f(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 15) - 8) * d;
        y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static void dequant_q4_1(const block_q4_1 *b, float *y) {
    float d = ember_h2f(b->d), m = ember_h2f(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (b->qs[j] & 15) * d + m;
        y[j + 16] = (b->qs[j] >> 4) * d + m;
    }
}

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static void dequant_q5_0(const block_q5_0 *b, float *y) {
    float d = ember_h2f(b->d);
    uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        int lo = (b->qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        int hi = (b->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = (lo - 16) * d;
        y[j + 16] = (hi - 16) * d;
    }
}

static void dequant_q5_1(const block_q5_1 *b, float *y) {
    float d = ember_h2f(b->d), m = ember_h2f(b->m);
    uint32_t qh = load_u32(b->qh);
    for (int j = 0; j < 16; j++) {
        int lo = (b->qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        int hi = (b->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = lo * d + m;
        y[j + 16] = hi * d + m;
    }
}

static void dequant_q8_0(const block_q8_0 *b, float *y) {
    float d = ember_h2f(b->d);
    for (int j = 0; j < 32; j++) y[j] = b->qs[j] * d;
}

static void dequant_q8_1(const block_q8_1 *b, float *y) {
    float d = ember_h2f(b->d);
    for (int j = 0; j < 32; j++) y[j] = b->qs[j] * d;
}

static void dequant_q4_K(const block_q4_K *b, float *y) {
    float d = ember_h2f(b->d), dmin = ember_h2f(b->dmin);
    for (int c = 0; c < 4; c++) {
        uint8_t sc0, m0, sc1, m1;
        k_scale_min(2 * c, b->scales, &sc0, &m0);
        k_scale_min(2 * c + 1, b->scales, &sc1, &m1);
        float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;
        const uint8_t *q = b->qs + 32 * c;
        for (int l = 0; l < 32; l++) {
            y[64 * c + l] = d0 * (q[l] & 15) - o0;
            y[64 * c + 32 + l] = d1 * (q[l] >> 4) - o1;
        }
    }
}

static void dequant_q5_K(const block_q5_K *b, float *y) {
    float d = ember_h2f(b->d), dmin = ember_h2f(b->dmin);
    for (int c = 0; c < 4; c++) {
        uint8_t sc0, m0, sc1, m1;
        k_scale_min(2 * c, b->scales, &sc0, &m0);
        k_scale_min(2 * c + 1, b->scales, &sc1, &m1);
        float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;
        const uint8_t *q = b->qs + 32 * c;
        for (int l = 0; l < 32; l++) {
            int lo = (q[l] & 15) | ((b->qh[l] >> (2 * c)) & 1) << 4;
            int hi = (q[l] >> 4) | ((b->qh[l] >> (2 * c + 1)) & 1) << 4;
            y[64 * c + l] = d0 * lo - o0;
            y[64 * c + 32 + l] = d1 * hi - o1;
        }
    }
}

// The 6-bit quant of element e (0..255) of a Q6_K block, before the -32 offset.
static inline int q6_K_quant(const block_q6_K *b, int e) {
    int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    const uint8_t *ql = b->ql + 64 * half, *qh = b->qh + 32 * half;
    int low = quarter & 1 ? ql[l + 32] : ql[l];
    low = quarter & 2 ? low >> 4 : low & 15;
    return low | ((qh[l] >> (2 * quarter)) & 3) << 4;
}

static void dequant_q6_K(const block_q6_K *b, float *y) {
    float d = ember_h2f(b->d);
    for (int e = 0; e < QK_K; e++) y[e] = d * b->scales[e / 16] * (q6_K_quant(b, e) - 32);
}

static void dequant_q8_K(const block_q8_K *b, float *y) {
    for (int j = 0; j < QK_K; j++) y[j] = b->d * b->qs[j];
}

void ember_dequantize_row(int type, const void *row, float *out, int64_t n) {
    const uint8_t *p = row;
    int bs = ember_block_size(type), bb = ember_block_bytes(type);
    if (bs == 0) return;
    int64_t nb = n / bs;
    switch (type) {
    case EMBER_TYPE_F32: memcpy(out, row, (size_t)n * 4); return;
    case EMBER_TYPE_F16:
        for (int64_t i = 0; i < n; i++) out[i] = ember_h2f(((const uint16_t *)row)[i]);
        return;
    case EMBER_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = ember_bf2f(((const uint16_t *)row)[i]);
        return;
    }
    for (int64_t i = 0; i < nb; i++, p += bb, out += bs) {
        switch (type) {
        case EMBER_TYPE_Q4_0: dequant_q4_0((const block_q4_0 *)p, out); break;
        case EMBER_TYPE_Q4_1: dequant_q4_1((const block_q4_1 *)p, out); break;
        case EMBER_TYPE_Q5_0: dequant_q5_0((const block_q5_0 *)p, out); break;
        case EMBER_TYPE_Q5_1: dequant_q5_1((const block_q5_1 *)p, out); break;
        case EMBER_TYPE_Q8_0: dequant_q8_0((const block_q8_0 *)p, out); break;
        case EMBER_TYPE_Q8_1: dequant_q8_1((const block_q8_1 *)p, out); break;
        case EMBER_TYPE_Q4_K: dequant_q4_K((const block_q4_K *)p, out); break;
        case EMBER_TYPE_Q5_K: dequant_q5_K((const block_q5_K *)p, out); break;
        case EMBER_TYPE_Q6_K: dequant_q6_K((const block_q6_K *)p, out); break;
        case EMBER_TYPE_Q8_K: dequant_q8_K((const block_q8_K *)p, out); break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantizers (also the Q8_0 weight quantizer). As llama.cpp's x86 path: the scale
// is amax/127 computed in f32, values are multiplied by its f32 inverse and rounded to
// nearest (ties to even); only then is d stored as a half.
// ---------------------------------------------------------------------------------------

static float amax_of(const float *x, int n) {
    float a = 0;
    for (int j = 0; j < n; j++) a = fmaxf(a, fabsf(x[j]));
    return a;
}

static void quant_q8_0(const float *x, block_q8_0 *b) {
    float amax = amax_of(x, 32), d = amax / 127.0f, id = amax != 0 ? 127.0f / amax : 0.0f;
    b->d = ember_f2h(d);
    for (int j = 0; j < 32; j++) b->qs[j] = (int8_t)ember_nearest_int(x[j] * id);
}

static void quant_q8_1(const float *x, block_q8_1 *b) {
    float amax = amax_of(x, 32), d = amax / 127.0f, id = amax != 0 ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        int q = ember_nearest_int(x[j] * id);
        b->qs[j] = (int8_t)q;
        sum += q;
    }
    b->d = ember_f2h(d);
    b->s = ember_f2h(d * (float)sum);  // f32 d, as llama.cpp; the kernel multiplies by d_w/m_w
}

// llama.cpp's Q8_K: the scale comes from the signed value of largest magnitude, iscale =
// -127/max, q = min(127, nearest(iscale * x)), d = 1/iscale (a float, no half rounding).
static void quant_q8_K(const float *x, block_q8_K *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK_K; j++) {
        float a = fabsf(x[j]);
        if (a > amax) { amax = a; max = x[j]; }
    }
    if (amax == 0) {
        memset(b, 0, sizeof *b);
        return;
    }
    float iscale = -127.0f / max;
    for (int j = 0; j < QK_K; j++) {
        int q = ember_nearest_int(iscale * x[j]);
        b->qs[j] = (int8_t)(q > 127 ? 127 : q);
    }
    for (int g = 0; g < QK_K / 16; g++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += b->qs[16 * g + l];
        b->bsums[g] = (int16_t)s;
    }
    b->d = 1.0f / iscale;
}

void ember_quantize_activations(int act_type, const float *x, void *out, int64_t n) {
    uint8_t *p = out;
    switch (act_type) {
    case EMBER_TYPE_F32: memcpy(out, x, (size_t)n * 4); return;
    case EMBER_TYPE_Q8_0:
        for (int64_t i = 0; i < n / 32; i++) quant_q8_0(x + 32 * i, (block_q8_0 *)p + i);
        return;
    case EMBER_TYPE_Q8_1:
        for (int64_t i = 0; i < n / 32; i++) quant_q8_1(x + 32 * i, (block_q8_1 *)p + i);
        return;
    case EMBER_TYPE_Q8_K:
        for (int64_t i = 0; i < n / QK_K; i++) quant_q8_K(x + QK_K * i, (block_q8_K *)p + i);
        return;
    }
}

// ---------------------------------------------------------------------------------------
// Reference weight quantizers: plain round to nearest.
// ---------------------------------------------------------------------------------------

// Q4_0/Q5_0: like llama.cpp's reference, the largest-magnitude value maps to the extreme
// level -2^(bits-1) exactly, so d = max / -8 (or -16).
static void quant_q4_0(const float *x, block_q4_0 *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
    float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    b->d = ember_f2h(d);
    for (int j = 0; j < 16; j++) {
        int lo = clampi(ember_nearest_int(x[j] * id) + 8, 0, 15);
        int hi = clampi(ember_nearest_int(x[j + 16] * id) + 8, 0, 15);
        b->qs[j] = (uint8_t)(lo | hi << 4);
    }
}

static void quant_q5_0(const float *x, block_q5_0 *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
    float d = max / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    b->d = ember_f2h(d);
    for (int j = 0; j < 16; j++) {
        int lo = clampi(ember_nearest_int(x[j] * id) + 16, 0, 31);
        int hi = clampi(ember_nearest_int(x[j + 16] * id) + 16, 0, 31);
        b->qs[j] = (uint8_t)((lo & 15) | (hi & 15) << 4);
        qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
    }
    memcpy(b->qh, &qh, 4);
}

// Q4_1/Q5_1: levels span [min, max]; d and m are rounded to halves first and the quants are
// chosen against the rounded values.
static void min_max(const float *x, int n, float *mn, float *mx) {
    float a = x[0], b = x[0];
    for (int j = 1; j < n; j++) { a = fminf(a, x[j]); b = fmaxf(b, x[j]); }
    *mn = a; *mx = b;
}

static void quant_q4_1(const float *x, block_q4_1 *b) {
    float mn, mx;
    min_max(x, 32, &mn, &mx);
    b->d = ember_f2h((mx - mn) / 15.0f);
    b->m = ember_f2h(mn);
    float d = ember_h2f(b->d), m = ember_h2f(b->m), id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < 16; j++) {
        int lo = clampi(ember_nearest_int((x[j] - m) * id), 0, 15);
        int hi = clampi(ember_nearest_int((x[j + 16] - m) * id), 0, 15);
        b->qs[j] = (uint8_t)(lo | hi << 4);
    }
}

static void quant_q5_1(const float *x, block_q5_1 *b) {
    float mn, mx;
    min_max(x, 32, &mn, &mx);
    b->d = ember_f2h((mx - mn) / 31.0f);
    b->m = ember_f2h(mn);
    float d = ember_h2f(b->d), m = ember_h2f(b->m), id = d != 0 ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int lo = clampi(ember_nearest_int((x[j] - m) * id), 0, 31);
        int hi = clampi(ember_nearest_int((x[j + 16] - m) * id), 0, 31);
        b->qs[j] = (uint8_t)((lo & 15) | (hi & 15) << 4);
        qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
    }
    memcpy(b->qh, &qh, 4);
}

// A half >= v (v >= 0): round to nearest, then step up one ulp if that fell below v. K-quant
// super-scales use it so that every sub-block scale fits its integer range.
static uint16_t half_at_least(float v) {
    uint16_t h = ember_f2h(v);
    if (ember_h2f(h) < v) h++;
    return h;
}

// Q4_K/Q5_K: each sub-block of 32 gets offset min' = -min(min, 0) (the format subtracts a
// non-negative min) and a scale covering [min', max]. The 6-bit integer mins are rounded
// *up* first, then the scales are sized for the rounded offsets and also rounded up, so the
// quantized range always covers the sub-block: every value is within half a step of a level.
static void quant_k_scales(const float *x, int levels, uint16_t *dh, uint16_t *dminh,
                           uint8_t sc[8], uint8_t mn[8], float step[8], float off[8]) {
    float hi[8], mins[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float lo;
        min_max(x + 32 * j, 32, &lo, &hi[j]);
        mins[j] = -fminf(lo, 0.0f);
        max_min = fmaxf(max_min, mins[j]);
    }
    *dminh = half_at_least(max_min / 63.0f);
    float dmin = ember_h2f(*dminh), scale[8];
    for (int j = 0; j < 8; j++) {
        mn[j] = dmin > 0 ? (uint8_t)clampi((int)ceilf(mins[j] / dmin), 0, 63) : 0;
        off[j] = dmin * mn[j];
        scale[j] = fmaxf(hi[j] + off[j], 0.0f) / levels;
        max_scale = fmaxf(max_scale, scale[j]);
    }
    *dh = half_at_least(max_scale / 63.0f);
    float d = ember_h2f(*dh);
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? (uint8_t)clampi((int)ceilf(scale[j] / d), 0, 63) : 0;
        step[j] = d * sc[j];
    }
}

// Inverse of k_scale_min.
static void pack_k_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12]) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)((sc[j] & 63) | (sc[j + 4] >> 4) << 6);
        out[j + 4] = (uint8_t)((mn[j] & 63) | (mn[j + 4] >> 4) << 6);
        out[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

static int quant_level(float x, float step, float off, int max) {
    return step > 0 ? clampi(ember_nearest_int((x + off) / step), 0, max) : 0;
}

static void quant_q4_K(const float *x, block_q4_K *b) {
    uint8_t sc[8], mn[8];
    float step[8], off[8];
    quant_k_scales(x, 15, &b->d, &b->dmin, sc, mn, step, off);
    pack_k_scales(sc, mn, b->scales);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int lo = quant_level(x[64 * c + l], step[2 * c], off[2 * c], 15);
            int hi = quant_level(x[64 * c + 32 + l], step[2 * c + 1], off[2 * c + 1], 15);
            b->qs[32 * c + l] = (uint8_t)(lo | hi << 4);
        }
}

static void quant_q5_K(const float *x, block_q5_K *b) {
    uint8_t sc[8], mn[8];
    float step[8], off[8];
    quant_k_scales(x, 31, &b->d, &b->dmin, sc, mn, step, off);
    pack_k_scales(sc, mn, b->scales);
    memset(b->qh, 0, sizeof b->qh);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int lo = quant_level(x[64 * c + l], step[2 * c], off[2 * c], 31);
            int hi = quant_level(x[64 * c + 32 + l], step[2 * c + 1], off[2 * c + 1], 31);
            b->qs[32 * c + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
            b->qh[l] |= (uint8_t)((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
        }
}

// Q6_K: each group of 16 gets scale amax/31 (levels -31..31 of the available -32..31), the
// super-scale is chosen so the signed 8-bit group scales (rounded away from zero) fit.
static void quant_q6_K(const float *x, block_q6_K *b) {
    float scale[16], max_scale = 0;
    for (int g = 0; g < 16; g++) {
        scale[g] = amax_of(x + 16 * g, 16) / 31.0f;
        max_scale = fmaxf(max_scale, scale[g]);
    }
    b->d = half_at_least(max_scale / 127.0f);
    float d = ember_h2f(b->d);
    memset(b->ql, 0, sizeof b->ql);
    memset(b->qh, 0, sizeof b->qh);
    for (int g = 0; g < 16; g++) {
        int s = d > 0 ? clampi((int)ceilf(scale[g] / d), 0, 127) : 0;
        b->scales[g] = (int8_t)s;
        float step = d * s;
        for (int l = 0; l < 16; l++) {
            int e = 16 * g + l;
            int q = step > 0 ? clampi(ember_nearest_int(x[e] / step), -32, 31) + 32 : 32;
            // Place q per the layout comment on block_q6_K.
            int half = e / 128, r = e % 128, quarter = r / 32, i = r % 32;
            uint8_t *ql = b->ql + 64 * half + (quarter & 1 ? 32 : 0) + i;
            *ql |= (uint8_t)(quarter & 2 ? (q & 15) << 4 : (q & 15));
            b->qh[32 * half + i] |= (uint8_t)((q >> 4) << (2 * quarter));
        }
    }
}

void ember_quantize_row(int type, const float *x, void *out, int64_t n) {
    uint8_t *p = out;
    int bs = ember_block_size(type), bb = ember_block_bytes(type);
    if (bs == 0) return;
    switch (type) {
    case EMBER_TYPE_F32: memcpy(out, x, (size_t)n * 4); return;
    case EMBER_TYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = ember_f2h(x[i]);
        return;
    case EMBER_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = ember_f2bf(x[i]);
        return;
    case EMBER_TYPE_Q8_1: case EMBER_TYPE_Q8_K:
        ember_quantize_activations(type, x, out, n);
        return;
    }
    for (int64_t i = 0; i < n / bs; i++, p += bb, x += bs) {
        switch (type) {
        case EMBER_TYPE_Q4_0: quant_q4_0(x, (block_q4_0 *)p); break;
        case EMBER_TYPE_Q4_1: quant_q4_1(x, (block_q4_1 *)p); break;
        case EMBER_TYPE_Q5_0: quant_q5_0(x, (block_q5_0 *)p); break;
        case EMBER_TYPE_Q5_1: quant_q5_1(x, (block_q5_1 *)p); break;
        case EMBER_TYPE_Q8_0: quant_q8_0(x, (block_q8_0 *)p); break;
        case EMBER_TYPE_Q4_K: quant_q4_K(x, (block_q4_K *)p); break;
        case EMBER_TYPE_Q5_K: quant_q5_K(x, (block_q5_K *)p); break;
        case EMBER_TYPE_Q6_K: quant_q6_K(x, (block_q6_K *)p); break;
        }
    }
}
