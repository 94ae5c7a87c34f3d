// The sum of one float per thread over a block of THREADS threads (a multiple of 32, at most 1024),
// returned to every thread. `shared` holds THREADS / 32 floats; it may be reused after the call.
#ifndef BONSAI_CUDA_BLOCK_SUM_CUH
#define BONSAI_CUDA_BLOCK_SUM_CUH

template <int THREADS>
__device__ __forceinline__ float bonsai_block_sum(float v, float * shared) {
    static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps, at most 32 of them");
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffff, v, offset);
    }
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (lane == 0) {
        shared[warp] = v;
    }
    __syncthreads();
    v = lane < THREADS / 32 ? shared[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffff, v, offset);
    }
    __syncthreads();  // shared is reused by the next call
    return v;
}

#endif  // BONSAI_CUDA_BLOCK_SUM_CUH
