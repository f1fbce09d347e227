// Neuron-aware sparse operators: the FFN computes only the neurons that fire for a token.
//
// Layout (DESIGN.md section 5): gate and up are row-major, one row per neuron; down is stored
// neuron-major (its transpose), so neuron i's output column is row i. Both operators then
// read only whole contiguous rows of the active neurons, which is what keeps them near the
// memory bandwidth although the rows are scattered.
//
// Like ember_matvec, every function is single-threaded over what it is given; callers split
// the active neurons among threads (each thread with its own output for ember_axpy_gather).
#ifndef EMBER_SPARSE_H
#define EMBER_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Row gather (gate/up projections): y[k] = dot(row rows[k], act) for k < count, with `act`
/// converted by ember_quantize_activations(ember_activation_type(type), ...). Each y[k] is
/// bit-identical to what ember_matvec gives for that row.
void ember_matvec_gather(int type, int64_t n, const void *w, size_t row_bytes,
                         const void *act, const int32_t *rows, int64_t count, float *y);

/// Column gather (neuron-major down projection): y[0..n) += Σ_k coef[k] · row rows[k]. Rows
/// go in groups of ember_axpy_group(type) from the first: float types and Q4_1/Q8_0 expand
/// each row to floats; Q4_0 on AVX2 rounds each group's coef[k] · block scale to 8-bit steps
/// of the group's largest (the rounding the row kernels make on activations).
void ember_axpy_gather(int type, int64_t n, const void *w, size_t row_bytes,
                       const int32_t *rows, const float *coef, int64_t count, float *y);

/// Rows ember_axpy_gather takes per pass: a caller that splits one list over several calls
/// gets the bits of a single call when every call but the last takes a multiple of this.
int ember_axpy_group(int type);

/// Row gather against several activation columns (a batch of sequences): y[c * ldy + k] =
/// dot(row rows[k], act + c * act_stride) for k < count, c < ncols. Each row is read from
/// memory once for all columns, and each y is bit-identical to what ember_matvec gives for
/// that row and column.
void ember_matmul_gather(int type, int64_t n, const void *w, size_t row_bytes, const void *act,
                         size_t act_stride, int64_t ncols, const int32_t *rows, int64_t count,
                         float *y, int64_t ldy);

#ifdef __cplusplus
}
#endif

#endif
