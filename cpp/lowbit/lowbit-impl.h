// Private helpers shared by the low-bit codec and the kernel files (not installed, not part of
// the interface in lowbit.h).
//
// Every weight type is read the same way by the kernels: a block decodes to one "code" byte
// per element plus the fp16 scale d, and the element's value is (code - 1) * d.
//   Q1_0:            code = 2 * bit       (0 or 2  -> -d or +d)
//   Q2_0, PQ2_0:     code = the 2-bit field (0..3 -> -d, 0, +d, +2d)
//   PTQ1_0:          code = the trit        (0..2 -> -d, 0, +d)
// These inline decoders are the scalar source of truth; the SIMD files decode the same codes.

#ifndef BONSAI_LOWBIT_IMPL_H
#define BONSAI_LOWBIT_IMPL_H

#include "lowbit.h"

#include <string.h>

// fp16 -> fp32, exact (every half is a float). Inline here so that the kernel files need no
// symbol from the codec file (they may end up in different libraries).
static inline float bonsai_fp16_to_fp32(bonsai_half h) {
    const uint32_t sign     = (uint32_t) (h & 0x8000) << 16;
    const uint32_t exponent = (h >> 10) & 0x1f;
    const uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        // inf, or NaN made quiet (as F16C and ggml do)
        bits = sign | 0x7f800000 | (mantissa ? 0x400000 | (mantissa << 13) : 0);
    } else if (exponent == 0) {
        // zero or subnormal: mantissa * 2^-24, exact in fp32
        const float magnitude = (float) mantissa * 0x1p-24f;
        memcpy(&bits, &magnitude, sizeof(bits));
        bits |= sign;
    } else {
        bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

// Powers of three for the base-3 byte codec (TQ1_0's trick): a byte holds up to five trits,
// most significant first, stored as ceil(v * 256 / 243). Trit n is then the top "third" of the
// low byte of q * 3^n: ((uint8_t)(q * 3^n) * 3) >> 8.
static const uint8_t bonsai_pow3[6] = {1, 3, 9, 27, 81, 243};

static inline int bonsai_trit_of_byte(uint8_t q, int n) {
    const uint8_t shifted = (uint8_t) (q * bonsai_pow3[n]);  // drop trits 0..n-1 (mod 256)
    return ((uint16_t) shifted * 3) >> 8;
}

// Packs up to five trits (most significant first) into one byte. With fewer than five, the
// missing low trits are zero, so a 4-trit byte (PTQ1_0's qh) reads back with the same rule.
static inline uint8_t bonsai_pack_trits(const int * trits, int count) {
    int value = 0;
    for (int n = 0; n < 5; n++) {
        value = value * 3 + (n < count ? trits[n] : 0);
    }
    return (uint8_t) ((value * 256 + 242) / 243);  // ceiling of value * 256 / 243
}

static inline bonsai_half bonsai_load_half(const void * p) {
    bonsai_half h;
    memcpy(&h, p, sizeof(h));
    return h;
}

// PTQ1_0 trit placement (DESIGN §4): where element j of a block lives.
//   0..79:    trit (j / 16)           of qs[j % 16]
//   80..119:  trit ((j - 80) / 8)     of qs[16 + (j - 80) % 8]
//   120..127: trit ((j - 120) / 2)    of qh[(j - 120) % 2]
// byte_index counts qs then qh (0..25), i.e. the byte offset inside the block.
static inline void bonsai_ptq1_0_position(int j, int * byte_index, int * trit) {
    if (j < 80) {
        *byte_index = j % 16;
        *trit       = j / 16;
    } else if (j < 120) {
        *byte_index = 16 + (j - 80) % 8;
        *trit       = (j - 80) / 8;
    } else {
        *byte_index = 24 + (j - 120) % 2;
        *trit       = (j - 120) / 2;
    }
}

// ---- scalar block decoders: codes[0 .. block elements) and the block's d -------------------

static inline float bonsai_decode_q1_0(const void * vblock, uint8_t * codes) {
    const block_q1_0 * block = (const block_q1_0 *) vblock;
    for (int j = 0; j < QK1_0; j++) {
        codes[j] = (uint8_t) (2 * ((block->qs[j / 8] >> (j % 8)) & 1));
    }
    return bonsai_fp16_to_fp32(block->d);
}

static inline void bonsai_decode_2bit(const uint8_t * qs, uint8_t * codes, int count) {
    for (int j = 0; j < count; j++) {
        codes[j] = (uint8_t) ((qs[j / 4] >> (2 * (j % 4))) & 3);
    }
}

static inline float bonsai_decode_q2_0(const void * vblock, uint8_t * codes) {
    const block_q2_0 * block = (const block_q2_0 *) vblock;
    bonsai_decode_2bit(block->qs, codes, QK2_0);
    return bonsai_fp16_to_fp32(block->d);
}

static inline float bonsai_decode_pq2_0(const void * vblock, uint8_t * codes) {
    const block_pq2_0 * block = (const block_pq2_0 *) vblock;
    bonsai_decode_2bit(block->qs, codes, QKPQ2_0);
    return bonsai_fp16_to_fp32(block->d);
}

static inline float bonsai_decode_ptq1_0(const void * vblock, uint8_t * codes) {
    const block_ptq1_0 * block = (const block_ptq1_0 *) vblock;
    const uint8_t * bytes = block->qs;  // qs[0..23] then qh[0..1]: 26 contiguous bytes
    for (int j = 0; j < QKPTQ1_0; j++) {
        int byte_index, trit;
        bonsai_ptq1_0_position(j, &byte_index, &trit);
        codes[j] = (uint8_t) bonsai_trit_of_byte(bytes[byte_index], trit);
    }
    return bonsai_fp16_to_fp32(block->d);
}

// ---- what the kernels need to know about a weight type --------------------------------------

typedef float (*bonsai_decode_fn)(const void * block, uint8_t * codes);

struct bonsai_weight_traits {
    int              block_elems;  // elements per block (64 or 128)
    int              block_bytes;
    bonsai_decode_fn decode;       // scalar reference decoder
};

static const struct bonsai_weight_traits bonsai_traits_q1_0   = {QK1_0,    sizeof(block_q1_0),   bonsai_decode_q1_0};
static const struct bonsai_weight_traits bonsai_traits_q2_0   = {QK2_0,    sizeof(block_q2_0),   bonsai_decode_q2_0};
static const struct bonsai_weight_traits bonsai_traits_pq2_0  = {QKPQ2_0,  sizeof(block_pq2_0),  bonsai_decode_pq2_0};
static const struct bonsai_weight_traits bonsai_traits_ptq1_0 = {QKPTQ1_0, sizeof(block_ptq1_0), bonsai_decode_ptq1_0};

#endif  // BONSAI_LOWBIT_IMPL_H
