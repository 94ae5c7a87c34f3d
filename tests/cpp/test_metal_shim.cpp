// Tests of cpp/metal/lowbit-metal.h, the per-type code of the Metal kernels, compiled as C++
// through cpp/metal/metal-shim.h. Built and run by tests/test_metal_shim.py (g++, no Metal).
//
// References (none of them is Metal code):
//   - dequantize: the scalar codec cpp/lowbit/lowbit-codec.c, bit for bit: float4x4 output
//     equals bonsai_dequantize_row_<type>; half4x4 output equals that value rounded to half
//     by the codec's own bonsai_float_to_half (exact unless 2*d overflows half);
//   - quantize (cpy f32 -> type): the codec's reference quantizers, byte for byte;
//   - dot and mat-vec: float64 sums of the codec's dequantized weights times the activations,
//     within the rounding bound stated at check_dot32 / check_mul_mv.
//
// Exit status 0 when every check passed; every failure is printed.

#include "lowbit.h"
#include "metal-shim.h"

namespace bm {
#include "lowbit-metal.h"
}

#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstddef>
#include <vector>

static_assert(offsetof(bm::block_ptq1_0, d) == offsetof(block_ptq1_0, d), "PTQ1_0 d offset");
static_assert(offsetof(bm::block_q2_0, qs) == offsetof(block_q2_0, qs), "Q2_0 qs offset");

static int g_failures = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            g_failures++;                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, "\n");                                        \
            if (g_failures > 50) {                                        \
                fprintf(stderr, "too many failures, stopping\n");         \
                exit(1);                                                  \
            }                                                             \
        }                                                                 \
    } while (0)

// ---- deterministic random numbers (splitmix64) ------------------------------------------------

static uint64_t g_rng = 0x6a09e667f3bcc909ull;

static uint64_t rng_next() {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rng_below(int bound) {
    return (int) (rng_next() % (uint64_t) bound);
}

static float rng_uniform(float lo, float hi) {
    return lo + (hi - lo) * (float) ((double) (rng_next() >> 40) / 16777216.0);
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static uint16_t half_bits(half h) {
    uint16_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
}

// unit roundoff of float, and the smallest normal float (slack for all-tiny operands)
static const double U = FLT_EPSILON / 2;
static const double TINY = FLT_MIN;

// ---- the types --------------------------------------------------------------------------------

typedef void (*ref_dequantize_fn)(const void * x, float * y, int64_t k);
typedef void (*ref_quantize_fn)(const float * x, void * y, int64_t k);

struct type_info {
    const char *      name;
    int               qk;
    size_t            block_bytes;
    size_t            d_offset;
    ref_dequantize_fn ref_dequantize;
    ref_quantize_fn   ref_quantize;
};

#define REF_FNS(T)                                                                                  \
    [](const void * x, float * y, int64_t k) { bonsai_dequantize_row_##T((const block_##T *) x, y, k); }, \
    [](const float * x, void * y, int64_t k) { bonsai_quantize_row_##T##_ref(x, (block_##T *) y, k); }

static const type_info TYPE_Q1_0   = {"q1_0",   QK1_0,    sizeof(block_q1_0),   offsetof(block_q1_0, d),   REF_FNS(q1_0)};
static const type_info TYPE_Q2_0   = {"q2_0",   QK2_0,    sizeof(block_q2_0),   offsetof(block_q2_0, d),   REF_FNS(q2_0)};
static const type_info TYPE_PQ2_0  = {"pq2_0",  QKPQ2_0,  sizeof(block_pq2_0),  offsetof(block_pq2_0, d),  REF_FNS(pq2_0)};
static const type_info TYPE_PTQ1_0 = {"ptq1_0", QKPTQ1_0, sizeof(block_ptq1_0), offsetof(block_ptq1_0, d), REF_FNS(ptq1_0)};

// Scales every block gets in turn: ordinary values of both signs, zero and negative zero, the
// smallest subnormal, the largest finite half (2*d overflows half), and a value where 2*d
// just fits.
static const uint16_t SPECIAL_D[] = {0x3c00, 0xb800, 0x0000, 0x8000, 0x0001, 0x7bff, 0xfbff, 0x77ff};

// n random blocks: random payload bytes, d from SPECIAL_D for the first blocks, then random
// finite halves. Any byte is a valid PTQ1_0 byte for the decoders (both read it the same way).
static std::vector<uint8_t> random_blocks(const type_info & t, int n) {
    std::vector<uint8_t> bytes(t.block_bytes * (size_t) n);
    for (auto & b : bytes) {
        b = (uint8_t) rng_next();
    }
    const int n_special = (int) (sizeof(SPECIAL_D) / sizeof(SPECIAL_D[0]));
    for (int i = 0; i < n; i++) {
        uint16_t d;
        if (i < n_special) {
            d = SPECIAL_D[i];
        } else {
            do {
                d = (uint16_t) rng_next();
            } while ((d & 0x7c00) == 0x7c00);  // finite only, as the loader validates
        }
        memcpy(bytes.data() + (size_t) i * t.block_bytes + t.d_offset, &d, sizeof(d));
    }
    return bytes;
}

// ---- dequantize: bit-exact with the codec ------------------------------------------------------

template <typename B, void (*DEQ_F32)(const B *, short, float4x4 &), void (*DEQ_F16)(const B *, short, half4x4 &)>
static void check_dequantize(const type_info & t) {
    const int n = 64;
    const std::vector<uint8_t> blocks = random_blocks(t, n);
    std::vector<float> ref((size_t) n * t.qk);
    t.ref_dequantize(blocks.data(), ref.data(), (int64_t) n * t.qk);

    for (int b = 0; b < n; b++) {
        const B * xb = (const B *) (blocks.data() + (size_t) b * t.block_bytes);
        for (short il = 0; il < t.qk / 16; il++) {
            float4x4 got_f;
            half4x4  got_h;
            DEQ_F32(xb, il, got_f);
            DEQ_F16(xb, il, got_h);
            for (int i = 0; i < 16; i++) {
                const float    want   = ref[(size_t) b * t.qk + 16 * il + i];
                const uint16_t want_h = bonsai_float_to_half(want);
                CHECK(float_bits(got_f[i / 4][i % 4]) == float_bits(want),
                      "%s dequantize f32 block %d il %d element %d: got %a want %a", t.name, b, il, i,
                      (double) got_f[i / 4][i % 4], (double) want);
                CHECK(half_bits(got_h[i / 4][i % 4]) == want_h,
                      "%s dequantize f16 block %d il %d element %d: got 0x%04x want 0x%04x", t.name, b, il, i,
                      half_bits(got_h[i / 4][i % 4]), want_h);
            }
        }
    }
}

// ---- one 32-element dot: within a stated rounding bound -------------------------------------
//
// bonsai_dot32 computes d * (sum_i c_i*y_i - sum_i y_i) in float, c_i in 0..3. With S = sum |y_i|
// and u = 2^-24, standard bounds for recursive summation give: the 32 products and their sum
// err by at most 32*u*3S (3*y may round; the running sum has 31 roundings), sum y by 31*u*S,
// the difference by u*4S and the final product by u*4S. So |got - exact| <= 135*u*|d|*S, and
// the check uses 136*u*|d|*S + the smallest normal float (for all-tiny operands).

template <typename B, void (*CODES16)(const B *, short, uchar *)>
static void check_dot32(const type_info & t) {
    const int n = 64;
    const std::vector<uint8_t> blocks = random_blocks(t, n);
    std::vector<float> w((size_t) n * t.qk);
    t.ref_dequantize(blocks.data(), w.data(), (int64_t) n * t.qk);

    double worst = 0.0;
    for (int b = 0; b < n; b++) {
        const B * xb = (const B *) (blocks.data() + (size_t) b * t.block_bytes);
        const float d = (float) xb->d;
        for (short part = 0; part < t.qk / 32; part++) {
            float yl[32];
            float sumy = 0.0f;
            const float scale = (b % 3 == 0) ? 1e-3f : (b % 3 == 1) ? 1.0f : 300.0f;
            for (int i = 0; i < 32; i++) {
                yl[i] = rng_uniform(-scale, scale);
                sumy += yl[i];
            }
            double exact = 0.0, abs_y = 0.0;
            for (int i = 0; i < 32; i++) {
                exact += (double) w[(size_t) b * t.qk + 32 * part + i] * yl[i];
                abs_y += fabs((double) yl[i]);
            }
            const float  got = bm::bonsai_dot32<B, CODES16>(xb, part, yl, sumy);
            const double tol = 136.0 * U * fabs((double) d) * abs_y + TINY;
            const double err = fabs((double) got - exact);
            CHECK(err <= tol, "%s dot32 block %d part %d: got %.9g exact %.9g (error %.3g > bound %.3g)", t.name, b,
                  part, (double) got, exact, err, tol);
            if (tol > 0.0 && err / tol > worst) {
                worst = err / tol;
            }
        }
    }
    printf("%-6s dot32: worst error %.3f of the bound\n", t.name, worst);
}

// ---- mat-vec: the lanes of a simdgroup, emulated one after the other ---------------------------
//
// The kernel adds the 32 lanes' partial sums with simd_sum; here they are added in lane order.
// Bound: each chunk as in check_dot32, plus at most ceil(nchunks / 32) additions per lane and 31
// across lanes, each erring by at most u times the running magnitude <= sum over blocks of
// |d| * sum |y| =: S. So |got - exact| <= (136 + ceil(nchunks / 32) + 32) * u * S.

template <typename B, int QK, void (*CODES16)(const B *, short, uchar *)>
static void check_mul_mv(const type_info & t, int ne00, short nrows, size_t row_padding) {
    const short NR0       = 4;
    const int   nblocks   = ne00 / QK;
    const size_t row_bytes = (size_t) nblocks * t.block_bytes;
    const size_t nb01      = row_bytes + row_padding;  // the kernel must follow nb01, not assume it

    std::vector<uint8_t> rows(nb01 * (size_t) nrows);
    std::vector<float>   w((size_t) nrows * ne00);
    for (short r = 0; r < nrows; r++) {
        const std::vector<uint8_t> blocks = random_blocks(t, nblocks);
        memcpy(rows.data() + r * nb01, blocks.data(), row_bytes);
        t.ref_dequantize(blocks.data(), w.data() + (size_t) r * ne00, ne00);
    }
    std::vector<float> y((size_t) ne00);
    for (auto & v : y) {
        v = rng_uniform(-1.0f, 1.0f);
    }

    float total[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (ushort lane = 0; lane < 32; lane++) {
        float sumf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        bm::bonsai_mul_mv_lane<B, QK, NR0, CODES16>((const char *) rows.data(), nb01, nrows, y.data(), ne00, lane,
                                                    sumf);
        for (short r = 0; r < NR0; r++) {
            if (r < nrows) {
                total[r] += sumf[r];
            } else {
                CHECK(float_bits(sumf[r]) == 0, "%s mul_mv ne00 %d: lane %d touched row %d past nrows %d", t.name,
                      ne00, lane, r, nrows);
            }
        }
    }

    const int nchunks = ne00 / 32;
    for (short r = 0; r < nrows; r++) {
        double exact = 0.0, scale = 0.0;
        for (int j = 0; j < ne00; j++) {
            exact += (double) w[(size_t) r * ne00 + j] * y[j];
        }
        for (int b = 0; b < nblocks; b++) {
            const B * xb = (const B *) (rows.data() + r * nb01 + (size_t) b * t.block_bytes);
            double abs_y = 0.0;
            for (int j = 0; j < QK; j++) {
                abs_y += fabs((double) y[(size_t) b * QK + j]);
            }
            scale += fabs((double) (float) xb->d) * abs_y;
        }
        const double tol = (136.0 + (nchunks + 31) / 32 + 32.0) * U * scale + TINY;
        const double err = fabs((double) total[r] - exact);
        CHECK(err <= tol, "%s mul_mv ne00 %d nrows %d row %d: got %.9g exact %.9g (error %.3g > bound %.3g)",
              t.name, ne00, nrows, r, (double) total[r], exact, err, tol);
    }
}

// ---- quantize (cpy f32 -> type): byte-exact with the reference quantizers ----------------------

enum input_kind { UNIFORM, TERNARY, HALVES, ZEROS, GAUSS_WIDE, N_INPUT_KINDS };

static const char * const INPUT_NAMES[] = {"uniform", "exact ternary", "ties at +-max/2", "zeros", "wide range"};

// One block of inputs of the given kind: exact {-s, 0, +s}, values at x = +-max/2 (where
// round() meets a tie, up to the reciprocal's rounding), signed zeros, or magnitudes 2^-20..2^12.
static void make_input(input_kind kind, float * x, int qk) {
    const float s = (float) (half) rng_uniform(0.01f, 4.0f);  // a half-representable scale
    for (int j = 0; j < qk; j++) {
        switch (kind) {
            case UNIFORM:    x[j] = rng_uniform(-1.0f, 1.0f); break;
            case TERNARY:    x[j] = s * (float) (rng_below(3) - 1); break;
            case HALVES:     x[j] = s * 0.5f * (float) (rng_below(5) - 2); break;
            case ZEROS:      x[j] = (rng_below(2) ? -0.0f : 0.0f); break;
            case GAUSS_WIDE: x[j] = ldexpf(rng_uniform(-1.0f, 1.0f), rng_below(33) - 20); break;
            default:         x[j] = 0.0f; break;
        }
    }
}

template <typename B, void (*QUANT)(const float *, B &)>
static void check_quantize(const type_info & t) {
    std::vector<float>   x((size_t) t.qk);
    std::vector<uint8_t> want(t.block_bytes);
    for (int kind = 0; kind < N_INPUT_KINDS; kind++) {
        for (int rep = 0; rep < 200; rep++) {
            make_input((input_kind) kind, x.data(), t.qk);
            t.ref_quantize(x.data(), want.data(), t.qk);
            B got;
            memset(&got, 0xa5, sizeof(got));  // every byte must be written
            QUANT(x.data(), got);
            const bool same = memcmp(&got, want.data(), t.block_bytes) == 0;
            CHECK(same, "%s quantize (%s input, repetition %d) differs from the reference quantizer", t.name,
                  INPUT_NAMES[kind], rep);
        }
    }
}

// ---- all checks for one type ------------------------------------------------------------------

template <typename B, int QK,
          void (*CODES16)(const B *, short, uchar *),
          void (*DEQ_F32)(const B *, short, float4x4 &),
          void (*DEQ_F16)(const B *, short, half4x4 &),
          void (*QUANT)(const float *, B &)>
static void check_type(const type_info & t) {
    const int failures_before = g_failures;
    CHECK((int) sizeof(B) == (int) t.block_bytes && QK == t.qk, "%s: block size mismatch", t.name);

    check_dequantize<B, DEQ_F32, DEQ_F16>(t);
    check_dot32<B, CODES16>(t);
    // one block; exactly the lanes' first round; several rounds with a partial last one;
    // row counts 1..4 of the 4-row kernel; padded row strides
    const int ne00s[] = {QK, 1024, 4 * 1024 + 3 * 128};
    for (int ne00 : ne00s) {
        if (ne00 % QK != 0) {
            continue;
        }
        for (short nrows = 1; nrows <= 4; nrows++) {
            check_mul_mv<B, QK, CODES16>(t, ne00, nrows, nrows % 2 ? 0 : 2 * t.block_bytes);
        }
    }
    check_quantize<B, QUANT>(t);
    printf("%-6s %s\n", t.name, g_failures == failures_before ? "ok" : "FAILED");
}

int main() {
    // bm:: spelled out: the codec's blocks of the same names live in the global namespace
    check_type<bm::block_q1_0, QK1_0, bm::bonsai_codes16_q1_0, bm::bonsai_dequantize_q1_0<float4x4>,
               bm::bonsai_dequantize_q1_0<half4x4>, bm::bonsai_quantize_q1_0>(TYPE_Q1_0);
    check_type<bm::block_q2_0, QK2_0, bm::bonsai_codes16_q2_0, bm::bonsai_dequantize_q2_0<float4x4>,
               bm::bonsai_dequantize_q2_0<half4x4>, bm::bonsai_quantize_q2_0>(TYPE_Q2_0);
    check_type<bm::block_pq2_0, QKPQ2_0, bm::bonsai_codes16_pq2_0, bm::bonsai_dequantize_pq2_0<float4x4>,
               bm::bonsai_dequantize_pq2_0<half4x4>, bm::bonsai_quantize_pq2_0>(TYPE_PQ2_0);
    check_type<bm::block_ptq1_0, QKPTQ1_0, bm::bonsai_codes16_ptq1_0, bm::bonsai_dequantize_ptq1_0<float4x4>,
               bm::bonsai_dequantize_ptq1_0<half4x4>, bm::bonsai_quantize_ptq1_0>(TYPE_PTQ1_0);

    if (g_failures) {
        printf("%d check(s) failed\n", g_failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
