// ggml's quantized weight types times many tokens through bf16 cuBLAS on Hopper (see the .cu).
#ifndef BONSAI_CUDA_QUANTIZED_GEMM_H
#define BONSAI_CUDA_QUANTIZED_GEMM_H

struct ggml_backend_cuda_context;
struct ggml_tensor;

// dst = src0 x src1 for a ggml-quantized (not low-bit) src0 on one Hopper GPU, 2-D, contiguous,
// with at least 256 columns in src1; false, doing nothing, otherwise or with BONSAI_SD_CUDA_MMQ=1
// (ggml's MMQ kernels then run, as before).
bool bonsai_ggml_cuda_mul_mat_quantized(ggml_backend_cuda_context & ctx, const ggml_tensor * src0,
                                        const ggml_tensor * src1, ggml_tensor * dst);

#endif  // BONSAI_CUDA_QUANTIZED_GEMM_H
