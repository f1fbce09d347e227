// Causal attention over a KV cache (attention.c): a batch of query rows against one layer's
// cached keys and values, for prefill and decode alike.
//
// The work of one kv head (its group of query heads) over a range of query rows is done in
// blocks of query vectors x blocks of EMBER_ATTENTION_KEY_BLOCK keys with an online softmax
// (a running max and sum per query vector, the accumulated output rescaled when the max
// grows), so every key and value block is read once for all the query heads and rows of the
// block. Decode with a long cache splits the keys instead: each call covers a range of keys and
// writes a partial (max, sum, accumulator) per head, and ember_attention_merge combines them.
//
// Determinism: key blocks sit at multiples of EMBER_ATTENTION_KEY_BLOCK positions, and a query
// vector's arithmetic never depends on which other rows share its block, so ember_attention
// gives the same bits for a row however the rows are split among calls (threads). The same
// holds for partials over the same key ranges merged in the same order.
//
// Every function is single-threaded over what it is given; callers split kv heads x query
// rows (or kv heads x key ranges) among threads. AVX2+FMA+F16C paths are chosen at run time.
#ifndef EMBER_ATTENTION_H
#define EMBER_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Keys per block; blocks start at multiples of it.
#define EMBER_ATTENTION_KEY_BLOCK 64

/// One layer's attention, as the kernels read it.
///
/// Cache: position p's keys (all kv heads side by side, kv head g from element g·head_dim) are
/// a row of `cache_type` (EMBER_TYPE_F32, EMBER_TYPE_F16 or EMBER_TYPE_Q8_0, see
/// ember_kv_store) at keys + p·key_stride bytes; values likewise (kv head g from element
/// g·value_dim). Q8_0 needs head_dim and value_dim to be multiples of 32 (a block never spans
/// two heads).
///
/// Queries: row t, head h at queries + t·query_stride + h·head_dim (floats). Row t sits at
/// position positions[t] and sees the keys of positions first..positions[t], where first =
/// max(0, positions[t] − window + 1) (window 0: first = 0). All of those must be stored.
/// Query head h belongs to kv head h / (head_count / kv_head_count).
///
/// Output: row t, head h at out + t·out_stride + h·value_dim (floats).
typedef struct {
    int32_t cache_type;
    const void *keys;
    const void *values;
    size_t key_stride;
    size_t value_stride;
    const float *queries;
    int64_t query_stride;
    const int64_t *positions;
    int64_t window;
    float *out;
    int64_t out_stride;
    int64_t head_count;
    int64_t kv_head_count;
    int64_t head_dim;
    int64_t value_dim;
    /// Scores are scale · q·k (usually 1/sqrt(head_dim)).
    float scale;
} ember_attention_args;

/// 0 if the arguments describe something the kernels can run: a cache type above, head
/// counts ≥ 1 with kv_head_count dividing head_count, dimensions ≥ 1 (Q8_0: multiples of 32).
/// Otherwise −1.
int ember_attention_check(const ember_attention_args *a);

/// Bytes of scratch (64-byte aligned) that one call of ember_attention or
/// ember_attention_partial needs; each thread needs its own.
size_t ember_attention_scratch_bytes(const ember_attention_args *a);

/// Query rows [t0, t1), all heads of kv head `kv_head`: writes their outputs.
void ember_attention(const ember_attention_args *a, int64_t kv_head, int64_t t0, int64_t t1,
                     void *scratch);

/// Floats in one head's partial: max score, sum of exp(score − max), then value_dim floats of
/// Σ exp(score − max) · v.
#define EMBER_ATTENTION_PARTIAL_FLOATS(value_dim) ((value_dim) + 2)

/// Query row t, the heads of kv head `kv_head`, only the keys of positions [k0, k1) (further
/// limited to what row t sees): writes one partial per head of the group, head j (0-based
/// within the group) at partial + j·EMBER_ATTENTION_PARTIAL_FLOATS(value_dim). A range with no
/// key the row sees gives max −inf, sum 0.
void ember_attention_partial(const ember_attention_args *a, int64_t kv_head, int64_t t,
                             int64_t k0, int64_t k1, float *partial, void *scratch);

/// Combines `count` partials of one head (`stride` floats apart) into out[value_dim]:
/// out = Σ_i e^(m_i − m) acc_i / Σ_i e^(m_i − m) l_i with m = max m_i, in order i = 0, 1, ...
void ember_attention_merge(const float *partials, int64_t count, int64_t stride,
                           int64_t value_dim, float *out);

/// Bytes of one cache row of n elements of `type`, 0 for a type that is no cache type (or
/// Q8_0 with n not a multiple of 32).
size_t ember_kv_row_bytes(int type, int64_t n);

/// Stores n floats as one cache row of `type` at dst (ember_kv_row_bytes(type, n) bytes):
/// F32 copies, F16 rounds to nearest even, Q8_0 quantizes blocks of 32 (scale = max |x| / 127
/// as a half, quants rounded to nearest). Returns 0, or −1 (nothing written) for a type that
/// is no cache type.
int ember_kv_store(int type, const float *x, void *dst, int64_t n);

#ifdef __cplusplus
}
#endif

#endif
