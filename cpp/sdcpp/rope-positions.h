// FLUX rotary position embedding through ggml's ROPE op, from integer positions.
//
// Upstream builds a cos/sin table on the CPU every step (vectors of vectors, 4608 x 256 floats
// at 1024x1024) and applies it with two permuting copies, two repeats, two multiplications and
// an addition: eight full passes over q and over k per attention. When every axis has the same
// number of head dimensions and every position is an integer, the same rotation is one ggml
// ROPE node ("normal" mode: adjacent pairs, as FLUX's interleaved layout) run in place on the
// [d_head, L, n_head] copy the attention needs anyway: a head's d_head values are n_axes runs of
// axis_dim, and their runs follow each other at a uniform stride, so a view with
// ne = [axis_dim, n_head, L * n_axes] gives every (token, axis) run its own ROPE "position".
#ifndef BONSAI_SDCPP_ROPE_POSITIONS_H
#define BONSAI_SDCPP_ROPE_POSITIONS_H

#include <cstdint>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"

namespace bonsai {

struct RopePositions {
    ggml_tensor* positions = nullptr;  // I32 [L * n_axes]: token t's position on axis a at t * n_axes + a
    int n_axes             = 0;
    int axis_dim           = 0;  // head dimensions per axis
    float theta            = 0.f;
};

// positions[t * n_axes + a] = ids[t][a]. False when the ROPE op cannot reproduce the table:
// axes of different sizes, an odd axis size, a position that is not an integer (or beyond
// 2^24, where floats stop being exact), or BONSAI_SD_UPSTREAM_ROPE set in the environment
// (upstream's table path, for before/after measurements).
bool rope_positions_from_ids(const std::vector<std::vector<float>>& ids,
                             const std::vector<int>& axes_dim,
                             std::vector<int32_t>& positions);

// Whether the backend runs the strided in-place ROPE node apply_rope_positions builds.
bool rope_positions_supported(ggml_backend_t backend);

// x: [d_head, n_head, L, N] (sd.cpp's [N, L, n_head, d_head]), any strides. Returns the rotated
// x as [d_head, L, n_head * N], the layout Rope::apply_rope returns.
ggml_tensor* apply_rope_positions(ggml_context* ctx, ggml_tensor* x, const RopePositions& rope);

}  // namespace bonsai

#endif
