// Glue between ggml-cpu's MUL_MAT and the low-bit gemm kernels.
//
// ggml splits a MUL_MAT into chunks of src0 rows x src1 rows and hands each to a thread.
// Its generic path calls vec_dot once per (row, column) pair; for our types the chunk
// goes to a gemm kernel instead, which decodes every weight block once per register tile
// of activation rows.

#include "lowbit-ggml-cpu.h"

#include "ggml.h"
#include "lowbit.h"

typedef void (*bonsai_gemm_fn)(int n, int nr, int nc, float * dst, size_t ldd, const void * vx, size_t bx,
                               const void * vy, size_t by);

static bonsai_gemm_fn gemm_for_type(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q1_0:   return bonsai_gemm_q1_0_q8_0;
        case GGML_TYPE_Q2_0:   return bonsai_gemm_q2_0_q8_0;
        case GGML_TYPE_PQ2_0:  return bonsai_gemm_pq2_0_q8_0;
        case GGML_TYPE_PTQ1_0: return bonsai_gemm_ptq1_0_q8_0;
        default:               return NULL;
    }
}

bool bonsai_cpu_mul_mat_chunk(const struct ggml_tensor * dst, const void * src1_q8, size_t src1_row_size,
                              int64_t ir0_start, int64_t ir0_end, int64_t ir1_start, int64_t ir1_end) {
    const struct ggml_tensor * src0 = dst->src[0];
    const struct ggml_tensor * src1 = dst->src[1];
    const bonsai_gemm_fn gemm = gemm_for_type(src0->type);
    if (gemm == NULL) {
        return false;
    }

    const int64_t ne1  = dst->ne[1];
    const int64_t ne12 = src1->ne[2];
    const int64_t r2   = src1->ne[2] / src0->ne[2];  // broadcast of src0 over src1's dims 2, 3
    const int64_t r3   = src1->ne[3] / src0->ne[3];
    const int     nr   = (int) (ir0_end - ir0_start);

    // Flattened src1 row ir1 = i11 + i12*ne11 + i13*ne12*ne11 (ne11 == ne1); a gemm call
    // stays inside one (i12, i13) slice, where src0, src1 and dst rows are evenly spaced.
    for (int64_t ir1 = ir1_start; ir1 < ir1_end;) {
        const int64_t i13 = ir1 / (ne12 * ne1);
        const int64_t i12 = (ir1 - i13 * ne12 * ne1) / ne1;
        const int64_t i11 = ir1 - i13 * ne12 * ne1 - i12 * ne1;
        const int64_t nc  = ne1 - i11 < ir1_end - ir1 ? ne1 - i11 : ir1_end - ir1;

        const char * w = (const char *) src0->data + (i12 / r2) * src0->nb[2] + (i13 / r3) * src0->nb[3] +
                         ir0_start * src0->nb[1];
        const char * a = (const char *) src1_q8 + ir1 * src1_row_size;
        float * d = (float *) ((char *) dst->data + i11 * dst->nb[1] + i12 * dst->nb[2] + i13 * dst->nb[3]) +
                    ir0_start;

        gemm((int) src0->ne[0], nr, (int) nc, d, dst->nb[1] / sizeof(float), w, src0->nb[1], a, src1_row_size);
        ir1 += nc;
    }
    return true;
}
