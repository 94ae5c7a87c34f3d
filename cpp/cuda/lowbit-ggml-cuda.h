// Glue between ggml's CUDA backend and the low-bit kernels of lowbit-cuda.h. ggml-patches/
// call these from ggml-cuda.cu (MUL_MAT dispatch, supports_op), cpy.cu, getrows.cu and
// convert.cu; each returns "not mine" for tensors of other types so ggml's own code runs.

#ifndef BONSAI_LOWBIT_GGML_CUDA_H
#define BONSAI_LOWBIT_GGML_CUDA_H

#include "convert.cuh"  // ggml-cuda: to_*_cuda_t
#include "lowbit.h"     // bonsai_lowbit_is_type

struct ggml_backend_cuda_context;
struct ggml_tensor;

// Whether the CUDA backend runs `op`, when a low-bit type takes part in it: 1 yes, 0 no;
// -1 when no low-bit type is involved or the op computes nothing (ggml decides).
// cc: the device's compute capability (ggml numbering); src0_split: src0 lives in a
// row-split multi-GPU buffer.
int bonsai_ggml_cuda_supports_op(const ggml_tensor * op, int cc, bool src0_split);

// Each returns false, doing nothing, when the tensors are not of a low-bit type; MUL_MAT also
// takes ggml's quantized types at many tokens on Hopper (cuda-quantized-gemm.h).
bool bonsai_ggml_cuda_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              ggml_tensor * dst);
// MUL_MAT `dst` (low-bit weights in dst->src[0]) whose activations the SiLU-gated unit `glu`
// (ggml's one-tensor SWIGLU node) makes, after each token's first x->ne[0] elements taken from
// `x` (nullptr: none): FLUX's MLP output and, through a CONCAT, its single blocks' linear2. The
// nodes glu and the CONCAT are then never computed. False, doing nothing, where the kernels cannot.
bool bonsai_ggml_cuda_mul_mat_glu(ggml_backend_cuda_context & ctx, const ggml_tensor * x, const ggml_tensor * glu,
                                  ggml_tensor * dst);
bool bonsai_ggml_cuda_get_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
bool bonsai_ggml_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1);

// Contiguous dequantization for convert.cu; nullptr for other types.
to_fp32_cuda_t bonsai_ggml_get_to_fp32_cuda(ggml_type type);
to_fp16_cuda_t bonsai_ggml_get_to_fp16_cuda(ggml_type type);
to_bf16_cuda_t bonsai_ggml_get_to_bf16_cuda(ggml_type type);

#endif  // BONSAI_LOWBIT_GGML_CUDA_H
