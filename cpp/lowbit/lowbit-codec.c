// bonsai-sd low-bit types: fp16, reference quantizers and dequantizers, row validation and the
// lossless transcodes between the ternary layouts. Scalar C, no ggml: this file is the single
// source of truth for the byte layouts declared in lowbit.h.

#include "lowbit-impl.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>

// ---- fp16 ---------------------------------------------------------------------------------

float bonsai_half_to_float(bonsai_half h) {
    return bonsai_fp16_to_fp32(h);
}

// Shifts `value` right by `shift` bits, rounding to nearest with ties to even.
static uint32_t shift_right_round_even(uint32_t value, int shift) {
    const uint32_t kept      = value >> shift;
    const uint32_t remainder = value & ((1u << shift) - 1);
    const uint32_t half      = 1u << (shift - 1);
    return kept + (remainder > half || (remainder == half && (kept & 1)));
}

bonsai_half bonsai_float_to_half(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    const uint16_t sign      = (uint16_t) ((bits >> 16) & 0x8000);
    const uint32_t magnitude = bits & 0x7fffffff;

    if (magnitude > 0x7f800000) {
        return sign | 0x7e00;  // NaN: ggml's canonical quiet NaN
    }
    if (magnitude >= 0x477ff000) {
        return sign | 0x7c00;  // inf, or at/above 65520 (the midpoint past 65504): rounds to inf
    }
    if (magnitude >= 0x38800000) {
        // normal half: rebias the exponent, round the 23-bit mantissa to 10 bits. A carry out of
        // the mantissa correctly bumps the exponent.
        const uint32_t rebased = magnitude - ((uint32_t) (127 - 15) << 23);
        return sign | (uint16_t) shift_right_round_even(rebased, 13);
    }
    // subnormal half (or zero): the result counts units of 2^-24.
    const int exponent = (int) (magnitude >> 23);
    if (exponent < 102) {
        return sign;  // below 2^-25, half of the smallest subnormal: rounds to zero
    }
    const uint32_t significand = (magnitude & 0x7fffff) | 0x800000;
    // value = significand * 2^(exponent - 150) = (significand >> (126 - exponent)) units of 2^-24
    return sign | (uint16_t) shift_right_round_even(significand, 126 - exponent);
}

// ---- reference quantizers -------------------------------------------------------------------

static float max_abs(const float * x, int count) {
    float amax = 0.0f;
    for (int j = 0; j < count; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    return amax;
}

// round(x / d) + 1 clamped to [0, max_code], with ggml's reciprocal and round-half-away.
static int ternary_code(float x, float inverse_d, int max_code) {
    const long code = lroundf(x * inverse_d) + 1;
    return code < 0 ? 0 : code > max_code ? max_code : (int) code;
}

void bonsai_quantize_row_q1_0_ref(const float * x, block_q1_0 * y, int64_t k) {
    assert(k % QK1_0 == 0);
    for (int64_t i = 0; i < k / QK1_0; i++, x += QK1_0) {
        float sum_abs = 0.0f;  // summed in element order, as ggml's reference does
        for (int j = 0; j < QK1_0; j++) {
            sum_abs += fabsf(x[j]);
        }
        y[i].d = bonsai_float_to_half(sum_abs / QK1_0);
        memset(y[i].qs, 0, sizeof(y[i].qs));
        for (int j = 0; j < QK1_0; j++) {
            if (x[j] >= 0.0f) {
                y[i].qs[j / 8] |= (uint8_t) (1 << (j % 8));
            }
        }
    }
}

// Q2_0 and PQ2_0 share the element layout; only the block length differs.
static void quantize_2bit_block(const float * x, int count, bonsai_half * d, uint8_t * qs) {
    const float amax      = max_abs(x, count);
    const float inverse_d = amax != 0.0f ? 1.0f / amax : 0.0f;
    *d = bonsai_float_to_half(amax);
    memset(qs, 0, (size_t) count / 4);
    for (int j = 0; j < count; j++) {
        qs[j / 4] |= (uint8_t) (ternary_code(x[j], inverse_d, 3) << (2 * (j % 4)));
    }
}

void bonsai_quantize_row_q2_0_ref(const float * x, block_q2_0 * y, int64_t k) {
    assert(k % QK2_0 == 0);
    for (int64_t i = 0; i < k / QK2_0; i++) {
        quantize_2bit_block(x + i * QK2_0, QK2_0, &y[i].d, y[i].qs);
    }
}

void bonsai_quantize_row_pq2_0_ref(const float * x, block_pq2_0 * y, int64_t k) {
    assert(k % QKPQ2_0 == 0);
    for (int64_t i = 0; i < k / QKPQ2_0; i++) {
        quantize_2bit_block(x + i * QKPQ2_0, QKPQ2_0, &y[i].d, y[i].qs);
    }
}

// Packs 128 trits (element order) into a PTQ1_0 block's qs and qh.
static void pack_ptq1_0_trits(const uint8_t * trits, block_ptq1_0 * block) {
    int grouped[26][5] = {{0}};  // trits per byte, most significant first
    for (int j = 0; j < QKPTQ1_0; j++) {
        int byte_index, trit;
        bonsai_ptq1_0_position(j, &byte_index, &trit);
        grouped[byte_index][trit] = trits[j];
    }
    for (int b = 0; b < 24; b++) {
        block->qs[b] = bonsai_pack_trits(grouped[b], 5);
    }
    for (int h = 0; h < 2; h++) {
        block->qh[h] = bonsai_pack_trits(grouped[24 + h], 4);
    }
}

void bonsai_quantize_row_ptq1_0_ref(const float * x, block_ptq1_0 * y, int64_t k) {
    assert(k % QKPTQ1_0 == 0);
    for (int64_t i = 0; i < k / QKPTQ1_0; i++, x += QKPTQ1_0) {
        const float amax      = max_abs(x, QKPTQ1_0);
        const float inverse_d = amax != 0.0f ? 1.0f / amax : 0.0f;
        uint8_t trits[QKPTQ1_0];
        for (int j = 0; j < QKPTQ1_0; j++) {
            trits[j] = (uint8_t) ternary_code(x[j], inverse_d, 2);
        }
        pack_ptq1_0_trits(trits, &y[i]);
        y[i].d = bonsai_float_to_half(amax);
    }
}

// ---- dequantizers ---------------------------------------------------------------------------

static void dequantize_blocks(const struct bonsai_weight_traits * traits, const void * x, float * y, int64_t k) {
    assert(k % traits->block_elems == 0);
    const uint8_t * block = (const uint8_t *) x;
    uint8_t codes[128];
    for (int64_t i = 0; i < k / traits->block_elems; i++, block += traits->block_bytes) {
        const float d = traits->decode(block, codes);
        for (int j = 0; j < traits->block_elems; j++) {
            *y++ = (float) (codes[j] - 1) * d;
        }
    }
}

void bonsai_dequantize_row_q1_0(const block_q1_0 * x, float * y, int64_t k) {
    dequantize_blocks(&bonsai_traits_q1_0, x, y, k);
}

void bonsai_dequantize_row_q2_0(const block_q2_0 * x, float * y, int64_t k) {
    dequantize_blocks(&bonsai_traits_q2_0, x, y, k);
}

void bonsai_dequantize_row_pq2_0(const block_pq2_0 * x, float * y, int64_t k) {
    dequantize_blocks(&bonsai_traits_pq2_0, x, y, k);
}

void bonsai_dequantize_row_ptq1_0(const block_ptq1_0 * x, float * y, int64_t k) {
    dequantize_blocks(&bonsai_traits_ptq1_0, x, y, k);
}

// ---- ggml's quantize_<type>() contract ------------------------------------------------------

typedef void (*quantize_row_fn)(const float * x, void * y, int64_t k);

static void quantize_row_q1_0(const float * x, void * y, int64_t k)   { bonsai_quantize_row_q1_0_ref(x, y, k); }
static void quantize_row_q2_0(const float * x, void * y, int64_t k)   { bonsai_quantize_row_q2_0_ref(x, y, k); }
static void quantize_row_pq2_0(const float * x, void * y, int64_t k)  { bonsai_quantize_row_pq2_0_ref(x, y, k); }
static void quantize_row_ptq1_0(const float * x, void * y, int64_t k) { bonsai_quantize_row_ptq1_0_ref(x, y, k); }

static size_t quantize_rows(quantize_row_fn quantize_row, const struct bonsai_weight_traits * traits,
                            const float * src, void * dst, int64_t nrows, int64_t n_per_row) {
    assert(n_per_row % traits->block_elems == 0);
    const size_t row_bytes = (size_t) (n_per_row / traits->block_elems) * (size_t) traits->block_bytes;
    for (int64_t row = 0; row < nrows; row++) {
        quantize_row(src + row * n_per_row, (char *) dst + (size_t) row * row_bytes, n_per_row);
    }
    return (size_t) nrows * row_bytes;
}

size_t bonsai_quantize_q1_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_rows(quantize_row_q1_0, &bonsai_traits_q1_0, src, dst, nrows, n_per_row);
}

size_t bonsai_quantize_q2_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_rows(quantize_row_q2_0, &bonsai_traits_q2_0, src, dst, nrows, n_per_row);
}

size_t bonsai_quantize_pq2_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_rows(quantize_row_pq2_0, &bonsai_traits_pq2_0, src, dst, nrows, n_per_row);
}

size_t bonsai_quantize_ptq1_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    (void) imatrix;
    return quantize_rows(quantize_row_ptq1_0, &bonsai_traits_ptq1_0, src, dst, nrows, n_per_row);
}

// ---- row validation -------------------------------------------------------------------------

bool bonsai_validate_row(enum bonsai_lowbit_type type, const void * data, size_t nbytes, char * why, size_t why_len) {
    const char * name;
    size_t block_bytes, d_offset;
    switch (type) {
        case BONSAI_TYPE_Q1_0:   name = "q1_0";   block_bytes = sizeof(block_q1_0);   d_offset = offsetof(block_q1_0, d);   break;
        case BONSAI_TYPE_Q2_0:   name = "q2_0";   block_bytes = sizeof(block_q2_0);   d_offset = offsetof(block_q2_0, d);   break;
        case BONSAI_TYPE_PQ2_0:  name = "pq2_0";  block_bytes = sizeof(block_pq2_0);  d_offset = offsetof(block_pq2_0, d);  break;
        case BONSAI_TYPE_PTQ1_0: name = "ptq1_0"; block_bytes = sizeof(block_ptq1_0); d_offset = offsetof(block_ptq1_0, d); break;
        default:
            if (why) snprintf(why, why_len, "type id %d is not a bonsai low-bit type", (int) type);
            return false;
    }
    if (nbytes % block_bytes != 0) {
        if (why) snprintf(why, why_len, "%s row data of %zu bytes is not a whole number of %zu-byte blocks",
                          name, nbytes, block_bytes);
        return false;
    }
    const uint8_t * bytes = (const uint8_t *) data;
    for (size_t i = 0; i < nbytes / block_bytes; i++) {
        const bonsai_half d = bonsai_load_half(bytes + i * block_bytes + d_offset);
        if ((d & 0x7c00) == 0x7c00) {
            if (why) snprintf(why, why_len, "%s block %zu has a non-finite scale d (fp16 bits 0x%04x)",
                              name, i, (unsigned) d);
            return false;
        }
    }
    return true;
}

// ---- lossless transcodes --------------------------------------------------------------------

bool bonsai_pq2_0_to_ptq1_0(const block_pq2_0 * x, block_ptq1_0 * y, int64_t k) {
    assert(k % QKPQ2_0 == 0);
    for (int64_t i = 0; i < k / QKPQ2_0; i++) {
        uint8_t codes[QKPQ2_0];
        bonsai_decode_2bit(x[i].qs, codes, QKPQ2_0);
        for (int j = 0; j < QKPQ2_0; j++) {
            if (codes[j] > 2) {
                return false;  // +2d has no trit
            }
        }
        pack_ptq1_0_trits(codes, &y[i]);
        y[i].d = x[i].d;
    }
    return true;
}

bool bonsai_ptq1_0_to_pq2_0(const block_ptq1_0 * x, block_pq2_0 * y, int64_t k) {
    assert(k % QKPTQ1_0 == 0);
    for (int64_t i = 0; i < k / QKPTQ1_0; i++) {
        uint8_t trits[QKPTQ1_0];
        y[i].d = x[i].d;
        bonsai_decode_ptq1_0(&x[i], trits);
        memset(y[i].qs, 0, sizeof(y[i].qs));
        for (int j = 0; j < QKPTQ1_0; j++) {
            y[i].qs[j / 4] |= (uint8_t) (trits[j] << (2 * (j % 4)));
        }
    }
    return true;  // every byte decodes to trits 0..2, all representable
}

// A PQ2_0 block is two Q2_0 blocks with the same d: its qs split in halves.
bool bonsai_pq2_0_to_q2_0(const block_pq2_0 * x, block_q2_0 * y, int64_t k) {
    assert(k % QKPQ2_0 == 0);
    for (int64_t i = 0; i < k / QKPQ2_0; i++) {
        for (int half = 0; half < 2; half++) {
            y[2 * i + half].d = x[i].d;
            memcpy(y[2 * i + half].qs, x[i].qs + half * (QK2_0 / 4), QK2_0 / 4);
        }
    }
    return true;
}

bool bonsai_q2_0_to_pq2_0(const block_q2_0 * x, block_pq2_0 * y, int64_t k) {
    assert(k % QKPQ2_0 == 0);
    for (int64_t i = 0; i < k / QKPQ2_0; i++) {
        if (x[2 * i].d != x[2 * i + 1].d) {
            return false;  // one d per 128 cannot hold two different scales
        }
        y[i].d = x[2 * i].d;
        for (int half = 0; half < 2; half++) {
            memcpy(y[i].qs + half * (QK2_0 / 4), x[2 * i + half].qs, QK2_0 / 4);
        }
    }
    return true;
}
