// GROUP_NORM spread over the whole GPU: see cuda-group-norm.h.
//
// ggml's layout: src [W, H, C, N] f32, contiguous; group g of sample n is the contiguous run of
// W*H*C/G values of its channels. Pass 1: blocks (slice, group) sum x - K and (x - K)^2 over their
// slice, K being the group's first value (a shift that keeps E[x^2] - E[x]^2 from cancelling when
// the mean is large against the spread). Pass 2: blocks (slice, group) combine their group's
// partial sums in double and write (x - mean) / sqrt(var + eps), optionally times the channel's
// weight plus its bias, optionally through SiLU (the fused affine run).

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

enum class Epilogue { NONE, AFFINE, AFFINE_SILU };

// Pass 2. With an affine epilogue, the slice is walked channel by channel (a channel's W*H values
// are contiguous) so that each channel's weight and bias are read once, not divided out per value.
template <Epilogue E>
__global__ void group_normalize(const float * x, float * dst,
                                const float2 * __restrict__ partial, const float * __restrict__ shifts, int slices,
                                int64_t group_size, int64_t slice, float eps,
                                const float * __restrict__ weight, const float * __restrict__ bias,
                                int64_t plane, int groups) {
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
    if constexpr (E == Epilogue::NONE) {
        for (int64_t i = begin + threadIdx.x; i < end; i += THREADS) {
            dg[i] = (xg[i] - mean) * rstd;
        }
    } else {
        // The group's first channel among the sample's C = groups * group_size / plane.
        const int64_t channel0 = (group % groups) * (group_size / plane);
        for (int64_t c = begin / plane; c * plane < end; ++c) {
            const float w = weight[channel0 + c];
            const float b = bias[channel0 + c];
            const int64_t lo = max(begin, c * plane);
            const int64_t hi = min(end, (c + 1) * plane);
            for (int64_t i = lo + threadIdx.x; i < hi; i += THREADS) {
                // Rounded as the GROUP_NORM, MUL and ADD nodes round it (no contraction to FMA).
                const float v = __fadd_rn(__fmul_rn(__fmul_rn(xg[i] - mean, rstd), w), b);
                dg[i] = E == Epilogue::AFFINE_SILU ? v / (1.0f + expf(-v)) : v;
            }
        }
    }
}

// Both passes; false, doing nothing, for what they do not take.
bool launch_group_norm(ggml_backend_cuda_context & ctx, const ggml_tensor * src, ggml_tensor * dst, int groups,
                       float eps, Epilogue epilogue, const float * weight, const float * bias) {
    if (src->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32 || !ggml_is_contiguous(src) ||
        !ggml_is_contiguous(dst) || !ggml_are_same_shape(src, dst) || groups <= 0 || src->ne[2] % groups != 0) {
        return false;
    }
    const int64_t plane = src->ne[0] * src->ne[1];
    const int64_t group_size = plane * (src->ne[2] / groups);
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
    const float * x = (const float *) src->data;
    float * y = (float *) dst->data;
    group_partial_sums<<<grid, THREADS, 0, stream>>>(x, partial.get(), shifts.get(), group_size, slice);
    switch (epilogue) {
        case Epilogue::NONE:
            group_normalize<Epilogue::NONE><<<grid, THREADS, 0, stream>>>(
                x, y, partial.get(), shifts.get(), slices, group_size, slice, eps, nullptr, nullptr, plane, groups);
            break;
        case Epilogue::AFFINE:
            group_normalize<Epilogue::AFFINE><<<grid, THREADS, 0, stream>>>(
                x, y, partial.get(), shifts.get(), slices, group_size, slice, eps, weight, bias, plane, groups);
            break;
        case Epilogue::AFFINE_SILU:
            group_normalize<Epilogue::AFFINE_SILU><<<grid, THREADS, 0, stream>>>(
                x, y, partial.get(), shifts.get(), slices, group_size, slice, eps, weight, bias, plane, groups);
            break;
    }
    CUDA_CHECK(cudaGetLastError());
    return true;
}

bool upstream_requested() {
    static const bool use_upstream = std::getenv("BONSAI_SD_CUDA_UPSTREAM_GROUP_NORM") != nullptr;
    return use_upstream;
}

}  // namespace

bool bonsai_cuda_group_norm(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    if (upstream_requested()) {
        return false;
    }
    float eps;
    memcpy(&eps, dst->op_params + 1, sizeof(float));
    return launch_group_norm(ctx, dst->src[0], dst, dst->op_params[0], eps, Epilogue::NONE, nullptr, nullptr);
}

bool bonsai_cuda_group_norm_affine(ggml_backend_cuda_context & ctx, const ggml_tensor * norm, const ggml_tensor * weight,
                                   const ggml_tensor * bias, bool silu, ggml_tensor * dst) {
    const int64_t channels = norm->src[0]->ne[2];
    auto per_channel = [&](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && t->ne[0] == 1 && t->ne[1] == 1 &&
               t->ne[2] == channels && t->ne[3] == 1;
    };
    if (upstream_requested() || norm->op != GGML_OP_GROUP_NORM || !per_channel(weight) || !per_channel(bias)) {
        return false;
    }
    float eps;
    memcpy(&eps, norm->op_params + 1, sizeof(float));
    return launch_group_norm(ctx, norm->src[0], dst, norm->op_params[0], eps,
                             silu ? Epilogue::AFFINE_SILU : Epilogue::AFFINE, (const float *) weight->data,
                             (const float *) bias->data);
}
