// bonsai-sd low-bit types on CUDA: the host interface of the kernels in this folder.
//
// The kernels know nothing about ggml: lowbit-ggml-cuda.cu maps ggml tensors onto these calls,
// and tests/cuda/lowbit_cuda_check.cu drives them directly. Every call is asynchronous on
// `stream` and returns the launch error (cudaSuccess when every launch went out).
//
// Types are the ggml ids of lowbit.h (41 Q1_0, 42 Q2_0, 142 PQ2_0, 143 PTQ1_0). Pointers to
// blocks need 2-byte alignment (the blocks' fp16 d); strides are in bytes.

#ifndef BONSAI_LOWBIT_CUDA_H
#define BONSAI_LOWBIT_CUDA_H

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stddef.h>
#include <stdint.h>

// ---- dequantization (contiguous): k elements, a multiple of the block size ----------------

cudaError_t bonsai_cuda_dequantize_f32 (int type, const void * x, float         * y, int64_t k, cudaStream_t stream);
cudaError_t bonsai_cuda_dequantize_f16 (int type, const void * x, half          * y, int64_t k, cudaStream_t stream);
cudaError_t bonsai_cuda_dequantize_bf16(int type, const void * x, nv_bfloat16   * y, int64_t k, cudaStream_t stream);

// ---- get_rows: dst (f32) row (i10, i11, i12) = dequantized src0 row ids[i10, i11, i12] of
// slice (i11, i12). src0 rows have ne00 elements.
struct bonsai_cuda_get_rows_args {
    int type;
    const void * src0; int64_t ne00; size_t nb01, nb02, nb03;
    const int32_t * ids; int64_t ne10, ne11, ne12; size_t nb10, nb11, nb12;
    float * dst; size_t nb1, nb2, nb3;
};
cudaError_t bonsai_cuda_get_rows(const bonsai_cuda_get_rows_args * args, cudaStream_t stream);

// ---- copies between f32 and a low-bit type (ggml CPY semantics: element i of src goes to
// element i of dst, both walked in row-major order over ne[0..3]). The side that holds blocks
// must have rows whose length is a multiple of the block size; the f32 side needs
// nb[0] == sizeof(float) and a row length that is a multiple of the block size.
struct bonsai_cuda_cpy_args {
    int type;  // the low-bit type (of dst for quantize, of src for dequantize)
    const void * src; int64_t ne00, ne01, ne02, ne03; size_t nb00, nb01, nb02, nb03;
    void * dst;       int64_t ne10, ne11, ne12, ne13; size_t nb10, nb11, nb12, nb13;
};
// f32 -> type, bit-exact with the scalar reference quantizers of lowbit-codec.c.
cudaError_t bonsai_cuda_quantize_f32(const bonsai_cuda_cpy_args * args, cudaStream_t stream);
// type -> f32
cudaError_t bonsai_cuda_dequantize_cpy(const bonsai_cuda_cpy_args * args, cudaStream_t stream);

// ---- matrix multiplication: dst = W x, ggml MUL_MAT semantics -------------------------------
// W: M rows of K elements, row m of weight slice (j2, j3) at w + m*w_nb1 + j2*w_nb2 + j3*w_nb3.
// x: f32, element (k, n, i2, i3) at x + k*x_nb0 + n*x_nb1 + i2*x_nb2 + i3*x_nb3.
// dst: f32, element (m, n, i2, i3) at dst + m*4 + n*d_nb1 + i2*d_nb2 + i3*d_nb3.
// Slice (i2, i3) of x uses weight slice (i2 / (ne2 / w_ne2), i3 / (ne3 / w_ne3)).
//
// N <= 8 runs a mat-vec: activations rounded to int8 with one scale per 32 elements of K, weights
// exact (the f32 activations as they are where N * K is too large for the kernel's shared
// memory; lowbit-cuda-ops.cu). Larger N runs a tensor-core GEMM that
// decodes the packed weights on chip; K must be a multiple of 128:
//   - on compute capability 9.0 with the sm_90a object built in (BONSAI_CUDA_SM90): f16 wgmma,
//     activations rounded to f16, weights exact (lowbit-cuda-gemm-sm90.cu);
//   - otherwise (sm_80+): int8 mma.sync, activations rounded to int8 with one scale per
//     (token, 128 elements of K) (lowbit-cuda-gemm.cu).
// BONSAI_SD_CUDA_GEMM=int8 in the environment forces the int8 GEMM on sm_90 too.
struct bonsai_cuda_matmul_args {
    int type;
    const void * w; int64_t M, K, w_ne2, w_ne3; size_t w_nb1, w_nb2, w_nb3;
    const float * x; int64_t N, ne2, ne3; size_t x_nb0, x_nb1, x_nb2, x_nb3;
    float * dst; size_t d_nb1, d_nb2, d_nb3;
};

#define BONSAI_CUDA_MMV_MAX_COLS 8

// Whether the kernels handle this product (type, K, N; sm_80 or newer is checked by the caller).
bool bonsai_cuda_matmul_supported(int type, int64_t K);
// Device scratch the call needs (0 when none); `scratch` must hold that many bytes, 256-aligned.
size_t bonsai_cuda_matmul_scratch_bytes(const bonsai_cuda_matmul_args * args);
cudaError_t bonsai_cuda_matmul(const bonsai_cuda_matmul_args * args, void * scratch, cudaStream_t stream);
// The product with activations that a SiLU-gated unit makes on the fly (bonsai_cuda_act_glu,
// declared below; args->x unused): only where the f16 GEMM runs it (sm_90, N > 8) and for one
// slice (ne2 = ne3 = 1). Scratch as bonsai_cuda_matmul_scratch_bytes(args).
struct bonsai_cuda_act_glu;
bool bonsai_cuda_matmul_glu_supported(int type, int64_t K, int64_t N);
cudaError_t bonsai_cuda_matmul_glu(const bonsai_cuda_matmul_args * args, const bonsai_cuda_act_glu * glu,
                                   void * scratch, cudaStream_t stream);

// ---- pieces of the GEMM path, exposed for the test program -------------------------------
// Number of 128-element K chunks, and token rows of the int8 activation buffer (N rounded up).
int64_t bonsai_cuda_act_chunks(int64_t K);
int64_t bonsai_cuda_act_rows(int64_t N);
// Activation pre-pass for one (i2, i3) slice: int8 codes [rows][chunks*128] in the GEMM's
// in-chunk order (see lowbit-cuda-gemm.cu) and per (chunk, token) float4
// {scale, sum-correction over 128, over the first 64, over the second 64}.
cudaError_t bonsai_cuda_quantize_act(const float * x, int64_t K, int64_t N, size_t x_nb0, size_t x_nb1,
                                     int8_t * act, float4 * scales, cudaStream_t stream);
// GEMM on already quantized activations (one slice). `config` picks a tile configuration
// (1..BONSAI_CUDA_GEMM_CONFIGS, for the test program), 0 lets the shape choose.
#define BONSAI_CUDA_GEMM_CONFIGS 7
cudaError_t bonsai_cuda_gemm_q8(int type, const void * w, int64_t M, int64_t K, size_t w_nb1,
                                const int8_t * act, const float4 * scales, int64_t N,
                                float * dst, size_t d_nb1, int config, cudaStream_t stream);
// Element of a 128-chunk that in-chunk byte position p (0..127) of the activation buffer holds.
int bonsai_cuda_act_position_element(int p);

// ---- the Hopper path (lowbit-cuda-gemm-sm90.cu, built for sm_90a when BONSAI_CUDA_SM90) ------
// f16 activations as [2 * chunks steps][rows][64 f16]: per 64-element step, each token's 128-byte
// line with its 16-byte pieces swizzled by token % 8 (the image of a shared-memory stage), in the
// GEMM's in-chunk order for the weight type (PTQ1_0 has its own); rows = N rounded up
// (bonsai_cuda_act_f16_rows), the extra rows zeros.
int64_t bonsai_cuda_act_f16_rows(int64_t N);
int bonsai_cuda_act_f16_position_element(int type, int p);
// The pre-pass also clears `zero_bytes` (a multiple of 4; may be 0) at `zero`: the GEMM's flags.
cudaError_t bonsai_cuda_convert_act_f16(int type, const float * x, int64_t K, int64_t N, size_t x_nb0, size_t x_nb1,
                                        void * act, void * zero, size_t zero_bytes, cudaStream_t stream);
// The same stage images of activations that a SiLU-gated unit makes on the fly (FLUX's MLP
// output, alone or after the attention output): elements [0, from) of token n are
// x[n][0..from) (unit stride, rows x_nb1 bytes apart); element from + j is
// silu(gate) * up with gate, up = glu[n][j], glu[n][K - from + j] (swapped: the other way round),
// glu rows glu_ne0 = 2 * (K - from) floats, glu_nb1 bytes apart. `from` is a multiple of 128.
struct bonsai_cuda_act_glu {
    const float * x;   size_t x_nb1; int64_t from;
    const float * glu; size_t glu_nb1; int64_t glu_ne0; bool swapped;
};
cudaError_t bonsai_cuda_convert_act_f16_glu(int type, const bonsai_cuda_act_glu * glu, int64_t K, int64_t N, void * act,
                                            void * zero, size_t zero_bytes, cudaStream_t stream);
// The schedule, for the test program (all three 0: the shape chooses):
//   - config: the tile configuration, 1..BONSAI_CUDA_F16_CONFIGS;
//   - splits >= 1 (blocks 0): one block per tile and part of K, K cut into `splits` parts that
//     a second pass adds up (1: K whole);
//   - blocks >= 1 (splits 0): stream-K, `blocks` blocks each taking an equal contiguous share of
//     the tiles' K chunks; where shares split tiles, at most bonsai_cuda_gemm_f16_max_blocks.
// The result does not depend on timing: the pieces of a tile are added in a fixed order.
// Needs bonsai_cuda_gemm_f16_workspace(...) bytes of device memory in `workspace` (0: none),
// whose first bonsai_cuda_gemm_f16_flag_bytes(...) bytes (stream-K's flags; 0: none) must be
// zero when the call starts (the pre-pass can clear them); the call leaves them zero.
#define BONSAI_CUDA_F16_CONFIGS 3
int bonsai_cuda_gemm_f16_max_blocks(int config);  // blocks of `config` that fit on the GPU at once
size_t bonsai_cuda_gemm_f16_workspace(int64_t M, int64_t K, int64_t N, int config, int splits, int blocks);
size_t bonsai_cuda_gemm_f16_flag_bytes(int64_t M, int64_t K, int64_t N, int config, int splits, int blocks);
cudaError_t bonsai_cuda_gemm_f16(int type, const void * w, int64_t M, int64_t K, size_t w_nb1, const void * act,
                                 int64_t N, float * dst, size_t d_nb1, int config, int splits, int blocks,
                                 void * workspace, cudaStream_t stream);

#endif  // BONSAI_LOWBIT_CUDA_H
