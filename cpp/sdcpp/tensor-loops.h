// The element loops behind sd.cpp's broadcasting tensor arithmetic on the host (src/tensor.hpp:
// `a * b`, `a += b`, masked_fill_ ... where the shapes differ). Upstream found each element's two
// source offsets by dividing its flat index by every output stride: about 60 ms for the prompt
// weighting of FLUX.2 [klein]'s 7680 x 512 text embeddings (a [1, 512] weight row times the
// [7680, 512] states) on this project's 2-core machine, on every image. Here the offsets
// advance like an odometer: dimension 0 in a plain inner loop, the others carried. The visiting
// order (flat index 0, 1, 2, ...) and the offsets are the same as upstream's.
#ifndef BONSAI_SDCPP_TENSOR_LOOPS_H
#define BONSAI_SDCPP_TENSOR_LOOPS_H

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bonsai {

// Calls fn(flat, lhs_offset, rhs_offset) for every element of out_shape in flat order (dimension
// 0 fastest). An operand's shape may have fewer dimensions than out_shape (the missing ones are
// 1); a dimension of size 1 in an operand is broadcast (it contributes no offset).
template <typename F>
inline void for_each_broadcast_offset(const std::vector<int64_t> & out_shape,
                                      const std::vector<int64_t> & lhs_shape,
                                      const std::vector<int64_t> & lhs_strides,
                                      const std::vector<int64_t> & rhs_shape,
                                      const std::vector<int64_t> & rhs_strides,
                                      F && fn) {
    const size_t ndim = out_shape.size();
    int64_t numel     = 1;
    for (int64_t extent : out_shape) {
        numel *= extent;
    }
    if (numel <= 0) {
        return;
    }
    if (ndim == 0) {
        fn(int64_t{0}, int64_t{0}, int64_t{0});
        return;
    }

    // The offset step of each operand along each output dimension: 0 where it is broadcast.
    std::vector<int64_t> lhs_step(ndim, 0), rhs_step(ndim, 0);
    for (size_t d = 0; d < ndim; ++d) {
        if (d < lhs_shape.size() && lhs_shape[d] != 1) {
            lhs_step[d] = lhs_strides[d];
        }
        if (d < rhs_shape.size() && rhs_shape[d] != 1) {
            rhs_step[d] = rhs_strides[d];
        }
    }

    const int64_t row = out_shape[0];
    std::vector<int64_t> coord(ndim, 0);
    int64_t lhs_base = 0, rhs_base = 0;
    for (int64_t flat = 0; flat < numel; flat += row) {
        for (int64_t i = 0; i < row; ++i) {
            fn(flat + i, lhs_base + i * lhs_step[0], rhs_base + i * rhs_step[0]);
        }
        for (size_t d = 1; d < ndim; ++d) {  // carry into the next row
            lhs_base += lhs_step[d];
            rhs_base += rhs_step[d];
            if (++coord[d] < out_shape[d]) {
                break;
            }
            lhs_base -= lhs_step[d] * out_shape[d];
            rhs_base -= rhs_step[d] * out_shape[d];
            coord[d] = 0;
        }
    }
}

// Element-wise passes over n contiguous floats for the sampler's latent arithmetic: one operation
// per pass, as sd.cpp's tensor operators do it (so every value is rounded as before), without
// their bounds-checked indexing, so that the compiler vectorizes them.
inline void subtract_from(const float * x, float * d, int64_t n) {  // d = x - d
    for (int64_t i = 0; i < n; ++i) {
        d[i] = x[i] - d[i];
    }
}

inline void divide(float * d, float s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        d[i] /= s;
    }
}

inline void multiply(float * d, float s, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        d[i] *= s;
    }
}

inline void add(float * d, const float * x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        d[i] += x[i];
    }
}

}  // namespace bonsai

#endif  // BONSAI_SDCPP_TENSOR_LOOPS_H
