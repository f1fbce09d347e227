// Float GEMM and the elementwise steps of predictor training (see ember_gemm.h).
//
// The product is computed panel by panel: op(B) is packed once into panels of NR = 16
// columns (k rows of 16 contiguous floats, at most k·64 bytes: L2-resident for the shapes of
// predictor training), then each 4×16 tile of C is accumulated in eight AVX registers over
// all of k. op(A) is read in place through two strides, so a transposed A costs no copy.
#include "ember_gemm.h"
#include "ember_kernels.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EMBER_X86 1
#define AVX2 __attribute__((target("avx2,fma")))
#endif

enum { NR = 16, MR = 4 };

// Packs op(B) columns [j0, j0 + NR) into p[k][NR], zero-padding past n.
static void pack_b(int trans_b, const float *b, int64_t ldb, int64_t k, int64_t n, int64_t j0, float *p) {
    int64_t w = n - j0 < NR ? n - j0 : NR;
    for (int64_t q = 0; q < k; q++) {
        float *row = p + q * NR;
        if (!trans_b) {
            memcpy(row, b + q * ldb + j0, (size_t)w * sizeof(float));
        } else {
            for (int64_t j = 0; j < w; j++) row[j] = b[(j0 + j) * ldb + q];
        }
        for (int64_t j = w; j < NR; j++) row[j] = 0;
    }
}

// acc[r][0..NR) += Σ_q A(i + r, q) · P[q][0..NR) for q in [q0, q1), rows r < rows.
static void tile_portable(const float *a, int64_t si, int64_t sk, int64_t i, int rows,
                          const float *p, int64_t q0, int64_t q1, float acc[MR][NR]) {
    for (int r = 0; r < rows; r++) {
        for (int64_t q = q0; q < q1; q++) {
            float x = a[(i + r) * si + q * sk];
            const float *pq = p + q * NR;
            for (int j = 0; j < NR; j++) acc[r][j] += x * pq[j];
        }
    }
}

#ifdef EMBER_X86
AVX2 static void tile_avx2(const float *a, int64_t si, int64_t sk, int64_t i, int rows,
                           const float *p, int64_t q0, int64_t q1, float acc[MR][NR]) {
    if (rows == MR) {
        __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
        __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
        const float *a0 = a + i * si, *a1 = a0 + si, *a2 = a1 + si, *a3 = a2 + si;
        for (int64_t q = q0; q < q1; q++) {
            __m256 b0 = _mm256_loadu_ps(p + q * NR), b1 = _mm256_loadu_ps(p + q * NR + 8);
            __m256 x;
            x = _mm256_broadcast_ss(a0 + q * sk); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
            x = _mm256_broadcast_ss(a1 + q * sk); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
            x = _mm256_broadcast_ss(a2 + q * sk); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
            x = _mm256_broadcast_ss(a3 + q * sk); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        }
        _mm256_storeu_ps(acc[0], _mm256_add_ps(_mm256_loadu_ps(acc[0]), c00));
        _mm256_storeu_ps(acc[0] + 8, _mm256_add_ps(_mm256_loadu_ps(acc[0] + 8), c01));
        _mm256_storeu_ps(acc[1], _mm256_add_ps(_mm256_loadu_ps(acc[1]), c10));
        _mm256_storeu_ps(acc[1] + 8, _mm256_add_ps(_mm256_loadu_ps(acc[1] + 8), c11));
        _mm256_storeu_ps(acc[2], _mm256_add_ps(_mm256_loadu_ps(acc[2]), c20));
        _mm256_storeu_ps(acc[2] + 8, _mm256_add_ps(_mm256_loadu_ps(acc[2] + 8), c21));
        _mm256_storeu_ps(acc[3], _mm256_add_ps(_mm256_loadu_ps(acc[3]), c30));
        _mm256_storeu_ps(acc[3] + 8, _mm256_add_ps(_mm256_loadu_ps(acc[3] + 8), c31));
        return;
    }
    for (int r = 0; r < rows; r++) {
        __m256 c0 = _mm256_loadu_ps(acc[r]), c1 = _mm256_loadu_ps(acc[r] + 8);
        const float *ar = a + (i + r) * si;
        for (int64_t q = q0; q < q1; q++) {
            __m256 x = _mm256_broadcast_ss(ar + q * sk);
            c0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p + q * NR), c0);
            c1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p + q * NR + 8), c1);
        }
        _mm256_storeu_ps(acc[r], c0);
        _mm256_storeu_ps(acc[r] + 8, c1);
    }
}
#endif

void ember_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                 const float *a, int64_t lda, const float *b, int64_t ldb,
                 float beta, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    const int64_t si = trans_a ? 1 : lda, sk = trans_a ? lda : 1;
#ifdef EMBER_X86
    const int fast = ember_has_avx2();
#endif
    float *panel = malloc((size_t)(k > 0 ? k : 1) * NR * sizeof(float));
    for (int64_t j0 = 0; j0 < n; j0 += NR) {
        const int w = n - j0 < NR ? (int)(n - j0) : NR;
        pack_b(trans_b, b, ldb, k, n, j0, panel);
        for (int64_t i = 0; i < m; i += MR) {
            const int rows = m - i < MR ? (int)(m - i) : MR;
            float acc[MR][NR];
            for (int r = 0; r < rows; r++) {
                for (int j = 0; j < NR; j++) acc[r][j] = (j < w && beta != 0) ? beta * c[(i + r) * ldc + j0 + j] : 0;
            }
#ifdef EMBER_X86
            if (fast) tile_avx2(a, si, sk, i, rows, panel, 0, k, acc);
            else
#endif
            tile_portable(a, si, sk, i, rows, panel, 0, k, acc);
            for (int r = 0; r < rows; r++) memcpy(c + (i + r) * ldc + j0, acc[r], (size_t)w * sizeof(float));
        }
    }
    free(panel);
}

void ember_relu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
}

void ember_relu_backward(const float *h, float *g, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = h[i] > 0 ? g[i] : 0;
}

double ember_bce_logits_grad(const float *s, const uint64_t *labels, int64_t n,
                             float w_pos, float scale, float *g) {
    double loss = 0;
    for (int64_t i = 0; i < n; i++) {
        const int y = (int)((labels[i >> 6] >> (i & 63)) & 1);
        const float z = s[i];
        // log(1 + e^-|z|) + max(-z, 0) = −log σ(z), stable for large |z|.
        const float soft = log1pf(expf(-fabsf(z)));
        const float p = z >= 0 ? 1 / (1 + expf(-z)) : expf(z) / (1 + expf(z));
        if (y) {
            loss += w_pos * (soft + (z < 0 ? -z : 0));
            g[i] = scale * w_pos * (p - 1);
        } else {
            loss += soft + (z > 0 ? z : 0);
            g[i] = scale * p;
        }
    }
    return loss;
}

void ember_adam_step(float *w, const float *g, float *m, float *v, int64_t n, float lr,
                     float beta1, float beta2, float eps, float c1, float c2) {
    const float step = lr / c1, root = 1 / sqrtf(c2);
    for (int64_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
        w[i] -= step * m[i] / (sqrtf(v[i]) * root + eps);
    }
}

int64_t ember_threshold_indices(const float *s, int64_t n, float tau, int32_t *out) {
    int64_t count = 0;
    // Branch-free: always write, advance only on a hit.
    for (int64_t i = 0; i < n; i++) {
        out[count] = (int32_t)i;
        count += s[i] >= tau;
    }
    return count;
}

int64_t ember_threshold_mask(float *s, int64_t n, float tau) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        const int on = s[i] >= tau;
        s[i] = on ? 1.0f : 0.0f;
        count += on;
    }
    return count;
}

void ember_active_bits(const float *a, int64_t n, float t, int magnitude, uint64_t *bits) {
    memset(bits, 0, (size_t)((n + 63) / 64) * sizeof(uint64_t));
    for (int64_t i = 0; i < n; i++) {
        const int on = magnitude ? fabsf(a[i]) >= t : a[i] > t;
        bits[i >> 6] |= (uint64_t)on << (i & 63);
    }
}

void ember_confusion(const float *s, const uint64_t *labels, int64_t n, float tau, int64_t counts[3]) {
    int64_t predicted = 0, active = 0, both = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t y = (int64_t)((labels[i >> 6] >> (i & 63)) & 1), p = s[i] >= tau;
        predicted += p;
        active += y;
        both += p & y;
    }
    counts[0] = predicted;
    counts[1] = active;
    counts[2] = both;
}

int64_t ember_gather_active(const float *s, const uint64_t *labels, int64_t n, float *out) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        out[count] = s[i];
        count += (int64_t)((labels[i >> 6] >> (i & 63)) & 1);
    }
    return count;
}
