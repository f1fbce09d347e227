// Float vector kernels for the non-matrix steps of a transformer block: norms, attention dots,
// softmax and FFN activations. Each has an AVX2+FMA path chosen at run time and a portable one.
#ifndef EMBER_VECTOR_H
#define EMBER_VECTOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Σ a[i]·b[i].
float ember_vec_dot(const float *a, const float *b, int64_t n);
/// y[i] += a·x[i].
void ember_vec_axpy(float a, const float *x, float *y, int64_t n);
/// out[i] = x[i] / sqrt(mean(x²) + eps) · w[i] (w may be NULL); out may equal x.
void ember_vec_rms_norm(const float *x, const float *w, float eps, float *out, int64_t n);
/// LayerNorm: out[i] = (x[i] - mean(x)) / sqrt(var(x) + eps) · w[i] + b[i] (w, b may be NULL);
/// out may equal x.
void ember_vec_layer_norm(const float *x, const float *w, const float *b, float eps, float *out, int64_t n);
/// In place: x = softmax(x).
void ember_vec_softmax(float *x, int64_t n);

enum { EMBER_ACT_SILU = 0, EMBER_ACT_GELU = 1, EMBER_ACT_RELU = 2 };
/// out[i] = act(gate[i])·up[i] (up NULL: act(gate[i])); out may equal gate.
void ember_vec_gated_activation(int act, const float *gate, const float *up, float *out, int64_t n);

/// One attention head over `count` cached positions: scores = q·k_p · scale, softmax, and
/// out = Σ p_p · v_p. Keys and values of consecutive positions are `key_stride` and
/// `value_stride` floats apart; `scores` holds `count` floats of scratch.
void ember_attention_head(const float *q, const float *keys, int64_t key_stride,
                          const float *values, int64_t value_stride, int64_t count,
                          int64_t head_dim, int64_t value_dim, float scale,
                          float *scores, float *out);

#ifdef __cplusplus
}
#endif

#endif
