// The int8 mat-vec's arithmetic (lowbit-cuda-ops.cu). On the CPU, through the host versions:
// the per-unit products (mvq_weights, mvq_dot) against the scalar codec of cpp/lowbit. On the
// GPU, when there is one: the activation rounding (mvq_quantize) byte for byte against the
// rounding written again from its description (matvec-rounding.h) and laid out here, and its
// branch-free divisions against the host's IEEE ones.
//
//   nvcc -std=c++17 -O2 -arch=sm_80 -Icpp/lowbit -Icpp/cuda tests/cuda/lowbit_matvec_decode_check.cu \
//        lowbit-codec.o lowbit-cuda-gemm.o -o lowbit_matvec_decode_check
//
// Products: for each type, 20000 random units: the unit's file bytes at every even offset from
// an aligned word (the realignment), random codes and scales (PTQ1_0: valid blocks and, half
// the time, arbitrary bytes, which the base-3 identity must decode as the codec does), DiT-like
// and tiny activations, all-zero groups. The activations are rounded and laid out here from the
// layout's description (not with the kernel's code); the reference is the float64 sum of the
// codec's weights times those rounded values, and the unit must match it to 2e-7 of the sum of
// the products' magnitudes (f32 sums of exact integer products).

#include "lowbit-cuda-ops.cu"
#include "cuda-ok.h"
#include "matvec-rounding.h"

#include <cmath>
#include <cstdio>
#include <vector>

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

// ---- GPU: the activation rounding ----------------------------------------------------------

// One warp rounds `rounds` rounds of NB batches of 32 pieces (8 elements each) of x into
// chunks laid end to end (MVQ_CHUNK bytes each); the last batch of the last round is marked
// off when `skip_last`, and must leave its bytes as they were.
template <int TYPE, int NB>
static __global__ void quantize_kernel(const float * x, uint8_t * out, int rounds, bool skip_last) {
    const int lane = threadIdx.x;
    for (int r = 0; r < rounds; r++) {
        float     v[NB][8];
        int       piece[NB];
        bool      on[NB];
        uint8_t * chunk[NB];
        for (int b = 0; b < NB; b++) {
            piece[b] = (r * NB + b) * 32 + lane;
            on[b]    = !(skip_last && r == rounds - 1 && b == NB - 1);
            chunk[b] = out + piece[b] / 16 * MVQ_CHUNK;
            for (int e = 0; e < 8; e++) {
                v[b][e] = x[8 * piece[b] + e];
            }
        }
        mvq_quantize<TYPE, NB>(v, piece, on, chunk);
    }
}

static __global__ void division_kernel(const float * a, float * quotient, float * reciprocal, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        quotient[i]   = mvq_div127(a[i]);
        reciprocal[i] = mvq_reciprocal(a[i]);
    }
}

// The activations of the rounding test: DiT-like and tiny groups, zero groups, groups whose
// products land exactly on .5 (ties: half to even), groups of one large value.
static std::vector<float> rounding_inputs(int groups) {
    std::vector<float> x(32 * (size_t) groups);
    for (int g = 0; g < groups; g++) {
        float * y = x.data() + 32 * g;
        switch (g % 6) {
            case 0: for (int j = 0; j < 32; j++) y[j] = normal(); break;
            case 1: for (int j = 0; j < 32; j++) y[j] = 1e-3f * normal() * (j % 11 == 0 ? 20.0f : 1.0f); break;
            case 2: for (int j = 0; j < 32; j++) y[j] = 0.0f; break;
            case 3:  // scale 2^-3 exactly (amax = 127 / 8): y / scale = k + 0.5 for j > 0
                y[0] = 127.0f / 8;
                for (int j = 1; j < 32; j++) y[j] = ((float) ((int) (next_random() % 200) - 100) + 0.5f) / 8;
                break;
            case 4: for (int j = 0; j < 32; j++) y[j] = j == (int) (next_random() % 32) ? 300.0f : 0.01f * normal(); break;
            default: for (int j = 0; j < 32; j++) y[j] = 50.0f * normal(); break;
        }
    }
    return x;
}

template <int TYPE, int NB> static bool check_rounding(const char * name, bool skip_last) {
    constexpr int rounds = 3, pieces = rounds * NB * 32, chunks = pieces / 16;
    const std::vector<float> x = rounding_inputs(pieces / 4);
    // expected bytes: the host's rounding, laid out from the layout's description
    std::vector<uint8_t> want((size_t) chunks * MVQ_CHUNK, 0xab);
    const int            first_off = skip_last ? (pieces - 32) / 16 : chunks;  // the chunks left alone
    for (int c = 0; c < first_off; c++) {
        uint8_t * chunk = want.data() + (size_t) c * MVQ_CHUNK;
        for (int g = 0; g < 4; g++) {
            int8_t      q[32];
            const float scale = matvec_round_group(x.data() + 128 * c + 32 * g, q);
            uint32_t    word;
            memcpy(&word, &scale, 4);
            int sum = 0;
            for (int j = 0; j < 32; j++) {
                chunk[layout_position(TYPE, 32 * g + j)] = (uint8_t) q[j];
                sum += q[j];
            }
            word |= (uint32_t) (sum & 0xffff);
            memcpy(chunk + 128 + 4 * g, &word, 4);
        }
    }
    float *   x_dev   = nullptr;
    uint8_t * out_dev = nullptr;
    CUDA_OK(cudaMalloc(&x_dev, x.size() * sizeof(float)));
    CUDA_OK(cudaMalloc(&out_dev, want.size()));
    CUDA_OK(cudaMemcpy(x_dev, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out_dev, 0xab, want.size()));
    quantize_kernel<TYPE, NB><<<1, 32>>>(x_dev, out_dev, rounds, skip_last);
    CUDA_OK(cudaGetLastError());
    std::vector<uint8_t> got(want.size());
    CUDA_OK(cudaMemcpy(got.data(), out_dev, got.size(), cudaMemcpyDeviceToHost));
    cudaFree(x_dev);
    cudaFree(out_dev);
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); i++) {
        bad += got[i] != want[i];
    }
    printf("  %-7s rounding, %d batch%s at once%s: %s (%zu of %zu bytes differ)\n", name, NB, NB > 1 ? "es" : "",
           skip_last ? ", last one off" : "", bad == 0 ? "exact" : "MISMATCH", bad, got.size());
    return bad == 0;
}

template <int TYPE> static bool check_rounding_type(const char * name) {
    bool ok = check_rounding<TYPE, 1>(name, false);
    ok &= check_rounding<TYPE, 2>(name, true);
    ok &= check_rounding<TYPE, 3>(name, false);
    ok &= check_rounding<TYPE, 4>(name, true);
    return ok;
}

// mvq_div127 for every float of [1, 4) (the quotients of other normal binades are these scaled
// by a power of two) and mvq_reciprocal for every normal bf16 value up to 2^126 (whose
// reciprocal is normal; the scales stay below 2^122), against a / 127.0f and 1.0f / s.
static bool check_divisions() {
    std::vector<float> a;
    for (uint32_t bits = 0x3f800000u; bits < 0x40800000u; bits++) {
        float f;
        memcpy(&f, &bits, 4);
        a.push_back(f);
    }
    const size_t quotients = a.size();
    for (uint32_t bits = 0x00800000u; bits <= 0x7e800000u; bits += 0x10000u) {
        float f;
        memcpy(&f, &bits, 4);
        a.push_back(f);
    }
    const int n = (int) a.size();
    float *   dev = nullptr;
    CUDA_OK(cudaMalloc(&dev, 3 * a.size() * sizeof(float)));
    CUDA_OK(cudaMemcpy(dev, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
    division_kernel<<<(n + 255) / 256, 256>>>(dev, dev + n, dev + 2 * (size_t) n, n);
    CUDA_OK(cudaGetLastError());
    std::vector<float> quotient(a.size()), reciprocal(a.size());
    CUDA_OK(cudaMemcpy(quotient.data(), dev + n, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(reciprocal.data(), dev + 2 * (size_t) n, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
    cudaFree(dev);
    size_t bad_q = 0, bad_r = 0;
    for (size_t i = 0; i < quotients; i++) {
        bad_q += quotient[i] != a[i] / 127.0f;
    }
    for (size_t i = quotients; i < a.size(); i++) {
        bad_r += reciprocal[i] != 1.0f / a[i];
    }
    printf("  amax / 127 for all %zu floats of [1, 4): %s\n", quotients, bad_q ? "MISMATCH" : "exact");
    printf("  1 / scale for all %zu normal bf16 scales up to 2^126: %s (%zu differ)\n", a.size() - quotients,
           bad_r ? "MISMATCH" : "exact", bad_r);
    return bad_q == 0 && bad_r == 0;
}

// The host version of mvq_div127 (the same operations) for every float of [1, 4).
static bool check_div127_host() {
    size_t bad = 0, n = 0;
    for (uint32_t bits = 0x3f800000u; bits < 0x40800000u; bits++, n++) {
        float a;
        memcpy(&a, &bits, 4);
        bad += mvq_div127(a) != a / 127.0f;
    }
    printf("  amax / 127 without a division, all %zu floats of [1, 4): %s\n", n, bad ? "MISMATCH" : "exact");
    return bad == 0;
}

int main() {
    printf("int8 mat-vec unit arithmetic against the codec (CPU)\n");
    bool ok = true;
    ok &= check_type<BONSAI_TYPE_Q1_0>("q1_0");
    ok &= check_type<BONSAI_TYPE_Q2_0>("q2_0");
    ok &= check_type<BONSAI_TYPE_PQ2_0>("pq2_0");
    ok &= check_type<BONSAI_TYPE_PTQ1_0>("ptq1_0");
    ok &= check_div127_host();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("activation rounding on the GPU: skipped (no GPU)\n");
    } else {
        printf("activation rounding on the GPU against the rounding's description\n");
        ok &= check_divisions();
        ok &= check_rounding_type<BONSAI_TYPE_Q1_0>("q1_0");
        ok &= check_rounding_type<BONSAI_TYPE_Q2_0>("q2_0");
        ok &= check_rounding_type<BONSAI_TYPE_PQ2_0>("pq2_0");
        ok &= check_rounding_type<BONSAI_TYPE_PTQ1_0>("ptq1_0");
    }
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
