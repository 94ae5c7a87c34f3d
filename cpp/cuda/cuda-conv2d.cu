// ggml's CONV_2D through bonsai-sd's implicit-GEMM kernel (cuda-conv2d-mma.cu): the checks that
// keep it to what it computes. See cuda-conv2d.h.

#include "cuda-conv2d.h"

#include "common.cuh"  // ggml-cuda: ggml_backend_cuda_context, ggml_cuda_info, ggml_cuda_pool_alloc, CUDA_CHECK

#include <cstdlib>

namespace {

bool use_upstream() {
    static const bool upstream = [] {
        const char * value = std::getenv("BONSAI_SD_CUDA_UPSTREAM_CONV2D");
        return value != nullptr && value[0] != '\0' && value[0] != '0';
    }();
    return upstream;
}

// The kernel's arguments for conv (GGML_OP_CONV_2D) writing `out`, or false for what it does not take.
bool describe(const ggml_tensor * conv, const ggml_tensor * out, bonsai_conv2d_args & a) {
    const ggml_tensor * w = conv->src[0];
    const ggml_tensor * x = conv->src[1];
    const int32_t * p = (const int32_t *) conv->op_params;
    if (w->type != GGML_TYPE_F16 || !ggml_is_contiguous(w) || x->type != GGML_TYPE_F32 || x->nb[0] != sizeof(float) ||
        conv->type != GGML_TYPE_F32 || out->type != GGML_TYPE_F32 || !ggml_is_contiguous(out) ||
        !ggml_are_same_shape(conv, out) || p[6] != 0 || w->ne[2] != x->ne[2] || conv->ne[2] != w->ne[3] ||
        conv->ne[3] != x->ne[3]) {
        return false;
    }
    for (int d = 0; d < 4; d++) {
        if (x->ne[d] > INT32_MAX || w->ne[d] > INT32_MAX || conv->ne[d] > INT32_MAX) {
            return false;
        }
    }
    a = {};
    a.x = (const float *) x->data;
    a.x_nb1 = x->nb[1], a.x_nb2 = x->nb[2], a.x_nb3 = x->nb[3];
    a.w = (const half *) w->data;
    a.y = (float *) out->data;
    a.IW = (int) x->ne[0], a.IH = (int) x->ne[1], a.IC = (int) x->ne[2], a.N = (int) x->ne[3];
    a.KW = (int) w->ne[0], a.KH = (int) w->ne[1], a.OC = (int) w->ne[3];
    a.OW = (int) conv->ne[0], a.OH = (int) conv->ne[1];
    a.s0 = p[0], a.s1 = p[1], a.p0 = p[2], a.p1 = p[3], a.d0 = p[4], a.d1 = p[5];
    return true;
}

bool run(ggml_backend_cuda_context & ctx, const bonsai_conv2d_args & a) {
    const int cc = ggml_cuda_info().devices[ctx.device].cc;
    if (use_upstream() || !GGML_CUDA_CC_IS_NVIDIA(cc) || cc < GGML_CUDA_CC_AMPERE) {
        return false;
    }
    const size_t bytes = bonsai_cuda_conv2d_workspace(&a, ctx.device);
    if (bytes == 0) {
        return false;
    }
    ggml_cuda_set_device(ctx.device);
    ggml_cuda_pool_alloc<char> workspace(ctx.pool(), bytes);
    CUDA_CHECK(bonsai_cuda_conv2d(&a, workspace.get(), ctx.device, ctx.stream()));
    return true;
}

}  // namespace

bool bonsai_cuda_conv2d_op(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    bonsai_conv2d_args a;
    return describe(dst, dst, a) && run(ctx, a);
}

bool bonsai_cuda_conv2d_fused(ggml_backend_cuda_context & ctx, const ggml_tensor * conv, const ggml_tensor * bias,
                              const ggml_tensor * residual, ggml_tensor * out) {
    bonsai_conv2d_args a;
    if (!describe(conv, out, a)) {
        return false;
    }
    if (bias != nullptr) {
        if (bias->type != GGML_TYPE_F32 || !ggml_is_contiguous(bias) || ggml_nelements(bias) != a.OC) {
            return false;
        }
        a.bias = (const float *) bias->data;
    }
    if (residual != nullptr) {
        if (residual->type != GGML_TYPE_F32 || !ggml_is_contiguous(residual) || !ggml_are_same_shape(residual, out)) {
            return false;
        }
        a.residual = (const float *) residual->data;
    }
    return run(ctx, a);
}
