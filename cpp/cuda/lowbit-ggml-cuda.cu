// Glue between ggml's CUDA backend and the low-bit kernels (see lowbit-ggml-cuda.h).
// Compiled into ggml-cuda with its flags; includes ggml-cuda's common.cuh.

#include "lowbit-ggml-cuda.h"

#include "common.cuh"
#include "cuda-op-profile.h"
#include "cuda-quantized-gemm.h"
#include "lowbit-cuda.h"
#include "lowbit.h"

static bool is_lowbit(const ggml_tensor * t) {
    return t != nullptr && bonsai_lowbit_is_type(t->type);
}

// CPY/DUP/CONT from `src` into `dst`, as bonsai_ggml_cuda_cpy and ggml's memcpy path run them.
static bool cpy_supported(const ggml_tensor * src, const ggml_tensor * dst) {
    if (src->type == dst->type) {
        return ggml_is_contiguous(src) && ggml_is_contiguous(dst);  // ggml copies the bytes
    }
    if (src->type == GGML_TYPE_F32 && is_lowbit(dst)) {
        // one thread per destination block reads its elements from one source row
        return src->nb[0] == sizeof(float) && src->ne[0] % ggml_blck_size(dst->type) == 0 &&
               dst->nb[0] == ggml_type_size(dst->type);
    }
    if (is_lowbit(src) && dst->type == GGML_TYPE_F32) {
        // one thread per 16 elements writes them to one destination row
        return src->nb[0] == ggml_type_size(src->type) && dst->nb[0] == sizeof(float) && dst->ne[0] % 16 == 0;
    }
    return false;
}

int bonsai_ggml_cuda_supports_op(const ggml_tensor * op, int cc, bool src0_split) {
    const ggml_tensor * src0 = op->src[0];
    const ggml_tensor * src1 = op->src[1];
    if (!is_lowbit(op) && !is_lowbit(src0) && !is_lowbit(src1)) {
        return -1;
    }
    switch (op->op) {
        case GGML_OP_NONE:
        case GGML_OP_RESHAPE:
        case GGML_OP_VIEW:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
            return -1;
        case GGML_OP_MUL_MAT:
            return is_lowbit(src0) && src1->type == GGML_TYPE_F32 && op->type == GGML_TYPE_F32 && !src0_split &&
                   GGML_CUDA_CC_IS_NVIDIA(cc) && cc >= GGML_CUDA_CC_AMPERE &&  // mma.sync int8, cp.async
                   src0->nb[0] == ggml_type_size(src0->type) && bonsai_cuda_matmul_supported(src0->type, src0->ne[0]);
        case GGML_OP_GET_ROWS:
            return is_lowbit(src0) && src1->type == GGML_TYPE_I32 && op->type == GGML_TYPE_F32 &&
                   src0->nb[0] == ggml_type_size(src0->type);
        case GGML_OP_CPY:
            return cpy_supported(src0, src1);
        case GGML_OP_DUP:
        case GGML_OP_CONT:
            return cpy_supported(src0, op);
        default:
            return 0;  // no other op has kernels for these types
    }
}

bool bonsai_ggml_cuda_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              ggml_tensor * dst) {
    if (!is_lowbit(src0)) {
        return bonsai_ggml_cuda_mul_mat_quantized(ctx, src0, src1, dst);
    }
    GGML_ASSERT(src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32);
    bonsai_cuda_matmul_args a = {};
    a.type  = src0->type;
    a.w     = src0->data;
    a.M     = src0->ne[1];
    a.K     = src0->ne[0];
    a.w_ne2 = src0->ne[2];
    a.w_ne3 = src0->ne[3];
    a.w_nb1 = src0->nb[1];
    a.w_nb2 = src0->nb[2];
    a.w_nb3 = src0->nb[3];
    a.x     = (const float *) src1->data;
    a.N     = src1->ne[1];
    a.ne2   = src1->ne[2];
    a.ne3   = src1->ne[3];
    a.x_nb0 = src1->nb[0];
    a.x_nb1 = src1->nb[1];
    a.x_nb2 = src1->nb[2];
    a.x_nb3 = src1->nb[3];
    a.dst   = (float *) dst->data;
    a.d_nb1 = dst->nb[1];
    a.d_nb2 = dst->nb[2];
    a.d_nb3 = dst->nb[3];

    ggml_cuda_pool_alloc<char> scratch(ctx.pool(), std::max<size_t>(bonsai_cuda_matmul_scratch_bytes(&a), 1));
    CUDA_CHECK(bonsai_cuda_matmul(&a, scratch.get(), ctx.stream()));
    return true;
}

bool bonsai_ggml_cuda_mul_mat_glu(ggml_backend_cuda_context & ctx, const ggml_tensor * x, const ggml_tensor * glu,
                                  ggml_tensor * dst) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * h = glu->src[0];  // the gate and up halves of each token's row
    if (!is_lowbit(w) || dst->type != GGML_TYPE_F32 || h->type != GGML_TYPE_F32 || h->nb[0] != sizeof(float) ||
        w->ne[2] != 1 || w->ne[3] != 1 || dst->ne[2] != 1 || dst->ne[3] != 1 || h->ne[2] != 1 || h->ne[3] != 1 ||
        w->nb[0] != ggml_type_size(w->type) || h->ne[0] % 2 != 0) {
        return false;
    }
    const int64_t from = x != nullptr ? x->ne[0] : 0;
    const int64_t K = w->ne[0], N = dst->ne[1];
    if (K != from + h->ne[0] / 2 || h->ne[1] != N || from % 128 != 0 ||
        !bonsai_cuda_matmul_glu_supported(w->type, K, N)) {
        return false;
    }
    if (x != nullptr && (x->type != GGML_TYPE_F32 || x->nb[0] != sizeof(float) || x->ne[1] != N || x->ne[2] != 1 ||
                         x->ne[3] != 1)) {
        return false;
    }
    bonsai_cuda_matmul_args a = {};
    a.type  = w->type;
    a.w     = w->data;
    a.M     = w->ne[1];
    a.K     = K;
    a.w_ne2 = 1;
    a.w_ne3 = 1;
    a.w_nb1 = w->nb[1];
    a.N     = N;
    a.ne2   = 1;
    a.ne3   = 1;
    a.x_nb0 = sizeof(float);
    a.x_nb1 = K * sizeof(float);
    a.dst   = (float *) dst->data;
    a.d_nb1 = dst->nb[1];
    bonsai_cuda_act_glu g = {};
    g.x       = x != nullptr ? (const float *) x->data : nullptr;
    g.x_nb1   = x != nullptr ? x->nb[1] : 0;
    g.from    = from;
    g.glu     = (const float *) h->data;
    g.glu_nb1 = h->nb[1];
    g.glu_ne0 = h->ne[0];
    g.swapped = ggml_get_op_params_i32(glu, 1) != 0;
    if (bonsai_cuda_profile_active()) {
        bonsai_cuda_profile_node(ctx.stream(), dst);  // the product's time, pre-pass included, as unfused
    }
    ggml_cuda_pool_alloc<char> scratch(ctx.pool(), std::max<size_t>(bonsai_cuda_matmul_scratch_bytes(&a), 1));
    CUDA_CHECK(bonsai_cuda_matmul_glu(&a, &g, scratch.get(), ctx.stream()));
    return true;
}

bool bonsai_ggml_cuda_get_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];
    if (!is_lowbit(src0)) {
        return false;
    }
    GGML_ASSERT(src1->type == GGML_TYPE_I32 && dst->type == GGML_TYPE_F32);
    bonsai_cuda_get_rows_args a = {};
    a.type = src0->type;
    a.src0 = src0->data;
    a.ne00 = src0->ne[0];
    a.nb01 = src0->nb[1];
    a.nb02 = src0->nb[2];
    a.nb03 = src0->nb[3];
    a.ids  = (const int32_t *) src1->data;
    a.ne10 = src1->ne[0];
    a.ne11 = src1->ne[1];
    a.ne12 = src1->ne[2];
    a.nb10 = src1->nb[0];
    a.nb11 = src1->nb[1];
    a.nb12 = src1->nb[2];
    a.dst  = (float *) dst->data;
    a.nb1  = dst->nb[1];
    a.nb2  = dst->nb[2];
    a.nb3  = dst->nb[3];
    CUDA_CHECK(bonsai_cuda_get_rows(&a, ctx.stream()));
    return true;
}

bool bonsai_ggml_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1) {
    const bool quantize   = src0->type == GGML_TYPE_F32 && is_lowbit(src1);
    const bool dequantize = is_lowbit(src0) && src1->type == GGML_TYPE_F32;
    if (!quantize && !dequantize) {
        return false;
    }
    bonsai_cuda_cpy_args a = {};
    a.type = quantize ? src1->type : src0->type;
    a.src  = src0->data;
    a.ne00 = src0->ne[0];
    a.ne01 = src0->ne[1];
    a.ne02 = src0->ne[2];
    a.ne03 = src0->ne[3];
    a.nb00 = src0->nb[0];
    a.nb01 = src0->nb[1];
    a.nb02 = src0->nb[2];
    a.nb03 = src0->nb[3];
    a.dst  = src1->data;
    a.ne10 = src1->ne[0];
    a.ne11 = src1->ne[1];
    a.ne12 = src1->ne[2];
    a.ne13 = src1->ne[3];
    a.nb10 = src1->nb[0];
    a.nb11 = src1->nb[1];
    a.nb12 = src1->nb[2];
    a.nb13 = src1->nb[3];
    CUDA_CHECK(quantize ? bonsai_cuda_quantize_f32(&a, ctx.stream()) : bonsai_cuda_dequantize_cpy(&a, ctx.stream()));
    return true;
}

// convert.cu's signature: (const void * x, T * y, int64_t k, cudaStream_t); errors surface at
// the next CUDA_CHECK of the caller's stream.
template <int TYPE> static void to_fp32(const void * x, float * y, int64_t k, cudaStream_t stream) {
    CUDA_CHECK(bonsai_cuda_dequantize_f32(TYPE, x, y, k, stream));
}
template <int TYPE> static void to_fp16(const void * x, half * y, int64_t k, cudaStream_t stream) {
    CUDA_CHECK(bonsai_cuda_dequantize_f16(TYPE, x, y, k, stream));
}
template <int TYPE> static void to_bf16(const void * x, nv_bfloat16 * y, int64_t k, cudaStream_t stream) {
    CUDA_CHECK(bonsai_cuda_dequantize_bf16(TYPE, x, y, k, stream));
}

#define BONSAI_CONVERTERS(FN)                                                \
    switch ((int) type) {                                                    \
        case BONSAI_TYPE_Q1_0:   return FN<BONSAI_TYPE_Q1_0>;                \
        case BONSAI_TYPE_Q2_0:   return FN<BONSAI_TYPE_Q2_0>;                \
        case BONSAI_TYPE_PQ2_0:  return FN<BONSAI_TYPE_PQ2_0>;               \
        case BONSAI_TYPE_PTQ1_0: return FN<BONSAI_TYPE_PTQ1_0>;              \
        default:                 return nullptr;                             \
    }

to_fp32_cuda_t bonsai_ggml_get_to_fp32_cuda(ggml_type type) {
    BONSAI_CONVERTERS(to_fp32)
}

to_fp16_cuda_t bonsai_ggml_get_to_fp16_cuda(ggml_type type) {
    BONSAI_CONVERTERS(to_fp16)
}

to_bf16_cuda_t bonsai_ggml_get_to_bf16_cuda(ggml_type type) {
    BONSAI_CONVERTERS(to_bf16)
}
