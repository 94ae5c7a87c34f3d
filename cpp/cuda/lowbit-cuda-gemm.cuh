// Pieces shared by the kernels that stream weight rows through shared memory (lowbit-cuda-gemm.cu:
// the int8 mma.sync GEMM, sm_80+; lowbit-cuda-gemm-sm90.cu: the f16 wgmma GEMM, sm_90a;
// lowbit-cuda-ops.cu: the mat-vec): the chunk geometry of the weight rows and the cp.async
// wrappers.

#ifndef BONSAI_LOWBIT_CUDA_GEMM_CUH
#define BONSAI_LOWBIT_CUDA_GEMM_CUH

#include "lowbit-cuda-common.cuh"

namespace bonsai_cuda {

static constexpr int      CHUNK      = 128;         // K elements per activation scale
// Shared-memory bytes per weight row per chunk: up to 64 bytes of data (4 x 16 B) and 16 of
// padding, so that rows 80 bytes apart spread over the banks (64 apart: 8-way conflicts).
static constexpr int      RAW_SLOT   = 80;

static __host__ __device__ constexpr int chunk_bytes(int type) {
    return type == BONSAI_TYPE_Q1_0 ? 18 : type == BONSAI_TYPE_Q2_0 ? 36 : type == BONSAI_TYPE_PQ2_0 ? 34 : 28;
}

// ---- small PTX wrappers -------------------------------------------------------------------------

static __device__ __forceinline__ void cp_async16(void * smem, const void * gmem) {
    const uint32_t s = (uint32_t) __cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace bonsai_cuda

#endif  // BONSAI_LOWBIT_CUDA_GEMM_CUH
