// Tests of cpp/lowbit: fp16, the four codecs, the transcodes, row validation and the CPU
// kernels. Built and run by tests/test_lowbit_c.py, natively (scalar and AVX2 builds) and for
// AArch64 under qemu (NEON builds).
//
// Independent references used here (none of them calls into lowbit-impl.h):
//   - fp16: the hardware conversion (F16C on x86, the native _Float16 on AArch64);
//   - layouts: bit and base-3 readers written from DESIGN §4 in this file (the base-3 reader
//     inverts the "ceil(v * 256 / 243)" encoding by integer division, not by the multiply trick);
//   - kernels: float64 dot products of dequantized weights and dequantized activations.
//
// Exit status 0 when every check passed; every failure is printed.

#include "lowbit.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__F16C__)
#    include <immintrin.h>
#endif

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

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rng_below(int bound) {
    return (int) (rng_next() % (uint64_t) bound);
}

static float rng_gaussian(void) {
    const double u1 = ((double) (rng_next() >> 11) + 1.0) * 0x1p-53;
    const double u2 = (double) (rng_next() >> 11) * 0x1p-53;
    return (float) (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// A finite fp16 with a random sign and a moderate exponent (2^-10 .. 2^5), or occasionally a
// subnormal or zero, as scales appear in real files.
static bonsai_half rng_scale_half(void) {
    const int kind = rng_below(16);
    const uint16_t sign = (uint16_t) (rng_below(2) << 15);
    if (kind == 0) return sign;                                              // zero
    if (kind == 1) return sign | (uint16_t) (1 + rng_below(0x3ff));         // subnormal
    return sign | (uint16_t) ((5 + rng_below(16)) << 10) | (uint16_t) rng_below(0x400);
}

// ---- independent fp16 reference -------------------------------------------------------------

static float ref_half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    _Float16 v;
    memcpy(&v, &h, sizeof(v));
    return (float) v;
#endif
}

static uint16_t ref_float_to_half(float f) {
#if defined(__F16C__)
    return (uint16_t) _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    const _Float16 v = (_Float16) f;
    uint16_t h;
    memcpy(&h, &v, sizeof(h));
    return h;
#endif
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float float_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static void check_float_to_half(float f) {
    if (isnan(f)) return;
    const uint16_t got = bonsai_float_to_half(f), want = ref_float_to_half(f);
    CHECK(got == want, "float_to_half(%a) = 0x%04x, reference 0x%04x", (double) f, got, want);
}

static void test_fp16(void) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float got = bonsai_half_to_float((bonsai_half) h), want = ref_half_to_float((uint16_t) h);
        if (isnan(want)) {
            CHECK(isnan(got), "half_to_float(0x%04x) is not NaN", h);
        } else {
            CHECK(float_bits(got) == float_bits(want), "half_to_float(0x%04x) = %a, reference %a", h,
                  (double) got, (double) want);
        }
    }
    // Every half value, the midpoints between neighbours (ties to even) and one float ulp
    // either side of each midpoint.
    for (uint32_t h = 0; h < 0x7c00; h++) {
        const float lo = ref_half_to_float((uint16_t) h), hi = ref_half_to_float((uint16_t) (h + 1));
        const float mid = (float) (((double) lo + (double) hi) / 2);  // exact: a half needs 11 bits
        const float probes[] = {lo, mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int p = 0; p < 4; p++) {
            check_float_to_half(probes[p]);
            check_float_to_half(-probes[p]);
        }
    }
    check_float_to_half(65504.0f);
    check_float_to_half(65519.996f);
    check_float_to_half(65520.0f);
    check_float_to_half(1e30f);
    check_float_to_half(INFINITY);
    check_float_to_half(-INFINITY);
    check_float_to_half(0x1p-25f);
    check_float_to_half(0x1.000002p-25f);
    check_float_to_half(0x1p-26f);
    check_float_to_half(float_from_bits(1));  // smallest float subnormal
    for (int i = 0; i < 2000000; i++) {
        check_float_to_half(float_from_bits((uint32_t) rng_next()));
    }
    // NaN: ggml's canonical quiet NaN, sign kept.
    CHECK(bonsai_float_to_half(NAN) == 0x7e00, "float_to_half(NaN) = 0x%04x", bonsai_float_to_half(NAN));
    CHECK(bonsai_float_to_half(-NAN) == 0xfe00, "float_to_half(-NaN) = 0x%04x", bonsai_float_to_half(-NAN));
}

// ---- independent layout readers (from DESIGN §4) ----------------------------------------------

// Base-3 byte: the encoder stores q = ceil(v * 256 / 243), so v = floor(q * 243 / 256).
// Trit n (n = 0 most significant) of a five-trit value v.
static int ref_trit(uint8_t q, int n) {
    int v = (q * 243) >> 8;
    for (int i = n; i < 4; i++) v /= 3;
    return v % 3;
}

// Element j's value / d for each type, read straight from the block bytes.
static int ref_level_q1_0(const block_q1_0 * b, int j) {
    return ((b->qs[j / 8] >> (j % 8)) & 1) ? 1 : -1;
}

static int ref_level_2bit(const uint8_t * qs, int j) {
    return ((qs[j / 4] >> (2 * (j % 4))) & 3) - 1;
}

static int ref_level_ptq1_0(const block_ptq1_0 * b, int j) {
    if (j < 80) return ref_trit(b->qs[j % 16], j / 16) - 1;
    if (j < 120) return ref_trit(b->qs[16 + (j - 80) % 8], (j - 80) / 8) - 1;
    return ref_trit(b->qh[(j - 120) % 2], (j - 120) / 2) - 1;
}

static const char * type_name(enum bonsai_lowbit_type type) {
    switch (type) {
        case BONSAI_TYPE_Q1_0: return "q1_0";
        case BONSAI_TYPE_Q2_0: return "q2_0";
        case BONSAI_TYPE_PQ2_0: return "pq2_0";
        case BONSAI_TYPE_PTQ1_0: return "ptq1_0";
    }
    return "?";
}

static int block_elems(enum bonsai_lowbit_type type) {
    return type == BONSAI_TYPE_Q2_0 ? QK2_0 : 128;
}

static size_t block_bytes(enum bonsai_lowbit_type type) {
    switch (type) {
        case BONSAI_TYPE_Q1_0: return sizeof(block_q1_0);
        case BONSAI_TYPE_Q2_0: return sizeof(block_q2_0);
        case BONSAI_TYPE_PQ2_0: return sizeof(block_pq2_0);
        case BONSAI_TYPE_PTQ1_0: return sizeof(block_ptq1_0);
    }
    return 0;
}

static bonsai_half block_d(enum bonsai_lowbit_type type, const void * block) {
    bonsai_half d;
    memcpy(&d, (const uint8_t *) block + (type == BONSAI_TYPE_PTQ1_0 ? 26 : 0), sizeof(d));
    return d;
}

static int ref_level(enum bonsai_lowbit_type type, const void * block, int j) {
    switch (type) {
        case BONSAI_TYPE_Q1_0: return ref_level_q1_0(block, j);
        case BONSAI_TYPE_Q2_0: return ref_level_2bit(((const block_q2_0 *) block)->qs, j);
        case BONSAI_TYPE_PQ2_0: return ref_level_2bit(((const block_pq2_0 *) block)->qs, j);
        case BONSAI_TYPE_PTQ1_0: return ref_level_ptq1_0(block, j);
    }
    return 0;
}

// Reference dequantization of one row: level * d, from the readers above.
static void ref_dequantize(enum bonsai_lowbit_type type, const void * row, float * y, int64_t k) {
    const uint8_t * block = (const uint8_t *) row;
    for (int64_t i = 0; i < k / block_elems(type); i++, block += block_bytes(type)) {
        const float d = ref_half_to_float(block_d(type, block));
        for (int j = 0; j < block_elems(type); j++) {
            *y++ = (float) ref_level(type, block, j) * d;
        }
    }
}

static void quantize_row(enum bonsai_lowbit_type type, const float * x, void * y, int64_t k) {
    switch (type) {
        case BONSAI_TYPE_Q1_0: bonsai_quantize_row_q1_0_ref(x, y, k); break;
        case BONSAI_TYPE_Q2_0: bonsai_quantize_row_q2_0_ref(x, y, k); break;
        case BONSAI_TYPE_PQ2_0: bonsai_quantize_row_pq2_0_ref(x, y, k); break;
        case BONSAI_TYPE_PTQ1_0: bonsai_quantize_row_ptq1_0_ref(x, y, k); break;
    }
}

static void dequantize_row(enum bonsai_lowbit_type type, const void * x, float * y, int64_t k) {
    switch (type) {
        case BONSAI_TYPE_Q1_0: bonsai_dequantize_row_q1_0(x, y, k); break;
        case BONSAI_TYPE_Q2_0: bonsai_dequantize_row_q2_0(x, y, k); break;
        case BONSAI_TYPE_PQ2_0: bonsai_dequantize_row_pq2_0(x, y, k); break;
        case BONSAI_TYPE_PTQ1_0: bonsai_dequantize_row_ptq1_0(x, y, k); break;
    }
}

static const enum bonsai_lowbit_type all_types[4] = {BONSAI_TYPE_Q1_0, BONSAI_TYPE_Q2_0, BONSAI_TYPE_PQ2_0,
                                                     BONSAI_TYPE_PTQ1_0};

// ---- codecs ------------------------------------------------------------------------------------

// Random ternary (binary for Q1_0) rows with an fp16-exact scale per 128-element group
// quantize, then dequantize, to exactly the input; re-quantizing gives the same bytes.
static void test_lossless_round_trip(void) {
    enum { K = 128 * 40 };
    static float x[K], y[K], y_ref[K];
    static uint8_t blocks[K / 64 * 34], blocks2[K / 64 * 34];
    for (int t = 0; t < 4; t++) {
        const enum bonsai_lowbit_type type = all_types[t];
        for (int g = 0; g < K / 128; g++) {
            bonsai_half s;
            do s = rng_scale_half(); while ((s & 0x7fff) == 0);
            const float scale = fabsf(ref_half_to_float(s));
            for (int j = 0; j < 128; j++) {
                const int level = type == BONSAI_TYPE_Q1_0 ? 2 * rng_below(2) - 1 : rng_below(3) - 1;
                x[g * 128 + j] = (float) level * scale;
            }
            // A nonzero value in each 64-element half, so that max |x| is the scale in every
            // block (Q2_0 blocks are 64 long).
            x[g * 128] = scale;
            x[g * 128 + 64] = -scale;
        }
        quantize_row(type, x, blocks, K);
        dequantize_row(type, blocks, y, K);
        ref_dequantize(type, blocks, y_ref, K);
        for (int j = 0; j < K; j++) {
            CHECK(float_bits(y[j]) == float_bits(x[j]), "%s round trip element %d: %a != %a", type_name(type), j,
                  (double) y[j], (double) x[j]);
            CHECK(float_bits(y_ref[j]) == float_bits(x[j]), "%s reference reader element %d: %a != %a",
                  type_name(type), j, (double) y_ref[j], (double) x[j]);
        }
        const size_t nbytes = (size_t) (K / block_elems(type)) * block_bytes(type);
        quantize_row(type, y, blocks2, K);
        CHECK(memcmp(blocks, blocks2, nbytes) == 0, "%s: re-quantizing changed the bytes", type_name(type));
        // ggml's quantize_<type>() contract: rows of n_per_row, bytes written returned.
        size_t written = 0;
        switch (type) {
            case BONSAI_TYPE_Q1_0: written = bonsai_quantize_q1_0(x, blocks2, 4, K / 4, NULL); break;
            case BONSAI_TYPE_Q2_0: written = bonsai_quantize_q2_0(x, blocks2, 4, K / 4, NULL); break;
            case BONSAI_TYPE_PQ2_0: written = bonsai_quantize_pq2_0(x, blocks2, 4, K / 4, NULL); break;
            case BONSAI_TYPE_PTQ1_0: written = bonsai_quantize_ptq1_0(x, blocks2, 4, K / 4, NULL); break;
        }
        CHECK(written == nbytes, "%s quantize returned %zu, expected %zu", type_name(type), written, nbytes);
        CHECK(memcmp(blocks, blocks2, nbytes) == 0, "%s: quantize() differs from the row quantizer", type_name(type));
    }
}

// The reference quantizers' rules against an independent float64 computation.
//   Q1_0: d = fp16(mean |x|), bit = (x >= 0). Magnitudes are multiples of 2^-8 below 1, so
//         every partial sum is exact in fp32 and the mean is exact: no summation-order slack.
//   others: d = fp16(max |x|), level = round(x / max|x|) (half away from zero), clamped.
static void test_quantizer_rules(void) {
    enum { K = 128 * 64 };
    static float x[K];
    static uint8_t blocks[K / 64 * 34];
    for (int t = 0; t < 4; t++) {
        const enum bonsai_lowbit_type type = all_types[t];
        for (int j = 0; j < K; j++) {
            x[j] = type == BONSAI_TYPE_Q1_0 ? (float) (rng_below(511) - 255) * 0x1p-8f : rng_gaussian();
        }
        x[5] = 0.0f;
        x[6] = -0.0f;
        for (int j = 0; j < 128; j++) x[128 + j] = 0.0f;  // an all-zero block: d = 0, level 0
        quantize_row(type, x, blocks, K);
        const int n = block_elems(type);
        for (int i = 0; i < K / n; i++) {
            const float * xb = x + i * n;
            const void * block = blocks + (size_t) i * block_bytes(type);
            double sum_abs = 0, amax = 0;
            for (int j = 0; j < n; j++) {
                sum_abs += fabs((double) xb[j]);
                amax = fmax(amax, fabs((double) xb[j]));
            }
            const double d = type == BONSAI_TYPE_Q1_0 ? sum_abs / n : amax;
            const uint16_t want_d = ref_float_to_half((float) d);
            CHECK(block_d(type, block) == want_d, "%s block %d: d = 0x%04x, expected 0x%04x", type_name(type), i,
                  block_d(type, block), want_d);
            for (int j = 0; j < n; j++) {
                int want;
                if (type == BONSAI_TYPE_Q1_0) {
                    want = xb[j] >= 0.0f ? 1 : -1;
                } else {
                    want = amax == 0 ? 0 : (int) lround((double) xb[j] / amax);
                }
                const int got = ref_level(type, block, j);
                CHECK(got == want, "%s block %d element %d (x = %g): level %d, expected %d", type_name(type), i, j,
                      (double) xb[j], got, want);
            }
        }
    }
}

// A PTQ1_0 block built by hand from the layout in DESIGN §4. Every element is 0 (trit 1)
// except the ones listed; d = 0.5 (fp16 0x3800, stored last, little-endian).
//
// byte   elements (trit 0 first)        trits        v = base-3 value            q = ceil(v*256/243)
// qs[0]  0, 16, 32, 48, 64              2 0 2 1 0    162 + 0 + 18 + 3 + 0 = 183   46848/243 = 192.8 -> 193
// qs[7]  7, 23, 39, 55, 71              2 2 2 2 2    242                          61952/243 = 254.9 -> 255
// qs[15] 15, 31, 47, 63, 79             0 0 0 0 0    0                            0
// qs[19] 83, 91, 99, 107, 115           1 2 0 1 2    81 + 54 + 0 + 3 + 2 = 140    35840/243 = 147.5 -> 148
// qh[0]  120, 122, 124, 126             1 1 1 1      3 * (27 + 9 + 3 + 1) = 120   30720/243 = 126.4 -> 127
// qh[1]  121, 123, 125, 127             0 2 1 2      3 * (0 + 18 + 3 + 2) = 69    17664/243 = 72.7  -> 73
// other qs bytes: five 1-trits, v = 121                                           30976/243 = 127.5 -> 128
// (qh holds four trits: the value is shifted up one trit, leaving the last one 0.)
static void test_ptq1_0_hand_vector(void) {
    static const uint8_t expected_bytes[28] = {
        193, 128, 128, 128, 128, 128, 128, 255, 128, 128, 128, 128, 128, 128, 128, 0,  // qs[0..15]
        128, 128, 128, 148, 128, 128, 128, 128,                                          // qs[16..23]
        127, 73,                                                                         // qh[0..1]
        0x00, 0x38,                                                                      // d = 0.5
    };
    int trit[128];
    for (int j = 0; j < 128; j++) trit[j] = 1;
    static const int set[][2] = {
        {0, 2},   {16, 0},  {32, 2},  {48, 1},  {64, 0},                        // qs[0]
        {7, 2},   {23, 2},  {39, 2},  {55, 2},  {71, 2},                        // qs[7]
        {15, 0},  {31, 0},  {47, 0},  {63, 0},  {79, 0},                        // qs[15]
        {83, 1},  {91, 2},  {99, 0},  {107, 1}, {115, 2},                       // qs[19]
        {121, 0}, {123, 2}, {125, 1}, {127, 2},                                 // qh[1]
    };
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) trit[set[i][0]] = set[i][1];

    block_ptq1_0 block;
    memcpy(&block, expected_bytes, sizeof(block));
    float y[128];
    bonsai_dequantize_row_ptq1_0(&block, y, 128);
    for (int j = 0; j < 128; j++) {
        const float want = (float) (trit[j] - 1) * 0.5f;
        CHECK(y[j] == want, "hand PTQ1_0 vector element %d decodes to %g, expected %g", j, (double) y[j],
              (double) want);
    }
    float x[128];
    for (int j = 0; j < 128; j++) x[j] = (float) (trit[j] - 1) * 0.5f;
    block_ptq1_0 encoded;
    bonsai_quantize_row_ptq1_0_ref(x, &encoded, 128);
    const uint8_t * got = (const uint8_t *) &encoded;
    for (int b = 0; b < 28; b++) {
        CHECK(got[b] == expected_bytes[b], "hand PTQ1_0 vector byte %d encodes as %d, expected %d", b, got[b],
              expected_bytes[b]);
    }
}

// PQ2_0 <-> PTQ1_0 <-> 2 x Q2_0 are bit-exact for ternary data, and refuse what cannot be held.
static void test_transcodes(void) {
    enum { K = 128 * 50, NB = K / 128 };
    static block_pq2_0 pq[NB], pq_back[NB];
    static block_ptq1_0 ptq[NB], ptq_ref[NB];
    static block_q2_0 q2[2 * NB];
    static float x[K], y_pq[K], y_ptq[K], y_q2[K];
    for (int i = 0; i < NB; i++) {
        bonsai_half s;
        do s = rng_scale_half(); while ((s & 0x7fff) == 0);
        for (int j = 0; j < 128; j++) x[i * 128 + j] = (float) (rng_below(3) - 1) * fabsf(ref_half_to_float(s));
        x[i * 128] = fabsf(ref_half_to_float(s));
    }
    bonsai_quantize_row_pq2_0_ref(x, pq, K);
    bonsai_quantize_row_ptq1_0_ref(x, ptq_ref, K);

    CHECK(bonsai_pq2_0_to_ptq1_0(pq, ptq, K), "pq2_0 -> ptq1_0 refused ternary data");
    CHECK(memcmp(ptq, ptq_ref, sizeof(ptq)) == 0, "pq2_0 -> ptq1_0 differs from quantizing to ptq1_0");
    CHECK(bonsai_ptq1_0_to_pq2_0(ptq, pq_back, K), "ptq1_0 -> pq2_0 failed");
    CHECK(memcmp(pq_back, pq, sizeof(pq)) == 0, "pq2_0 -> ptq1_0 -> pq2_0 is not the identity");
    CHECK(bonsai_pq2_0_to_q2_0(pq, q2, K), "pq2_0 -> q2_0 failed");
    memset(pq_back, 0, sizeof(pq_back));
    CHECK(bonsai_q2_0_to_pq2_0(q2, pq_back, K), "q2_0 -> pq2_0 refused equal halves");
    CHECK(memcmp(pq_back, pq, sizeof(pq)) == 0, "pq2_0 -> q2_0 -> pq2_0 is not the identity");

    bonsai_dequantize_row_pq2_0(pq, y_pq, K);
    bonsai_dequantize_row_ptq1_0(ptq, y_ptq, K);
    bonsai_dequantize_row_q2_0(q2, y_q2, K);
    CHECK(memcmp(y_pq, x, sizeof(x)) == 0, "pq2_0 values differ from the input");
    CHECK(memcmp(y_ptq, x, sizeof(x)) == 0, "ptq1_0 transcode values differ from the input");
    CHECK(memcmp(y_q2, x, sizeof(x)) == 0, "q2_0 transcode values differ from the input");
    for (int i = 0; i < 2 * NB; i++) {
        CHECK(q2[i].d == pq[i / 2].d, "q2_0 block %d has d 0x%04x, expected the pq2_0 d 0x%04x", i, q2[i].d,
              pq[i / 2].d);
    }

    // Refusals: a code 3 (+2d) has no trit; two Q2_0 halves with different d have no common d.
    block_pq2_0 with_code3[2] = {pq[0], pq[1]};
    with_code3[1].qs[17] |= 3 << 4;  // element 4 * 17 + 2 = 70 of the second block
    CHECK(!bonsai_pq2_0_to_ptq1_0(with_code3, ptq, 256), "pq2_0 with a code 3 was transcoded to ptq1_0");
    block_q2_0 unequal[4] = {q2[0], q2[1], q2[2], q2[3]};
    unequal[3].d ^= 1;
    CHECK(!bonsai_q2_0_to_pq2_0(unequal, pq_back, 256), "q2_0 halves with different d were merged");
    unequal[3].d = unequal[2].d ^ 0x8000;  // -d is a different scale too
    CHECK(!bonsai_q2_0_to_pq2_0(unequal, pq_back, 256), "q2_0 halves with d and -d were merged");
    // Code 3 is a lossless 2-bit value: PQ2_0 <-> Q2_0 carries it through.
    CHECK(bonsai_pq2_0_to_q2_0(with_code3, q2, 256), "pq2_0 -> q2_0 refused a code 3");
    CHECK(bonsai_q2_0_to_pq2_0(q2, pq_back, 256) && memcmp(pq_back, with_code3, sizeof(with_code3)) == 0,
          "a code 3 did not survive pq2_0 -> q2_0 -> pq2_0");
}

static void test_validate_row(void) {
    static uint8_t row[34 * 8];
    char why[256];
    for (int t = 0; t < 4; t++) {
        const enum bonsai_lowbit_type type = all_types[t];
        const size_t bb = block_bytes(type), d_offset = type == BONSAI_TYPE_PTQ1_0 ? 26 : 0;
        for (size_t i = 0; i < sizeof(row); i++) row[i] = (uint8_t) rng_next();
        for (int b = 0; b < 8; b++) {
            const bonsai_half d = rng_scale_half();
            memcpy(row + b * bb + d_offset, &d, 2);
        }
        CHECK(bonsai_validate_row(type, row, 8 * bb, why, sizeof(why)), "%s: a valid row was rejected: %s",
              type_name(type), why);
        const bonsai_half bad[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff};
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
            uint8_t copy[sizeof(row)];
            memcpy(copy, row, sizeof(row));
            memcpy(copy + 5 * bb + d_offset, &bad[k], 2);
            why[0] = 0;
            CHECK(!bonsai_validate_row(type, copy, 8 * bb, why, sizeof(why)), "%s: d = 0x%04x was accepted",
                  type_name(type), bad[k]);
            CHECK(strstr(why, "block 5") != NULL && strstr(why, type_name(type)) != NULL,
                  "%s: message does not name the type and block: '%s'", type_name(type), why);
            CHECK(bonsai_validate_row(type, copy, 5 * bb, NULL, 0), "%s: blocks before the bad one rejected",
                  type_name(type));
        }
        CHECK(!bonsai_validate_row(type, row, 8 * bb - 1, why, sizeof(why)), "%s: a partial block was accepted",
              type_name(type));
    }
    CHECK(!bonsai_validate_row((enum bonsai_lowbit_type) 2, row, 18, why, sizeof(why)), "type 2 was accepted");
}

// ---- kernels -----------------------------------------------------------------------------------

typedef void (*gemm_fn)(int n, int nr, int nc, float * dst, size_t ldd, const void * vx, size_t bx, const void * vy,
                        size_t by);
typedef void (*vec_dot_fn)(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by,
                           int nrc);

struct kernel_set {
    enum bonsai_lowbit_type type;
    gemm_fn gemm, gemm_scalar;
    vec_dot_fn vec_dot, vec_dot_scalar;
};

static const struct kernel_set kernel_sets[4] = {
    {BONSAI_TYPE_Q1_0, bonsai_gemm_q1_0_q8_0, bonsai_gemm_q1_0_q8_0_scalar, bonsai_vec_dot_q1_0_q8_0,
     bonsai_vec_dot_q1_0_q8_0_scalar},
    {BONSAI_TYPE_Q2_0, bonsai_gemm_q2_0_q8_0, bonsai_gemm_q2_0_q8_0_scalar, bonsai_vec_dot_q2_0_q8_0,
     bonsai_vec_dot_q2_0_q8_0_scalar},
    {BONSAI_TYPE_PQ2_0, bonsai_gemm_pq2_0_q8_0, bonsai_gemm_pq2_0_q8_0_scalar, bonsai_vec_dot_pq2_0_q8_0,
     bonsai_vec_dot_pq2_0_q8_0_scalar},
    {BONSAI_TYPE_PTQ1_0, bonsai_gemm_ptq1_0_q8_0, bonsai_gemm_ptq1_0_q8_0_scalar, bonsai_vec_dot_ptq1_0_q8_0,
     bonsai_vec_dot_ptq1_0_q8_0_scalar},
};

// Random weight rows: any byte pattern is a valid code stream (2-bit types include code 3; any
// PTQ1_0 byte decodes to trits), with random finite scales.
static void fill_weights(enum bonsai_lowbit_type type, uint8_t * w, int rows, int n, size_t row_bytes) {
    for (size_t i = 0; i < (size_t) rows * row_bytes; i++) w[i] = (uint8_t) rng_next();
    const int d_offset = type == BONSAI_TYPE_PTQ1_0 ? 26 : 0;
    for (int r = 0; r < rows; r++) {
        for (int b = 0; b < n / block_elems(type); b++) {
            const bonsai_half d = rng_scale_half();
            memcpy(w + r * row_bytes + b * block_bytes(type) + d_offset, &d, 2);
        }
    }
}

// Random Q8_0 activation rows: the full int8 range (-128 included) and random finite scales.
static void fill_activations(block_q8_0_act * a, int rows, int n) {
    for (int i = 0; i < rows * n / QK8_0_ACT; i++) {
        a[i].d = rng_scale_half();
        for (int l = 0; l < QK8_0_ACT; l++) a[i].qs[l] = (int8_t) rng_next();
    }
}

// Float64 reference of one dot product, plus the bound on the kernel's rounding error.
// The kernel rounds once per 32-element block (an fp32 fused multiply-add of an exact term
// into the running sum), so by the standard recursive-summation bound its error is at most
// nblocks * 2^-24 * sum_b |term_b| (to first order; the 1.001 factor covers the rest).
// The float64 sum here is exact up to ~K * 2^-53, negligible against that.
static void ref_dot(const float * w, const block_q8_0_act * a, int n, double * value, double * bound) {
    double total = 0, sum_abs_terms = 0;
    for (int b = 0; b < n / QK8_0_ACT; b++) {
        const double d_a = ref_half_to_float(a[b].d);
        double term = 0;
        for (int l = 0; l < QK8_0_ACT; l++) term += (double) w[b * QK8_0_ACT + l] * (d_a * a[b].qs[l]);
        total += term;
        sum_abs_terms += fabs(term);
    }
    *value = total;
    *bound = 1.001 * (n / QK8_0_ACT) * 0x1p-24 * sum_abs_terms + 1e-30;
}

// One gemm shape for one type: scalar against float64; the dispatched variant and vec_dot
// against scalar, bit for bit; nothing outside the nr x nc output written.
static void check_gemm_shape(const struct kernel_set * ks, int n, int nr, int nc, int check_reference) {
    const enum bonsai_lowbit_type type = ks->type;
    const size_t row_bytes = (size_t) (n / block_elems(type)) * block_bytes(type);
    const size_t act_row_bytes = (size_t) (n / QK8_0_ACT) * sizeof(block_q8_0_act);
    const size_t ldd = (size_t) nr + 3;
    uint8_t * w = malloc((size_t) nr * row_bytes);
    block_q8_0_act * a = malloc((size_t) nc * act_row_bytes);
    float * out_scalar = malloc(sizeof(float) * ldd * nc);
    float * out_simd = malloc(sizeof(float) * ldd * nc);
    float * w_deq = malloc(sizeof(float) * n);
    fill_weights(type, w, nr, n, row_bytes);
    fill_activations(a, nc, n);
    const float sentinel = -12345.0f;
    for (size_t i = 0; i < ldd * nc; i++) out_scalar[i] = out_simd[i] = sentinel;

    ks->gemm_scalar(n, nr, nc, out_scalar, ldd, w, row_bytes, a, act_row_bytes);
    ks->gemm(n, nr, nc, out_simd, ldd, w, row_bytes, a, act_row_bytes);

    for (int j = 0; j < nc; j++) {
        for (size_t i = 0; i < ldd; i++) {
            const float s = out_scalar[j * ldd + i], v = out_simd[j * ldd + i];
            if (i >= (size_t) nr) {
                CHECK(s == sentinel && v == sentinel, "%s gemm n=%d %dx%d wrote outside the tile at (%zu, %d)",
                      type_name(type), n, nr, nc, i, j);
                continue;
            }
            CHECK(float_bits(s) == float_bits(v), "%s gemm (%s) n=%d %dx%d at (%zu,%d): %a, scalar %a",
                  type_name(type), bonsai_lowbit_simd(), n, nr, nc, i, j, (double) v, (double) s);
        }
    }
    for (int i = 0; i < nr; i++) {
        ref_dequantize(type, w + i * row_bytes, w_deq, n);
        for (int j = 0; j < nc; j++) {
            const block_q8_0_act * aj = (const block_q8_0_act *) ((const char *) a + j * act_row_bytes);
            if (check_reference) {
                double value, bound;
                ref_dot(w_deq, aj, n, &value, &bound);
                const double got = out_scalar[j * ldd + i];
                CHECK(fabs(got - value) <= bound, "%s scalar gemm n=%d (%d,%d): %.9g, float64 %.9g, bound %.3g",
                      type_name(type), n, i, j, got, value, bound);
            }
            if ((i + j) % 3 == 0) {
                float s_scalar = sentinel, s_simd = sentinel;
                ks->vec_dot_scalar(n, &s_scalar, 0, w + i * row_bytes, 0, aj, 0, 1);
                ks->vec_dot(n, &s_simd, 0, w + i * row_bytes, 0, aj, 0, 1);
                CHECK(float_bits(s_scalar) == float_bits(out_scalar[j * ldd + i]),
                      "%s scalar vec_dot != scalar gemm at (%d,%d)", type_name(type), i, j);
                CHECK(float_bits(s_simd) == float_bits(s_scalar), "%s vec_dot (%s) n=%d (%d,%d): %a, scalar %a",
                      type_name(type), bonsai_lowbit_simd(), n, i, j, (double) s_simd, (double) s_scalar);
            }
        }
    }
    free(w);
    free(a);
    free(out_scalar);
    free(out_simd);
    free(w_deq);
}

static void test_kernels(void) {
    // Odd tile edges, K shorter than one panel chunk, exactly one, several and a ragged tail,
    // and activation counts past one column panel.
    static const int shapes[][3] = {
        // n,     nr, nc
        {128, 1, 1},     {128, 3, 5},    {256, 7, 3},    {384, 5, 7},   {1024, 4, 2},  {1152, 9, 11},
        {3072, 13, 6},   {3200, 6, 70},  {12288, 5, 3},  {640, 64, 67}, {2048, 1, 65},
    };
    for (int t = 0; t < 4; t++) {
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            check_gemm_shape(&kernel_sets[t], shapes[s][0], shapes[s][1], shapes[s][2], 1);
        }
    }
    // K = 0: every output is the empty sum (3 rows x 2 columns, ldd 5).
    for (int t = 0; t < 4; t++) {
        float simd_out[10], scalar_out[10];
        const uint8_t no_data[1] = {0};
        memset(simd_out, 0xff, sizeof(simd_out));
        memset(scalar_out, 0xff, sizeof(scalar_out));
        kernel_sets[t].gemm(0, 3, 2, simd_out, 5, no_data, 0, no_data, 0);
        kernel_sets[t].gemm_scalar(0, 3, 2, scalar_out, 5, no_data, 0, no_data, 0);
        for (int j = 0; j < 2; j++) {
            for (int i = 0; i < 3; i++) {
                CHECK(simd_out[j * 5 + i] == 0.0f && scalar_out[j * 5 + i] == 0.0f, "%s gemm with n = 0 did not write 0",
                      type_name(all_types[t]));
            }
        }
    }
    // Q2_0 rows may be an odd number of its 64-element blocks.
    check_gemm_shape(&kernel_sets[1], 64, 3, 3, 1);
    check_gemm_shape(&kernel_sets[1], 192, 5, 4, 1);
    check_gemm_shape(&kernel_sets[1], 1088, 4, 5, 1);
}

int main(void) {
    printf("simd: %s\n", bonsai_lowbit_simd());
    test_fp16();
    test_lossless_round_trip();
    test_quantizer_rules();
    test_ptq1_0_hand_vector();
    test_transcodes();
    test_validate_row();
    test_kernels();
    if (g_failures) {
        printf("%d check(s) failed\n", g_failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
