// FLUX's elementwise steps fused, and ROPE on short rows: see cuda-fused-elementwise.h.

#include "cuda-fused-elementwise.h"
#include "cuda-block-sum.cuh"
#include "cuda-conv2d.h"
#include "cuda-group-norm.h"
#include "lowbit-ggml-cuda.h"

#include "common.cuh"  // ggml-cuda: ggml_backend_cuda_context, CUDA_CHECK; ggml-impl.h: use counts

#include <cstdlib>
#include <cstring>

namespace {

constexpr int NORM_THREADS = 256;
constexpr int ELEMENTWISE_THREADS = 256;
constexpr int64_t ROPE_MAX_PAIRS = 4096;  // the per-block frequency table: 16 KB of shared memory

bool env_set(const char * name) {
    const char * value = std::getenv(name);
    return value != nullptr && value[0] != '\0' && value[0] != '0';
}

// A node that computes nothing: ggml-cuda skips it too.
bool is_no_op(const ggml_tensor * node) {
    return ggml_is_empty(node) || node->op == GGML_OP_RESHAPE || node->op == GGML_OP_TRANSPOSE ||
           node->op == GGML_OP_VIEW || node->op == GGML_OP_PERMUTE || node->op == GGML_OP_NONE;
}

// The index of the next node after i that computes something, or -1.
int next_computing(const ggml_cgraph * cgraph, int i) {
    for (int j = i + 1; j < cgraph->n_nodes; ++j) {
        if (!is_no_op(cgraph->nodes[j])) {
            return j;
        }
    }
    return -1;
}

// Node j is an intermediate of a run: computed, used only `uses` times (all inside the run), not
// an output the graph's caller reads.
bool internal_node(const ggml_cgraph * cgraph, int j, int uses) {
    const ggml_tensor * node = cgraph->nodes[j];
    return (node->flags & GGML_TENSOR_FLAG_COMPUTE) != 0 && (node->flags & GGML_TENSOR_FLAG_OUTPUT) == 0 &&
           ggml_node_get_use_count(cgraph, j) == uses;
}

bool is_f32_with_unit_stride(const ggml_tensor * t) {
    return t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float);
}

// The bytes a tensor's elements span.
void byte_range(const ggml_tensor * t, const char *& begin, const char *& end) {
    begin = static_cast<const char *>(t->data);
    end = begin + ggml_nbytes(t);
}

bool overlap(const ggml_tensor * a, const ggml_tensor * b) {
    const char *a0, *a1, *b0, *b1;
    byte_range(a, a0, a1);
    byte_range(b, b0, b1);
    return a0 < b1 && b0 < a1;
}

// The kernels write `out` while reading `in`: safe when they do not share bytes, or when both are
// the same contiguous tensor (each value is read before its own slot is written).
bool safe_to_stream(const ggml_tensor * in, const ggml_tensor * out) {
    if (!overlap(in, out)) {
        return true;
    }
    return in->data == out->data && ggml_is_contiguous(in) && ggml_is_contiguous(out) && ggml_are_same_shape(in, out);
}

// Strides in floats and broadcast extents of an operand of a binary op.
struct Operand {
    const float * data;
    int64_t ne1, ne2, ne3;
    int64_t s1, s2, s3;
};

Operand operand(const ggml_tensor * t) {
    return {static_cast<const float *>(t->data), t->ne[1], t->ne[2], t->ne[3],
            static_cast<int64_t>(t->nb[1] / sizeof(float)), static_cast<int64_t>(t->nb[2] / sizeof(float)),
            static_cast<int64_t>(t->nb[3] / sizeof(float))};
}

__device__ const float * broadcast_row(const Operand & op, int64_t i1, int64_t i2, int64_t i3) {
    return op.data + (i1 % op.ne1) * op.s1 + (i2 % op.ne2) * op.s2 + (i3 % op.ne3) * op.s3;
}

// One block per row: mean, then the variance around it (two passes over the row, which stays in
// L1), then y = (n + n*scale) + shift with n = (x - mean) / sqrt(var + eps), as the NORM, MUL,
// ADD, ADD nodes round it.
__global__ void norm_modulate(const float * __restrict__ x, int64_t ne0, int64_t ne1, int64_t ne2,
                              int64_t sx1, int64_t sx2, int64_t sx3, Operand scale, Operand shift, float eps,
                              float * __restrict__ y) {
    __shared__ float shared[NORM_THREADS / 32];
    const int64_t row = blockIdx.x;
    const int64_t i1 = row % ne1;
    const int64_t i2 = (row / ne1) % ne2;
    const int64_t i3 = row / (ne1 * ne2);
    const float * xr = x + i1 * sx1 + i2 * sx2 + i3 * sx3;
    float * yr = y + row * ne0;

    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < ne0; c += NORM_THREADS) {
        sum += xr[c];
    }
    const float mean = bonsai_block_sum<NORM_THREADS>(sum, shared) / ne0;
    float squares = 0.0f;
    for (int64_t c = threadIdx.x; c < ne0; c += NORM_THREADS) {
        const float d = xr[c] - mean;
        squares += d * d;
    }
    const float rstd = rsqrtf(bonsai_block_sum<NORM_THREADS>(squares, shared) / ne0 + eps);

    const float * scale_row = broadcast_row(scale, i1, i2, i3);
    const float * shift_row = broadcast_row(shift, i1, i2, i3);
    for (int64_t c = threadIdx.x; c < ne0; c += NORM_THREADS) {
        const float n = __fmul_rn(xr[c] - mean, rstd);
        const float a = __fadd_rn(n, __fmul_rn(n, scale_row[c]));
        yr[c] = __fadd_rn(a, shift_row[c]);
    }
}

// y = x + out*gate over contiguous x, out and y; gate broadcast by rows.
__global__ void gated_residual(const float * __restrict__ x, const float * __restrict__ out, Operand gate,
                               int64_t ne0, int64_t ne1, int64_t ne2, int64_t n, float * y) {
    for (int64_t idx = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; idx < n; idx += (int64_t) gridDim.x * blockDim.x) {
        const int64_t c = idx % ne0;
        const int64_t row = idx / ne0;
        const int64_t i1 = row % ne1;
        const int64_t i2 = (row / ne1) % ne2;
        const int64_t i3 = row / (ne1 * ne2);
        const float g = broadcast_row(gate, i1, i2, i3)[c];
        y[idx] = __fadd_rn(x[idx], __fmul_rn(out[idx], g));
    }
}

// The operand of a binary node that is not `other`.
const ggml_tensor * other_operand(const ggml_tensor * node, const ggml_tensor * other) {
    if (node->src[0] == other) {
        return node->src[1];
    }
    if (node->src[1] == other) {
        return node->src[0];
    }
    return nullptr;
}

int fuse_modulation(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * norm = cgraph->nodes[i];
    const ggml_tensor * x = norm->src[0];
    if (norm->op != GGML_OP_NORM || !is_f32_with_unit_stride(x) || norm->type != GGML_TYPE_F32) {
        return 0;
    }
    const int j_mul = next_computing(cgraph, i);
    if (j_mul < 0 || cgraph->nodes[j_mul]->op != GGML_OP_MUL || cgraph->nodes[j_mul]->src[0] != norm) {
        return 0;
    }
    const ggml_tensor * mul = cgraph->nodes[j_mul];
    const int j_add = next_computing(cgraph, j_mul);
    if (j_add < 0 || cgraph->nodes[j_add]->op != GGML_OP_ADD || other_operand(cgraph->nodes[j_add], norm) != mul) {
        return 0;
    }
    const ggml_tensor * add = cgraph->nodes[j_add];
    const int j_out = next_computing(cgraph, j_add);
    if (j_out < 0 || cgraph->nodes[j_out]->op != GGML_OP_ADD || cgraph->nodes[j_out]->src[0] != add) {
        return 0;
    }
    ggml_tensor * y = cgraph->nodes[j_out];
    const ggml_tensor * scale = mul->src[1];
    const ggml_tensor * shift = y->src[1];
    if (!internal_node(cgraph, i, 2) || !internal_node(cgraph, j_mul, 1) || !internal_node(cgraph, j_add, 1) ||
        (y->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
        return 0;
    }
    if (!is_f32_with_unit_stride(scale) || !is_f32_with_unit_stride(shift) || mul->type != GGML_TYPE_F32 ||
        add->type != GGML_TYPE_F32 || y->type != GGML_TYPE_F32 || !ggml_is_contiguous(y) ||
        !ggml_are_same_shape(y, x) || !ggml_can_repeat(scale, x) || !ggml_can_repeat(shift, x)) {
        return 0;
    }
    // Each block reads its whole row before writing it, so y may be x itself, not a shifted part of it.
    if (!safe_to_stream(x, y) || overlap(scale, y) || overlap(shift, y)) {
        return 0;
    }
    float eps;
    memcpy(&eps, norm->op_params, sizeof(float));
    const int64_t rows = x->ne[1] * x->ne[2] * x->ne[3];
    norm_modulate<<<rows, NORM_THREADS, 0, ctx.stream()>>>(
        static_cast<const float *>(x->data), x->ne[0], x->ne[1], x->ne[2], x->nb[1] / sizeof(float),
        x->nb[2] / sizeof(float), x->nb[3] / sizeof(float), operand(scale), operand(shift), eps,
        static_cast<float *>(y->data));
    CUDA_CHECK(cudaGetLastError());
    return j_out - i;
}

int fuse_gated_residual(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * mul = cgraph->nodes[i];
    if (mul->op != GGML_OP_MUL) {
        return 0;
    }
    const int j_add = next_computing(cgraph, i);
    if (j_add < 0 || cgraph->nodes[j_add]->op != GGML_OP_ADD) {
        return 0;
    }
    ggml_tensor * y = cgraph->nodes[j_add];
    const ggml_tensor * x = other_operand(y, mul);
    const ggml_tensor * out = mul->src[0];
    const ggml_tensor * gate = mul->src[1];
    if (x == nullptr || x == mul || !internal_node(cgraph, i, 1) || (y->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
        return 0;
    }
    if (y->type != GGML_TYPE_F32 || mul->type != GGML_TYPE_F32 || x->type != GGML_TYPE_F32 ||
        out->type != GGML_TYPE_F32 || !is_f32_with_unit_stride(gate) || !ggml_is_contiguous(x) ||
        !ggml_is_contiguous(out) || !ggml_is_contiguous(y) || !ggml_are_same_shape(x, y) ||
        !ggml_are_same_shape(out, y) || !ggml_can_repeat(gate, out)) {
        return 0;
    }
    if (!safe_to_stream(x, y) || !safe_to_stream(out, y) || overlap(gate, y)) {
        return 0;
    }
    const int64_t n = ggml_nelements(y);
    const int64_t blocks = std::min<int64_t>((n + ELEMENTWISE_THREADS - 1) / ELEMENTWISE_THREADS, 65535LL * 16);
    gated_residual<<<blocks, ELEMENTWISE_THREADS, 0, ctx.stream()>>>(
        static_cast<const float *>(x->data), static_cast<const float *>(out->data), operand(gate), y->ne[0], y->ne[1],
        y->ne[2], n, static_cast<float *>(y->data));
    CUDA_CHECK(cudaGetLastError());
    return j_add - i;
}

// sin and cos of a float angle from its remainder modulo pi/2, for angles up to ~1e5 radians.
// ggml-cuda builds with -use_fast_math, whose sinf/cosf lose accuracy as the argument grows (FLUX's
// text positions reach 511 radians). The remainder is taken in double (the float angle is exact
// there and k * pi/2 errs by under 1e-11), rounded once to float, and then |r| <= pi/4 + a little,
// where the Taylor series below are accurate to under 1e-9 before float rounding.
__device__ __forceinline__ float2 sincos_of_angle(float theta) {
    const float k = rintf(theta * 0.636619772f);  // nearest multiple of pi/2
    const float r = (float) ((double) theta - (double) k * 1.5707963267948966);
    const float r2 = r * r;
    const float sin_r = r + r * r2 * (-1.0f / 6 + r2 * (1.0f / 120 + r2 * (-1.0f / 5040 + r2 * (1.0f / 362880))));
    const float cos_r = 1.0f + r2 * (-0.5f + r2 * (1.0f / 24 + r2 * (-1.0f / 720 + r2 * (1.0f / 40320 + r2 * (-1.0f / 3628800)))));
    switch (((int) k) & 3) {
        case 0: return make_float2(sin_r, cos_r);
        case 1: return make_float2(cos_r, -sin_r);
        case 2: return make_float2(-sin_r, -cos_r);
        default: return make_float2(-cos_r, sin_r);
    }
}

// The frequency of pair `pair` of a rotated run: freq_base^(-2 pair / n_dims) in double, rounded
// once (fast-math's powf is approximate).
__device__ __forceinline__ float rope_frequency(double freq_base, int64_t pair, int n_dims) {
    return (float) pow(freq_base, -2.0 * (double) pair / n_dims);
}

// One thread per rotated pair; a warp's pairs follow each other along dims 0 and 2 (FLUX's
// (token, axis) runs are adjacent in memory), then dims 1 and 3. Each pair's frequency is computed
// once per block in double and rounded once, the angle rounded once as the CPU's ROPE rounds it
// (float position times float frequency); sines as above. Per 1024x1024 DiT step (50 nodes): 3.3
// ms with fast-math's inaccurate sines, 7.3 ms with pow and sincos in double per element, 5.5 ms
// this way.
__global__ void rope_pairs(const float * x, float * dst, int64_t half, int64_t ne1, int64_t ne2, int64_t ne3,
                           int64_t sx1, int64_t sx2, int64_t sx3, int64_t sd1, int64_t sd2, int64_t sd3,
                           const int32_t * __restrict__ pos, double freq_base, int n_dims) {
    extern __shared__ float freq[];  // [half]
    for (int64_t pair = threadIdx.x; pair < half; pair += blockDim.x) {
        freq[pair] = rope_frequency(freq_base, pair, n_dims);
    }
    __syncthreads();
    const int64_t n = half * ne1 * ne2 * ne3;
    for (int64_t idx = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; idx < n; idx += (int64_t) gridDim.x * blockDim.x) {
        const int64_t pair = idx % half;
        int64_t rest = idx / half;
        const int64_t i2 = rest % ne2;
        rest /= ne2;
        const int64_t i1 = rest % ne1;
        const int64_t i3 = rest / ne1;
        const float2 sc = sincos_of_angle((float) pos[i2] * freq[pair]);
        const float2 v = *reinterpret_cast<const float2 *>(x + i1 * sx1 + i2 * sx2 + i3 * sx3 + 2 * pair);
        *reinterpret_cast<float2 *>(dst + i1 * sd1 + i2 * sd2 + i3 * sd3 + 2 * pair) =
            make_float2(v.x * sc.y - v.y * sc.x, v.x * sc.x + v.y * sc.y);
    }
}

// FLUX's q/k path fused: RMS norm of a 128-value head row, times the norm weight, rotated by
// ROPE over runs of n_dims values (each run at its own position, pos[row * 128 / n_dims + run]);
// written as f32 (y32) and/or f16 (y16), both contiguous rows. Optionally the same rows of v
// cast to f16 (v16). One warp per row, four values per lane (two pairs of one run), two rows per
// warp in flight. Rounded as the unfused nodes round: (x * rstd) * w, then the rotation.
constexpr int QK_ROW = 128;
constexpr int QK_ROWS_PER_WARP = 2;

struct QkRows {
    const float * data;
    int64_t s1, s2, s3;  // strides in floats
};

__device__ __forceinline__ float4 load_row4(const QkRows & t, int64_t row, int64_t ne1, int64_t ne2, int first) {
    const int64_t i1 = row % ne1;
    const int64_t i2 = (row / ne1) % ne2;
    const int64_t i3 = row / (ne1 * ne2);
    return *reinterpret_cast<const float4 *>(t.data + i1 * t.s1 + i2 * t.s2 + i3 * t.s3 + first);
}

__device__ __forceinline__ void store_half4(half * dst, float4 r) {
    half2 * out = reinterpret_cast<half2 *>(dst);
    out[0] = __floats2half2_rn(r.x, r.y);
    out[1] = __floats2half2_rn(r.z, r.w);
}

__global__ void __launch_bounds__(256) qk_norm_rope(QkRows x, int64_t ne1, int64_t ne2, int64_t rows,
                                                    const float * __restrict__ w, float eps,
                                                    const int32_t * __restrict__ pos, double freq_base,
                                                    int n_dims, float * y32, half * y16, QkRows v, half * v16) {
    const int lane = threadIdx.x % 32;
    const int first = lane * 4;  // this lane's values: first .. first + 3
    const int pair0 = (first % n_dims) / 2;
    const float freq0 = rope_frequency(freq_base, pair0, n_dims);
    const float freq1 = rope_frequency(freq_base, pair0 + 1, n_dims);
    const float4 wv = *reinterpret_cast<const float4 *>(w + first);
    const int64_t warps = (int64_t) gridDim.x * (blockDim.x / 32);
    for (int64_t base = (blockIdx.x * (int64_t) (blockDim.x / 32) + threadIdx.x / 32) * QK_ROWS_PER_WARP; base < rows;
         base += warps * QK_ROWS_PER_WARP) {
        float4 xs[QK_ROWS_PER_WARP], vs[QK_ROWS_PER_WARP];
#pragma unroll
        for (int k = 0; k < QK_ROWS_PER_WARP; ++k) {
            if (base + k < rows) {
                xs[k] = load_row4(x, base + k, ne1, ne2, first);
                if (v16 != nullptr) {
                    vs[k] = load_row4(v, base + k, ne1, ne2, first);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < QK_ROWS_PER_WARP; ++k) {
            const int64_t row = base + k;
            if (row >= rows) {
                break;
            }
            const float4 a = xs[k];
            float squares = a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
            for (int offset = 16; offset > 0; offset /= 2) {
                squares += __shfl_xor_sync(0xffffffffu, squares, offset);
            }
            const float rstd = rsqrtf(squares / QK_ROW + eps);
            const float m0 = __fmul_rn(__fmul_rn(a.x, rstd), wv.x);
            const float m1 = __fmul_rn(__fmul_rn(a.y, rstd), wv.y);
            const float m2 = __fmul_rn(__fmul_rn(a.z, rstd), wv.z);
            const float m3 = __fmul_rn(__fmul_rn(a.w, rstd), wv.w);
            const float p = (float) pos[(row * QK_ROW + first) / n_dims];
            const float2 sc0 = sincos_of_angle(p * freq0);  // (sin, cos)
            const float2 sc1 = sincos_of_angle(p * freq1);
            const float4 r = make_float4(m0 * sc0.y - m1 * sc0.x, m0 * sc0.x + m1 * sc0.y, m2 * sc1.y - m3 * sc1.x,
                                         m2 * sc1.x + m3 * sc1.y);
            if (y32 != nullptr) {
                *reinterpret_cast<float4 *>(y32 + row * QK_ROW + first) = r;
            }
            if (y16 != nullptr) {
                store_half4(y16 + row * QK_ROW + first, r);
            }
            if (v16 != nullptr) {
                store_half4(v16 + row * QK_ROW + first, vs[k]);
            }
        }
    }
}

// The ROPE parameters bonsai_cuda_rope computes ("normal" mode, every dimension rotated, no
// frequency factors, no YaRN); false for any other ROPE.
bool plain_rope(const ggml_tensor * rope, int & n_dims, float & freq_base) {
    const int32_t * params = static_cast<const int32_t *>(rope->op_params);
    float freq_scale, ext_factor, attn_factor;
    n_dims = params[1];
    memcpy(&freq_base, params + 5, sizeof(float));
    memcpy(&freq_scale, params + 6, sizeof(float));
    memcpy(&ext_factor, params + 7, sizeof(float));
    memcpy(&attn_factor, params + 8, sizeof(float));
    return rope->op == GGML_OP_ROPE && rope->src[2] == nullptr && params[2] == 0 && n_dims == rope->src[0]->ne[0] &&
           freq_scale == 1.0f && ext_factor == 0.0f && attn_factor == 1.0f && rope->src[1]->type == GGML_TYPE_I32;
}

// The index of `node` among the graph's nodes in (from, to), or -1.
int node_index(const ggml_cgraph * cgraph, const ggml_tensor * node, int from, int to) {
    for (int j = from + 1; j < to; ++j) {
        if (cgraph->nodes[j] == node) {
            return j;
        }
    }
    return -1;
}

bool aligned16(const void * p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// RMS_NORM(x) -> MUL(norm, w) -> [views] -> ROPE in place over a runs view of the MUL's result
// [-> views -> CPY of the rotated values to F16 [-> CPY of v's rows to F16]], as sd.cpp's FLUX
// builds q, and k and v, for flash attention (cpp/sdcpp/rope-positions.cpp): one kernel instead
// of three to five. The f32 rotation is written unless the CPY is its only reader.
int fuse_qk_norm_rope(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * norm = cgraph->nodes[i];
    const ggml_tensor * x = norm->src[0];
    if (norm->op != GGML_OP_RMS_NORM || norm->type != GGML_TYPE_F32 || !is_f32_with_unit_stride(x) ||
        x->ne[0] != QK_ROW || !aligned16(x->data) || x->nb[1] % 16 != 0 || x->nb[2] % 16 != 0 || x->nb[3] % 16 != 0 ||
        i + 1 >= cgraph->n_nodes) {
        return 0;
    }
    const ggml_tensor * mul = cgraph->nodes[i + 1];
    if (mul->op != GGML_OP_MUL || mul->type != GGML_TYPE_F32 || !ggml_is_contiguous(mul) || !ggml_are_same_shape(mul, x)) {
        return 0;
    }
    const ggml_tensor * w = other_operand(mul, norm);
    if (w == nullptr || w == norm || !is_f32_with_unit_stride(w) || ggml_nelements(w) != QK_ROW || !aligned16(w->data)) {
        return 0;
    }
    const int j_rope = next_computing(cgraph, i + 1);
    if (j_rope < 0) {
        return 0;
    }
    ggml_tensor * rope = cgraph->nodes[j_rope];
    int n_dims;
    float freq_base;
    if (rope->op != GGML_OP_ROPE || !plain_rope(rope, n_dims, freq_base)) {
        return 0;
    }
    const ggml_tensor * runs = rope->src[0];
    const ggml_tensor * pos = rope->src[1];
    // the ROPE rotates the MUL's own bytes, in place, as rows of n_dims values, one position each
    if (runs->data != mul->data || rope->data != mul->data || !ggml_is_contiguous(runs) || !ggml_is_contiguous(rope) ||
        runs->type != GGML_TYPE_F32 || rope->type != GGML_TYPE_F32 || ggml_nelements(runs) != ggml_nelements(mul) ||
        runs->ne[1] != 1 || runs->ne[3] != 1 || pos->ne[0] != runs->ne[2] || n_dims % 4 != 0 || QK_ROW % n_dims != 0) {
        return 0;
    }
    if (!internal_node(cgraph, i, 1) || !internal_node(cgraph, i + 1, 1) || overlap(x, mul) || overlap(w, mul)) {
        return 0;
    }
    // an F16 copy of the rotated values, straight after them?
    int last = j_rope;
    half * y16 = nullptr;
    const ggml_tensor * y16_tensor = nullptr;
    float * y32 = static_cast<float *>(rope->data);
    const int j_cpy = next_computing(cgraph, j_rope);
    if (j_cpy >= 0) {
        ggml_tensor * cpy = cgraph->nodes[j_cpy];
        const ggml_tensor * view = cpy->src[0];
        const ggml_tensor * dst16 = cpy->src[1];
        if (cpy->op == GGML_OP_CPY && view->data == rope->data && ggml_is_contiguous(view) &&
            ggml_nelements(view) == ggml_nelements(rope) && dst16 != nullptr && dst16->type == GGML_TYPE_F16 &&
            ggml_is_contiguous(dst16) && cpy->data == dst16->data && ggml_nelements(dst16) == ggml_nelements(rope) &&
            aligned16(dst16->data) && !overlap(dst16, mul) && !overlap(dst16, x)) {
            y16 = static_cast<half *>(dst16->data);
            y16_tensor = dst16;
            last = j_cpy;
            const int j_view = node_index(cgraph, view, j_rope, j_cpy);
            const bool view_internal = view == rope || (j_view >= 0 && internal_node(cgraph, j_view, 1));
            if (view_internal && internal_node(cgraph, j_rope, 1)) {
                y32 = nullptr;  // nothing else reads the f32 rotation
            }
        }
    }
    // k's F16 copy may be followed by v's: F32 rows of the same shape, cast to a contiguous F16 tensor
    QkRows v_rows = {};
    half * v16 = nullptr;
    const int j_vcpy = y16 != nullptr ? next_computing(cgraph, last) : -1;
    if (j_vcpy >= 0) {
        ggml_tensor * vcpy = cgraph->nodes[j_vcpy];
        const ggml_tensor * v = vcpy->src[0];
        const ggml_tensor * vdst = vcpy->src[1];
        if (vcpy->op == GGML_OP_CPY && is_f32_with_unit_stride(v) && ggml_are_same_shape(v, x) && aligned16(v->data) &&
            v->nb[1] % 16 == 0 && v->nb[2] % 16 == 0 && v->nb[3] % 16 == 0 && vdst != nullptr &&
            vdst->type == GGML_TYPE_F16 && ggml_is_contiguous(vdst) && vcpy->data == vdst->data &&
            ggml_nelements(vdst) == ggml_nelements(v) && aligned16(vdst->data) && !overlap(vdst, v) &&
            !overlap(vdst, x) && !overlap(vdst, mul) && !overlap(vdst, y16_tensor)) {
            v_rows = {static_cast<const float *>(v->data), static_cast<int64_t>(v->nb[1] / sizeof(float)),
                      static_cast<int64_t>(v->nb[2] / sizeof(float)), static_cast<int64_t>(v->nb[3] / sizeof(float))};
            v16 = static_cast<half *>(vdst->data);
            last = j_vcpy;
        }
    }
    const int64_t rows = x->ne[1] * x->ne[2] * x->ne[3];
    const int64_t rows_per_block = (ELEMENTWISE_THREADS / 32) * QK_ROWS_PER_WARP;
    const int64_t blocks = std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, 65535LL * 16);
    const size_t f = sizeof(float);
    const QkRows x_rows = {static_cast<const float *>(x->data), static_cast<int64_t>(x->nb[1] / f),
                           static_cast<int64_t>(x->nb[2] / f), static_cast<int64_t>(x->nb[3] / f)};
    qk_norm_rope<<<blocks, ELEMENTWISE_THREADS, 0, ctx.stream()>>>(
        x_rows, x->ne[1], x->ne[2], rows, static_cast<const float *>(w->data), ggml_get_op_params_f32(norm, 0),
        static_cast<const int32_t *>(pos->data), (double) freq_base, n_dims, y32, y16, v_rows, v16);
    CUDA_CHECK(cudaGetLastError());
    return last - i;
}

// SWIGLU(h) [-> CONCAT(x, that) along elements] -> MUL_MAT of low-bit weights: the GEMM's
// activation pre-pass computes the SwiGLU (and takes x's part) itself, so neither intermediate
// is written (FLUX's MLP output; its single blocks' linear2 after the attention output).
int fuse_glu_mul_mat(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * glu = cgraph->nodes[i];
    if (glu->op != GGML_OP_GLU || ggml_get_glu_op(glu) != GGML_GLU_OP_SWIGLU || glu->src[1] != nullptr ||
        glu->type != GGML_TYPE_F32 || !internal_node(cgraph, i, 1)) {
        return 0;
    }
    int j = next_computing(cgraph, i);
    if (j < 0) {
        return 0;
    }
    const ggml_tensor * x = nullptr;
    const ggml_tensor * act = glu;
    if (cgraph->nodes[j]->op == GGML_OP_CONCAT) {
        const ggml_tensor * concat = cgraph->nodes[j];
        if (ggml_get_op_params_i32(concat, 0) != 0 || concat->src[1] != glu || concat->type != GGML_TYPE_F32 ||
            !internal_node(cgraph, j, 1)) {
            return 0;
        }
        x = concat->src[0];
        act = concat;
        j = next_computing(cgraph, j);
        if (j < 0) {
            return 0;
        }
    }
    ggml_tensor * mm = cgraph->nodes[j];
    if (mm->op != GGML_OP_MUL_MAT || mm->src[1] != act || (mm->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
        return 0;
    }
    return bonsai_ggml_cuda_mul_mat_glu(ctx, x, glu, mm) ? j - i : 0;
}

// CONV_2D -> ADD of a [1, 1, OC, 1] bias (sd.cpp's Conv2d: ggml_add_inplace) [-> ADD of a tensor of
// the same shape (the VAE's residual sums)]: the convolution kernel adds both as it writes.
int fuse_conv2d(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * conv = cgraph->nodes[i];
    const int j = next_computing(cgraph, i);
    if (j < 0 || !internal_node(cgraph, i, 1)) {
        return 0;
    }
    ggml_tensor * add = cgraph->nodes[j];
    const ggml_tensor * bias = add->src[1];
    if (add->op != GGML_OP_ADD || add->src[0] != conv || (add->flags & GGML_TENSOR_FLAG_COMPUTE) == 0 ||
        bias->ne[0] != 1 || bias->ne[1] != 1 || bias->ne[2] != conv->ne[2] || bias->ne[3] != 1) {
        return 0;
    }
    // The kernel reads the input, the weights and the bias while it writes: the output shares no byte with them.
    auto apart = [&](const ggml_tensor * out) {
        return !overlap(out, conv->src[0]) && !overlap(out, conv->src[1]) && !overlap(out, bias);
    };
    if (!apart(add)) {
        return 0;
    }
    const int k = next_computing(cgraph, j);
    if (k >= 0 && internal_node(cgraph, j, 1)) {
        ggml_tensor * sum = cgraph->nodes[k];
        const ggml_tensor * residual = other_operand(sum, add);
        if (sum->op == GGML_OP_ADD && (sum->flags & GGML_TENSOR_FLAG_COMPUTE) != 0 && residual != nullptr &&
            residual != add && ggml_are_same_shape(residual, sum) && ggml_are_same_shape(add, sum) && apart(sum) &&
            safe_to_stream(residual, sum) && bonsai_cuda_conv2d_fused(ctx, conv, bias, residual, sum)) {
            return k - i;
        }
    }
    return bonsai_cuda_conv2d_fused(ctx, conv, bias, nullptr, add) ? j - i : 0;
}

// GROUP_NORM -> MUL by a [1, 1, C, 1] weight -> ADD of a [1, 1, C, 1] bias [-> SILU] (sd.cpp's
// GroupNorm, in place, and the SiLU its ResnetBlocks and the decoder's final norm apply): the group
// norm's normalizing pass scales, shifts and activates as it writes.
int fuse_group_norm(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    const ggml_tensor * norm = cgraph->nodes[i];
    const int j_mul = next_computing(cgraph, i);
    if (j_mul < 0 || !internal_node(cgraph, i, 1)) {
        return 0;
    }
    const ggml_tensor * mul = cgraph->nodes[j_mul];
    const ggml_tensor * weight = other_operand(mul, norm);
    if (mul->op != GGML_OP_MUL || weight == nullptr || weight == norm || !ggml_are_same_shape(mul, norm)) {
        return 0;
    }
    const int j_add = next_computing(cgraph, j_mul);
    if (j_add < 0 || !internal_node(cgraph, j_mul, 1)) {
        return 0;
    }
    ggml_tensor * add = cgraph->nodes[j_add];
    const ggml_tensor * bias = other_operand(add, mul);
    if (add->op != GGML_OP_ADD || bias == nullptr || bias == mul || !ggml_are_same_shape(add, norm) ||
        (add->flags & GGML_TENSOR_FLAG_COMPUTE) == 0) {
        return 0;
    }
    const ggml_tensor * x = norm->src[0];
    // The kernel reads x, the weight and the bias while it writes y.
    auto writable = [&](const ggml_tensor * y) {
        return ggml_are_same_shape(y, x) && safe_to_stream(x, y) && !overlap(y, weight) && !overlap(y, bias);
    };
    const int j_silu = next_computing(cgraph, j_add);
    if (j_silu >= 0 && internal_node(cgraph, j_add, 1)) {
        ggml_tensor * silu = cgraph->nodes[j_silu];
        if (silu->op == GGML_OP_UNARY && ggml_get_unary_op(silu) == GGML_UNARY_OP_SILU && silu->src[0] == add &&
            (silu->flags & GGML_TENSOR_FLAG_COMPUTE) != 0 && writable(silu) &&
            bonsai_cuda_group_norm_affine(ctx, norm, weight, bias, true, silu)) {
            return j_silu - i;
        }
    }
    return writable(add) && bonsai_cuda_group_norm_affine(ctx, norm, weight, bias, false, add) ? j_add - i : 0;
}

}  // namespace

int bonsai_cuda_fuse_elementwise(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i) {
    static const bool unfused = env_set("BONSAI_SD_CUDA_UNFUSED");
    if (unfused) {
        return 0;
    }
    switch (cgraph->nodes[i]->op) {
        case GGML_OP_NORM:
            return fuse_modulation(ctx, cgraph, i);
        case GGML_OP_MUL:
            return fuse_gated_residual(ctx, cgraph, i);
        case GGML_OP_RMS_NORM:
            return fuse_qk_norm_rope(ctx, cgraph, i);
        case GGML_OP_GLU:
            return fuse_glu_mul_mat(ctx, cgraph, i);
        case GGML_OP_CONV_2D:
            return fuse_conv2d(ctx, cgraph, i);
        case GGML_OP_GROUP_NORM:
            return fuse_group_norm(ctx, cgraph, i);
        default:
            return 0;
    }
}

bool bonsai_cuda_rope(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    static const bool upstream = env_set("BONSAI_SD_CUDA_UPSTREAM_ROPE");
    const ggml_tensor * x = dst->src[0];
    const ggml_tensor * pos = dst->src[1];
    if (upstream || dst->op != GGML_OP_ROPE || dst->src[2] != nullptr || x->type != GGML_TYPE_F32 ||
        dst->type != GGML_TYPE_F32 || pos->type != GGML_TYPE_I32 || x->nb[0] != sizeof(float) ||
        dst->nb[0] != sizeof(float) || x->ne[0] % 2 != 0 || x->ne[0] > 2 * ROPE_MAX_PAIRS) {
        return false;
    }
    const int32_t * params = static_cast<const int32_t *>(dst->op_params);
    const int n_dims = params[1];
    const int mode = params[2];
    float freq_base, freq_scale, ext_factor, attn_factor;
    memcpy(&freq_base, params + 5, sizeof(float));
    memcpy(&freq_scale, params + 6, sizeof(float));
    memcpy(&ext_factor, params + 7, sizeof(float));
    memcpy(&attn_factor, params + 8, sizeof(float));
    if (mode != 0 || n_dims != x->ne[0] || freq_scale != 1.0f || ext_factor != 0.0f || attn_factor != 1.0f) {
        return false;
    }
    // Every thread must see its pair's old values before any other thread writes: true when
    // dst is x itself (each thread reads and writes its own pair) or does not touch it.
    if (x->data != dst->data && overlap(x, dst)) {
        return false;
    }
    if (x->data == dst->data && (x->nb[1] != dst->nb[1] || x->nb[2] != dst->nb[2] || x->nb[3] != dst->nb[3])) {
        return false;
    }
    const int64_t half = x->ne[0] / 2;
    const int64_t n = half * x->ne[1] * x->ne[2] * x->ne[3];
    const int64_t blocks = std::min<int64_t>((n + ELEMENTWISE_THREADS - 1) / ELEMENTWISE_THREADS, 65535LL * 16);
    const size_t f = sizeof(float);
    rope_pairs<<<blocks, ELEMENTWISE_THREADS, half * sizeof(float), ctx.stream()>>>(
        static_cast<const float *>(x->data), static_cast<float *>(dst->data), half, x->ne[1], x->ne[2], x->ne[3],
        x->nb[1] / f, x->nb[2] / f, x->nb[3] / f, dst->nb[1] / f, dst->nb[2] / f, dst->nb[3] / f,
        static_cast<const int32_t *>(pos->data), (double) freq_base, n_dims);
    CUDA_CHECK(cudaGetLastError());
    return true;
}
