// Float vector kernels (see ember_vector.h). The AVX2 paths matter because Swift, compiled
// for baseline x86-64, turns fused multiply-adds into libm calls and expf into scalar calls:
// measured at a third of decode time for SmolLM2 before these moved here.
#include "ember_vector.h"
#include "avx2_util.h"
#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#define EMBER_X86 1
#endif

// ---------------------------------------------------------------------------------------
// Portable paths
// ---------------------------------------------------------------------------------------

static float dot_portable(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static float activation_portable(int act, float g) {
    switch (act) {
    case EMBER_ACT_SILU: return g / (1.0f + expf(-g));
    case EMBER_ACT_GELU: {
        // The tanh approximation GeGLU models are trained with.
        const float c = 0.7978845608028654f;  // sqrt(2/pi)
        return 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
    }
    default: return g > 0 ? g : 0;
    }
}

#ifdef EMBER_X86
// ---------------------------------------------------------------------------------------
// AVX2 + FMA paths
// ---------------------------------------------------------------------------------------
AVX2 static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

AVX2 static void axpy_avx2(float a, const float *x, float *y, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

AVX2 static inline __m256 activation8(int act, __m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (act) {
    case EMBER_ACT_SILU:
        return _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    case EMBER_ACT_GELU: {
        // 0.5·g·(1 + tanh(u)) = g · e^{2u} / (1 + e^{2u}) = g / (1 + e^{-2u}).
        __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), g3, g));
        return _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u))));
    }
    default:
        return _mm256_max_ps(g, _mm256_setzero_ps());
    }
}

AVX2 static void gated_avx2(int act, const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = activation8(act, _mm256_loadu_ps(gate + i));
        if (up) a = _mm256_mul_ps(a, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(out + i, a);
    }
    // The tail through the same 8-wide code, so an element's value does not depend on where a
    // call's range starts or ends (callers split neurons over threads by count).
    if (i < n) {
        float g[8] = {0}, u[8] = {0}, o[8];
        for (int64_t k = i; k < n; k++) { g[k - i] = gate[k]; u[k - i] = up ? up[k] : 0; }
        __m256 a = activation8(act, _mm256_loadu_ps(g));
        if (up) a = _mm256_mul_ps(a, _mm256_loadu_ps(u));
        _mm256_storeu_ps(o, a);
        for (int64_t k = i; k < n; k++) out[k] = o[k - i];
    }
}

AVX2 static void softmax_avx2(float *x, int64_t n) {
    float maximum = -INFINITY;
    for (int64_t i = 0; i < n; i++) maximum = x[i] > maximum ? x[i] : maximum;
    __m256 vmax = _mm256_set1_ps(maximum), vsum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; i < n; i++) { x[i] = expf(x[i] - maximum); sum += x[i]; }
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= 1.0f / sum;
}
#endif

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

float ember_vec_dot(const float *a, const float *b, int64_t n) {
#ifdef EMBER_X86
    if (ember_has_avx2()) return dot_avx2(a, b, n);
#endif
    return dot_portable(a, b, n);
}

void ember_vec_axpy(float a, const float *x, float *y, int64_t n) {
#ifdef EMBER_X86
    if (ember_has_avx2()) { axpy_avx2(a, x, y, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void ember_vec_rms_norm(const float *x, const float *w, float eps, float *out, int64_t n) {
    float inverse = 1.0f / sqrtf(ember_vec_dot(x, x, n) / (float)n + eps);
    if (w) for (int64_t i = 0; i < n; i++) out[i] = x[i] * inverse * w[i];
    else for (int64_t i = 0; i < n; i++) out[i] = x[i] * inverse;
}

void ember_vec_layer_norm(const float *x, const float *w, const float *b, float eps, float *out, int64_t n) {
    // Two passes in double: the mean is removed before squaring, so large offsets cost no precision.
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const float mean = (float)(sum / (double)n);
    double squares = 0;
    for (int64_t i = 0; i < n; i++) squares += (double)(x[i] - mean) * (double)(x[i] - mean);
    const float inverse = (float)(1.0 / sqrt(squares / (double)n + eps));
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * inverse;
        if (w) v *= w[i];
        if (b) v += b[i];
        out[i] = v;
    }
}

void ember_vec_softmax(float *x, int64_t n) {
    if (n <= 0) return;
#ifdef EMBER_X86
    if (ember_has_avx2()) { softmax_avx2(x, n); return; }
#endif
    float maximum = x[0];
    for (int64_t i = 1; i < n; i++) maximum = x[i] > maximum ? x[i] : maximum;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - maximum); sum += x[i]; }
    for (int64_t i = 0; i < n; i++) x[i] /= sum;
}

void ember_vec_gated_activation(int act, const float *gate, const float *up, float *out, int64_t n) {
#ifdef EMBER_X86
    if (ember_has_avx2()) { gated_avx2(act, gate, up, out, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = activation_portable(act, gate[i]) * (up ? up[i] : 1.0f);
}

void ember_attention_head(const float *q, const float *keys, int64_t key_stride,
                          const float *values, int64_t value_stride, int64_t count,
                          int64_t head_dim, int64_t value_dim, float scale,
                          float *scores, float *out) {
    for (int64_t p = 0; p < count; p++) scores[p] = ember_vec_dot(q, keys + p * key_stride, head_dim) * scale;
    ember_vec_softmax(scores, count);
    for (int64_t i = 0; i < value_dim; i++) out[i] = 0;
    for (int64_t p = 0; p < count; p++) ember_vec_axpy(scores[p], values + p * value_stride, out, value_dim);
}
