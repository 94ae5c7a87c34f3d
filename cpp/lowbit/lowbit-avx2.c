// bonsai-sd low-bit types: AVX2 kernels (x86-64 with AVX2, FMA and F16C, as ggml's AVX2 build).
//
// Same arithmetic as the scalar reference in lowbit-kernels.c, bit for bit: per 32-element
// block an exact int32 sum, then one fused multiply-add of d_w * d_a into the running sum.
// The int32 sum uses codes c in 0..3 (unsigned, as maddubs wants):
//     sum (c - 1) * q  =  sum c * q  -  sum q
// where sum q is computed once per activation block and shared by every weight row. The gemm
// tile multiplies the interleaved code panel (lowbit-tiles.h) by broadcast activation bytes, so
// the eight weight rows' sums come out in the eight lanes of one vector.

#include "lowbit.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include "lowbit-tiles.h"

#include <immintrin.h>
#include <math.h>

// ---- decoders: one weight block -> codes (one byte per element) and d ----------------------

static float decode_q1_0_avx2(const void * vblock, uint8_t * codes) {
    const block_q1_0 * block = (const block_q1_0 *) vblock;
    // byte j of 32 takes bit-byte j / 8 and tests bit j % 8
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((int64_t) 0x8040201008040201ull);
    for (int quarter = 0; quarter < 4; quarter++) {
        uint32_t bits;
        memcpy(&bits, block->qs + 4 * quarter, sizeof(bits));
        const __m256i spread_bits = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t) bits), spread);
        const __m256i is_set = _mm256_cmpeq_epi8(_mm256_and_si256(spread_bits, bit), bit);
        _mm256_storeu_si256((__m256i *) (codes + 32 * quarter), _mm256_and_si256(is_set, _mm256_set1_epi8(2)));
    }
    return _cvtsh_ss(block->d);
}

// 16 bytes of 2-bit fields -> 64 codes. Field k of byte m is element 4m + k: split the four
// fields into planes, then interleave the planes back into element order. (Stored as two
// 32-byte vectors: readers load 32 bytes, and a load that spans two smaller stores misses
// store-to-load forwarding.)
static void decode_2bit_16_bytes(const uint8_t * qs, uint8_t * codes) {
    const __m128i q     = _mm_loadu_si128((const __m128i *) qs);
    const __m128i three = _mm_set1_epi8(3);
    const __m128i p0 = _mm_and_si128(q, three);
    const __m128i p1 = _mm_and_si128(_mm_srli_epi16(q, 2), three);
    const __m128i p2 = _mm_and_si128(_mm_srli_epi16(q, 4), three);
    const __m128i p3 = _mm_and_si128(_mm_srli_epi16(q, 6), three);
    const __m128i fields01_lo = _mm_unpacklo_epi8(p0, p1);  // elements 4m, 4m+1 for m = 0..7
    const __m128i fields23_lo = _mm_unpacklo_epi8(p2, p3);  // elements 4m+2, 4m+3
    const __m128i fields01_hi = _mm_unpackhi_epi8(p0, p1);  // m = 8..15
    const __m128i fields23_hi = _mm_unpackhi_epi8(p2, p3);
    _mm256_storeu_si256((__m256i *) codes, _mm256_set_m128i(_mm_unpackhi_epi16(fields01_lo, fields23_lo),
                                                            _mm_unpacklo_epi16(fields01_lo, fields23_lo)));
    _mm256_storeu_si256((__m256i *) (codes + 32), _mm256_set_m128i(_mm_unpackhi_epi16(fields01_hi, fields23_hi),
                                                                   _mm_unpacklo_epi16(fields01_hi, fields23_hi)));
}

static float decode_q2_0_avx2(const void * vblock, uint8_t * codes) {
    const block_q2_0 * block = (const block_q2_0 *) vblock;
    decode_2bit_16_bytes(block->qs, codes);
    return _cvtsh_ss(block->d);
}

static float decode_pq2_0_avx2(const void * vblock, uint8_t * codes) {
    const block_pq2_0 * block = (const block_pq2_0 *) vblock;
    decode_2bit_16_bytes(block->qs, codes);
    decode_2bit_16_bytes(block->qs + 16, codes + 64);
    return _cvtsh_ss(block->d);
}

// Trits of 16 bytes held in the high halves of 16-bit lanes (low halves zero): a 16-bit
// multiply by 3^n leaves (byte * 3^n mod 256) in the high half, and the high half of a further
// multiply by 3 is the trit (the scalar rule ((uint8_t)(q * 3^n) * 3) >> 8).
static inline __m256i trits_of(__m256i bytes_high, __m256i pow3) {
    return _mm256_mulhi_epu16(_mm256_mullo_epi16(bytes_high, pow3), _mm256_set1_epi16(3));
}

// Two vectors of 16 trits (16-bit lanes) -> 32 code bytes, a's elements first.
static inline void store_trits(uint8_t * codes, __m256i a, __m256i b) {
    const __m256i packed = _mm256_packus_epi16(a, b);  // a0-7 b0-7 | a8-15 b8-15
    _mm256_storeu_si256((__m256i *) codes, _mm256_permute4x64_epi64(packed, _MM_SHUFFLE(3, 1, 2, 0)));
}

static float decode_ptq1_0_avx2(const void * vblock, uint8_t * codes) {
    const block_ptq1_0 * block = (const block_ptq1_0 *) vblock;
    const uint8_t * bytes = block->qs;  // qs[0..23], qh[0..1]: 26 bytes
    // Both 128-bit lanes hold the same 16 bytes, so in-lane shuffles can reach all of them.
    const __m256i head = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) bytes));         // 0..15
    const __m256i tail = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) (bytes + 10)));  // 10..25
    const int8_t Z = -128;  // shuffle index that writes a zero byte
    // 16-bit lane l <- qs[l]: elements 16n + l for trit n
    const __m256i stage1 = _mm256_shuffle_epi8(head, _mm256_setr_epi8(
        Z, 0, Z, 1, Z, 2, Z, 3, Z, 4, Z, 5, Z, 6, Z, 7, Z, 8, Z, 9, Z, 10, Z, 11, Z, 12, Z, 13, Z, 14, Z, 15));
    // lanes 0-7 and 8-15 <- qs[16..23] (tail offsets 6..13): elements 80 + 8n + l
    const __m256i stage2 = _mm256_shuffle_epi8(tail, _mm256_setr_epi8(
        Z, 6, Z, 7, Z, 8, Z, 9, Z, 10, Z, 11, Z, 12, Z, 13, Z, 6, Z, 7, Z, 8, Z, 9, Z, 10, Z, 11, Z, 12, Z, 13));
    // lanes 0-7 <- qs[16..23]; lanes 8-15 <- qh[0], qh[1] alternating (tail offsets 14, 15)
    const __m256i stage3 = _mm256_shuffle_epi8(tail, _mm256_setr_epi8(
        Z, 6, Z, 7, Z, 8, Z, 9, Z, 10, Z, 11, Z, 12, Z, 13, Z, 14, Z, 15, Z, 14, Z, 15, Z, 14, Z, 15, Z, 14, Z, 15));

    store_trits(codes + 0,  trits_of(stage1, _mm256_set1_epi16(1)), trits_of(stage1, _mm256_set1_epi16(3)));
    store_trits(codes + 32, trits_of(stage1, _mm256_set1_epi16(9)), trits_of(stage1, _mm256_set1_epi16(27)));
    // elements 64..79 (trit 4 of qs[0..15]) and 80..95 (trits 0, 1 of qs[16..23])
    store_trits(codes + 64, trits_of(stage1, _mm256_set1_epi16(81)),
                trits_of(stage2, _mm256_setr_epi16(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3)));
    // elements 96..111 (trits 2, 3 of qs[16..23]), 112..119 (trit 4) and 120..127 (qh trits 0..3)
    store_trits(codes + 96, trits_of(stage2, _mm256_setr_epi16(9, 9, 9, 9, 9, 9, 9, 9, 27, 27, 27, 27, 27, 27, 27, 27)),
                trits_of(stage3, _mm256_setr_epi16(81, 81, 81, 81, 81, 81, 81, 81, 1, 1, 3, 3, 9, 9, 27, 27)));
    return _cvtsh_ss(block->d);
}

// ---- the interleaved panel ------------------------------------------------------------------

// An 8 x 8 transpose of 4-byte groups: row r's group g moves to position g * 8 + r.
static void interleave_avx2(const uint8_t * rows, size_t stride, uint8_t * out) {
    __m256i row[8], pair[8], quad[8];
    for (int r = 0; r < 8; r++) {
        row[r] = _mm256_load_si256((const __m256i *) (rows + r * stride));
    }
    for (int r = 0; r < 8; r += 2) {
        pair[r]     = _mm256_unpacklo_epi32(row[r], row[r + 1]);  // per 128-bit half: groups 0,1 (4,5)
        pair[r + 1] = _mm256_unpackhi_epi32(row[r], row[r + 1]);  // groups 2,3 (6,7)
    }
    for (int h = 0; h < 8; h += 4) {  // rows 0-3, then 4-7
        quad[h + 0] = _mm256_unpacklo_epi64(pair[h], pair[h + 2]);      // group 0 (4)
        quad[h + 1] = _mm256_unpackhi_epi64(pair[h], pair[h + 2]);      // group 1 (5)
        quad[h + 2] = _mm256_unpacklo_epi64(pair[h + 1], pair[h + 3]);  // group 2 (6)
        quad[h + 3] = _mm256_unpackhi_epi64(pair[h + 1], pair[h + 3]);  // group 3 (7)
    }
    for (int g = 0; g < 4; g++) {
        _mm256_store_si256((__m256i *) (out + 32 * g), _mm256_permute2x128_si256(quad[g], quad[g + 4], 0x20));
        _mm256_store_si256((__m256i *) (out + 32 * (g + 4)), _mm256_permute2x128_si256(quad[g], quad[g + 4], 0x31));
    }
}

// ---- activations ----------------------------------------------------------------------------

static inline __m256i load_act(const block_q8_0_act * block) {
    return _mm256_loadu_si256((const __m256i *) block->qs);
}

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// Sum of 32 int8: bias to unsigned (x ^ 0x80 = x + 128), sum absolute differences against 0.
static inline int32_t sum_act(const block_q8_0_act * block) {
    const __m256i biased = _mm256_xor_si256(load_act(block), _mm256_set1_epi8((char) 0x80));
    return hsum_epi32(_mm256_sad_epu8(biased, _mm256_setzero_si256())) - 32 * 128;
}

static void prepare_avx2(const block_q8_0_act * act, int nb, int32_t * sums, float * scales) {
    for (int b = 0; b < nb; b++) {
        sums[b]   = sum_act(&act[b]);
        scales[b] = _cvtsh_ss(act[b].d);
    }
}

// ---- the 8 x 2 tile -------------------------------------------------------------------------

// Group g of a block: the panel vector of elements 4g .. 4g+3 of the 8 rows, against those four
// activation bytes of each column broadcast to every 32-bit lane (`half` holds bytes 0..15 for
// g < 4, 16..31 for g >= 4, in both 128-bit lanes, so an in-lane shuffle broadcasts them).
// maddubs leaves two int16 per row; over the 8 groups each sums 16 products,
// |value| <= 16 * 3 * 128, so int16 neither saturates nor wraps.
#define BONSAI_GROUP_DOT(g, half)                                                                   \
    do {                                                                                            \
        const __m256i w = _mm256_load_si256((const __m256i *) (codes + (g) * 32));                  \
        for (int c = 0; c < BONSAI_TILE_COLS; c++) {                                                \
            const __m256i q = _mm256_shuffle_epi32(half[c], ((g) % 4) * 0x55);                      \
            dot[c] = _mm256_add_epi16(dot[c], _mm256_maddubs_epi16(w, q));                          \
        }                                                                                           \
    } while (0)

static void tile_avx2(const uint8_t * panel, const float * wscale, const block_q8_0_act * const * act,
                      const int32_t * const * sums, const float * const * scales, int nb, float * acc_io) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[BONSAI_TILE_COLS];
    for (int c = 0; c < BONSAI_TILE_COLS; c++) {
        acc[c] = _mm256_loadu_ps(acc_io + c * BONSAI_TILE_ROWS);
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t * codes = panel + b * BONSAI_BLOCK_CODES;
        __m256i low[BONSAI_TILE_COLS], high[BONSAI_TILE_COLS], dot[BONSAI_TILE_COLS];
        for (int c = 0; c < BONSAI_TILE_COLS; c++) {
            low[c]  = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) act[c][b].qs));
            high[c] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) (act[c][b].qs + 16)));
            dot[c]  = _mm256_setzero_si256();
        }
        BONSAI_GROUP_DOT(0, low);
        BONSAI_GROUP_DOT(1, low);
        BONSAI_GROUP_DOT(2, low);
        BONSAI_GROUP_DOT(3, low);
        BONSAI_GROUP_DOT(4, high);
        BONSAI_GROUP_DOT(5, high);
        BONSAI_GROUP_DOT(6, high);
        BONSAI_GROUP_DOT(7, high);
        // lane r: sum c*q - sum q of row r (exact), then one fma with d_w * d_a (an exact product)
        const __m256 d_w = _mm256_load_ps(wscale + b * BONSAI_TILE_ROWS);
        for (int c = 0; c < BONSAI_TILE_COLS; c++) {
            const __m256i isum  = _mm256_sub_epi32(_mm256_madd_epi16(dot[c], ones), _mm256_set1_epi32(sums[c][b]));
            const __m256  scale = _mm256_mul_ps(d_w, _mm256_set1_ps(scales[c][b]));
            acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[c]);
        }
    }
    for (int c = 0; c < BONSAI_TILE_COLS; c++) {
        _mm256_storeu_ps(acc_io + c * BONSAI_TILE_ROWS, acc[c]);
    }
}

#undef BONSAI_GROUP_DOT

// ---- entry points ---------------------------------------------------------------------------

// One row against one activation row, the scalar kernel's order, with SIMD decode and sums.
static float dot_row_avx2(const struct bonsai_tile_ops * ops, int n, const void * vx, const block_q8_0_act * act) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m256i ones8  = _mm256_set1_epi8(1);
    _Alignas(32) uint8_t codes[128];
    const uint8_t * block = (const uint8_t *) vx;
    float acc = 0.0f;
    for (int e = 0; e < n; e += ops->block_elems, block += ops->block_bytes) {
        const float d_w = ops->decode(block, codes);
        for (int b = 0; b < ops->block_elems / QK8_0_ACT; b++, act++) {
            const __m256i w = _mm256_load_si256((const __m256i *) (codes + b * QK8_0_ACT));
            const __m256i q = load_act(act);
            const __m256i pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(w, q), _mm256_maddubs_epi16(ones8, q));
            const int32_t isum = hsum_epi32(_mm256_madd_epi16(pairs, ones16));
            acc = fmaf(d_w * _cvtsh_ss(act->d), (float) isum, acc);
        }
    }
    return acc;
}

#define BONSAI_DEFINE_AVX2_KERNELS(T, ELEMS)                                                        \
    static const struct bonsai_tile_ops ops_##T = {                                                 \
        ELEMS, sizeof(block_##T), decode_##T##_avx2, interleave_avx2, prepare_avx2, tile_avx2,      \
    };                                                                                              \
    void bonsai_gemm_##T##_q8_0_avx2(int n, int nr, int nc, float * dst, size_t ldd,                \
                                     const void * vx, size_t bx, const void * vy, size_t by) {      \
        bonsai_gemm_tiled(&ops_##T, n, nr, nc, dst, ldd, vx, bx, vy, by);                           \
    }                                                                                               \
    void bonsai_vec_dot_##T##_q8_0_avx2(int n, float * s, size_t bs, const void * vx, size_t bx,    \
                                        const void * vy, size_t by, int nrc) {                      \
        assert(nrc == 1);                                                                           \
        (void) bs; (void) bx; (void) by; (void) nrc;                                                \
        *s = dot_row_avx2(&ops_##T, n, vx, (const block_q8_0_act *) vy);                            \
    }

BONSAI_DEFINE_AVX2_KERNELS(q1_0, QK1_0)
BONSAI_DEFINE_AVX2_KERNELS(q2_0, QK2_0)
BONSAI_DEFINE_AVX2_KERNELS(pq2_0, QKPQ2_0)
BONSAI_DEFINE_AVX2_KERNELS(ptq1_0, QKPTQ1_0)

#endif  // __AVX2__ && __FMA__ && __F16C__
