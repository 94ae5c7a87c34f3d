// GROUP_NORM for ggml's CUDA backend spread over the whole GPU. ggml's kernel gives each group one
// block, so the FLUX.2 VAE decoder's 32 groups of 1024x1024x4 values ran on 32 of the H100's 132
// multiprocessors, reading the tensor three times (34 ms of the 1024x1024 decode; BENCHMARKS.md).
// Here many blocks per group sum slices of it, and a second kernel normalizes: two reads, one write.
// sd.cpp's GroupNorm scales and shifts the result per channel and its ResnetBlocks and the decoder's
// final norm take the SiLU of that (three more nodes, each a read and a write of the whole tensor);
// the second kernel can do those as it writes (cuda-fused-elementwise.h finds the runs).

#ifndef BONSAI_CUDA_GROUP_NORM_H
#define BONSAI_CUDA_GROUP_NORM_H

struct ggml_backend_cuda_context;
struct ggml_tensor;

// Computes dst (GGML_OP_GROUP_NORM) and returns true, or returns false, doing nothing, for what it
// does not take (channels not a multiple of the group count, non-contiguous tensors) and when the
// environment variable BONSAI_SD_CUDA_UPSTREAM_GROUP_NORM is set (before/after measurements).
bool bonsai_cuda_group_norm(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// dst = [SILU](ADD(MUL(norm, weight), bias)) with norm a GROUP_NORM node (not computed: its source
// is read), weight and bias F32 [1, 1, C, 1]: computes dst and returns true, or returns false, doing
// nothing, for what the kernel does not take and when BONSAI_SD_CUDA_UPSTREAM_GROUP_NORM is set. dst must be norm's source or share no byte with it,
// and share none with weight and bias (the caller checks).
bool bonsai_cuda_group_norm_affine(ggml_backend_cuda_context & ctx, const ggml_tensor * norm, const ggml_tensor * weight,
                                   const ggml_tensor * bias, bool silu, ggml_tensor * dst);

#endif  // BONSAI_CUDA_GROUP_NORM_H
