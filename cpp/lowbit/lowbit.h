// bonsai-sd low-bit types: the one codec per type that every backend and test uses.
//
// Four block types, byte-exact with the wider ecosystem (shared DESIGN §4):
//   Q1_0   (ggml id  41) 128 elements, 18 B: fp16 d, then 16 B of sign bits
//   Q2_0   (ggml id  42)  64 elements, 18 B: fp16 d, then 16 B of 2-bit codes
//   PQ2_0  (ggml id 142) 128 elements, 34 B: fp16 d, then 32 B of 2-bit codes
//   PTQ1_0 (ggml id 143) 128 elements, 28 B: 24 B qs + 2 B qh of base-3 trits, then fp16 d
// Blocks run along a weight row (ggml ne[0], the K dimension of a matmul).
//
// This header does not include ggml: it is compiled into ggml-base / ggml-cpu through
// small hooks, and on its own into the test programs and the Metal shim tests.

#ifndef BONSAI_LOWBIT_H
#define BONSAI_LOWBIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- ids, sizes, blocks -----------------------------------------------------------------

enum bonsai_lowbit_type {
    BONSAI_TYPE_Q1_0   = 41,
    BONSAI_TYPE_Q2_0   = 42,
    BONSAI_TYPE_PQ2_0  = 142,
    BONSAI_TYPE_PTQ1_0 = 143,
};

static inline bool bonsai_lowbit_is_type(int type) {
    return type == BONSAI_TYPE_Q1_0 || type == BONSAI_TYPE_Q2_0 || type == BONSAI_TYPE_PQ2_0 ||
           type == BONSAI_TYPE_PTQ1_0;
}

// Version of the byte layouts above, recorded in the GGUF layout contract.
#define BONSAI_LOWBIT_LAYOUT_VERSION 1

#define QK1_0   128
#define QK2_0   64
#define QKPQ2_0 128
#define QKPTQ1_0 128

typedef uint16_t bonsai_half;  // IEEE 754 binary16 bits

typedef struct {
    bonsai_half d;
    uint8_t qs[QK1_0 / 8];  // element j: bit (j % 8) of qs[j / 8]; 1 -> +d, 0 -> -d
} block_q1_0;

typedef struct {
    bonsai_half d;
    uint8_t qs[QK2_0 / 4];  // element j: bits 2*(j % 4) of qs[j / 4]; code c -> (c - 1) * d
} block_q2_0;

typedef struct {
    bonsai_half d;
    uint8_t qs[QKPQ2_0 / 4];  // same element order and meaning as Q2_0
} block_pq2_0;

typedef struct {
    uint8_t qs[24];  // trits of elements 0..119 (two stages, see bonsai_ptq1_0_position in lowbit-impl.h)
    uint8_t qh[2];   // trits of elements 120..127
    bonsai_half d;   // trit t -> (t - 1) * d
} block_ptq1_0;

// The int8 activation block the CPU kernels consume: ggml's Q8_0 (32 elements).
#define QK8_0_ACT 32
typedef struct {
    bonsai_half d;
    int8_t qs[QK8_0_ACT];
} block_q8_0_act;

#ifdef __cplusplus
static_assert(sizeof(block_q1_0) == 18, "Q1_0 block is 18 bytes");
static_assert(sizeof(block_q2_0) == 18, "Q2_0 block is 18 bytes");
static_assert(sizeof(block_pq2_0) == 34, "PQ2_0 block is 34 bytes");
static_assert(sizeof(block_ptq1_0) == 28, "PTQ1_0 block is 28 bytes");
static_assert(sizeof(block_q8_0_act) == 34, "Q8_0 block is 34 bytes");
#else
_Static_assert(sizeof(block_q1_0) == 18, "Q1_0 block is 18 bytes");
_Static_assert(sizeof(block_q2_0) == 18, "Q2_0 block is 18 bytes");
_Static_assert(sizeof(block_pq2_0) == 34, "PQ2_0 block is 34 bytes");
_Static_assert(sizeof(block_ptq1_0) == 28, "PTQ1_0 block is 28 bytes");
_Static_assert(sizeof(block_q8_0_act) == 34, "Q8_0 block is 34 bytes");
#endif

// ---- fp16 ---------------------------------------------------------------------------------

float       bonsai_half_to_float(bonsai_half h);
bonsai_half bonsai_float_to_half(float f);  // round to nearest even, IEEE semantics

// ---- reference codecs (scalar, the single source of truth) ----------------------------------
// k: number of elements, a multiple of the type's block size.
//
// Quantizers (ggml's reference semantics):
//   Q1_0: d = fp16(mean |x|), |x| summed in element order in fp32; bit = (x >= 0).
//   Q2_0, PQ2_0, PTQ1_0: d = fp16(max |x|); code = lroundf(x * (1 / max|x|)) + 1, clamped to
//   0..3 (PTQ1_0: 0..2); a block of zeros gets d = 0 and code 1.
// Inputs that are exactly {-s, 0, +s} per block (Q1_0: {-s, +s}) with s representable in fp16
// round-trip exactly.

void bonsai_quantize_row_q1_0_ref  (const float * x, block_q1_0   * y, int64_t k);
void bonsai_quantize_row_q2_0_ref  (const float * x, block_q2_0   * y, int64_t k);
void bonsai_quantize_row_pq2_0_ref (const float * x, block_pq2_0  * y, int64_t k);
void bonsai_quantize_row_ptq1_0_ref(const float * x, block_ptq1_0 * y, int64_t k);

void bonsai_dequantize_row_q1_0  (const block_q1_0   * x, float * y, int64_t k);
void bonsai_dequantize_row_q2_0  (const block_q2_0   * x, float * y, int64_t k);
void bonsai_dequantize_row_pq2_0 (const block_pq2_0  * x, float * y, int64_t k);
void bonsai_dequantize_row_ptq1_0(const block_ptq1_0 * x, float * y, int64_t k);

// ggml's quantize_<type>() contract: nrows rows of n_per_row; returns bytes written.
// The importance matrix is accepted and ignored (the formats are lossless for their inputs).
size_t bonsai_quantize_q1_0  (const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t bonsai_quantize_q2_0  (const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t bonsai_quantize_pq2_0 (const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t bonsai_quantize_ptq1_0(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// Row validation (ggml_validate_row_data): every block's d is finite, and nbytes is a whole
// number of blocks. Returns false and fills `why` (if given) on failure, naming the type and
// the first bad block.
bool bonsai_validate_row(enum bonsai_lowbit_type type, const void * data, size_t nbytes, char * why, size_t why_len);

// ---- lossless transcodes between the ternary layouts ----------------------------------------
// k elements, a multiple of 128; d is copied bit for bit. Each call either transcodes all of
// x exactly or returns false (y is then partly written and must be discarded):
//   pq2_0 -> ptq1_0: false on a code 3 (+2d has no trit);
//   q2_0 -> pq2_0:   false on two 64-element halves whose d bits differ;
//   ptq1_0 -> pq2_0 and pq2_0 -> q2_0 always succeed (a code 3 passes through to Q2_0).

bool bonsai_pq2_0_to_ptq1_0(const block_pq2_0  * x, block_ptq1_0 * y, int64_t k);
bool bonsai_ptq1_0_to_pq2_0(const block_ptq1_0 * x, block_pq2_0  * y, int64_t k);
bool bonsai_pq2_0_to_q2_0  (const block_pq2_0  * x, block_q2_0   * y, int64_t k);
bool bonsai_q2_0_to_pq2_0  (const block_q2_0   * x, block_pq2_0  * y, int64_t k);

// ---- CPU kernels against int8 activations (ggml's Q8_0) ---------------------------------------
//
// vec_dot: ggml_vec_dot_t shape. *s = sum over n elements of w[i] * a[i], where vx is one
// weight row (blocks of the type) and vy one activation row (block_q8_0_act). nrc must be 1.
//
// gemm: the tile kernel behind MUL_MAT. For i < nr weight rows and j < nc activation rows,
//   dst[j * ldd + i] = sum over n elements of W_i . A_j
// with W_i at (const char *) vx + i * bx and A_j at (const char *) vy + j * by (strides in
// bytes; ldd in floats). Nothing else in dst is written. The SIMD variants decode each weight
// block once per 64 activation rows and run register tiles of 8 weight rows x 2 activation
// rows, so give them as many rows of both as the thread's share allows (nr a multiple of 8).
// They use about 34 KiB of stack and no other memory; any number of threads may call them.
//
// Arithmetic (the same in every variant, so all variants agree bit for bit): per 32-element
// activation block, the exact int32 sum of (code - 1) * q, then one fp32 fused multiply-add
// of d_w * d_a (exact) times that sum into the running sum, in K order from 0.
//
// Each kernel exists as _scalar (the reference), _avx2 (x86-64 with AVX2/FMA/F16C) and
// _neon (AArch64); the unsuffixed name dispatches, at compile time, to the best one compiled in.

#define BONSAI_DECLARE_KERNELS(T, SUFFIX)                                                                  \
    void bonsai_vec_dot_##T##_q8_0##SUFFIX(int n, float * s, size_t bs, const void * vx, size_t bx,        \
                                           const void * vy, size_t by, int nrc);                          \
    void bonsai_gemm_##T##_q8_0##SUFFIX(int n, int nr, int nc, float * dst, size_t ldd, const void * vx,   \
                                        size_t bx, const void * vy, size_t by);

#define BONSAI_DECLARE_KERNEL_SET(T)       \
    BONSAI_DECLARE_KERNELS(T, )            \
    BONSAI_DECLARE_KERNELS(T, _scalar)     \
    BONSAI_DECLARE_KERNELS(T, _avx2)       \
    BONSAI_DECLARE_KERNELS(T, _neon)

BONSAI_DECLARE_KERNEL_SET(q1_0)
BONSAI_DECLARE_KERNEL_SET(q2_0)
BONSAI_DECLARE_KERNEL_SET(pq2_0)
BONSAI_DECLARE_KERNEL_SET(ptq1_0)

// Which SIMD variant the unsuffixed kernels use in this build: "avx2", "neon" or "scalar".
const char * bonsai_lowbit_simd(void);

#ifdef __cplusplus
}
#endif

#endif  // BONSAI_LOWBIT_H
