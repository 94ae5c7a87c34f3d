// ggml's FLASH_ATTN_EXT through bonsai-sd's Hopper kernel (cuda-flash-attn-sm90.cu): the checks that
// keep it to what it computes. See cuda-flash-attn.h.

#include "cuda-flash-attn.h"

#include "common.cuh"  // ggml-cuda: ggml_backend_cuda_context, ggml_cuda_info, CUDA_CHECK

#include <cstdlib>
#include <cstring>

bool bonsai_cuda_flash_attn_ext(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
#ifdef BONSAI_CUDA_SM90
    static const bool upstream = [] {
        const char * value = std::getenv("BONSAI_SD_CUDA_UPSTREAM_FA");
        return value != nullptr && value[0] != '\0' && value[0] != '0';
    }();
    const int cc = ggml_cuda_info().devices[ctx.device].cc;
    if (upstream || !GGML_CUDA_CC_IS_NVIDIA(cc) || cc != 900) {  // the kernel is sm_90a code
        return false;
    }
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    float scale, max_bias, logit_softcap;
    memcpy(&scale, (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&logit_softcap, (const float *) dst->op_params + 2, sizeof(float));
    if (dst->src[3] != nullptr || dst->src[4] != nullptr || max_bias != 0.0f || logit_softcap != 0.0f ||
        q->type != GGML_TYPE_F32 || k->type != GGML_TYPE_F16 || v->type != GGML_TYPE_F16 || dst->type != GGML_TYPE_F32 ||
        q->ne[0] != 128 || k->ne[0] != 128 || v->ne[0] != 128 || dst->ne[0] != 128 ||
        q->nb[0] != sizeof(float) || k->nb[0] != sizeof(half) || v->nb[0] != sizeof(half) || dst->nb[0] != sizeof(float) ||
        k->ne[1] != v->ne[1] || k->ne[3] != q->ne[3] || v->ne[3] != q->ne[3] ||
        dst->ne[1] != q->ne[2] || dst->ne[2] != q->ne[1] || dst->ne[3] != q->ne[3]) {
        return false;
    }
    // GGML_PREC_DEFAULT and GGML_PREC_F32 alike: the products accumulate in f32 either way.
    bonsai_flash_attn_args a;
    a.q     = q->data;
    a.q_nb1 = q->nb[1];
    a.q_nb2 = q->nb[2];
    a.q_nb3 = q->nb[3];
    a.k     = k->data;
    a.k_nb1 = k->nb[1];
    a.k_nb2 = k->nb[2];
    a.k_nb3 = k->nb[3];
    a.v     = v->data;
    a.v_nb1 = v->nb[1];
    a.v_nb2 = v->nb[2];
    a.v_nb3 = v->nb[3];
    a.dst   = dst->data;
    a.d_nb1 = dst->nb[1];
    a.d_nb2 = dst->nb[2];
    a.d_nb3 = dst->nb[3];
    a.Lq    = q->ne[1];
    a.Lk    = k->ne[1];
    a.Hq    = q->ne[2];
    a.Hk    = k->ne[2];
    a.Hv    = v->ne[2];
    a.B     = q->ne[3];
    a.scale = scale;
    ggml_cuda_set_device(ctx.device);
    const cudaError_t err = bonsai_cuda_flash_attn_sm90(&a, ctx.stream());
    if (err == cudaErrorNotSupported) {
        return false;
    }
    CUDA_CHECK(err);
    return true;
#else
    GGML_UNUSED(ctx);
    GGML_UNUSED(dst);
    return false;
#endif
}
