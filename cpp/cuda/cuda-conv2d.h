// 2-D convolution (ggml's CONV_2D) as an implicit GEMM on tensor cores, for the FLUX.2 VAE
// decoder on CUDA. Through ggml's IM2COL + MUL_MAT the decoder's 40 convolutions wrote every input
// value nine times over as an f16 patch matrix, multiplied it by the weights and permuted the
// product to channel planes (one 1024x1024 decode on an H100: IM2COL 43 ms, the GEMMs 28 ms, the
// permuting copies 6 ms, of 128 ms; BENCHMARKS.md, issue 10). cuda-conv2d-mma.cu reads the input
// tile once into shared memory as f16 and lets the taps' products read it at their offsets
// (mma.sync m16n8k16, f32 accumulation, sm_80 and later), writing channel planes directly; the
// bias and the residual sum that follow a convolution in the decoder's graph can be added as the
// results are written.
//
// As a GEMM: out[oc][pixel] = sum over (ic, ky, kx) of w[oc][ic][ky][kx] * x[ic][pixel shifted by
// (ky, kx)], M = output channels, N = pixels, K = input channels x taps; inputs rounded to f16 as
// ggml's IM2COL rounds them for an f16 kernel.

#ifndef BONSAI_CUDA_CONV2D_H
#define BONSAI_CUDA_CONV2D_H

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

// One convolution in ggml's layouts (ggml_conv_2d_direct):
//   x    F32 [IW, IH, IC, N]   rows contiguous; x_nb1/2/3: bytes to the next row, channel, image
//   w    F16 [KW, KH, IC, OC]  contiguous
//   y    F32 [OW, OH, OC, N]   contiguous
//   y[ox, oy, oc, n] = sum_{ic, ky, kx} w[kx, ky, ic, oc] * x[ox*s0 + kx*d0 - p0, oy*s1 + ky*d1 - p1, ic, n]
//                      (zero outside the input) [+ bias[oc]] [+ residual[ox, oy, oc, n]]
// bias (F32 [OC]) and residual (F32, y's shape and layout) may be null; y must not overlap x, w
// or bias; residual may be y itself.
struct bonsai_conv2d_args {
    const float * x;
    size_t        x_nb1, x_nb2, x_nb3;
    const half *  w;
    const float * bias;
    const float * residual;
    float *       y;
    int           IW, IH, IC, N;
    int           KW, KH, OC;
    int           OW, OH;
    int           s0, s1, p0, p1, d0, d1;
};

// Bytes of device workspace bonsai_cuda_conv2d needs for the convolution (the weights regrouped
// by tap), or 0 when it does not take it: sizes not positive or past its int32 indexing, output
// sizes that do not follow from the input's, a kernel whose taps and input tile do not fit the
// device's shared memory, a device before compute capability 8.0.
size_t bonsai_cuda_conv2d_workspace(const bonsai_conv2d_args * a, int device);

// Runs it on `stream` with `workspace` (at least bonsai_cuda_conv2d_workspace bytes, 16-byte
// aligned). Returns cudaErrorNotSupported, launching nothing, when the workspace size is 0.
cudaError_t bonsai_cuda_conv2d(const bonsai_conv2d_args * a, void * workspace, int device, cudaStream_t stream);

struct ggml_backend_cuda_context;
struct ggml_tensor;

// ggml's hooks (cuda-conv2d.cu). bonsai_cuda_conv2d_op computes dst (GGML_OP_CONV_2D) and returns
// true for an F16 kernel with F32 input and output that bonsai_cuda_conv2d takes; false, doing
// nothing, for anything else and when the environment variable BONSAI_SD_CUDA_UPSTREAM_CONV2D is
// set (ggml's direct kernel then runs). bonsai_cuda_conv2d_fused writes `out` = conv [+ bias]
// [+ residual] under the same conditions (cuda-fused-elementwise.cu finds the nodes).
bool bonsai_cuda_conv2d_op(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
bool bonsai_cuda_conv2d_fused(ggml_backend_cuda_context & ctx, const ggml_tensor * conv, const ggml_tensor * bias,
                              const ggml_tensor * residual, ggml_tensor * out);

#endif  // BONSAI_CUDA_CONV2D_H
