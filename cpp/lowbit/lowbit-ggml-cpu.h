// Glue between ggml-cpu's MUL_MAT and the low-bit gemm kernels (lowbit.h).
#ifndef BONSAI_LOWBIT_GGML_CPU_H
#define BONSAI_LOWBIT_GGML_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_tensor;

// One chunk of dst = mul_mat(src0, src1) for a low-bit src0: src0 rows [ir0_start, ir0_end)
// against the flattened src1 rows [ir1_start, ir1_end), which ggml has already converted to
// Q8_0 at `src1_q8` (contiguous rows of `src1_row_size` bytes). Returns false, doing
// nothing, when src0's type is not one of ours.
bool bonsai_cpu_mul_mat_chunk(const struct ggml_tensor * dst, const void * src1_q8, size_t src1_row_size,
                              int64_t ir0_start, int64_t ir0_end, int64_t ir1_start, int64_t ir1_end);

#ifdef __cplusplus
}
#endif

#endif  // BONSAI_LOWBIT_GGML_CPU_H
