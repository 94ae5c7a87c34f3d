// Pieces shared by the two GEMMs of the low-bit types (lowbit-cuda-gemm.cu: int8 mma.sync,
// sm_80+; lowbit-cuda-gemm-sm90.cu: f16 wgmma, sm_90a): constants, cp.async wrappers and the
// "normalize" step that rewrites one 128-element chunk of a weight row, in any of the four
// file layouts, as eight 32-bit words of 2-bit codes (PQ2_0's element order) and its scales.

#ifndef BONSAI_LOWBIT_CUDA_GEMM_CUH
#define BONSAI_LOWBIT_CUDA_GEMM_CUH

#include "lowbit-cuda-common.cuh"

namespace bonsai_cuda {

static constexpr int      CHUNK      = 128;         // K elements per activation scale
static constexpr uint32_t MAGIC      = 0x4B400000u;  // bits of 12582912.0f = 1.5 * 2^23
static constexpr float    MAGIC_F    = 12582912.0f;
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

static __device__ __forceinline__ void ldmatrix_x4(const void * smem, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    const uint32_t s = (uint32_t) __cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s));
}


// ---- normalize: one chunk of a weight row -> 8 words of 2-bit codes + 2 scales -----------------
// `raw` points at the row's chunk (2-byte aligned, in shared memory); part 0 or 1 does half the
// work. Word w is stored at index 2*(w%4) + w/4, so thread t of a warp finds its two words
// (t and t+4) side by side.

static __device__ __forceinline__ int clean_index(int w) {
    return 2 * (w % 4) + w / 4;
}

template <int TYPE> static __device__ __forceinline__ void normalize(const uint8_t * raw, int part, uint32_t * clean, float * dw);

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_Q1_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int w = 4 * part + i;
        clean[clean_index(w)] = spread_bits16(load_u16(raw + 2 + 2 * w)) << 1;
    }
    dw[part] = load_half(raw);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_Q2_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
    const uint8_t * block = raw + 18 * part;  // 64-element block `part` of the chunk
#pragma unroll
    for (int i = 0; i < 4; i++) {
        clean[clean_index(4 * part + i)] = load_u32_a2(block + 2 + 4 * i);
    }
    dw[part] = load_half(block);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_PQ2_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int w = 4 * part + i;
        clean[clean_index(w)] = load_u32_a2(raw + 2 + 4 * w);
    }
    dw[part] = load_half(raw);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_PTQ1_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
    if (part == 0) {
        const uint32_t q[4] = {load_u32_a2(raw), load_u32_a2(raw + 4), load_u32_a2(raw + 8), load_u32_a2(raw + 12)};
#pragma unroll
        for (int n = 0; n < 5; n++) {
            clean[clean_index(n)] = ptq1_0_word_low(q, n);
        }
    } else {
        uint32_t w5, w6, w7;
        ptq1_0_words_high(load_u32_a2(raw + 16), load_u32_a2(raw + 20), load_u16(raw + 24), w5, w6, w7);
        clean[clean_index(5)] = w5;
        clean[clean_index(6)] = w6;
        clean[clean_index(7)] = w7;
        dw[0] = dw[1] = load_half(raw + 26);
    }
}

}  // namespace bonsai_cuda

#endif  // BONSAI_LOWBIT_CUDA_GEMM_CUH
