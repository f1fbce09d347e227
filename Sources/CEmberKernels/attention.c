// Tiled causal attention over a KV cache (ember_attention.h).
//
// One call works on one kv head: its query heads over a range of query rows, taken in blocks of
// at most QUERY_VECTORS query vectors (rows x heads). For each block of KB keys:
//   1. scores S = scale · Q·Kᵀ for every query vector and key of the block,
//   2. per query vector, the online softmax step: m' = max(m, max S), P = e^(S − m') on the
//      keys the vector sees (0 elsewhere), l = l·e^(m − m') + Σ P,
//   3. O = O·e^(m − m') + P·V.
// The output is O / l. Each key and value block is read (and for F16/Q8_0 converted) once per
// tile of query vectors while it sits in L1, instead of once per query head and row.
#include "ember_attention.h"
#include "ember_vector.h"
#include "avx2_util.h"
#include <math.h>

enum { KB = EMBER_ATTENTION_KEY_BLOCK };
// Query vectors per block: S and O of a block (48 x 64 scores, 48 x value_dim accumulators)
// stay in L2 while a key block is reused from L1 for all of them.
enum { QUERY_VECTORS = 48 };

// ---------------------------------------------------------------------------------------
// Shared set-up
// ---------------------------------------------------------------------------------------

// One block of query vectors of one kv head; all arrays live in the caller's scratch.
typedef struct {
    const ember_attention_args *a;
    int nq;                    // query vectors: vector i is row i / group, head i % group
    const float **q;           // query vector i
    const uint8_t *k, *v;      // this kv head's elements of position 0
    int64_t *lo, *hi;          // keys vector i sees in this call: [lo, hi)
    float *s;                  // nq x KB: scores, then probabilities (key b + j at s[i·KB + j])
    float *o;                  // nq x value_dim accumulators
    float *m, *l, *corr;       // running max and sum; this block's rescale factor e^(m − m')
    float *tmp;                // portable path: one key or value row in floats
} block_state;

typedef struct {
    // S[i][k − b] for all vectors and keys k in [bs, be) (block b).
    void (*scores)(block_state *st, int64_t b, int64_t bs, int64_t be);
    // Step 2 for one vector: valid keys at offsets [lo, hi) of its KB scores.
    void (*softmax)(float *s, int64_t lo, int64_t hi, float *m, float *l, float *corr);
    // O = O·corr + P·V over keys [bs, be) of block b.
    void (*pv)(block_state *st, int64_t b, int64_t bs, int64_t be);
} attention_ops;

static int64_t group_size(const ember_attention_args *a) { return a->head_count / a->kv_head_count; }

static int64_t rows_per_block(const ember_attention_args *a) {
    int64_t g = group_size(a);
    return g >= QUERY_VECTORS ? 1 : QUERY_VECTORS / g;
}

size_t ember_kv_row_bytes(int type, int64_t n) {
    if (n < 0) return 0;
    switch (type) {
    case EMBER_TYPE_F32: return (size_t)n * 4;
    case EMBER_TYPE_F16: return (size_t)n * 2;
    case EMBER_TYPE_Q8_0: return n % 32 ? 0 : (size_t)(n / 32) * sizeof(block_q8_0);
    default: return 0;
    }
}

int ember_kv_store(int type, const float *x, void *dst, int64_t n) {
    if (type != EMBER_TYPE_F32 && type != EMBER_TYPE_F16 && type != EMBER_TYPE_Q8_0) return -1;
    if (type == EMBER_TYPE_Q8_0 && n % 32) return -1;
    ember_quantize_row(type, x, dst, n);
    return 0;
}

int ember_attention_check(const ember_attention_args *a) {
    if (a->head_count < 1 || a->kv_head_count < 1 || a->head_count % a->kv_head_count) return -1;
    if (a->head_dim < 1 || a->value_dim < 1 || a->window < 0) return -1;
    if (!ember_kv_row_bytes(a->cache_type, a->head_dim) || !ember_kv_row_bytes(a->cache_type, a->value_dim))
        return -1;
    return 0;
}

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

size_t ember_attention_scratch_bytes(const ember_attention_args *a) {
    size_t nq = (size_t)(rows_per_block(a) * group_size(a));
    size_t dim = (size_t)(a->head_dim > a->value_dim ? a->head_dim : a->value_dim);
    return round64(nq * sizeof(float *)) + 2 * round64(nq * sizeof(int64_t)) +
           round64(nq * KB * sizeof(float)) + round64(nq * (size_t)a->value_dim * sizeof(float)) +
           3 * round64(nq * sizeof(float)) + round64(dim * sizeof(float));
}

// Lays the block's arrays out in the scratch and points vector i at its query.
static void begin_block(block_state *st, const ember_attention_args *a, int64_t kv_head,
                        int64_t t0, int64_t rows, void *scratch) {
    int64_t group = group_size(a);
    size_t nq = (size_t)(rows_per_block(a) * group);
    uint8_t *p = scratch;
    st->a = a;
    st->nq = (int)(rows * group);
    st->q = (const float **)p; p += round64(nq * sizeof(float *));
    st->lo = (int64_t *)p; p += round64(nq * sizeof(int64_t));
    st->hi = (int64_t *)p; p += round64(nq * sizeof(int64_t));
    st->s = (float *)p; p += round64(nq * KB * sizeof(float));
    st->o = (float *)p; p += round64(nq * (size_t)a->value_dim * sizeof(float));
    st->m = (float *)p; p += round64(nq * sizeof(float));
    st->l = (float *)p; p += round64(nq * sizeof(float));
    st->corr = (float *)p; p += round64(nq * sizeof(float));
    st->tmp = (float *)p;
    st->k = (const uint8_t *)a->keys + ember_kv_row_bytes(a->cache_type, kv_head * a->head_dim);
    st->v = (const uint8_t *)a->values + ember_kv_row_bytes(a->cache_type, kv_head * a->value_dim);
    for (int i = 0; i < st->nq; i++) {
        int64_t t = t0 + i / group, h = kv_head * group + i % group;
        st->q[i] = a->queries + t * a->query_stride + h * a->head_dim;
    }
}

// Prefetch into L2 of this kv head's keys and values at positions [k0, k1): the next block's,
// while this one is computed. A cache row holds every kv head, so a head's elements are short
// runs at a stride the hardware prefetchers followed poorly: SmolLM2 decoding after 4096
// tokens read its F16 cache at about 7 GB/s of the 34-47 the machine streams, and decoded at
// 48-54 tokens/s; with this, 63-67 (Zen4, 2 threads). Into L1 instead (T0) it fell to 42-47.
static void prefetch_block_rows(const block_state *st, int64_t k0, int64_t k1) {
    const ember_attention_args *a = st->a;
    size_t kb = ember_kv_row_bytes(a->cache_type, a->head_dim), vb = ember_kv_row_bytes(a->cache_type, a->value_dim);
    for (int64_t k = k0; k < k1; k++) {
        const uint8_t *kp = st->k + (size_t)k * a->key_stride, *vp = st->v + (size_t)k * a->value_stride;
        for (size_t o = 0; o < kb; o += 64) __builtin_prefetch(kp + o, 0, 2);
        for (size_t o = 0; o < vb; o += 64) __builtin_prefetch(vp + o, 0, 2);
    }
}

// Steps 1-3 over the keys [k0, k1) each vector sees; leaves m, l, o per vector.
static void run_block(const attention_ops *ops, block_state *st, int64_t t0, int64_t k0, int64_t k1) {
    const ember_attention_args *a = st->a;
    int64_t group = group_size(a), vd = a->value_dim;
    int64_t kmin = INT64_MAX, kmax = INT64_MIN;
    for (int i = 0; i < st->nq; i++) {
        int64_t pos = a->positions[t0 + i / group];
        int64_t first = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
        st->lo[i] = first > k0 ? first : k0;
        st->hi[i] = pos + 1 < k1 ? pos + 1 : k1;
        if (st->lo[i] < st->hi[i]) {
            if (st->lo[i] < kmin) kmin = st->lo[i];
            if (st->hi[i] > kmax) kmax = st->hi[i];
        }
        st->m[i] = -INFINITY;
        st->l[i] = 0;
        for (int64_t d = 0; d < vd; d++) st->o[i * vd + d] = 0;
    }
    if (kmin >= kmax) return;
    // Blocks at multiples of KB, whatever the range: a vector's arithmetic is then the same
    // whichever rows share its block (see the header on determinism). Keys outside
    // [kmin, kmax) are never read: they may not be stored yet.
    for (int64_t b = kmin / KB * KB; b < kmax; b += KB) {
        int64_t bs = b > kmin ? b : kmin, be = b + KB < kmax ? b + KB : kmax;
        prefetch_block_rows(st, b + KB, b + 2 * KB < kmax ? b + 2 * KB : kmax);
        ops->scores(st, b, bs, be);
        for (int i = 0; i < st->nq; i++) {
            int64_t lo = st->lo[i] - b, hi = st->hi[i] - b;
            if (lo < 0) lo = 0;
            if (hi > KB) hi = KB;
            ops->softmax(st->s + (size_t)i * KB, lo, hi, &st->m[i], &st->l[i], &st->corr[i]);
        }
        ops->pv(st, b, bs, be);
    }
}

// ---------------------------------------------------------------------------------------
// Portable path: the same blocks, scalar arithmetic.
// ---------------------------------------------------------------------------------------

static void scores_portable(block_state *st, int64_t b, int64_t bs, int64_t be) {
    const ember_attention_args *a = st->a;
    for (int64_t k = bs; k < be; k++) {
        ember_dequantize_row(a->cache_type, st->k + (size_t)k * a->key_stride, st->tmp, a->head_dim);
        for (int i = 0; i < st->nq; i++) {
            float dot = 0;
            for (int64_t d = 0; d < a->head_dim; d++) dot += st->q[i][d] * st->tmp[d];
            st->s[(size_t)i * KB + (k - b)] = dot * a->scale;
        }
    }
}

static void softmax_portable(float *s, int64_t lo, int64_t hi, float *m, float *l, float *corr) {
    if (lo >= hi) {
        *corr = 1;
        for (int j = 0; j < KB; j++) s[j] = 0;
        return;
    }
    float mb = -INFINITY;
    for (int64_t j = lo; j < hi; j++) mb = s[j] > mb ? s[j] : mb;
    float mnew = mb > *m ? mb : *m, sum = 0;
    *corr = *m == -INFINITY ? 0 : expf(*m - mnew);
    for (int64_t j = 0; j < KB; j++) {
        s[j] = j >= lo && j < hi ? expf(s[j] - mnew) : 0;
        sum += s[j];
    }
    *l = *l * *corr + sum;
    *m = mnew;
}

static void pv_portable(block_state *st, int64_t b, int64_t bs, int64_t be) {
    const ember_attention_args *a = st->a;
    int64_t vd = a->value_dim;
    for (int i = 0; i < st->nq; i++)
        for (int64_t d = 0; d < vd; d++) st->o[i * vd + d] *= st->corr[i];
    for (int64_t k = bs; k < be; k++) {
        ember_dequantize_row(a->cache_type, st->v + (size_t)k * a->value_stride, st->tmp, vd);
        for (int i = 0; i < st->nq; i++) {
            float p = st->s[(size_t)i * KB + (k - b)];
            for (int64_t d = 0; d < vd; d++) st->o[i * vd + d] += p * st->tmp[d];
        }
    }
}

static const attention_ops portable_ops = {scores_portable, softmax_portable, pv_portable};

// ---------------------------------------------------------------------------------------
// AVX2 path
// ---------------------------------------------------------------------------------------
#if defined(__x86_64__) || defined(__i386__)
enum { C_F32, C_F16, C_Q8_0 };

// Elements e..e+7 of a cache row as floats (Q8_0: e a multiple of 8, so within one block).
INLINE __m256 load8(const int kind, const uint8_t *row, int64_t e) {
    switch (kind) {
    case C_F32: return _mm256_loadu_ps((const float *)row + e);
    case C_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * e)));
    default: {
        const uint8_t *block = row + (e / 32) * sizeof(block_q8_0);
        __m128i q = _mm_loadl_epi64((const __m128i *)(block + 2 + e % 32));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(h2f(block)));
    }
    }
}

// The four horizontal sums of a0..a3 in one vector. Each lane adds only its own key's
// accumulator, in the same order whichever accumulators are in use.
INLINE __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

INLINE float hmax(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// Scores of nq ≤ 3 query vectors against nk ≤ 4 consecutive keys: one accumulator per (vector,
// key), each key chunk converted once for all vectors. s[i·KB + j] for key j.
INLINE void score_tile(const int kind, const int nq, const int nk, int64_t hd, const float *const *q,
                       const uint8_t *k, size_t ks, float scale, float *s) {
    __m256 acc[3][4];
    UNROLL
    for (int i = 0; i < 3; i++)
        UNROLL
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t e = 0; e < hd; e += 8) {
        UNROLL
        for (int j = 0; j < nk; j++) {
            __m256 kv = load8(kind, k + j * ks, e);
            UNROLL
            for (int i = 0; i < nq; i++) acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q[i] + e), kv, acc[i][j]);
        }
    }
    UNROLL
    for (int i = 0; i < nq; i++) {
        __m128 r = _mm_mul_ps(reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), _mm_set1_ps(scale));
        if (nk == 4) {
            _mm_storeu_ps(s + i * KB, r);
        } else {
            float t[4];
            _mm_storeu_ps(t, r);
            for (int j = 0; j < nk; j++) s[i * KB + j] = t[j];
        }
    }
}

// O = O·corr + Σ_k p[k]·v_k for nq ≤ 2 vectors over w ≤ 4 chunks of 8 value elements from d0:
// each value chunk converted once for both vectors.
INLINE void pv_tile(const int kind, const int nq, const int w, int64_t np, const float *const *p,
                    const uint8_t *v, size_t vs, int64_t d0, float *const *o, const float *corr) {
    __m256 acc[2][4];
    UNROLL
    for (int i = 0; i < nq; i++)
        UNROLL
        for (int c = 0; c < w; c++)
            acc[i][c] = _mm256_mul_ps(_mm256_loadu_ps(o[i] + d0 + 8 * c), _mm256_set1_ps(corr[i]));
    for (int64_t k = 0; k < np; k++) {
        __m256 pk[2];
        UNROLL
        for (int i = 0; i < nq; i++) pk[i] = _mm256_broadcast_ss(p[i] + k);
        UNROLL
        for (int c = 0; c < w; c++) {
            __m256 vv = load8(kind, v + k * vs, d0 + 8 * c);
            UNROLL
            for (int i = 0; i < nq; i++) acc[i][c] = _mm256_fmadd_ps(pk[i], vv, acc[i][c]);
        }
    }
    UNROLL
    for (int i = 0; i < nq; i++)
        UNROLL
        for (int c = 0; c < w; c++) _mm256_storeu_ps(o[i] + d0 + 8 * c, acc[i][c]);
}

static AVX2 void softmax_avx2(float *s, int64_t lo, int64_t hi, float *m, float *l, float *corr) {
    if (lo >= hi) {
        *corr = 1;
        for (int j = 0; j < KB; j += 8) _mm256_storeu_ps(s + j, _mm256_setzero_ps());
        return;
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i vlo = _mm256_set1_epi32((int)lo - 1), vhi = _mm256_set1_epi32((int)hi);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
#define IN_RANGE(j) _mm256_castsi256_ps(_mm256_and_si256(                                        \
        _mm256_cmpgt_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(j)), vlo),                     \
        _mm256_cmpgt_epi32(vhi, _mm256_add_epi32(lane, _mm256_set1_epi32(j)))))
    __m256 vmax = ninf;
    for (int j = (int)lo / 8 * 8; j < hi; j += 8)
        vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + j), IN_RANGE(j)));
    float mb = hmax(vmax), mnew = mb > *m ? mb : *m;
    *corr = *m == -INFINITY ? 0 : expf(*m - mnew);
    __m256 vm = _mm256_set1_ps(mnew), sum = _mm256_setzero_ps();
    for (int j = 0; j < KB; j += 8) {
        if (j + 8 <= lo || j >= hi) {  // no valid key: zeros (adding them to sum would change nothing)
            _mm256_storeu_ps(s + j, _mm256_setzero_ps());
            continue;
        }
        __m256 e = _mm256_and_ps(IN_RANGE(j), exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm)));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
#undef IN_RANGE
    *l = *l * *corr + hsum(sum);
    *m = mnew;
}

typedef void (*score_fn)(int64_t, const float *const *, const uint8_t *, size_t, float, float *);
typedef void (*pv_fn)(int64_t, const float *const *, const uint8_t *, size_t, int64_t, float *const *,
                      const float *);

#define SCORE_TILE(kname, kind, NQ, NK)                                                          \
    static AVX2 void score_##kname##_##NQ##x##NK(int64_t hd, const float *const *q, const uint8_t *k, \
                                                 size_t ks, float scale, float *s) {            \
        score_tile(kind, NQ, NK, hd, q, k, ks, scale, s);                                        \
    }
#define PV_TILE(kname, kind, NQ, W)                                                              \
    static AVX2 void pv_##kname##_##NQ##x##W(int64_t np, const float *const *p, const uint8_t *v,  \
                                             size_t vs, int64_t d0, float *const *o, const float *corr) { \
        pv_tile(kind, NQ, W, np, p, v, vs, d0, o, corr);                                         \
    }
#define KIND_TILES(kname, kind)                                                                  \
    SCORE_TILE(kname, kind, 1, 1) SCORE_TILE(kname, kind, 1, 2) SCORE_TILE(kname, kind, 1, 3)    \
    SCORE_TILE(kname, kind, 1, 4) SCORE_TILE(kname, kind, 2, 1) SCORE_TILE(kname, kind, 2, 2)    \
    SCORE_TILE(kname, kind, 2, 3) SCORE_TILE(kname, kind, 2, 4) SCORE_TILE(kname, kind, 3, 1)    \
    SCORE_TILE(kname, kind, 3, 2) SCORE_TILE(kname, kind, 3, 3) SCORE_TILE(kname, kind, 3, 4)    \
    PV_TILE(kname, kind, 1, 1) PV_TILE(kname, kind, 1, 2) PV_TILE(kname, kind, 1, 3)             \
    PV_TILE(kname, kind, 1, 4) PV_TILE(kname, kind, 2, 1) PV_TILE(kname, kind, 2, 2)             \
    PV_TILE(kname, kind, 2, 3) PV_TILE(kname, kind, 2, 4)                                         \
    static const score_fn score_##kname[3][4] = {                                                \
        {score_##kname##_1x1, score_##kname##_1x2, score_##kname##_1x3, score_##kname##_1x4},     \
        {score_##kname##_2x1, score_##kname##_2x2, score_##kname##_2x3, score_##kname##_2x4},     \
        {score_##kname##_3x1, score_##kname##_3x2, score_##kname##_3x3, score_##kname##_3x4}};    \
    static const pv_fn pv_##kname[2][4] = {                                                      \
        {pv_##kname##_1x1, pv_##kname##_1x2, pv_##kname##_1x3, pv_##kname##_1x4},                 \
        {pv_##kname##_2x1, pv_##kname##_2x2, pv_##kname##_2x3, pv_##kname##_2x4}};                \
    static void scores_##kname(block_state *st, int64_t b, int64_t bs, int64_t be) {             \
        scores_avx2(score_##kname, st, b, bs, be);                                               \
    }                                                                                            \
    static void pvs_##kname(block_state *st, int64_t b, int64_t bs, int64_t be) {                \
        pv_avx2(pv_##kname, st, b, bs, be);                                                      \
    }                                                                                            \
    static const attention_ops kname##_ops = {scores_##kname, softmax_avx2, pvs_##kname};

// Query vectors in threes, keys in fours: each key chunk feeds three FMAs.
static void scores_avx2(const score_fn tiles[3][4], block_state *st, int64_t b, int64_t bs, int64_t be) {
    const ember_attention_args *a = st->a;
    size_t ks = a->key_stride;
    for (int i = 0; i < st->nq; i += 3) {
        int nq = st->nq - i < 3 ? st->nq - i : 3;
        for (int64_t k = bs; k < be; k += 4) {
            int nk = be - k < 4 ? (int)(be - k) : 4;
            tiles[nq - 1][nk - 1](a->head_dim, st->q + i, st->k + (size_t)k * ks, ks, a->scale,
                                  st->s + (size_t)i * KB + (k - b));
        }
    }
}

// Query vectors in pairs, 32 value elements at a time.
static void pv_avx2(const pv_fn tiles[2][4], block_state *st, int64_t b, int64_t bs, int64_t be) {
    const ember_attention_args *a = st->a;
    int64_t vd = a->value_dim;
    for (int i = 0; i < st->nq; i += 2) {
        int nq = st->nq - i < 2 ? st->nq - i : 2;
        const float *p[2];
        float *o[2];
        for (int j = 0; j < nq; j++) {
            p[j] = st->s + (size_t)(i + j) * KB + (bs - b);
            o[j] = st->o + (size_t)(i + j) * vd;
        }
        for (int64_t d0 = 0; d0 < vd; d0 += 32) {
            int w = vd - d0 >= 32 ? 4 : (int)(vd - d0) / 8;
            tiles[nq - 1][w - 1](be - bs, p, st->v + (size_t)bs * a->value_stride, a->value_stride, d0, o,
                                 st->corr + i);
        }
    }
}

KIND_TILES(f32, C_F32)
KIND_TILES(f16, C_F16)
KIND_TILES(q8_0, C_Q8_0)
#endif

static const attention_ops *ops_for(const ember_attention_args *a) {
#if defined(__x86_64__) || defined(__i386__)
    // The tiles step through keys and values 8 elements at a time.
    if (ember_has_avx2() && a->head_dim % 8 == 0 && a->value_dim % 8 == 0) {
        switch (a->cache_type) {
        case EMBER_TYPE_F32: return &f32_ops;
        case EMBER_TYPE_F16: return &f16_ops;
        case EMBER_TYPE_Q8_0: return &q8_0_ops;
        }
    }
#endif
    return &portable_ops;
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

void ember_attention(const ember_attention_args *a, int64_t kv_head, int64_t t0, int64_t t1,
                     void *scratch) {
    if (ember_attention_check(a) || t1 <= t0) return;
    const attention_ops *ops = ops_for(a);
    int64_t group = group_size(a), rows = rows_per_block(a), vd = a->value_dim;
    block_state st;
    for (int64_t t = t0; t < t1; t += rows) {
        int64_t n = t1 - t < rows ? t1 - t : rows;
        begin_block(&st, a, kv_head, t, n, scratch);
        run_block(ops, &st, t, 0, INT64_MAX);
        for (int i = 0; i < st.nq; i++) {
            int64_t row = t + i / group, h = kv_head * group + i % group;
            float *out = a->out + row * a->out_stride + h * vd;
            float inv = st.l[i] > 0 ? 1.0f / st.l[i] : 0.0f;  // l = 0 only for a row seeing no key
            for (int64_t d = 0; d < vd; d++) out[d] = st.o[i * vd + d] * inv;
        }
    }
}

void ember_attention_partial(const ember_attention_args *a, int64_t kv_head, int64_t t,
                             int64_t k0, int64_t k1, float *partial, void *scratch) {
    if (ember_attention_check(a)) return;
    int64_t vd = a->value_dim;
    block_state st;
    begin_block(&st, a, kv_head, t, 1, scratch);
    run_block(ops_for(a), &st, t, k0, k1);
    for (int i = 0; i < st.nq; i++) {
        float *p = partial + i * EMBER_ATTENTION_PARTIAL_FLOATS(vd);
        p[0] = st.m[i];
        p[1] = st.l[i];
        for (int64_t d = 0; d < vd; d++) p[2 + d] = st.o[i * vd + d];
    }
}

void ember_attention_merge(const float *partials, int64_t count, int64_t stride,
                           int64_t value_dim, float *out) {
    float m = -INFINITY, l = 0;
    for (int64_t i = 0; i < count; i++) {
        const float *p = partials + i * stride;
        if (p[1] > 0 && p[0] > m) m = p[0];
    }
    for (int64_t d = 0; d < value_dim; d++) out[d] = 0;
    for (int64_t i = 0; i < count; i++) {
        const float *p = partials + i * stride;
        if (!(p[1] > 0)) continue;  // a range with no key
        float f = expf(p[0] - m);
        l += p[1] * f;
        ember_vec_axpy(f, p + 2, out, value_dim);
    }
    float inv = l > 0 ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < value_dim; d++) out[d] *= inv;
}
