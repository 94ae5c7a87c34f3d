// The int8 mat-vec's per-unit arithmetic (lowbit-cuda-ops.cu: mvq_weights, mvq_dot), run on the
// CPU through its host versions, against the scalar codec of cpp/lowbit. Needs no GPU:
//
//   nvcc -std=c++17 -O2 -arch=sm_80 -Icpp/lowbit -Icpp/cuda tests/cuda/lowbit_matvec_decode_check.cu \
//        lowbit-codec.o lowbit-cuda-gemm.o -o lowbit_matvec_decode_check
//
// For each type, 20000 random units: the unit's file bytes at every even offset from an aligned
// word (the realignment), random codes and scales (PTQ1_0: valid blocks and, half the time,
// arbitrary bytes, which the base-3 identity must decode as the codec does), DiT-like and tiny
// activations, all-zero groups. The activations are rounded and laid out here from the layout's
// description (not with the kernel's code); the reference is the float64 sum of the codec's
// weights times those rounded values, and the unit must match it to 2e-7 of the sum of the
// products' magnitudes (f32 sums of exact integer products).

#include "lowbit-cuda-ops.cu"
#include "matvec-rounding.h"

#include <cmath>
#include <cstdio>

using namespace bonsai_cuda;

static uint64_t g_state = 88172645463325252ull;

static uint64_t next_random() {  // xorshift64
    g_state ^= g_state << 13;
    g_state ^= g_state >> 7;
    g_state ^= g_state << 17;
    return g_state;
}

static float normal() {
    const double u = (next_random() >> 11) * 0x1p-53 + 1e-300, v = (next_random() >> 11) * 0x1p-53;
    return (float) (std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * v));
}

static void dequantize_unit(int type, const uint8_t * unit, float * w) {
    switch (type) {
        case BONSAI_TYPE_Q1_0:   bonsai_dequantize_row_q1_0((const block_q1_0 *) unit, w, 128); break;
        case BONSAI_TYPE_Q2_0:   bonsai_dequantize_row_q2_0((const block_q2_0 *) unit, w, 128); break;
        case BONSAI_TYPE_PQ2_0:  bonsai_dequantize_row_pq2_0((const block_pq2_0 *) unit, w, 128); break;
        case BONSAI_TYPE_PTQ1_0: bonsai_dequantize_row_ptq1_0((const block_ptq1_0 *) unit, w, 128); break;
    }
}

// Where element e of a chunk's activations sits in its 144 bytes (the layout comment of the
// int8 mat-vec).
static int layout_position(int type, int e) {
    if (type == BONSAI_TYPE_PTQ1_0) {
        return e;
    }
    if (type == BONSAI_TYPE_Q1_0) {  // code word i = e / 32, byte b, bit k
        const int i = e / 32, b = e % 32 / 8, k = e % 8;
        return 32 * i + 4 * k + b;
    }
    const int i = e / 16, b = e % 16 / 4, k = e % 4;  // code word i, byte b, bits 2k
    return 16 * i + 4 * k + b;
}

// Worst error of one unit against the reference, relative to the sum of |products|.
template <int TYPE> static double check_unit(const uint8_t * unit, const float * x) {
    constexpr int bytes = mvq_geometry<TYPE>::unit;
    int8_t   q[128];
    float    scale[4];
    uint32_t group[4];
    for (int g = 0; g < 4; g++) {
        scale[g] = matvec_round_group(x + 32 * g, q + 32 * g);
        uint32_t bits;
        memcpy(&bits, &scale[g], 4);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            sum += q[32 * g + j];
        }
        group[g] = bits | (uint32_t) (sum & 0xffff);
    }
    alignas(16) uint8_t act[MVQ_CHUNK] = {0};
    for (int e = 0; e < 128; e++) {
        act[layout_position(TYPE, e)] = (uint8_t) q[e];
    }
    memcpy(act + 128, group, sizeof(group));

    float w[128];
    dequantize_unit(TYPE, unit, w);
    double ref = 0.0, magnitude = 0.0;
    for (int e = 0; e < 128; e++) {
        const double product = (double) w[e] * scale[e / 32] * q[e];
        ref += product;
        magnitude += std::fabs(product);
    }

    double worst = 0.0;
    for (int offset = 0; offset < 16; offset += 2) {
        alignas(16) uint8_t stage[64];
        for (auto & byte : stage) {
            byte = (uint8_t) next_random();  // whatever surrounds the unit in a stage
        }
        memcpy(stage + offset, unit, bytes);
        const mvq_weights<TYPE> wt((const uint32_t *) (stage + (offset & ~3)), offset & 3);
        const double            got = mvq_dot<TYPE>(wt, act);
        worst = std::max(worst, magnitude > 0 ? std::fabs(got - ref) / magnitude : std::fabs(got));
    }
    return worst;
}

template <int TYPE> static bool check_type(const char * name) {
    constexpr int bytes = mvq_geometry<TYPE>::unit;
    double worst = 0.0;
    for (int round = 0; round < 20000; round++) {
        uint8_t unit[bytes];
        for (auto & byte : unit) {
            byte = (uint8_t) next_random();
        }
        if constexpr (TYPE == BONSAI_TYPE_PTQ1_0) {
            if (round % 2 == 0) {  // a block of the reference quantizer
                float values[128];
                for (auto & v : values) {
                    v = 0.01f * (float) ((int) (next_random() % 3) - 1);
                }
                values[next_random() % 128] = 0.01f;
                bonsai_quantize_row_ptq1_0_ref(values, (block_ptq1_0 *) unit, 128);
            }
            const bonsai_half d = bonsai_float_to_half(0.001f * (float) (1 + next_random() % 20));
            memcpy(unit + 26, &d, 2);
        } else {
            const int blocks = TYPE == BONSAI_TYPE_Q2_0 ? 2 : 1;
            for (int block = 0; block < blocks; block++) {
                const float         s = 0.001f * (float) (1 + next_random() % 20) * (next_random() % 4 ? 1.0f : -1.0f);
                const bonsai_half d = bonsai_float_to_half(s);
                memcpy(unit + 18 * block, &d, 2);
            }
        }
        float x[128];
        const float size = round % 5 == 0 ? 1e-3f : 1.0f;
        for (int e = 0; e < 128; e++) {
            x[e] = size * normal() * (e % 17 == 0 ? 8.0f : 1.0f);
        }
        if (round % 7 == 0) {
            for (int e = 32; e < 64; e++) {
                x[e] = 0.0f;
            }
        }
        worst = std::max(worst, check_unit<TYPE>(unit, x));
    }
    const bool ok = worst < 2e-7;
    printf("  %-7s worst error / sum |products| %.2e %s\n", name, worst, ok ? "ok" : "FAIL");
    return ok;
}

int main() {
    printf("int8 mat-vec unit arithmetic against the codec (CPU)\n");
    bool ok = true;
    ok &= check_type<BONSAI_TYPE_Q1_0>("q1_0");
    ok &= check_type<BONSAI_TYPE_Q2_0>("q2_0");
    ok &= check_type<BONSAI_TYPE_PQ2_0>("pq2_0");
    ok &= check_type<BONSAI_TYPE_PTQ1_0>("ptq1_0");
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
