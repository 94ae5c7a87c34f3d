// A faster 2-D im2col for ggml's CUDA backend. ggml's own kernel gives each thread one
// (channel, kernel row, kernel column) of one output pixel, so a warp reads from a dozen channel
// planes at once; at the FLUX.2 VAE decoder's sizes (1024x1024, 128 channels) that made im2col
// about two thirds of the decode (BENCHMARKS.md, the per-op profile). This one stages a tile of
// input rows in shared memory with reads along the rows, then writes whole runs of output rows.

#ifndef BONSAI_CUDA_IM2COL_H
#define BONSAI_CUDA_IM2COL_H

struct ggml_backend_cuda_context;
struct ggml_tensor;

// Computes dst (GGML_OP_IM2COL) and returns true, or returns false, doing nothing, for what it
// does not take (1-D im2col, non-contiguous rows, kernels too large for its tile) and when the
// environment variable BONSAI_SD_CUDA_UPSTREAM_IM2COL is set (for before/after measurements).
bool bonsai_cuda_im2col(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

#endif  // BONSAI_CUDA_IM2COL_H
