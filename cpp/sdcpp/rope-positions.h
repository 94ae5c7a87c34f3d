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
    // I32 [L * n_head * n_axes], the same repeated for every head (at (t * n_head + h) * n_axes + a):
    // the rotation applied where the heads sit between the tokens' values, before any permutation
    // (flash_attention_with_rope). Null where that costs more than it saves (the CPU, whose ROPE
    // computes its sines per position).
    ggml_tensor* positions_per_head = nullptr;
    int n_axes                      = 0;
    int axis_dim                    = 0;  // head dimensions per axis
    float theta                     = 0.f;
};

// positions[t * n_axes + a] = ids[t][a]. False when the ROPE op cannot reproduce the table:
// axes of different sizes, an odd axis size, a position that is not an integer (or beyond
// 2^24, where floats stop being exact), or BONSAI_SD_UPSTREAM_ROPE set in the environment
// (upstream's table path, for before/after measurements).
bool rope_positions_from_ids(const std::vector<std::vector<float>>& ids,
                             const std::vector<int>& axes_dim,
                             std::vector<int32_t>& positions);

// The per-head positions from the per-token ones.
std::vector<int32_t> rope_positions_per_head(const std::vector<int32_t>& positions, int n_axes, int n_head);

// Whether positions_per_head pays on this backend: not on the CPU, unless
// BONSAI_SD_ROPE_PER_HEAD=1 (tests); never with BONSAI_SD_ROPE_PER_HEAD=0.
bool rope_per_head_wanted(ggml_backend_t backend);

// Whether the backend runs the strided in-place ROPE node apply_rope_positions builds.
bool rope_positions_supported(ggml_backend_t backend);

// x: [d_head, n_head, L, N] (sd.cpp's [N, L, n_head, d_head]), any strides. Returns the rotated
// x as [d_head, L, n_head * N], the layout Rope::apply_rope returns.
ggml_tensor* apply_rope_positions(ggml_context* ctx, ggml_tensor* x, const RopePositions& rope);

// FLUX's attention without a layout copy: q and k ([d_head, n_head, L, 1], after their norms) are
// rotated in place with positions_per_head, k and v converted to F16 as they are, and one
// FLASH_ATTN_EXT reads all three through permuted views. Returns [n_head * d_head, L, 1], or null
// (nothing added to the graph's result) when that does not apply: no positions_per_head, a batch,
// or a backend without that node for these shapes.
ggml_tensor* flash_attention_with_rope(ggml_context* ctx,
                                       ggml_backend_t backend,
                                       ggml_tensor* q,
                                       ggml_tensor* k,
                                       ggml_tensor* v,
                                       const RopePositions& rope);

}  // namespace bonsai

#endif
