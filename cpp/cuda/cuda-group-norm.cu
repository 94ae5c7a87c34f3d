// GROUP_NORM spread over the whole GPU: see cuda-group-norm.h.
//
// ggml's layout: src [W, H, C, N] f32, contiguous; group g of sample n is the contiguous run of
// W*H*C/G values of its channels. Pass 1: blocks (slice, group) sum x - K and (x - K)^2 over their
// slice, K being the group's first value (a shift that keeps E[x^2] - E[x]^2 from cancelling when
// the mean is large against the spread). Pass 2: blocks (slice, group) combine their group's
// partial sums in double and write (x - mean) / sqrt(var + eps).

#include "cuda-group-norm.h"
#include "cuda-block-sum.cuh"

#include "common.cuh"  // ggml-cuda: ggml_backend_cuda_context, ggml_cuda_info, CUDA_CHECK

#include <algorithm>
#include <cstdlib>

namespace {

constexpr int THREADS = 256;
constexpr int64_t MIN_SLICE = 4096;  // values per block, at the least
constexpr int BLOCKS_PER_SM = 8;

__global__ void group_partial_sums(const float * __restrict__ x, float2 * __restrict__ partial, float * __restrict__ shifts,
                                   int64_t group_size, int64_t slice) {
    __shared__ float shared[THREADS / 32];
    const int64_t group = blockIdx.y;
    const float * xg = x + group * group_size;
    const float shift = xg[0];
    const int64_t begin = blockIdx.x * slice;
    const int64_t end = min(begin + slice, group_size);
    float s1 = 0.0f;
    float s2 = 0.0f;
    for (int64_t i = begin + threadIdx.x; i < end; i += THREADS) {
        const float d = xg[i] - shift;
        s1 += d;
        s2 += d * d;
    }
    s1 = bonsai_block_sum<THREADS>(s1, shared);
    s2 = bonsai_block_sum<THREADS>(s2, shared);
    if (threadIdx.x == 0) {
        partial[group * gridDim.x + blockIdx.x] = make_float2(s1, s2);
        if (blockIdx.x == 0) {
            shifts[group] = shift;  // pass 2 may overwrite xg[0] (in place)
        }
    }
}

__global__ void group_normalize(const float * x, float * dst,
                                const float2 * __restrict__ partial, const float * __restrict__ shifts, int slices,
                                int64_t group_size, int64_t slice, float eps) {
    __shared__ float mean_rstd[2];
    const int64_t group = blockIdx.y;
    const float * xg = x + group * group_size;
    if (threadIdx.x < 32) {
        double s1 = 0.0;
        double s2 = 0.0;
        for (int s = threadIdx.x; s < slices; s += 32) {
            const float2 p = partial[group * slices + s];
            s1 += p.x;
            s2 += p.y;
        }
        for (int offset = 16; offset > 0; offset /= 2) {
            s1 += __shfl_xor_sync(0xffffffff, s1, offset);
            s2 += __shfl_xor_sync(0xffffffff, s2, offset);
        }
        if (threadIdx.x == 0) {
            const double mean_shifted = s1 / group_size;
            const double var = fmax(s2 / group_size - mean_shifted * mean_shifted, 0.0);
            mean_rstd[0] = (float) (shifts[group] + mean_shifted);
            mean_rstd[1] = (float) (1.0 / sqrt(var + eps));
        }
    }
    __syncthreads();
    const float mean = mean_rstd[0];
    const float rstd = mean_rstd[1];
    float * dg = dst + group * group_size;
    const int64_t begin = blockIdx.x * slice;
    const int64_t end = min(begin + slice, group_size);
    for (int64_t i = begin + threadIdx.x; i < end; i += THREADS) {
        dg[i] = (xg[i] - mean) * rstd;
    }
}

}  // namespace

bool bonsai_cuda_group_norm(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    static const bool use_upstream = std::getenv("BONSAI_SD_CUDA_UPSTREAM_GROUP_NORM") != nullptr;
    const ggml_tensor * src = dst->src[0];
    const int groups = dst->op_params[0];
    if (use_upstream || src->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32 || !ggml_is_contiguous(src) ||
        !ggml_is_contiguous(dst) || groups <= 0 || src->ne[2] % groups != 0) {
        return false;
    }
    float eps;
    memcpy(&eps, dst->op_params + 1, sizeof(float));

    const int64_t group_size = src->ne[0] * src->ne[1] * (src->ne[2] / groups);
    const int64_t group_count = (int64_t) groups * src->ne[3];
    if (group_size <= 0 || group_count > 65535) {
        return false;
    }
    // Enough blocks to fill the GPU a few times over, none with fewer than MIN_SLICE values.
    const int64_t wanted = (int64_t) BLOCKS_PER_SM * ggml_cuda_info().devices[ctx.device].nsm;
    const int64_t by_size = (group_size + MIN_SLICE - 1) / MIN_SLICE;
    const int slices = (int) std::max<int64_t>(1, std::min<int64_t>({(wanted + group_count - 1) / group_count, by_size, 1024}));
    const int64_t slice = (group_size + slices - 1) / slices;

    cudaStream_t stream = ctx.stream();
    ggml_cuda_pool_alloc<float2> partial(ctx.pool(), group_count * slices);
    ggml_cuda_pool_alloc<float> shifts(ctx.pool(), group_count);
    const dim3 grid(slices, (unsigned) group_count);
    group_partial_sums<<<grid, THREADS, 0, stream>>>((const float *) src->data, partial.get(), shifts.get(), group_size,
                                                     slice);
    group_normalize<<<grid, THREADS, 0, stream>>>((const float *) src->data, (float *) dst->data, partial.get(),
                                                  shifts.get(), slices, group_size, slice, eps);
    CUDA_CHECK(cudaGetLastError());
    return true;
}
