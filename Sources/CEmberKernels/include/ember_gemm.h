// Float matrix products and the elementwise steps of predictor training (gemm_f32.c).
// Row-major throughout; every function is single-threaded over what it is given, callers
// split work among threads. AVX2+FMA paths are chosen at run time (ember_has_avx2()).
#ifndef EMBER_GEMM_H
#define EMBER_GEMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// C = beta·C + op(A)·op(B), C is m×n (row length ldc), op(A) is m×k, op(B) is k×n.
/// trans_a = 0: A is stored m×k (row length lda); 1: A is stored k×m (A(i,p) = a[p·lda + i]).
/// trans_b = 0: B is stored k×n (row length ldb); 1: B is stored n×k (B(p,j) = b[j·ldb + p]).
/// beta = 0 ignores C's previous contents (it may hold NaNs).
void ember_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                 const float *a, int64_t lda, const float *b, int64_t ldb,
                 float beta, float *c, int64_t ldc);

/// In place: x[i] = max(x[i], 0).
void ember_relu(float *x, int64_t n);
/// In place: g[i] = 0 where h[i] <= 0 (the gradient through relu(h)).
void ember_relu_backward(const float *h, float *g, int64_t n);

/// Weighted binary cross-entropy on logits s[0..<n] against the label bits (bit i of
/// labels[i / 64], LSB first): g[i] = scale·(y ? w_pos·(σ(s)−1) : σ(s)). Returns the loss sum
/// Σ (y ? −w_pos·log σ(s) : −log(1−σ(s))), unscaled.
double ember_bce_logits_grad(const float *s, const uint64_t *labels, int64_t n,
                             float w_pos, float scale, float *g);

/// One Adam step: m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g², w −= lr·(m/c1) / (sqrt(v/c2) + eps),
/// with c1 = 1−β1^t and c2 = 1−β2^t passed in.
void ember_adam_step(float *w, const float *g, float *m, float *v, int64_t n, float lr,
                     float beta1, float beta2, float eps, float c1, float c2);

/// Writes the indices i with s[i] >= tau to out (ascending) and returns their count.
int64_t ember_threshold_indices(const float *s, int64_t n, float tau, int32_t *out);

/// In place: s[i] = s[i] >= tau ? 1 : 0; returns the number of ones.
int64_t ember_threshold_mask(float *s, int64_t n, float tau);

/// Sets bit i of bits (LSB first, (n + 63) / 64 words, cleared first) iff |a[i]| >= t
/// (magnitude = 1) or a[i] > t (magnitude = 0: ReLU models, t = 0).
void ember_active_bits(const float *a, int64_t n, float t, int magnitude, uint64_t *bits);

/// Over n (score, label bit) pairs: counts[0] = scores >= tau, counts[1] = active labels,
/// counts[2] = both.
void ember_confusion(const float *s, const uint64_t *labels, int64_t n, float tau, int64_t counts[3]);

/// Copies the scores whose label bit is set to out (room for n) and returns how many.
int64_t ember_gather_active(const float *s, const uint64_t *labels, int64_t n, float *out);

#ifdef __cplusplus
}
#endif

#endif
