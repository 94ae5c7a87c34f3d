// The int8 mat-vec's activation rounding (cpp/cuda/lowbit-cuda-ops.cu), written again from its
// description for the tests that need the kernel's numbers: per group of 32 elements of K,
// scale = amax / 127 rounded up to bf16 (the float's bits kept whole), q = round-half-even(x /
// scale), with 1 / scale taken once.
#ifndef BONSAI_TESTS_MATVEC_ROUNDING_H
#define BONSAI_TESTS_MATVEC_ROUNDING_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Rounds x[0..32) into q and returns the group's scale.
static inline float matvec_round_group(const float * x, int8_t * q) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        amax = std::max(amax, std::fabs(x[j]));
    }
    const float plain = amax / 127.0f;
    uint32_t bits;
    memcpy(&bits, &plain, 4);
    bits = (bits + 0xffffu) & 0xffff0000u;
    float scale;
    memcpy(&scale, &bits, 4);
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = (int8_t) std::lrint(x[j] * inverse);
    }
    return scale;
}

#endif  // BONSAI_TESTS_MATVEC_ROUNDING_H
