// Flash attention (ggml's FLASH_ATTN_EXT) for FLUX's DiT on Hopper. ggml's CUDA backend runs it with
// its mma.sync kernel, about 161 TFLOPS at FLUX.2 [klein]'s 1024x1024 shape on an H100 (24 heads of
// 128, 4608 tokens; 40.5 of a DiT step's 125 ms). cuda-flash-attn-sm90.cu does it with wgmma: K and
// V tiles brought by the tensor memory accelerator, the softmax in registers, P fed to the second
// product from registers (FlashAttention-3's structure). test-backend-ops perf at that shape on an
// H100, one run: 488 us per call against ggml's 1625 (535 against 161 TFLOPS).

#ifndef BONSAI_CUDA_FLASH_ATTN_H
#define BONSAI_CUDA_FLASH_ATTN_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

// One FLASH_ATTN_EXT of head size 128 in ggml's layouts, strides in bytes:
//   q   F32 [128, Lq, Hq, B]   (nb1: next token, nb2: next head, nb3: next batch)
//   k   F16 [128, Lk, Hk, B]   v F16 [128, Lk, Hv, B]; Hq a multiple of Hk and of Hv (query head
//                              h reads K head h / (Hq / Hk), V head h / (Hq / Hv))
//   dst F32 [128, Hq, Lq, B]   (nb1: next head, nb2: next token, nb3: next batch)
// dst[:, h, i] = sum_j softmax_j(scale * q_i . k_j) v_j: no mask, no sinks, no ALiBi, no softcap.
struct bonsai_flash_attn_args {
    const void * q;
    size_t       q_nb1, q_nb2, q_nb3;
    const void * k;
    size_t       k_nb1, k_nb2, k_nb3;
    const void * v;
    size_t       v_nb1, v_nb2, v_nb3;
    void *       dst;
    size_t       d_nb1, d_nb2, d_nb3;
    int64_t      Lq, Lk, Hq, Hk, Hv, B;
    float        scale;
};

// Runs it on `stream` (a compute capability 9.0 device only: the kernel is sm_90a code). Returns
// cudaErrorNotSupported, launching nothing, unless every size is positive, Hq <= 65535, B <= 65535,
// scale is positive and finite, every pointer and stride is a multiple of 16 bytes and the driver
// encodes K's and V's tensor maps.
cudaError_t bonsai_cuda_flash_attn_sm90(const bonsai_flash_attn_args * a, cudaStream_t stream);

struct ggml_backend_cuda_context;
struct ggml_tensor;

// ggml's hook (cuda-flash-attn.cu): computes dst (GGML_OP_FLASH_ATTN_EXT) and returns true on a
// compute capability 9.0 device for F32 q, F16 k and v, head size 128, no mask, no sinks, max_bias
// 0, logit_softcap 0, and operands bonsai_cuda_flash_attn_sm90 takes; returns false, doing
// nothing, for anything else, in builds without the sm_90a kernels, and when the environment
// variable BONSAI_SD_CUDA_UPSTREAM_FA is set (before/after measurements).
bool bonsai_cuda_flash_attn_ext(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

#endif  // BONSAI_CUDA_FLASH_ATTN_H
