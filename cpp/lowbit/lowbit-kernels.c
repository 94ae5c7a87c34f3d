// bonsai-sd low-bit types: the scalar CPU kernels (the reference every SIMD variant must match
// bit for bit) and the unsuffixed entry points, which pick the best variant compiled in.
//
// What every kernel computes, for weight row W (codes c, block scale d_w; see lowbit-impl.h)
// against activation row A (Q8_0 blocks of 32: scale d_a, int8 q):
//
//     acc = 0
//     for each 32-element activation block b, in K order:
//         isum = sum_j (c_j - 1) * q_j                  exact in int32
//         acc  = fmaf(d_w * d_a, (float) isum, acc)
//
// d_w * d_a is exact in fp32 (two fp16 significands of 11 bits), and |isum| <= 2 * 128 * 32 is
// exact too, so the fused multiply-add once per block, in block order, is the only rounding.
// A variant that keeps that order reproduces the scalar result exactly.

#include "lowbit-impl.h"

#include <assert.h>
#include <math.h>

static void gemm_scalar(const struct bonsai_weight_traits * traits, int n, int nr, int nc, float * dst, size_t ldd,
                        const void * vx, size_t bx, const void * vy, size_t by) {
    assert(n % traits->block_elems == 0);
    const int act_blocks_per_weight_block = traits->block_elems / QK8_0_ACT;

    for (int i = 0; i < nr; i++) {
        const uint8_t * weight_row = (const uint8_t *) vx + (size_t) i * bx;
        for (int j = 0; j < nc; j++) {
            dst[(size_t) j * ldd + i] = 0.0f;
        }
        // Decode each weight block once and run it against every activation row; dst holds the
        // running sums between blocks (a float store and load is exact).
        for (int kb = 0; kb < n / traits->block_elems; kb++) {
            uint8_t codes[128];
            const float d_w = traits->decode(weight_row + (size_t) kb * traits->block_bytes, codes);
            for (int j = 0; j < nc; j++) {
                const block_q8_0_act * act =
                    (const block_q8_0_act *) ((const char *) vy + (size_t) j * by) + kb * act_blocks_per_weight_block;
                float acc = dst[(size_t) j * ldd + i];
                for (int b = 0; b < act_blocks_per_weight_block; b++) {
                    int32_t isum = 0;
                    for (int l = 0; l < QK8_0_ACT; l++) {
                        isum += (codes[b * QK8_0_ACT + l] - 1) * act[b].qs[l];
                    }
                    acc = fmaf(d_w * bonsai_fp16_to_fp32(act[b].d), (float) isum, acc);
                }
                dst[(size_t) j * ldd + i] = acc;
            }
        }
    }
}

#define BONSAI_DEFINE_SCALAR_KERNELS(T)                                                                      \
    void bonsai_gemm_##T##_q8_0_scalar(int n, int nr, int nc, float * dst, size_t ldd, const void * vx,      \
                                       size_t bx, const void * vy, size_t by) {                              \
        gemm_scalar(&bonsai_traits_##T, n, nr, nc, dst, ldd, vx, bx, vy, by);                                \
    }                                                                                                        \
    void bonsai_vec_dot_##T##_q8_0_scalar(int n, float * s, size_t bs, const void * vx, size_t bx,           \
                                          const void * vy, size_t by, int nrc) {                             \
        assert(nrc == 1);                                                                                    \
        (void) bs; (void) bx; (void) by; (void) nrc;                                                         \
        gemm_scalar(&bonsai_traits_##T, n, 1, 1, s, 0, vx, 0, vy, 0);                                        \
    }

BONSAI_DEFINE_SCALAR_KERNELS(q1_0)
BONSAI_DEFINE_SCALAR_KERNELS(q2_0)
BONSAI_DEFINE_SCALAR_KERNELS(pq2_0)
BONSAI_DEFINE_SCALAR_KERNELS(ptq1_0)

// ---- dispatch (compile time: the build's target flags decide) -------------------------------

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#    define BONSAI_SIMD_SUFFIX _avx2
#    define BONSAI_SIMD_NAME "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#    define BONSAI_SIMD_SUFFIX _neon
#    define BONSAI_SIMD_NAME "neon"
#else
#    define BONSAI_SIMD_SUFFIX _scalar
#    define BONSAI_SIMD_NAME "scalar"
#endif

#define BONSAI_PASTE_(a, b) a##b
#define BONSAI_PASTE(a, b) BONSAI_PASTE_(a, b)

#define BONSAI_DEFINE_DISPATCH(T)                                                                            \
    void bonsai_gemm_##T##_q8_0(int n, int nr, int nc, float * dst, size_t ldd, const void * vx, size_t bx,  \
                                const void * vy, size_t by) {                                                \
        BONSAI_PASTE(bonsai_gemm_##T##_q8_0, BONSAI_SIMD_SUFFIX)(n, nr, nc, dst, ldd, vx, bx, vy, by);       \
    }                                                                                                        \
    void bonsai_vec_dot_##T##_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, \
                                   size_t by, int nrc) {                                                     \
        BONSAI_PASTE(bonsai_vec_dot_##T##_q8_0, BONSAI_SIMD_SUFFIX)(n, s, bs, vx, bx, vy, by, nrc);          \
    }

BONSAI_DEFINE_DISPATCH(q1_0)
BONSAI_DEFINE_DISPATCH(q2_0)
BONSAI_DEFINE_DISPATCH(pq2_0)
BONSAI_DEFINE_DISPATCH(ptq1_0)

const char * bonsai_lowbit_simd(void) {
    return BONSAI_SIMD_NAME;
}
