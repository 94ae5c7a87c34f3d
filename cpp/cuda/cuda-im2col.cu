// A faster 2-D im2col for ggml's CUDA backend: see cuda-im2col.h.
//
// ggml's layout: the input is [N, IC, IH, IW] f32; dst is [N, OH, OW, IC*KH*KW] (f16 or f32),
// each output pixel's row holding (channel, kernel row, kernel column) with the column fastest.
// A block takes one output row (n, oh), OW_TILE output columns and a run of channels: it loads
// the KH input rows those need for each channel into shared memory (reads along the rows), then
// writes, for each of its output columns, the contiguous run of that pixel's row its channels fill.

#include "cuda-im2col.h"

#include "common.cuh"  // ggml-cuda: ggml_backend_cuda_context, CUDA_CHECK

#include <algorithm>
#include <cstdlib>

namespace {

constexpr int OW_TILE = 64;
constexpr int MAX_SHARED_BYTES = 48 * 1024;
constexpr int MAX_GRID_Z = 65535;

struct Im2colShape {
    int IW, IH, OW, OH, IC, KW, KH;
    int s0, s1, p0, p1, d0, d1;
    int64_t row_stride, channel_stride, batch_stride;  // of the input, in floats
    int n_oh;                                           // N * OH
    int ic_tile;                                        // channels per block
    int w_in;                                           // input columns a block's OW_TILE outputs read
};

template <typename T>
__global__ void im2col_tiled(const float * __restrict__ x, T * __restrict__ dst, const Im2colShape sh) {
    extern __shared__ float tile[];  // [ic][kh][w], w fastest

    const int ow0 = blockIdx.x * OW_TILE;
    const int ic0 = blockIdx.y * sh.ic_tile;
    const int owt = min(OW_TILE, sh.OW - ow0);
    const int ict = min(sh.ic_tile, sh.IC - ic0);
    const int iw0 = ow0 * sh.s0 - sh.p0;
    const int kernel_area = sh.KH * sh.KW;
    const int run = ict * kernel_area;  // this block's part of one output row
    const int64_t row_len = (int64_t) sh.IC * kernel_area;

    for (int z = blockIdx.z; z < sh.n_oh; z += gridDim.z) {
        const int n = z / sh.OH;
        const int oh = z - n * sh.OH;
        const float * xn = x + n * sh.batch_stride + ic0 * sh.channel_stride;

        // Loads: a warp per input row (channel, kernel row), its lanes along the row.
        const int warp = threadIdx.x / 32;
        const int lane = threadIdx.x % 32;
        for (int r = warp; r < ict * sh.KH; r += blockDim.x / 32) {
            const int kh = r % sh.KH;
            const int ic = r / sh.KH;
            const int ih = oh * sh.s1 + kh * sh.d1 - sh.p1;
            const bool row_inside = ih >= 0 && ih < sh.IH;
            const float * xr = xn + ic * sh.channel_stride + (int64_t) ih * sh.row_stride;
            for (int w = lane; w < sh.w_in; w += 32) {
                const int iw = iw0 + w;
                tile[r * sh.w_in + w] = (row_inside && iw >= 0 && iw < sh.IW) ? xr[iw] : 0.0f;
            }
        }
        __syncthreads();

        // Stores: a thread per position j of the block's run (its channel, kernel row and column
        // worked out once), walking the output columns; a warp writes 32 consecutive outputs.
        T * out = dst + ((int64_t) z * sh.OW + ow0) * row_len + (int64_t) ic0 * kernel_area;
        for (int j = threadIdx.x; j < run; j += blockDim.x) {
            const int ic = j / kernel_area;
            const int k = j - ic * kernel_area;
            const int kh = k / sh.KW;
            const int kw = k - kh * sh.KW;
            const float * src = tile + (ic * sh.KH + kh) * sh.w_in + kw * sh.d0;
            T * dst_j = out + j;
            for (int o = 0; o < owt; o++) {
                dst_j[o * row_len] = (T) src[o * sh.s0];
            }
        }
        __syncthreads();  // the tile is refilled for the next output row
    }
}

}  // namespace

bool bonsai_cuda_im2col(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    static const bool use_upstream = std::getenv("BONSAI_SD_CUDA_UPSTREAM_IM2COL") != nullptr;
    const ggml_tensor * kernel = dst->src[0];
    const ggml_tensor * src = dst->src[1];
    const int32_t * params = (const int32_t *) dst->op_params;
    if (use_upstream || params[6] != 1 || src->type != GGML_TYPE_F32 || src->nb[0] != sizeof(float) ||
        (dst->type != GGML_TYPE_F16 && dst->type != GGML_TYPE_F32) || !ggml_is_contiguous(dst)) {
        return false;
    }

    Im2colShape sh;
    sh.s0 = params[0], sh.s1 = params[1], sh.p0 = params[2], sh.p1 = params[3], sh.d0 = params[4], sh.d1 = params[5];
    sh.IW = (int) src->ne[0], sh.IH = (int) src->ne[1], sh.IC = (int) src->ne[2];
    sh.KW = (int) kernel->ne[0], sh.KH = (int) kernel->ne[1];
    sh.OW = (int) dst->ne[1], sh.OH = (int) dst->ne[2];
    const int64_t n_oh = (int64_t) src->ne[3] * sh.OH;
    sh.row_stride = src->nb[1] / sizeof(float);
    sh.channel_stride = src->nb[2] / sizeof(float);
    sh.batch_stride = src->nb[3] / sizeof(float);
    sh.w_in = (OW_TILE - 1) * sh.s0 + (sh.KW - 1) * sh.d0 + 1;
    if (n_oh > INT32_MAX || sh.OW <= 0 || n_oh <= 0 || sh.IC <= 0) {
        return false;
    }
    sh.n_oh = (int) n_oh;

    // About 288 outputs per pixel and block (32 channels of a 3x3 kernel), so that the stores
    // come in runs of several hundred bytes; fewer channels when the tile would not fit.
    const int kernel_area = sh.KH * sh.KW;
    const int64_t floats_per_channel = (int64_t) sh.KH * sh.w_in;
    int ic_tile = std::clamp(288 / std::max(kernel_area, 1), 1, 256);
    ic_tile = (int) std::min<int64_t>(ic_tile, MAX_SHARED_BYTES / (floats_per_channel * (int64_t) sizeof(float)));
    ic_tile = std::min(ic_tile, sh.IC);
    if (ic_tile < 1) {
        return false;  // a kernel row span too wide for shared memory: ggml's kernel takes it
    }
    sh.ic_tile = ic_tile;

    const dim3 grid((sh.OW + OW_TILE - 1) / OW_TILE, (sh.IC + ic_tile - 1) / ic_tile, std::min(sh.n_oh, MAX_GRID_Z));
    if (grid.y > 65535) {
        return false;
    }
    const size_t shared = (size_t) ic_tile * floats_per_channel * sizeof(float);
    // A thread per position of the run (288 for 32 channels of a 3x3 kernel), so none idles.
    const int threads = std::clamp((ic_tile * kernel_area + 31) / 32 * 32, 64, 512);
    cudaStream_t stream = ctx.stream();
    const float * x = (const float *) src->data;
    if (dst->type == GGML_TYPE_F16) {
        im2col_tiled<half><<<grid, threads, shared, stream>>>(x, (half *) dst->data, sh);
    } else {
        im2col_tiled<float><<<grid, threads, shared, stream>>>(x, (float *) dst->data, sh);
    }
    CUDA_CHECK(cudaGetLastError());
    return true;
}
