// ggml's quantized weight types (Q4_K, Q8_0, ...) at many tokens on Hopper: the weights
// dequantized to bf16 and multiplied by cuBLAS instead of ggml's MMQ kernels. At FLUX.2 [klein]'s
// text encoder (Qwen3-4B in Q4_K, 512 tokens) MMQ ran at 62-145 TFLOPS on the H100 and this path
// at 114-226, the dequantization (one pass over the weights) included. bf16 rather
// than f16: Qwen's activations reach magnitudes that f16 cannot hold; its 8-bit mantissa rounds
// about as finely as MMQ's 8-bit activations (per 32 values), and the products accumulate in f32.

#include "cuda-quantized-gemm.h"

#include "common.cuh"
#include "convert.cuh"
#include "ggml-cuda.h"
#include "lowbit.h"

#include <cstdlib>

// Below this many activation columns MMQ (and the mat-vec kernels) keep the product: the
// dequantized copy of the weights is then most of the work.
static const int64_t min_tokens = 256;

static bool mmq_requested() {
    static const bool requested = [] {
        const char * env = std::getenv("BONSAI_SD_CUDA_MMQ");
        return env != nullptr && env[0] != '\0' && env[0] != '0';
    }();
    return requested;
}

bool bonsai_ggml_cuda_mul_mat_quantized(ggml_backend_cuda_context & ctx, const ggml_tensor * src0,
                                        const ggml_tensor * src1, ggml_tensor * dst) {
    if (!ggml_is_quantized(src0->type) || bonsai_lowbit_is_type(src0->type) || mmq_requested()) {
        return false;
    }
    const int cc = ggml_cuda_info().devices[ctx.device].cc;
    if (!GGML_CUDA_CC_IS_NVIDIA(cc) || cc / 100 != 9) {
        return false;  // Hopper only: measured on the H100
    }
    const to_bf16_cuda_t weights_to_bf16     = ggml_get_to_bf16_cuda(src0->type);
    const to_bf16_cuda_t activations_to_bf16 = ggml_get_to_bf16_cuda(GGML_TYPE_F32);
    if (weights_to_bf16 == nullptr || src1->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32) {
        return false;
    }
    const int64_t K = src0->ne[0], M = src0->ne[1], N = src1->ne[1];
    if (N < min_tokens || src1->ne[0] != K || ggml_nrows(src0) != M || ggml_nrows(src1) != N ||
        !ggml_is_contiguous(src0) || !ggml_is_contiguous(src1) || !ggml_is_contiguous(dst)) {
        return false;  // batched, broadcast or strided products stay with ggml
    }
    // One device's ordinary buffers (not a row-split multi-GPU weight).
    if (src0->buffer == nullptr || ggml_backend_buffer_get_type(src0->buffer) != ggml_backend_cuda_buffer_type(ctx.device)) {
        return false;
    }

    cudaStream_t stream = ctx.stream();
    ggml_cuda_pool_alloc<nv_bfloat16> w(ctx.pool(), M * K);
    ggml_cuda_pool_alloc<nv_bfloat16> x(ctx.pool(), N * K);
    weights_to_bf16(src0->data, w.get(), M * K, stream);
    activations_to_bf16(src1->data, x.get(), N * K, stream);

    cublasHandle_t handle = ctx.cublas_handle();
    CUBLAS_CHECK(cublasSetStream(handle, stream));
    const float alpha = 1.0f, beta = 0.0f;
    // dst (M x N, column-major with ld M) = w^T (w stored K x M column-major) * x (K x N)
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int) M, (int) N, (int) K,
                              &alpha, w.get(), CUDA_R_16BF, (int) K,
                              x.get(), CUDA_R_16BF, (int) K,
                              &beta, dst->data, CUDA_R_32F, (int) M,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP));
    return true;
}
