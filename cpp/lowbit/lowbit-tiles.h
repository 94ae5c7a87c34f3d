// The gemm driver shared by the SIMD kernel files (lowbit-avx2.c, lowbit-neon.c).
//
// It walks the nr x nc output in register tiles of 8 weight rows x 2 activation rows, and K
// in chunks of up to 1024 elements:
//   - the activation rows of a column panel (up to 64 rows) get their per-block sums and fp32
//     scales computed once per chunk, shared by every weight row;
//   - the 8 weight rows of a tile are decoded once per chunk into a code panel, shared by every
//     activation row of the column panel;
//   - the SIMD tile function runs the panel against two activation rows, block by block.
//
// Panel layout: codes (one byte per element, see lowbit-impl.h) interleaved by 4 elements
// across the 8 rows. For 32-element block b, group g (elements 4g .. 4g+3) and row r, the four
// codes sit at panel[((b * 8 + g) * 8 + r) * 4]. One 32-byte vector then holds the same four
// elements of all 8 rows, so a kernel multiplies it by four activation bytes broadcast to every
// lane and gets one partial sum per row: no horizontal reduction is needed.
//
// A tile keeps one running sum per (activation row c, weight row r) in acc[c * 8 + r];
// between chunks the sums are parked in dst (a float store and reload is exact), so every
// output sees the same block-order fused multiply-adds as the scalar kernel.

#ifndef BONSAI_LOWBIT_TILES_H
#define BONSAI_LOWBIT_TILES_H

#include "lowbit-impl.h"

#include <assert.h>

#define BONSAI_TILE_ROWS    8
#define BONSAI_TILE_COLS    2
#define BONSAI_GROUP_ELEMS  4     // elements per interleaved group
#define BONSAI_CHUNK_K      1024  // a multiple of 128, so chunks never split a weight block
#define BONSAI_CHUNK_BLOCKS (BONSAI_CHUNK_K / QK8_0_ACT)
#define BONSAI_PANEL_COLS   64    // activation rows sharing one decoded weight panel
#define BONSAI_BLOCK_CODES  (QK8_0_ACT * BONSAI_TILE_ROWS)  // panel bytes per 32-element block

struct bonsai_tile_ops {
    int              block_elems;
    int              block_bytes;
    bonsai_decode_fn decode;  // the SIMD decoder: same codes and d as the scalar one

    // Interleaves one 32-element block of 8 code rows (row r at rows + r * stride) into the
    // panel layout: out[(g * 8 + r) * 4 + i] = row r's code 4g + i.
    void (*interleave)(const uint8_t * rows, size_t stride, uint8_t * out);

    // For activation blocks [0, nb) of one row: sums[b] = sum of the 32 int8 of block b,
    // scales[b] = its d as fp32.
    void (*prepare)(const block_q8_0_act * act, int nb, int32_t * sums, float * scales);

    // Runs panel blocks [0, nb) against activation rows act[c] (pointing at the chunk's first
    // block), c < BONSAI_TILE_COLS. wscale[b * 8 + r]: d of weight row r for block b.
    // Updates acc[c * 8 + r] in place.
    void (*tile)(const uint8_t * panel, const float * wscale, const block_q8_0_act * const * act,
                 const int32_t * const * sums, const float * const * scales, int nb, float * acc);
};

static inline int bonsai_min_int(int a, int b) {
    return a < b ? a : b;
}

// Decodes weight rows first_row .. first_row + 7 over K elements [k0, k0 + k_len) into the
// interleaved panel, through `rows` (8 rows of BONSAI_CHUNK_K codes in element order). Rows
// past nr repeat the last one; their results are never stored.
static void bonsai_decode_panel(const struct bonsai_tile_ops * ops, const void * vx, size_t bx, int first_row, int nr,
                                int k0, int k_len, uint8_t * rows, uint8_t * panel, float * wscale) {
    for (int r = 0; r < BONSAI_TILE_ROWS; r++) {
        const int row = bonsai_min_int(first_row + r, nr - 1);
        const uint8_t * block =
            (const uint8_t *) vx + (size_t) row * bx + (size_t) (k0 / ops->block_elems) * ops->block_bytes;
        for (int e = 0; e < k_len; e += ops->block_elems, block += ops->block_bytes) {
            const float d = ops->decode(block, rows + r * BONSAI_CHUNK_K + e);
            for (int b = e / QK8_0_ACT; b < (e + ops->block_elems) / QK8_0_ACT; b++) {
                wscale[b * BONSAI_TILE_ROWS + r] = d;
            }
        }
    }
    for (int b = 0; b < k_len / QK8_0_ACT; b++) {
        ops->interleave(rows + b * QK8_0_ACT, BONSAI_CHUNK_K, panel + b * BONSAI_BLOCK_CODES);
    }
}

// Moves a tile's running sums between acc and dst, for the rows and columns inside the output.
static void bonsai_tile_io(float * dst, size_t ldd, int row0, int rows, int col0, int cols, float * acc, bool to_dst) {
    for (int c = 0; c < cols; c++) {
        float * out = dst + (size_t) (col0 + c) * ldd + row0;
        if (to_dst) {
            memcpy(out, acc + c * BONSAI_TILE_ROWS, (size_t) rows * sizeof(float));
        } else {
            memcpy(acc + c * BONSAI_TILE_ROWS, out, (size_t) rows * sizeof(float));
        }
    }
}

static void bonsai_gemm_tiled(const struct bonsai_tile_ops * ops, int n, int nr, int nc, float * dst, size_t ldd,
                              const void * vx, size_t bx, const void * vy, size_t by) {
    assert(n % ops->block_elems == 0);
    if (n == 0) {  // empty sums (the chunk loop below would not write dst at all)
        for (int c = 0; c < nc; c++) {
            memset(dst + (size_t) c * ldd, 0, (size_t) nr * sizeof(float));
        }
        return;
    }
    _Alignas(32) uint8_t rows_codes[BONSAI_TILE_ROWS * BONSAI_CHUNK_K];
    _Alignas(32) uint8_t panel[BONSAI_CHUNK_BLOCKS * BONSAI_BLOCK_CODES];
    _Alignas(32) float   wscale[BONSAI_CHUNK_BLOCKS * BONSAI_TILE_ROWS];
    int32_t sums[BONSAI_PANEL_COLS][BONSAI_CHUNK_BLOCKS];
    float   scales[BONSAI_PANEL_COLS][BONSAI_CHUNK_BLOCKS];
    const block_q8_0_act * act[BONSAI_PANEL_COLS];

    for (int col_first = 0; col_first < nc; col_first += BONSAI_PANEL_COLS) {
        const int panel_cols = bonsai_min_int(BONSAI_PANEL_COLS, nc - col_first);
        for (int k0 = 0; k0 < n; k0 += BONSAI_CHUNK_K) {
            const int k_len = bonsai_min_int(BONSAI_CHUNK_K, n - k0);
            const int nb    = k_len / QK8_0_ACT;
            for (int c = 0; c < panel_cols; c++) {
                act[c] = (const block_q8_0_act *) ((const char *) vy + (size_t) (col_first + c) * by) + k0 / QK8_0_ACT;
                ops->prepare(act[c], nb, sums[c], scales[c]);
            }
            for (int row0 = 0; row0 < nr; row0 += BONSAI_TILE_ROWS) {
                const int rows = bonsai_min_int(BONSAI_TILE_ROWS, nr - row0);
                bonsai_decode_panel(ops, vx, bx, row0, nr, k0, k_len, rows_codes, panel, wscale);
                for (int c0 = 0; c0 < panel_cols; c0 += BONSAI_TILE_COLS) {
                    const int cols = bonsai_min_int(BONSAI_TILE_COLS, panel_cols - c0);
                    // a missing last column repeats the one before (computed, never stored)
                    const block_q8_0_act * tile_act[BONSAI_TILE_COLS];
                    const int32_t *        tile_sums[BONSAI_TILE_COLS];
                    const float *          tile_scales[BONSAI_TILE_COLS];
                    for (int c = 0; c < BONSAI_TILE_COLS; c++) {
                        const int col  = c0 + bonsai_min_int(c, cols - 1);
                        tile_act[c]    = act[col];
                        tile_sums[c]   = sums[col];
                        tile_scales[c] = scales[col];
                    }
                    float acc[BONSAI_TILE_COLS * BONSAI_TILE_ROWS] = {0};
                    if (k0 > 0) {
                        bonsai_tile_io(dst, ldd, row0, rows, col_first + c0, cols, acc, false);
                    }
                    ops->tile(panel, wscale, tile_act, tile_sums, tile_scales, nb, acc);
                    bonsai_tile_io(dst, ldd, row0, rows, col_first + c0, cols, acc, true);
                }
            }
        }
    }
}

#endif  // BONSAI_LOWBIT_TILES_H
