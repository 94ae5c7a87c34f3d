// bonsai-sd low-bit types: NEON kernels (AArch64; the dot-product extension is used when the
// build enables it, __ARM_FEATURE_DOTPROD, with a plain-NEON path otherwise).
//
// Same arithmetic as the scalar reference in lowbit-kernels.c, bit for bit: per 32-element
// block an exact int32 sum, then one fused multiply-add of d_w * d_a into the running sum.
// The gemm tile multiplies the interleaved code panel (lowbit-tiles.h) by activation groups of
// four bytes, so four weight rows' sums come out in the four lanes of one vector; the int32
// sum is taken as sum c * q - sum q, with sum q computed once per activation block.

#include "lowbit.h"

#if defined(__ARM_NEON) && defined(__aarch64__)

#include "lowbit-tiles.h"

#include <arm_neon.h>
#include <math.h>

static inline float half_to_float_neon(bonsai_half h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// ---- decoders: one weight block -> codes (one byte per element) and d ----------------------

static float decode_q1_0_neon(const void * vblock, uint8_t * codes) {
    const block_q1_0 * block = (const block_q1_0 *) vblock;
    static const uint8_t bit_of_lane[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bit = vld1q_u8(bit_of_lane);
    for (int pair = 0; pair < 8; pair++) {  // two bit-bytes -> 16 codes
        const uint8x16_t spread = vcombine_u8(vdup_n_u8(block->qs[2 * pair]), vdup_n_u8(block->qs[2 * pair + 1]));
        const uint8x16_t is_set = vtstq_u8(spread, bit);  // 0xff where the bit is 1
        vst1q_u8(codes + 16 * pair, vandq_u8(is_set, vdupq_n_u8(2)));
    }
    return half_to_float_neon(block->d);
}

// 16 bytes of 2-bit fields -> 64 codes. Field k of byte m is element 4m + k: split the four
// fields into planes, then interleave the planes back into element order.
static void decode_2bit_16_bytes(const uint8_t * qs, uint8_t * codes) {
    const uint8x16_t q     = vld1q_u8(qs);
    const uint8x16_t three = vdupq_n_u8(3);
    uint8x16x4_t planes;
    planes.val[0] = vandq_u8(q, three);
    planes.val[1] = vandq_u8(vshrq_n_u8(q, 2), three);
    planes.val[2] = vandq_u8(vshrq_n_u8(q, 4), three);
    planes.val[3] = vshrq_n_u8(q, 6);
    vst4q_u8(codes, planes);  // stores plane0[m], plane1[m], plane2[m], plane3[m] for m = 0..15
}

static float decode_q2_0_neon(const void * vblock, uint8_t * codes) {
    const block_q2_0 * block = (const block_q2_0 *) vblock;
    decode_2bit_16_bytes(block->qs, codes);
    return half_to_float_neon(block->d);
}

static float decode_pq2_0_neon(const void * vblock, uint8_t * codes) {
    const block_pq2_0 * block = (const block_pq2_0 *) vblock;
    decode_2bit_16_bytes(block->qs, codes);
    decode_2bit_16_bytes(block->qs + 16, codes + 64);
    return half_to_float_neon(block->d);
}

// Trit n of each byte: ((uint8_t)(q * 3^n) * 3) >> 8, with NEON's wrapping 8-bit multiply.
static inline uint8x16_t trits_of(uint8x16_t bytes, uint8x16_t pow3) {
    const uint8x16_t shifted = vmulq_u8(bytes, pow3);
    const uint8x16_t three   = vdupq_n_u8(3);
    return vcombine_u8(vshrn_n_u16(vmull_u8(vget_low_u8(shifted), vget_low_u8(three)), 8),
                       vshrn_n_u16(vmull_high_u8(shifted, three), 8));
}

static float decode_ptq1_0_neon(const void * vblock, uint8_t * codes) {
    const block_ptq1_0 * block = (const block_ptq1_0 *) vblock;
    const uint8x16_t stage1 = vld1q_u8(block->qs);          // qs[0..15]: element 16n + m
    const uint8x8_t  stage2 = vld1_u8(block->qs + 16);      // qs[16..23]: element 80 + 8n + m
    // qh[0], qh[1] alternating: byte 120 + i of the last 8 elements is qh[i % 2], trit i / 2
    const uint8x8_t  qh = vreinterpret_u8_u16(vdup_n_u16((uint16_t) (block->qh[0] | (block->qh[1] << 8))));
    static const uint8_t pow3_pairs[3][16] = {
        {1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3},
        {9, 9, 9, 9, 9, 9, 9, 9, 27, 27, 27, 27, 27, 27, 27, 27},
        {81, 81, 81, 81, 81, 81, 81, 81, 1, 1, 3, 3, 9, 9, 27, 27},
    };
    for (int n = 0; n < 5; n++) {
        vst1q_u8(codes + 16 * n, trits_of(stage1, vdupq_n_u8(bonsai_pow3[n])));
    }
    const uint8x16_t stage2_twice = vcombine_u8(stage2, stage2);
    vst1q_u8(codes + 80, trits_of(stage2_twice, vld1q_u8(pow3_pairs[0])));            // 80..95
    vst1q_u8(codes + 96, trits_of(stage2_twice, vld1q_u8(pow3_pairs[1])));            // 96..111
    vst1q_u8(codes + 112, trits_of(vcombine_u8(stage2, qh), vld1q_u8(pow3_pairs[2])));  // 112..127
    return half_to_float_neon(block->d);
}

// ---- the interleaved panel ------------------------------------------------------------------

// An 8 x 8 transpose of 4-byte groups: row r's group g moves to position g * 8 + r. Done as
// four 4 x 4 transposes (rows 0-3 / 4-7, groups 0-3 / 4-7).
static void interleave_neon(const uint8_t * rows, size_t stride, uint8_t * out) {
    for (int row_half = 0; row_half < 2; row_half++) {
        for (int group_half = 0; group_half < 2; group_half++) {
            uint32x4_t r[4];
            for (int i = 0; i < 4; i++) {
                r[i] = vreinterpretq_u32_u8(vld1q_u8(rows + (4 * row_half + i) * stride + 16 * group_half));
            }
            const uint32x4_t t0 = vtrn1q_u32(r[0], r[1]);  // r0g0 r1g0 r0g2 r1g2
            const uint32x4_t t1 = vtrn2q_u32(r[0], r[1]);  // r0g1 r1g1 r0g3 r1g3
            const uint32x4_t t2 = vtrn1q_u32(r[2], r[3]);
            const uint32x4_t t3 = vtrn2q_u32(r[2], r[3]);
            const uint64x2_t columns[4] = {
                vtrn1q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2)),  // group 0: rows 0..3
                vtrn1q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3)),  // group 1
                vtrn2q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2)),  // group 2
                vtrn2q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3)),  // group 3
            };
            for (int g = 0; g < 4; g++) {
                vst1q_u8(out + (4 * group_half + g) * 32 + 16 * row_half, vreinterpretq_u8_u64(columns[g]));
            }
        }
    }
}

// ---- activations ----------------------------------------------------------------------------

static void prepare_neon(const block_q8_0_act * act, int nb, int32_t * sums, float * scales) {
    for (int b = 0; b < nb; b++) {
        sums[b]   = vaddlvq_s8(vld1q_s8(act[b].qs)) + vaddlvq_s8(vld1q_s8(act[b].qs + 16));
        scales[b] = half_to_float_neon(act[b].d);
    }
}

// ---- the 8 x 2 tile -------------------------------------------------------------------------

// Sum over the block of code * q for four weight rows: `codes` is the panel block, offset to
// rows 0-3 (+0) or 4-7 (+16); q holds the activation block's 32 bytes.
static inline int32x4_t block_dot4(const uint8_t * codes, int8x16_t q_low, int8x16_t q_high) {
#if defined(__ARM_FEATURE_DOTPROD)
    // sdot by element: lane i += sum_k code[4i + k] * q[4g + k] (codes <= 3 fit int8)
    int32x4_t sum = vdupq_n_s32(0);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 0 * 32), q_low, 0);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 1 * 32), q_low, 1);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 2 * 32), q_low, 2);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 3 * 32), q_low, 3);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 4 * 32), q_high, 0);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 5 * 32), q_high, 1);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 6 * 32), q_high, 2);
    sum = vdotq_laneq_s32(sum, vld1q_s8((const int8_t *) codes + 7 * 32), q_high, 3);
    return sum;
#else
    // Widening multiply-accumulate: int16 lane (row, k) sums one product per group,
    // |value| <= 8 * 3 * 128, then pairwise adds fold the four k of each row.
    int16x8_t rows01 = vdupq_n_s16(0), rows23 = vdupq_n_s16(0);
    for (int g = 0; g < 8; g++) {
        const int8x16_t w = vld1q_s8((const int8_t *) codes + g * 32);
        const int32x4_t half = vreinterpretq_s32_s8(g < 4 ? q_low : q_high);
        int32x4_t group;
        switch (g % 4) {  // the lane index must be a constant
            case 0:  group = vdupq_laneq_s32(half, 0); break;
            case 1:  group = vdupq_laneq_s32(half, 1); break;
            case 2:  group = vdupq_laneq_s32(half, 2); break;
            default: group = vdupq_laneq_s32(half, 3); break;
        }
        const int8x16_t q = vreinterpretq_s8_s32(group);
        rows01 = vmlal_s8(rows01, vget_low_s8(w), vget_low_s8(q));
        rows23 = vmlal_high_s8(rows23, w, q);
    }
    return vpaddq_s32(vpaddlq_s16(rows01), vpaddlq_s16(rows23));
#endif
}

static void tile_neon(const uint8_t * panel, const float * wscale, const block_q8_0_act * const * act,
                      const int32_t * const * sums, const float * const * scales, int nb, float * acc_io) {
    float32x4_t acc[BONSAI_TILE_COLS][2];
    for (int c = 0; c < BONSAI_TILE_COLS; c++) {
        for (int h = 0; h < 2; h++) {
            acc[c][h] = vld1q_f32(acc_io + c * BONSAI_TILE_ROWS + 4 * h);
        }
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t * codes = panel + b * BONSAI_BLOCK_CODES;
        for (int c = 0; c < BONSAI_TILE_COLS; c++) {
            const int8x16_t   q_low  = vld1q_s8(act[c][b].qs);
            const int8x16_t   q_high = vld1q_s8(act[c][b].qs + 16);
            const int32x4_t   q_sum  = vdupq_n_s32(sums[c][b]);
            const float32x4_t d_a    = vdupq_n_f32(scales[c][b]);
            for (int h = 0; h < 2; h++) {  // rows 0-3, then 4-7
                const int32x4_t   isum  = vsubq_s32(block_dot4(codes + 16 * h, q_low, q_high), q_sum);
                const float32x4_t scale = vmulq_f32(vld1q_f32(wscale + b * BONSAI_TILE_ROWS + 4 * h), d_a);  // exact
                acc[c][h] = vfmaq_f32(acc[c][h], scale, vcvtq_f32_s32(isum));
            }
        }
    }
    for (int c = 0; c < BONSAI_TILE_COLS; c++) {
        for (int h = 0; h < 2; h++) {
            vst1q_f32(acc_io + c * BONSAI_TILE_ROWS + 4 * h, acc[c][h]);
        }
    }
}

// ---- entry points ---------------------------------------------------------------------------

// One row against one activation row, the scalar kernel's order, with NEON decode and sums:
// the signed levels c - 1 times q, widened and summed.
static float dot_row_neon(const struct bonsai_tile_ops * ops, int n, const void * vx, const block_q8_0_act * act) {
    uint8_t codes[128];
    const uint8_t * block = (const uint8_t *) vx;
    float acc = 0.0f;
    for (int e = 0; e < n; e += ops->block_elems, block += ops->block_bytes) {
        const float d_w = ops->decode(block, codes);
        for (int b = 0; b < ops->block_elems / QK8_0_ACT; b++, act++) {
            int16x8_t products = vdupq_n_s16(0);  // four products per lane: |value| <= 4 * 2 * 128
            for (int half = 0; half < 2; half++) {
                const int8x16_t level =
                    vsubq_s8(vreinterpretq_s8_u8(vld1q_u8(codes + b * QK8_0_ACT + 16 * half)), vdupq_n_s8(1));
                const int8x16_t q = vld1q_s8(act->qs + 16 * half);
                products = vmlal_s8(products, vget_low_s8(level), vget_low_s8(q));
                products = vmlal_high_s8(products, level, q);
            }
            const int32_t isum = vaddlvq_s16(products);
            acc = fmaf(d_w * half_to_float_neon(act->d), (float) isum, acc);
        }
    }
    return acc;
}

#define BONSAI_DEFINE_NEON_KERNELS(T, ELEMS)                                                        \
    static const struct bonsai_tile_ops ops_##T = {                                                 \
        ELEMS, sizeof(block_##T), decode_##T##_neon, interleave_neon, prepare_neon, tile_neon,      \
    };                                                                                              \
    void bonsai_gemm_##T##_q8_0_neon(int n, int nr, int nc, float * dst, size_t ldd,                \
                                     const void * vx, size_t bx, const void * vy, size_t by) {      \
        bonsai_gemm_tiled(&ops_##T, n, nr, nc, dst, ldd, vx, bx, vy, by);                           \
    }                                                                                               \
    void bonsai_vec_dot_##T##_q8_0_neon(int n, float * s, size_t bs, const void * vx, size_t bx,    \
                                        const void * vy, size_t by, int nrc) {                      \
        assert(nrc == 1);                                                                           \
        (void) bs; (void) bx; (void) by; (void) nrc;                                                \
        *s = dot_row_neon(&ops_##T, n, vx, (const block_q8_0_act *) vy);                            \
    }

BONSAI_DEFINE_NEON_KERNELS(q1_0, QK1_0)
BONSAI_DEFINE_NEON_KERNELS(q2_0, QK2_0)
BONSAI_DEFINE_NEON_KERNELS(pq2_0, QKPQ2_0)
BONSAI_DEFINE_NEON_KERNELS(ptq1_0, QKPTQ1_0)

#endif  // __ARM_NEON && __aarch64__
