// TEMPORARY scalar stand-in used by the engine branch until the real kernels land.
#include "ember_kernels.h"
#include <string.h>
#include <math.h>

static float h2f(uint16_t h) {
    uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float v;
    if (exp == 0) v = ldexpf((float)mant, -24);
    else if (exp == 31) v = mant ? NAN : INFINITY;
    else v = ldexpf((float)(mant | 0x400), (int)exp - 25);
    return sign ? -v : v;
}
int ember_has_avx2(void) { return 0; }
void ember_force_portable(int on) { (void)on; }
int ember_block_size(int t) { switch (t) { case 0: case 1: case 30: return 1; case 3: case 8: return 32; default: return 0; } }
int ember_block_bytes(int t) { switch (t) { case 0: return 4; case 1: case 30: return 2; case 3: return 20; case 8: return 34; default: return 0; } }
size_t ember_row_bytes(int t, int64_t n) { return (size_t)(n / ember_block_size(t)) * ember_block_bytes(t); }
int ember_activation_type(int t) { (void)t; return EMBER_TYPE_F32; }
size_t ember_activation_bytes(int t, int64_t n) { (void)t; return (size_t)n * 4; }
void ember_quantize_activations(int t, const float *x, void *out, int64_t n) { (void)t; memcpy(out, x, n * 4); }
void ember_dequantize_row(int t, const void *row, float *out, int64_t n) {
    const uint8_t *b = row;
    switch (t) {
    case 0: memcpy(out, row, n * 4); break;
    case 1: for (int64_t i = 0; i < n; i++) out[i] = h2f(((const uint16_t *)row)[i]); break;
    case 3:
        for (int64_t i = 0; i < n / 32; i++, b += 20) {
            float d = h2f(*(const uint16_t *)b), m = h2f(*(const uint16_t *)(b + 2));
            for (int j = 0; j < 16; j++) {
                out[i * 32 + j] = (b[4 + j] & 15) * d + m;
                out[i * 32 + j + 16] = (b[4 + j] >> 4) * d + m;
            }
        }
        break;
    case 8:
        for (int64_t i = 0; i < n / 32; i++, b += 34) {
            float d = h2f(*(const uint16_t *)b);
            for (int j = 0; j < 32; j++) out[i * 32 + j] = (int8_t)b[2 + j] * d;
        }
        break;
    }
}
void ember_quantize_row(int t, const float *x, void *out, int64_t n) { (void)t; (void)x; (void)out; (void)n; }
float ember_dot(int t, int64_t n, const void *row, const void *act) {
    float tmp[32];
    const float *x = act;
    float s = 0;
    int bs = ember_block_size(t) == 1 ? 32 : ember_block_size(t);
    size_t bb = ember_row_bytes(t, bs);
    for (int64_t i = 0; i < n; i += bs) {
        ember_dequantize_row(t, (const uint8_t *)row + (i / bs) * bb, tmp, bs);
        for (int j = 0; j < bs; j++) s += tmp[j] * x[i + j];
    }
    return s;
}
void ember_matvec(int t, int64_t n, const void *w, size_t rb, const void *act, float *y, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) y[r - r0] = ember_dot(t, n, (const uint8_t *)w + r * rb, act);
}
void ember_matmul(int t, int64_t n, const void *w, size_t rb, const void *act, size_t as, int64_t nc, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < nc; c++)
            y[c * ldy + r] = ember_dot(t, n, (const uint8_t *)w + r * rb, (const uint8_t *)act + c * as);
}
