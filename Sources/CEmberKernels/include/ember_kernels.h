// Ember's integer and float dot-product kernels for quantized weights.
//
// Conventions
// - Type codes are GGUF's tensor type codes (EMBER_TYPE_*).
// - A weight matrix is row-major: row r holds `n` elements (n a multiple of the type's block
//   size) in `row_bytes` bytes; quant blocks run along the row.
// - Activations are first converted with ember_quantize_activations() to the format
//   ember_activation_type(weight_type) names (Q8_0, Q8_1, Q8_K, or plain F32), once per
//   vector, then dotted with any number of rows. This is what makes decode fast: integer dots.
// - Every function is single-threaded over the range it is given; callers split rows among
//   threads. AVX2/FMA/F16C code paths are chosen at run time; a portable path exists for all.
#ifndef EMBER_KERNELS_H
#define EMBER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EMBER_TYPE_F32 = 0,
    EMBER_TYPE_F16 = 1,
    EMBER_TYPE_Q4_0 = 2,
    EMBER_TYPE_Q4_1 = 3,
    EMBER_TYPE_Q5_0 = 6,
    EMBER_TYPE_Q5_1 = 7,
    EMBER_TYPE_Q8_0 = 8,
    EMBER_TYPE_Q8_1 = 9,
    EMBER_TYPE_Q4_K = 12,
    EMBER_TYPE_Q5_K = 13,
    EMBER_TYPE_Q6_K = 14,
    EMBER_TYPE_Q8_K = 15,
    EMBER_TYPE_BF16 = 30,
};

/// Kernel families, best last. The quantized tiles and prefill kernels exist for all three
/// (AVX-512 VNNI: the AVX2 code with one-instruction integer dots on AVX-512 VL/BW + VNNI);
/// the float vector, attention and column-gather kernels have AVX2 and portable forms.
enum {
    EMBER_KERNELS_PORTABLE = 0,
    EMBER_KERNELS_AVX2 = 1,
    EMBER_KERNELS_AVX512_VNNI = 2,
};
/// The best family this CPU runs.
int ember_cpu_kernel_level(void);
/// The family in use: ember_cpu_kernel_level(), capped by ember_limit_kernels.
int ember_kernel_level(void);
/// Caps the family (tests and benchmarks comparing them); a negative level lifts the cap.
void ember_limit_kernels(int level);
/// 1 when the AVX2+FMA+F16C paths are in use on this CPU (ember_kernel_level() >= AVX2).
int ember_has_avx2(void);
/// Forces the portable paths (for tests comparing both); 0 lifts the cap.
void ember_force_portable(int on);

/// Elements per block and bytes per block of a type; 0 for types without kernels.
int ember_block_size(int type);
int ember_block_bytes(int type);

/// Bytes of one row of `n` elements of `type`.
size_t ember_row_bytes(int type, int64_t n);

/// The activation format a weight type is dotted with.
int ember_activation_type(int weight_type);

/// Bytes of `n` elements in activation format `act_type`.
size_t ember_activation_bytes(int act_type, int64_t n);

/// Converts `n` floats to activation format `act_type` (F32 copies).
void ember_quantize_activations(int act_type, const float *x, void *out, int64_t n);

/// Expands `n` elements of a row of `type` to floats.
void ember_dequantize_row(int type, const void *row, float *out, int64_t n);

/// Quantizes `n` floats to `type` (round to nearest, the reference way); used to build test
/// data and synthetic models. Types: all weight types above.
void ember_quantize_row(int type, const float *x, void *out, int64_t n);

/// Dot product of one weight row (n elements of `type`) with activations already converted by
/// ember_quantize_activations(ember_activation_type(type), ...).
float ember_dot(int type, int64_t n, const void *row, const void *act);

/// y[r - r0] = dot(row r, act) for r in [r0, r1).
void ember_matvec(int type, int64_t n, const void *w, size_t row_bytes,
                  const void *act, float *y, int64_t r0, int64_t r1);

/// Prefill: for rows r in [r0, r1) and columns c in [0, ncols):
///   y[c * ldy + r] = dot(row r, act + c * act_stride)
/// Each weight row is read once for all columns (register tiling over columns).
void ember_matmul(int type, int64_t n, const void *w, size_t row_bytes,
                  const void *act, size_t act_stride, int64_t ncols,
                  float *y, int64_t ldy, int64_t r0, int64_t r1);

/// ember_matmul takes one of two paths: the tiles of ember_matvec, or, from 4 to 8 columns on
/// (by type and row length, where it is faster), weights repacked 8 rows at a time (types
/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K with AVX2, bands of at least 8 rows). Both
/// give each y the bits of ember_matvec's (same integer sums, same float steps), so a column's
/// result never depends on the path or on how many columns share the call.
/// ember_matmul_path forces a path (for measurements and tests).
enum { EMBER_MATMUL_AUTO = 0, EMBER_MATMUL_TILES = 1, EMBER_MATMUL_REPACKED = 2 };
void ember_matmul_path(int type, int64_t n, const void *w, size_t row_bytes,
                       const void *act, size_t act_stride, int64_t ncols,
                       float *y, int64_t ldy, int64_t r0, int64_t r1, int path);

#ifdef __cplusplus
}
#endif

#endif
