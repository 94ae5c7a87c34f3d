// PTX wrappers for Hopper's asynchronous units, shared by the sm_90a kernels of this folder
// (lowbit-cuda-gemm-sm90.cu, cuda-flash-attn-sm90.cu): wgmma's fences and groups, shared-memory
// matrix descriptors, mbarriers and the bulk copy engine (TMA). Include only from files built
// for sm_90a (-gencode arch=compute_90a,code=sm_90a).

#ifndef BONSAI_CUDA_SM90_ASYNC_CUH
#define BONSAI_CUDA_SM90_ASYNC_CUH

#include <cuda_runtime.h>
#include <stdint.h>

namespace bonsai_cuda {

// ---- wgmma --------------------------------------------------------------------------------------

static __device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving uses of an accumulator register across a wgmma wait.
static __device__ __forceinline__ void fence_register(float & r) {
    asm volatile("" : "+f"(r)::"memory");
}

static __device__ __forceinline__ uint32_t smem_u32(const void * p) {
    return (uint32_t) __cvta_generic_to_shared(p);
}

// Shared-memory matrix descriptor for the 128-byte swizzle: 8-line groups (8 x 128 bytes) 1024
// bytes apart. K-major operands ignore leading_bytes; an MN-major one (wgmma's transposed B) takes
// there the distance between its blocks of 64 MN elements (one 128-byte line each).
static __device__ __forceinline__ uint64_t smem_desc(const void * p, uint32_t leading_bytes = 0) {
    const uint32_t addr = smem_u32(p);
    return (uint64_t) ((addr & 0x3ffff) >> 4) | ((uint64_t) ((leading_bytes >> 4) & 0x3fff) << 16) |
           ((uint64_t) (1024 >> 4) << 32) | ((uint64_t) 1 << 62);
}

// ---- mbarriers ----------------------------------------------------------------------------------

static __device__ __forceinline__ void mbar_init(uint64_t * bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint64_t * bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

static __device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t * bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}

static __device__ __forceinline__ void mbar_wait(uint64_t * bar, uint32_t parity) {
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n"
            ".reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n"
            "}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

// ---- bulk copies --------------------------------------------------------------------------------

// bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared memory; the
// mbarrier counts them as they land.
static __device__ __forceinline__ void bulk_copy_to_shared(void * dst, const void * src, uint32_t bytes, uint64_t * bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
}

// The box of a 4-D tensor map (a CUtensorMap in kernel parameter space, passed by its generic
// address) at element coordinates c0..c3, to shared memory; the mbarrier counts its bytes, those
// the map fills for coordinates past the tensor's end included.
static __device__ __forceinline__ void tensor_copy_to_shared(void * dst, const void * map, int c0, int c1, int c2, int c3,
                                                             uint64_t * bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 ::"r"(smem_u32(dst)), "l"((uint64_t) map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
                 : "memory");
}

}  // namespace bonsai_cuda

#endif  // BONSAI_CUDA_SM90_ASYNC_CUH
