#include "rope-positions.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "ggml-cpu.h"

namespace bonsai {

bool rope_positions_from_ids(const std::vector<std::vector<float>>& ids,
                             const std::vector<int>& axes_dim,
                             std::vector<int32_t>& positions) {
    const char* upstream = std::getenv("BONSAI_SD_UPSTREAM_ROPE");
    if (upstream != nullptr && upstream[0] != '\0' && upstream[0] != '0') {
        return false;
    }
    if (axes_dim.empty() || axes_dim[0] <= 0 || axes_dim[0] % 2 != 0) {
        return false;
    }
    for (int d : axes_dim) {
        if (d != axes_dim[0]) {
            return false;
        }
    }
    const size_t n_axes = axes_dim.size();
    positions.assign(ids.size() * n_axes, 0);
    for (size_t t = 0; t < ids.size(); ++t) {
        if (ids[t].size() < n_axes) {
            return false;
        }
        for (size_t a = 0; a < n_axes; ++a) {
            const float p = ids[t][a];
            if (!(std::fabs(p) <= 16777216.f) || p != std::nearbyint(p)) {
                return false;
            }
            positions[t * n_axes + a] = static_cast<int32_t>(p);
        }
    }
    return true;
}

// ROPE in place over `runs`, a view of x whose rows are runs of axis_dim values, each at its own
// position. Returns x's bytes again, as a view of the ROPE node, so whatever reads it runs after it.
static ggml_tensor* rotate_runs(ggml_context* ctx, ggml_tensor* x, ggml_tensor* runs, ggml_tensor* positions,
                                const RopePositions& rope) {
    ggml_tensor* rotated = ggml_rope_ext_inplace(ctx, runs, positions, nullptr, rope.axis_dim,
                                                 0 /* normal: adjacent pairs */, 0, rope.theta,
                                                 1.f, 0.f, 1.f, 0.f, 0.f);
    return ggml_view_3d(ctx, rotated, x->ne[0], x->ne[1], x->ne[2], x->nb[1], x->nb[2], 0);
}

// x laid out [d_head, L, n_head * N] (contiguous): ne = [axis_dim, heads, L * n_axes] with the
// heads at their stride and the (token, axis) runs at axis_dim apart.
static ggml_tensor* rope_in_place(ggml_context* ctx, ggml_tensor* x, const RopePositions& rope) {
    ggml_tensor* runs = ggml_view_3d(ctx, x, rope.axis_dim, x->ne[2], x->ne[1] * rope.n_axes, x->nb[2],
                                     static_cast<size_t>(rope.axis_dim) * x->nb[0], 0);
    return rotate_runs(ctx, x, runs, rope.positions, rope);
}

std::vector<int32_t> rope_positions_per_head(const std::vector<int32_t>& positions, int n_axes, int n_head) {
    const size_t n_tokens = positions.size() / n_axes;
    std::vector<int32_t> per_head(positions.size() * n_head);
    for (size_t t = 0; t < n_tokens; ++t) {
        for (int h = 0; h < n_head; ++h) {
            std::memcpy(&per_head[(t * n_head + h) * n_axes], &positions[t * n_axes], n_axes * sizeof(int32_t));
        }
    }
    return per_head;
}

bool rope_per_head_wanted(ggml_backend_t backend) {
    const char* setting = std::getenv("BONSAI_SD_ROPE_PER_HEAD");
    if (setting != nullptr && setting[0] != '\0') {
        return setting[0] != '0';
    }
    return !ggml_backend_is_cpu(backend);
}

// x laid out [d_head, n_head, L] (contiguous): every run of axis_dim values is one row with its
// own position, ne = [axis_dim, 1, L * n_head * n_axes].
static ggml_tensor* rope_per_head_in_place(ggml_context* ctx, ggml_tensor* x, const RopePositions& rope) {
    const size_t run  = static_cast<size_t>(rope.axis_dim) * x->nb[0];
    ggml_tensor* runs = ggml_view_3d(ctx, x, rope.axis_dim, 1, ggml_nelements(x) / rope.axis_dim, run, run, 0);
    return rotate_runs(ctx, x, runs, rope.positions_per_head, rope);
}

ggml_tensor* flash_attention_with_rope(ggml_context* ctx,
                                       ggml_backend_t backend,
                                       ggml_tensor* q,
                                       ggml_tensor* k,
                                       ggml_tensor* v,
                                       const RopePositions& rope) {
    const int64_t d_head = q->ne[0];
    const int64_t n_head = q->ne[1];
    const int64_t L      = q->ne[2];
    if (rope.positions_per_head == nullptr || q->ne[3] != 1 ||
        rope.positions_per_head->ne[0] != L * n_head * rope.n_axes || !ggml_are_same_shape(q, k) ||
        !ggml_are_same_shape(q, v)) {
        return nullptr;
    }
    q = rope_per_head_in_place(ctx, ggml_is_contiguous(q) ? q : ggml_cont(ctx, q), rope);
    k = rope_per_head_in_place(ctx, ggml_is_contiguous(k) ? k : ggml_cont(ctx, k), rope);
    k = ggml_cast(ctx, k, GGML_TYPE_F16);
    v = ggml_cast(ctx, v, GGML_TYPE_F16);
    // [d_head, L, n_head] views; the result is [d_head, n_head, L]
    ggml_tensor* out = ggml_flash_attn_ext(ctx, ggml_permute(ctx, q, 0, 2, 1, 3), ggml_permute(ctx, k, 0, 2, 1, 3),
                                           ggml_permute(ctx, v, 0, 2, 1, 3), nullptr,
                                           1.0f / std::sqrt(static_cast<float>(d_head)), 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    if (!ggml_backend_supports_op(backend, out)) {
        return nullptr;
    }
    return ggml_reshape_3d(ctx, out, d_head * n_head, L, 1);
}

bool rope_positions_supported(ggml_backend_t backend) {
    ggml_init_params params = {8 * ggml_tensor_overhead(), nullptr, true};
    ggml_context* ctx       = ggml_init(params);
    if (ctx == nullptr) {
        return false;
    }
    RopePositions rope;
    rope.n_axes       = 2;
    rope.axis_dim     = 4;
    rope.theta        = 10000.f;
    rope.positions    = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 3 * rope.n_axes);
    ggml_tensor* x    = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, 8, 3, 2);  // [d_head, L, heads]
    ggml_tensor* out  = rope_in_place(ctx, x, rope);
    const bool result = ggml_backend_supports_op(backend, out->src[0]);
    ggml_free(ctx);
    return result;
}

ggml_tensor* apply_rope_positions(ggml_context* ctx, ggml_tensor* x, const RopePositions& rope) {
    const int64_t d_head = x->ne[0];
    const int64_t n_head = x->ne[1];
    const int64_t L      = x->ne[2];
    const int64_t N      = x->ne[3];
    GGML_ASSERT(d_head == static_cast<int64_t>(rope.n_axes) * rope.axis_dim);
    GGML_ASSERT(rope.positions->ne[0] == L * rope.n_axes);
    x = ggml_cont(ctx, ggml_permute(ctx, x, 0, 2, 1, 3));  // [d_head, L, n_head, N]
    x = ggml_reshape_3d(ctx, x, d_head, L, n_head * N);
    return rope_in_place(ctx, x, rope);
}

}  // namespace bonsai
