// FLUX's elementwise steps, fused for ggml's CUDA backend. Each DiT block of sd.cpp's FLUX graph
// modulates its LayerNorm output (x + x·scale + shift: a NORM and three broadcast nodes, four full
// passes over the 4608 x 3072 activations) and adds its gated branches to the residual stream
// (x + out·gate: two passes). ggml's CUDA backend runs each node as its own kernel; here a run of
// them becomes one kernel that reads its inputs once and writes only the run's last node. The
// arithmetic is the unfused nodes' own, rounding step by rounding step (no contraction to FMA).
//
// ROPE: ggml's kernel gives every row a block of 256 threads for ne0/2 pairs, which leaves 240 of
// them idle on the 32-value rows of FLUX's per-axis rotation (cpp/sdcpp/rope-positions.h), and takes
// its angles' sines with fast-math approximations that lose accuracy on FLUX's large positions.

#ifndef BONSAI_CUDA_FUSED_ELEMENTWISE_H
#define BONSAI_CUDA_FUSED_ELEMENTWISE_H

struct ggml_backend_cuda_context;
struct ggml_cgraph;
struct ggml_tensor;

// If cgraph->nodes[i] starts one of these runs (views, reshapes and permutes may sit between its
// nodes; everything F32 but the F16 copies; no node but the last used outside the run or marked
// as an output):
//   modulation:      n = NORM(x); m = MUL(n, scale); a = ADD(n, m); y = ADD(a, shift)
//   gated residual:  m = MUL(out, gate); y = ADD(x, m)   (either operand order of the ADD)
//   q/k norm + RoPE: n = RMS_NORM(x) over 128-value rows; m = MUL(n, w) in place; ROPE in place
//                    over a runs view of m; optionally CPY of the rotated values to F16, then
//                    optionally a CPY of v's rows to F16 (sd.cpp's FLUX q, and k and v, before
//                    flash attention: one pass instead of three to five)
//   SwiGLU product:  g = SWIGLU(h) [c = CONCAT(x, g) along elements]; y = MUL_MAT(w, g or c)
//                    with low-bit w on the Hopper GEMM: its activation pre-pass computes g
//                    (and takes x) itself (lowbit-ggml-cuda.h, bonsai_ggml_cuda_mul_mat_glu)
//   convolution:     c = CONV_2D(w, x); y = ADD(c, bias [1, 1, OC, 1]) [; z = ADD(y, r) or ADD(r, y),
//                    r of z's shape]: the convolution kernel adds the bias (and r) as it writes
//                    (cuda-conv2d.h, sd.cpp's Conv2d with direct convolutions and the VAE's
//                    residual sums)
//   group norm:      n = GROUP_NORM(x); m = MUL(n, w [1, 1, C, 1]); y = ADD(m, b [1, 1, C, 1])
//                    [; z = SILU(y)]: the group norm's second pass writes y (or z) (sd.cpp's
//                    GroupNorm and the VAE's SiLU after it; cuda-group-norm.h)
// computes y and returns the index of y's node less i (the caller skips to it); else returns 0,
// doing nothing. Always 0 when BONSAI_SD_CUDA_UNFUSED is set (before/after measurements).
int bonsai_cuda_fuse_elementwise(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i);

// Computes dst (GGML_OP_ROPE) and returns true for the "normal" mode on F32 with every dimension
// rotated, no frequency factors and no YaRN extension; returns false, doing nothing, for any
// other ROPE and when BONSAI_SD_CUDA_UPSTREAM_ROPE is set.
bool bonsai_cuda_rope(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

#endif  // BONSAI_CUDA_FUSED_ELEMENTWISE_H
