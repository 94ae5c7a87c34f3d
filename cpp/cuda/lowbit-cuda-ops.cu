// The low-bit types on CUDA, everything but the GEMM: dequantization (convert), get_rows,
// f32 <-> type copies, the small-batch mat-vecs (int8 activations, and f32 where those do not
// fit in shared memory), and the MUL_MAT entry point that picks between a mat-vec and the GEMM
// of lowbit-cuda-gemm.cu.

#include "lowbit-cuda.h"
#include "lowbit-cuda-common.cuh"
#include "lowbit-cuda-gemm.cuh"

#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace bonsai_cuda {

// Value of 2-bit code field i of `codes`: code - 1, as a float. OR-ing the code into the
// mantissa of 1.5*2^23 and subtracting 1.5*2^23 + 1 is exact and needs no int->float convert.
static __device__ __forceinline__ float code_value(uint32_t codes, int i) {
    return __int_as_float(0x4B400000 | ((codes >> (2 * i)) & 3)) - 12582913.0f;
}

template <typename T> static __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float       from_float<float>(float v)       { return v; }
template <> __device__ __forceinline__ half        from_float<half>(float v)        { return __float2half_rn(v); }
template <> __device__ __forceinline__ nv_bfloat16 from_float<nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- dequantization ----------------------------------------------------------------------------

// One thread per 16-element sub-block of a contiguous run of blocks.
template <int TYPE, typename T>
static __global__ void dequantize_kernel(const uint8_t * __restrict__ x, T * __restrict__ y, int64_t subs) {
    constexpr int SUBS = traits<TYPE>::qk / 16;
    const int64_t s = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= subs) {
        return;
    }
    float d;
    const uint32_t codes = codes16<TYPE>(x + (s / SUBS) * traits<TYPE>::bytes, (int) (s % SUBS), d);
    T * out = y + s * 16;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        out[i] = from_float<T>(code_value(codes, i) * d);
    }
}

template <typename T>
static cudaError_t dequantize(int type, const void * x, T * y, int64_t k, cudaStream_t stream) {
    const int64_t subs   = k / 16;
    const unsigned grid  = (unsigned) ((subs + 255) / 256);
    const uint8_t * bytes = (const uint8_t *) x;
    switch (type) {
#define BONSAI_DEQ_CASE(TYPE) \
        case TYPE: dequantize_kernel<TYPE, T><<<grid, 256, 0, stream>>>(bytes, y, subs); break;
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_DEQ_CASE)
#undef BONSAI_DEQ_CASE
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

// ---- get_rows ------------------------------------------------------------------------------------

// grid: (groups of 128 sub-blocks of a row x i10, i11 * ne12 + i12)
template <int TYPE>
static __global__ void get_rows_kernel(bonsai_cuda_get_rows_args a, int64_t groups) {
    constexpr int SUBS = traits<TYPE>::qk / 16;
    const int64_t s   = (int64_t) (blockIdx.x % groups) * blockDim.x + threadIdx.x;
    const int64_t i10 = blockIdx.x / groups;
    const int64_t i11 = blockIdx.y % a.ne11;
    const int64_t i12 = blockIdx.y / a.ne11;
    if (s >= a.ne00 / 16) {
        return;
    }
    const int32_t row = *(const int32_t *) ((const char *) a.ids + i10 * a.nb10 + i11 * a.nb11 + i12 * a.nb12);
    const uint8_t * src = (const uint8_t *) a.src0 + row * a.nb01 + i11 * a.nb02 + i12 * a.nb03;
    float d;
    const uint32_t codes = codes16<TYPE>(src + (s / SUBS) * traits<TYPE>::bytes, (int) (s % SUBS), d);
    float * out = (float *) ((char *) a.dst + i10 * a.nb1 + i11 * a.nb2 + i12 * a.nb3) + s * 16;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        out[i] = code_value(codes, i) * d;
    }
}

// ---- f32 -> type: the reference quantizers of lowbit-codec.c, one thread per block ------------
// Explicit round-to-nearest intrinsics keep the arithmetic IEEE under -use_fast_math.

// round(x / d) + 1 clamped to [0, max_code] (lroundf: halves away from zero)
static __device__ __forceinline__ int ternary_code(float x, float inverse_d, int max_code) {
    const int code = (int) roundf(__fmul_rn(x, inverse_d)) + 1;
    return code < 0 ? 0 : code > max_code ? max_code : code;
}

static __device__ __forceinline__ float max_abs(const float * x, int count) {
    float amax = 0.0f;
    for (int j = 0; j < count; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    return amax;
}

static __device__ __forceinline__ void store_half(uint8_t * p, float v) {
    *(uint16_t *) p = __half_as_ushort(__float2half_rn(v));
}

template <int TYPE> static __device__ void quantize_block(const float * x, uint8_t * y);

template <> __device__ void quantize_block<BONSAI_TYPE_Q1_0>(const float * x, uint8_t * y) {
    float sum_abs = 0.0f;  // in element order, as the reference
    for (int j = 0; j < QK1_0; j++) {
        sum_abs = __fadd_rn(sum_abs, fabsf(x[j]));
    }
    store_half(y, __fmul_rn(sum_abs, 1.0f / QK1_0));
    for (int m = 0; m < QK1_0 / 8; m++) {
        uint32_t bits = 0;
        for (int i = 0; i < 8; i++) {
            bits |= (x[8 * m + i] >= 0.0f ? 1u : 0u) << i;
        }
        y[2 + m] = (uint8_t) bits;
    }
}

static __device__ void quantize_2bit_block(const float * x, int count, uint8_t * y) {
    const float amax      = max_abs(x, count);
    const float inverse_d = amax != 0.0f ? __frcp_rn(amax) : 0.0f;
    store_half(y, amax);
    for (int m = 0; m < count / 4; m++) {
        uint32_t byte = 0;
        for (int i = 0; i < 4; i++) {
            byte |= (uint32_t) ternary_code(x[4 * m + i], inverse_d, 3) << (2 * i);
        }
        y[2 + m] = (uint8_t) byte;
    }
}

template <> __device__ void quantize_block<BONSAI_TYPE_Q2_0>(const float * x, uint8_t * y) {
    quantize_2bit_block(x, QK2_0, y);
}

template <> __device__ void quantize_block<BONSAI_TYPE_PQ2_0>(const float * x, uint8_t * y) {
    quantize_2bit_block(x, QKPQ2_0, y);
}

template <> __device__ void quantize_block<BONSAI_TYPE_PTQ1_0>(const float * x, uint8_t * y) {
    const float amax      = max_abs(x, QKPTQ1_0);
    const float inverse_d = amax != 0.0f ? __frcp_rn(amax) : 0.0f;
    // Byte b holds up to five trits, most significant first, as ceil(v * 256 / 243); the
    // four-trit qh bytes have a zero as their fifth trit.
    for (int b = 0; b < 26; b++) {
        int value = 0;
        for (int n = 0; n < 5; n++) {
            int code = 0;
            // the element stored as trit n of byte b (DESIGN §4 placement)
            int j = -1;
            if (b < 16) {
                j = 16 * n + b;
            } else if (b < 24) {
                j = 80 + 8 * n + (b - 16);
            } else if (n < 4) {
                j = 120 + 2 * n + (b - 24);
            }
            if (j >= 0) {
                code = ternary_code(x[j], inverse_d, 2);
            }
            value = value * 3 + code;
        }
        y[b] = (uint8_t) ((value * 256 + 242) / 243);
    }
    store_half(y + 26, amax);
}

// ggml CPY indexing: flat element i of src is flat element i of dst.
template <int TYPE>
static __global__ void quantize_cpy_kernel(bonsai_cuda_cpy_args a, int64_t nblocks) {
    constexpr int QK = traits<TYPE>::qk;
    const int64_t blk = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= nblocks) {
        return;
    }
    const int64_t i   = blk * QK;
    const int64_t i03 = i / (a.ne00 * a.ne01 * a.ne02);
    const int64_t i02 = (i - i03 * a.ne00 * a.ne01 * a.ne02) / (a.ne00 * a.ne01);
    const int64_t i01 = (i - i03 * a.ne00 * a.ne01 * a.ne02 - i02 * a.ne00 * a.ne01) / a.ne00;
    const int64_t i00 = i - i03 * a.ne00 * a.ne01 * a.ne02 - i02 * a.ne00 * a.ne01 - i01 * a.ne00;
    const int64_t i13 = i / (a.ne10 * a.ne11 * a.ne12);
    const int64_t i12 = (i - i13 * a.ne10 * a.ne11 * a.ne12) / (a.ne10 * a.ne11);
    const int64_t i11 = (i - i13 * a.ne10 * a.ne11 * a.ne12 - i12 * a.ne10 * a.ne11) / a.ne10;
    const int64_t i10 = i - i13 * a.ne10 * a.ne11 * a.ne12 - i12 * a.ne10 * a.ne11 - i11 * a.ne10;
    const float * src = (const float *) ((const char *) a.src + i00 * a.nb00 + i01 * a.nb01 + i02 * a.nb02 + i03 * a.nb03);
    uint8_t * dst = (uint8_t *) a.dst + (i10 / QK) * a.nb10 + i11 * a.nb11 + i12 * a.nb12 + i13 * a.nb13;
    quantize_block<TYPE>(src, dst);
}

template <int TYPE>
static __global__ void dequantize_cpy_kernel(bonsai_cuda_cpy_args a, int64_t nsubs) {
    constexpr int SUBS = traits<TYPE>::qk / 16;
    const int64_t s = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= nsubs) {
        return;
    }
    const int64_t i   = s * 16;
    const int64_t i03 = i / (a.ne00 * a.ne01 * a.ne02);
    const int64_t i02 = (i - i03 * a.ne00 * a.ne01 * a.ne02) / (a.ne00 * a.ne01);
    const int64_t i01 = (i - i03 * a.ne00 * a.ne01 * a.ne02 - i02 * a.ne00 * a.ne01) / a.ne00;
    const int64_t i00 = i - i03 * a.ne00 * a.ne01 * a.ne02 - i02 * a.ne00 * a.ne01 - i01 * a.ne00;
    const int64_t i13 = i / (a.ne10 * a.ne11 * a.ne12);
    const int64_t i12 = (i - i13 * a.ne10 * a.ne11 * a.ne12) / (a.ne10 * a.ne11);
    const int64_t i11 = (i - i13 * a.ne10 * a.ne11 * a.ne12 - i12 * a.ne10 * a.ne11) / a.ne10;
    const int64_t i10 = i - i13 * a.ne10 * a.ne11 * a.ne12 - i12 * a.ne10 * a.ne11 - i11 * a.ne10;
    const int64_t blk = i00 / traits<TYPE>::qk;
    const uint8_t * src = (const uint8_t *) a.src + blk * a.nb00 + i01 * a.nb01 + i02 * a.nb02 + i03 * a.nb03;
    float d;
    const uint32_t codes = codes16<TYPE>(src, (int) ((i00 / 16) % SUBS), d);
    float * out = (float *) ((char *) a.dst + i10 * a.nb10 + i11 * a.nb11 + i12 * a.nb12 + i13 * a.nb13);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        out[j] = code_value(codes, j) * d;
    }
}

// ---- mat-vec: N <= 8 columns of f32 activations ---------------------------------------------
// Exact weights and f32 sums; runs where the int8 mat-vec below cannot hold a block's activation
// columns in shared memory (N * K above about 170 k elements on an H100, 115 k on an A100).
// A warp owns MMV_ROWS weight rows and walks K in steps of four 128-element chunks. Its lanes
// copy each step's raw row bytes (file layout) into the warp's own ring of shared-memory stages
// with 16-byte cp.async pieces, MMV_STAGES - 1 steps ahead; rows are only 2-byte aligned, so a
// step copies from the 16-byte boundary at or below its first byte and the decoder starts that
// many bytes into the stage. Lane l decodes unit l % 8 (16 elements) of chunk l / 8 of every row
// of the warp against the same activations, loaded once per step (per column group) into
// registers. Weights decode exactly to (code - 1) as f32 with a mantissa trick (no int -> float
// convert); products and sums are f32. When there are too few rows to fill the GPU, the warps of
// a block split K between them and add their sums through shared memory.

static constexpr int MMV_WARPS  = 4;  // warps per block
static constexpr int MMV_ROWS   = 4;  // weight rows per warp: one activation load serves all of them
static constexpr int MMV_STAGES = 4;  // steps of weight bytes in flight per warp
static constexpr int MMV_CHUNKS = 4;  // 128-element chunks per step: 8 lanes x 16 elements each
static_assert((MMV_STAGES & (MMV_STAGES - 1)) == 0, "the ring index is a mask");

template <int TYPE> struct mmv_geometry {
    static constexpr int step_bytes  = MMV_CHUNKS * chunk_bytes(TYPE);
    // 16-byte pieces per row per stage: a step starts up to 14 bytes into its first piece
    static constexpr int pieces      = (14 + step_bytes + 15) / 16;
};

// Exact (code - 1) as f32 by OR-ing the code into the mantissa of a constant M whose last
// mantissa bit weighs 1 / (the code's place value), then subtracting M + 1 (exact, no rounding).
// A 2-bit code at bits 2i..2i+1: M = 1.5 * 2^(23 - 2i).
static __device__ __forceinline__ float mmv_code2(uint32_t bits, int i) {
    const uint32_t magic = ((150u - 2 * i) << 23) | 0x400000u;
    return __uint_as_float((bits & (3u << (2 * i))) | magic) - (__uint_as_float(magic) + 1.0f);
}

// A Q1_0 sign bit at bit i + 1 (code 2 * bit): M = 1.5 * 2^(23 - i), the bit weighs 2.
static __device__ __forceinline__ float mmv_code1(uint32_t bits_shl1, int i) {
    const uint32_t magic = ((150u - i) << 23) | 0x400000u;
    return __uint_as_float((bits_shl1 & (2u << i)) | magic) - (__uint_as_float(magic) + 1.0f);
}

// A trit at bits 8..9 (M = 1.5 * 2^15) or at bits 18..19 (M = 1.5 * 2^5).
static __device__ __forceinline__ float mmv_trit8(uint32_t v) {
    return __uint_as_float((v & 0x300u) | 0x47400000u) - 49153.0f;
}

static __device__ __forceinline__ float mmv_trit18(uint32_t v) {
    return __uint_as_float((v & 0xc0000u) | 0x42400000u) - 49.0f;
}

// Unit u (0..7) of a 128-element chunk in shared memory (2-byte aligned): its 16 weights as
// code - 1 in the order mmv_unit_x loads their activations, and the scale d.
template <int TYPE> static __device__ void mmv_unit(const uint8_t * chunk, int u, float (&v)[16], float & d);

// Q1_0: elements 16u + i, bit i of bytes 2u, 2u + 1 of qs.
template <> __device__ __forceinline__ void mmv_unit<BONSAI_TYPE_Q1_0>(const uint8_t * chunk, int u, float (&v)[16], float & d) {
    d = load_half(chunk);
    const uint32_t bits = load_u16(chunk + 2 + 2 * u) << 1;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        v[i] = mmv_code1(bits, i);
    }
}

// Q2_0 (two 64-element blocks per chunk) and PQ2_0: elements 16u + i, 2-bit fields of the
// unit's four code bytes.
template <> __device__ __forceinline__ void mmv_unit<BONSAI_TYPE_Q2_0>(const uint8_t * chunk, int u, float (&v)[16], float & d) {
    const uint8_t * block = chunk + (u / 4) * (int) sizeof(block_q2_0);
    d = load_half(block);
    const uint32_t lo = load_u16(block + 2 + 4 * (u % 4));
    const uint32_t hi = load_u16(block + 4 + 4 * (u % 4));
#pragma unroll
    for (int i = 0; i < 8; i++) {
        v[i]     = mmv_code2(lo, i);
        v[8 + i] = mmv_code2(hi, i);
    }
}

template <> __device__ __forceinline__ void mmv_unit<BONSAI_TYPE_PQ2_0>(const uint8_t * chunk, int u, float (&v)[16], float & d) {
    d = load_half(chunk);
    const uint32_t lo = load_u16(chunk + 2 + 4 * u);
    const uint32_t hi = load_u16(chunk + 4 + 4 * u);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        v[i]     = mmv_code2(lo, i);
        v[8 + i] = mmv_code2(hi, i);
    }
}

// PTQ1_0 (DESIGN §4 placement): the five trits of qs[2u] and qs[2u + 1] (elements 16n + 2u and
// 16n + 2u + 1), the five of qs[16 + u] (80 + 8n + u) and trit u / 2 of qh[u % 2] (120 + u).
// Two bytes ride in one register, at bits 0..7 and 10..17: times 3, each byte's top third (its
// next trit) lands at bits 8..9 / 18..19 and the low eight bits of each are the rest.
template <> __device__ __forceinline__ void mmv_unit<BONSAI_TYPE_PTQ1_0>(const uint8_t * chunk, int u, float (&v)[16], float & d) {
    d = load_half(chunk + 26);
    const uint32_t pair = load_u16(chunk + 2 * u);
    uint32_t       a    = pair + 3 * (pair & 0xff00u);  // qs[2u + 1] moved from bit 8 to bit 10
    // qh[u % 2] with its first u / 2 trits dropped (times 3^(u / 2), mod 256), next to qs[16 + u]
    const uint32_t pow3 = u < 2 ? 1u : u < 4 ? 3u : u < 6 ? 9u : 27u;
    const uint32_t qh   = (chunk[24 + u % 2] * pow3) & 0xffu;
    uint32_t       b    = chunk[16 + u] | (qh << 10);
#pragma unroll
    for (int n = 0; n < 5; n++) {
        a *= 3;
        b *= 3;
        v[2 * n]     = mmv_trit8(a);
        v[2 * n + 1] = mmv_trit18(a);
        v[10 + n]    = mmv_trit8(b);
        if (n == 0) {
            v[15] = mmv_trit18(b);
        }
        a &= 0x3fcffu;
        b &= 0x3fcffu;
    }
}

// The activations of unit u for one column (x: the chunk's first element, 16-byte aligned).
template <int TYPE> static __device__ __forceinline__ void mmv_unit_x(const float * x, int u, float (&xv)[16]) {
    if constexpr (TYPE == BONSAI_TYPE_PTQ1_0) {
#pragma unroll
        for (int n = 0; n < 5; n++) {
            const float2 pair = __ldg((const float2 *) (x + 16 * n + 2 * u));
            xv[2 * n]         = pair.x;
            xv[2 * n + 1]     = pair.y;
            xv[10 + n]        = __ldg(x + 80 + 8 * n + u);
        }
        xv[15] = __ldg(x + 120 + u);
    } else {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const float4 quad = __ldg((const float4 *) (x + 16 * u) + q);
            xv[4 * q]         = quad.x;
            xv[4 * q + 1]     = quad.y;
            xv[4 * q + 2]     = quad.z;
            xv[4 * q + 3]     = quad.w;
        }
    }
}

// The activations of a column group: for each of its NCG columns the lane's unit.
template <int TYPE, int NCG>
static __device__ __forceinline__ void mmv_load_x(const char * xcol, size_t x_nb1, int u, float (&xv)[NCG][16]) {
#pragma unroll
    for (int c = 0; c < NCG; c++) {
        mmv_unit_x<TYPE>((const float *) (xcol + c * x_nb1), u, xv[c]);
    }
}

// One step of columns [C0, C0 + NCG): every row's unit is decoded once and multiplied with the
// NCG columns' activations. Rows past M run too, on stale stage bytes (the decode of any bytes
// is finite, d may not be), and are never stored: no branch keeps the rows apart.
template <int TYPE, int NC, int C0, int NCG>
static __device__ __forceinline__ void mmv_rows(const uint8_t * const (&unit_chunk)[MMV_ROWS], int u,
                                                const float (&xv)[NCG][16], float (&acc)[MMV_ROWS][NC]) {
#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
        float v[16], d;
        mmv_unit<TYPE>(unit_chunk[r], u, v, d);
#pragma unroll
        for (int c = 0; c < NCG; c++) {
            float even = 0.0f, odd = 0.0f;  // two chains, for latency
#pragma unroll
            for (int i = 0; i < 16; i += 2) {
                even = fmaf(v[i], xv[c][i], even);
                odd  = fmaf(v[i + 1], xv[c][i + 1], odd);
            }
            acc[r][C0 + c] = fmaf(d, even + odd, acc[r][C0 + c]);
        }
    }
}

// Column groups: up to four columns in one; more in two, each decoding the weights again, so
// that a group's activations fit in registers.
template <int NC> struct mmv_groups {
    static constexpr int first  = NC <= 4 ? NC : (NC + 1) / 2;
    static constexpr int second = NC - first;
};

// Blocks per SM to fit in registers: more columns hold more activations and sums.
static constexpr int mmv_min_blocks(int nc) {
    return nc == 1 ? 8 : nc == 2 ? 6 : nc <= 4 ? 4 : nc == 5 ? 3 : 2;
}

// grid: (row groups / groups per block, ne2 * ne3 slices). Warp w of a block takes row group
// w / ksplit of the block and share w % ksplit of the K steps.
template <int TYPE, int NC>
static __global__ void __launch_bounds__(MMV_WARPS * 32, mmv_min_blocks(NC)) mmv_kernel(
        const uint8_t * __restrict__ w, int64_t M, int chunks, size_t w_nb1, size_t w_nb2, size_t w_nb3,
        int64_t r2, int64_t r3, int64_t ne2, const float * __restrict__ x, size_t x_nb1, size_t x_nb2,
        size_t x_nb3, float * __restrict__ dst, size_t d_nb1, size_t d_nb2, size_t d_nb3, int ksplit) {
    using G = mmv_geometry<TYPE>;
    constexpr int SLOT   = G::pieces * 16;                           // bytes per row per stage
    constexpr int JOBS   = MMV_ROWS * G::pieces;                     // 16-byte pieces per stage
    constexpr int COPIES = (JOBS + 31) / 32;                         // of them per lane
    constexpr int NC0    = mmv_groups<NC>::first;
    constexpr int NC1    = mmv_groups<NC>::second;

    __shared__ __align__(16) uint8_t ring[MMV_WARPS][MMV_STAGES][MMV_ROWS][SLOT];
    __shared__ float partial[MMV_WARPS][MMV_ROWS][NC];

    const int     lane = threadIdx.x % 32;
    const int     warp = threadIdx.x / 32;
    const int     part = warp % ksplit;
    const int64_t row0 = ((int64_t) blockIdx.x * (MMV_WARPS / ksplit) + warp / ksplit) * MMV_ROWS;
    const int     rows = (int) max((int64_t) 0, min((int64_t) MMV_ROWS, M - row0));
    const int64_t i2   = blockIdx.y % ne2;
    const int64_t i3   = blockIdx.y / ne2;

    const uint8_t * ws = w + (i2 / r2) * w_nb2 + (i3 / r3) * w_nb3;
    const char    * xs = (const char *) x + i2 * x_nb2 + i3 * x_nb3;
    // The slice's bytes: 16-byte pieces that reach outside them (only possible at its very start
    // and end) are copied two bytes at a time instead.
    const uintptr_t lo = (uintptr_t) ws;
    const uintptr_t hi = lo + (size_t) (M - 1) * w_nb1 + (size_t) chunks * chunk_bytes(TYPE);

    const int steps      = (chunks + MMV_CHUNKS - 1) / MMV_CHUNKS;
    const int step_begin = steps * part / ksplit;
    const int step_end   = rows > 0 ? steps * (part + 1) / ksplit : step_begin;  // none past M

    // The lane's copy jobs, the same every step: piece job % pieces of row job / pieces.
    uintptr_t job_row_start[COPIES];
    int       job_piece[COPIES];  // byte offset of the piece in the row's slot
    int       job_slot[COPIES];   // byte offset of the row's slot in a stage
    bool      job_on[COPIES];
#pragma unroll
    for (int j = 0; j < COPIES; j++) {
        const int job    = lane + 32 * j;
        const int r      = job / G::pieces;
        job_on[j]        = job < JOBS && r < rows;
        job_row_start[j] = lo + (size_t) (row0 + r) * w_nb1;
        job_piece[j]     = (job % G::pieces) * 16;
        job_slot[j]      = r * SLOT;
    }
    // The pieces of a row reach from its start rounded down to 16 bytes to its end rounded up:
    // they stay inside the slice but for its first and last rows, if those are not aligned.
    const uintptr_t warp_begin = lo + (size_t) row0 * w_nb1;
    const uintptr_t warp_end   = lo + (size_t) (row0 + max(rows, 1) - 1) * w_nb1 + (size_t) chunks * chunk_bytes(TYPE);
    const bool      interior   = (warp_begin & ~(uintptr_t) 15) >= lo && ((warp_end + 15) & ~(uintptr_t) 15) <= hi;
    uint8_t * const warp_ring  = &ring[warp][0][0][0];

    // Copies step `step`'s bytes of every row into stage step % MMV_STAGES: the pieces from the
    // 16-byte boundary at or below the step's first byte up to its last byte.
    auto issue = [&](int step) {
        const int len   = min(MMV_CHUNKS, chunks - step * MMV_CHUNKS) * chunk_bytes(TYPE);
        uint8_t * stage = warp_ring + (step & (MMV_STAGES - 1)) * (MMV_ROWS * SLOT);
#pragma unroll
        for (int j = 0; j < COPIES; j++) {
            const uintptr_t first = job_row_start[j] + (size_t) step * G::step_bytes;
            const int       phase = (int) (first & 15);
            if (job_on[j] && job_piece[j] < phase + len) {
                const uintptr_t src = first - phase + job_piece[j];
                uint8_t *       to  = stage + job_slot[j] + job_piece[j];
                if (interior || (src >= lo && src + 16 <= hi)) {
                    cp_async16(to, (const uint8_t *) src);
                } else {  // a piece reaching outside the slice: only its own bytes
#pragma unroll 1
                    for (int h = 0; h < 16; h += 2) {
                        if (src + h >= lo && src + h + 2 <= hi) {
                            *(uint16_t *) (to + h) = *(const uint16_t *) (src + h);
                        }
                    }
                }
            }
        }
    };

    // Where the lane's chunk of row r starts in a stage: past the step's phase (its first byte's
    // address modulo 16), which alternates between even and odd steps when a step is not a
    // whole number of 16-byte pieces.
    static_assert(G::step_bytes % 8 == 0, "two phases per row");
    int unit_even[MMV_ROWS];
    int unit_odd[MMV_ROWS];
#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
        const int phase = (int) ((lo + (size_t) (row0 + r) * w_nb1) & 15);
        unit_even[r]    = r * SLOT + (lane / 8) * chunk_bytes(TYPE) + phase;
        unit_odd[r]     = r * SLOT + (lane / 8) * chunk_bytes(TYPE) + ((phase + G::step_bytes) & 15);
    }

    float acc[MMV_ROWS][NC];
#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            acc[r][c] = 0.0f;
        }
    }

#pragma unroll
    for (int s = 0; s < MMV_STAGES - 1; s++) {
        if (step_begin + s < step_end) {
            issue(step_begin + s);
        }
        cp_async_commit();
    }

    const int u = lane % 8;
    for (int step = step_begin; step < step_end; step++) {
        if (step + MMV_STAGES - 1 < step_end) {
            issue(step + MMV_STAGES - 1);
        }
        cp_async_commit();

        // The activations go out before the wait for the weights.
        const int    chunk  = step * MMV_CHUNKS + lane / 8;
        const bool   active = chunk < chunks;  // lanes past K in the last step idle
        const char * xcol   = xs + (size_t) chunk * 128 * sizeof(float);
        float xv0[NC0][16];
        if (active) {
            mmv_load_x<TYPE, NC0>(xcol, x_nb1, u, xv0);
        }

        cp_async_wait<MMV_STAGES - 1>();
        __syncwarp();  // every lane's pieces of this step have landed

        if (active) {
            const uint8_t * stage = warp_ring + (step & (MMV_STAGES - 1)) * (MMV_ROWS * SLOT);
            const uint8_t * unit_chunk[MMV_ROWS];
#pragma unroll
            for (int r = 0; r < MMV_ROWS; r++) {
                unit_chunk[r] = stage + (step & 1 ? unit_odd[r] : unit_even[r]);
            }
            mmv_rows<TYPE, NC, 0, NC0>(unit_chunk, u, xv0, acc);
            if constexpr (NC1 > 0) {
                float xv1[NC1][16];
                mmv_load_x<TYPE, NC1>(xcol + NC0 * x_nb1, x_nb1, u, xv1);
                mmv_rows<TYPE, NC, NC0, NC1>(unit_chunk, u, xv1, acc);
            }
        }
        __syncwarp();  // every lane is done with this stage before it is refilled
    }

#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) {
                acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], offset);
            }
        }
    }

    if (ksplit > 1) {  // the first warp of each row group adds the others' shares
        if (part > 0 && lane == 0) {
#pragma unroll
            for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    partial[warp][r][c] = acc[r][c];
                }
            }
        }
        __syncthreads();
        if (part > 0) {
            return;
        }
        for (int p = 1; p < ksplit; p++) {
#pragma unroll
            for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    acc[r][c] += partial[warp + p][r][c];
                }
            }
        }
    }

    char * ds = (char *) dst + i2 * d_nb2 + i3 * d_nb3;
#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            if (r < rows && lane == (r * NC + c) % 32) {
                *(float *) (ds + (row0 + r) * sizeof(float) + c * d_nb1) = acc[r][c];
            }
        }
    }
}

// ---- mat-vec on int8 activations: N <= 8 columns ----------------------------------------------
// The weights are 1.1-2.3 bits, so the f32 mat-vec above spends its time on instructions, not on
// bytes (an f32 decode and FMA per weight). This one takes four weights per __dp4a: each block
// first rounds its slice's activation columns to int8 in shared memory, one scale per 32
// elements (ggml's q8_1 grain), laid out so that the products can use the weight codes where
// they sit in the packed bytes: word & (0x03030303 << 2k) are four 2-bit codes in four bytes (4^k
// too large: each position k has an accumulator of its own, joined per 32-element group), word &
// (0x01010101 << k) four Q1_0 bits; PTQ1_0's base-3 bytes go through the identity at its
// mvq_dot. The weights stream through a ring of shared-memory stages per warp with 16-byte
// cp.async, the first stages issued before the activations are rounded. A stage holds up to 64
// consecutive 128-element units (chunks) of the warp's rows, and lane l takes units 2l, 2l + 1
// (l alone where the stage holds 32 or fewer), so that the copy issue, the row bookkeeping and
// the lanes' reduction are paid once per 64 units: units are only 2-byte aligned, so a lane
// reads the aligned words around its unit and realigns them with byte permutes. Each block (one
// per SM, so that each SM rounds the activations once) takes a run of rows; its warps take even
// shares of the run's 32-unit pieces (a row may be shared by two warps, or by several lanes of a
// stage) and add each row's pieces in shared memory. Products are exact integers per 32
// elements; the scales, d and the sums are f32.
//
// Activation layout, per chunk 144 bytes (mvq_odd_chunks_at: where in a column): granules 0..7
// of 16 bytes, then one granule of four group words, (bf16 scale of group g << 16) | (sum of its
// 32 int8 values & 0xffff).
//   Q2_0, PQ2_0: granule i serves code word i (elements 16i..16i+15): its 32-bit word k holds
//                the elements 16i + 4b + k (b = 0..3), whose codes are bits 2k of byte b.
//   Q1_0:        granules 2i, 2i + 1 serve code word i (elements 32i..32i+31): word k (0..7)
//                holds the elements 32i + 8b + k, bit k of byte b.
//   PTQ1_0:      the elements in order.
// The scale is amax / 127 rounded up to bf16 (so that every |x| / scale <= 127), the values
// round(x * (1 / scale)), half to even: tests/cuda/lowbit_cuda_check.cu repeats this bit for bit.

static constexpr int MVQ_WARPS     = 16;   // warps per block
static constexpr int MVQ_STAGES    = 3;    // ring stages per warp (two in flight while one is used)
static constexpr int MVQ_UNITS     = 64;   // units per stage: two per lane
static constexpr int MVQ_CHUNK     = 144;  // shared-memory bytes per chunk per column
static constexpr int MVQ_BLOCKS    = 1;    // blocks per SM the grid is sized for
static constexpr int MVQ_MIN_UNITS = MVQ_WARPS * 32;  // a block takes at least 32 units per warp
static constexpr int MVQ_MAX_ROWS  = 512;  // rows per block, for the row sums in shared memory

template <int TYPE> struct mvq_geometry {
    static constexpr int unit  = chunk_bytes(TYPE);  // file bytes of one chunk
    // a stage: MVQ_UNITS units from any 2-byte offset of a 16-byte piece, and the aligned word
    // that the last unit's realignment reads past its end
    static constexpr int slot  = MVQ_UNITS * unit + 32;
    static constexpr int pieces_per_lane = (slot / 16 + 31) / 32;  // 16-byte copies per lane per stage
};

// A column's activations: its even chunks, then from mvq_odd_chunks_at its odd ones, that offset
// being 64 past a multiple of 128 bytes: lanes that read chunks c0 + 2 l (two units a lane) or
// c0 + l hit eight different 16-byte bank groups per eight lanes.
static __host__ __device__ __forceinline__ int mvq_odd_chunks_at(int chunks) {
    const int evens = (chunks + 1) / 2 * MVQ_CHUNK;
    return evens + ((64 - evens) & 127);
}

static __host__ __device__ __forceinline__ int mvq_column_bytes(int chunks) {
    return mvq_odd_chunks_at(chunks) + chunks / 2 * MVQ_CHUNK;
}

// __dp4a of four unsigned bytes (weight codes) with four signed bytes (activations), and
// __byte_perm; with host versions, for tests/cuda/lowbit_matvec_decode_check.cu.
static __host__ __device__ __forceinline__ int dp4a_us(uint32_t codes, uint32_t acts, int acc) {
#ifdef __CUDA_ARCH__
    asm("dp4a.u32.s32 %0, %1, %2, %0;" : "+r"(acc) : "r"(codes), "r"(acts));
    return acc;
#else
    for (int i = 0; i < 4; i++) {
        acc += (int) ((codes >> (8 * i)) & 0xff) * (int) (int8_t) ((acts >> (8 * i)) & 0xff);
    }
    return acc;
#endif
}

static __host__ __device__ __forceinline__ uint32_t byte_perm(uint32_t lo, uint32_t hi, uint32_t selector) {
#ifdef __CUDA_ARCH__
    return __byte_perm(lo, hi, selector);
#else
    const uint64_t bytes = ((uint64_t) hi << 32) | lo;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) {
        r |= (uint32_t) ((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xff) << (8 * i);
    }
    return r;
#endif
}

static __host__ __device__ __forceinline__ float half_bits_to_float(uint32_t bits) {
    return __half2float(__ushort_as_half((unsigned short) (bits & 0xffff)));
}

// One unit's weights: its code words and scales d, from the aligned words w[] that start at its
// first byte rounded down to 4; `shift` (0 or 2) is how far past w[0] the unit starts.
template <int TYPE> struct mvq_weights;

template <> struct mvq_weights<BONSAI_TYPE_Q1_0> {
    uint32_t code[4];  // qs as four words (elements 32i..32i+31)
    float    d;
    __host__ __device__ __forceinline__ mvq_weights(const uint32_t * w, int shift) {
        const uint32_t sel = shift ? 0x7654u : 0x5432u;  // qs start at shift + 2
#pragma unroll
        for (int i = 0; i < 4; i++) {
            code[i] = byte_perm(w[i], w[i + 1], sel);
        }
        d = half_bits_to_float(byte_perm(w[0], 0, shift ? 0x32u : 0x10u));
    }
};

template <> struct mvq_weights<BONSAI_TYPE_PQ2_0> {
    uint32_t code[8];  // qs as eight words (elements 16i..16i+15)
    float    d;
    __host__ __device__ __forceinline__ mvq_weights(const uint32_t * w, int shift) {
        const uint32_t sel = shift ? 0x7654u : 0x5432u;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            code[i] = byte_perm(w[i], w[i + 1], sel);
        }
        d = half_bits_to_float(byte_perm(w[0], 0, shift ? 0x32u : 0x10u));
    }
};

// Two 64-element blocks: d0 at 0, qs at 2..17, d1 at 18, qs at 20..35.
template <> struct mvq_weights<BONSAI_TYPE_Q2_0> {
    uint32_t code[8];
    float    d[2];
    __host__ __device__ __forceinline__ mvq_weights(const uint32_t * w, int shift) {
        const uint32_t sel0 = shift ? 0x7654u : 0x5432u;  // first block's qs at shift + 2
        const uint32_t sel1 = shift ? 0x5432u : 0x3210u;  // second's at shift + 20
#pragma unroll
        for (int i = 0; i < 4; i++) {
            code[i]     = byte_perm(w[i], w[i + 1], sel0);
            code[4 + i] = byte_perm(w[5 + i], w[6 + i], sel1);
        }
        d[0] = half_bits_to_float(byte_perm(w[0], 0, shift ? 0x32u : 0x10u));
        d[1] = half_bits_to_float(byte_perm(w[4], w[5], shift ? 0x54u : 0x32u));
    }
};

// qs as six words, then qh (low half) and d (high half) as a seventh.
template <> struct mvq_weights<BONSAI_TYPE_PTQ1_0> {
    uint32_t code[7];
    float    d;
    __host__ __device__ __forceinline__ mvq_weights(const uint32_t * w, int shift) {
        const uint32_t sel = shift ? 0x5432u : 0x3210u;
#pragma unroll
        for (int i = 0; i < 7; i++) {
            code[i] = byte_perm(w[i], w[i + 1], sel);
        }
        d = half_bits_to_float(code[6] >> 16);
    }
};

// The unit's dot product with one column's chunk of activations `a` (MVQ_CHUNK bytes, 16-byte
// aligned): sum over its 32-element groups g of scale_g * (sum of (code - 1) * value).
// Per group the integer sum starts at -sum(values), which accounts for the "- 1" of every code.
static __host__ __device__ __forceinline__ float mvq_group_scale(uint32_t group) {
    const uint32_t bits = group & 0xffff0000u;
    float          scale;
    memcpy(&scale, &bits, sizeof(scale));
    return scale;
}

static __host__ __device__ __forceinline__ int mvq_group_sum(uint32_t group) {
    return (int) (int16_t) (group & 0xffff);
}

template <int TYPE>
static __host__ __device__ __forceinline__ float mvq_dot(const mvq_weights<TYPE> & wt, const uint8_t * a);

// 2-bit codes. Four accumulators per group take the four code positions without shifting them
// down (position k arrives 4^k too large) and are joined as 64 * (sum - sum of values).
static __host__ __device__ __forceinline__ int mvq_dot2(uint32_t c0, uint32_t c1, uint4 a0, uint4 a1, int start) {
    int k0 = start, k1 = 0, k2 = 0, k3 = 0;
    k0 = dp4a_us(c0 & 0x03030303u, a0.x, k0);
    k1 = dp4a_us(c0 & 0x0c0c0c0cu, a0.y, k1);
    k2 = dp4a_us(c0 & 0x30303030u, a0.z, k2);
    k3 = dp4a_us(c0 & 0xc0c0c0c0u, a0.w, k3);
    k0 = dp4a_us(c1 & 0x03030303u, a1.x, k0);
    k1 = dp4a_us(c1 & 0x0c0c0c0cu, a1.y, k1);
    k2 = dp4a_us(c1 & 0x30303030u, a1.z, k2);
    k3 = dp4a_us(c1 & 0xc0c0c0c0u, a1.w, k3);
    return k0 * 64 + k1 * 16 + k2 * 4 + k3;
}

// The 2-bit layouts' scaled group sums (1/64 of them) over elements 0..63 and 64..127, the
// halves that Q2_0 scales by its two d and PQ2_0 by its one.
static __host__ __device__ __forceinline__ float2 mvq_halves2(const uint32_t (&code)[8], const uint8_t * a) {
    const uint4 * g = (const uint4 *) a;
    const uint4 groups = g[8];
    const uint32_t gw[4] = {groups.x, groups.y, groups.z, groups.w};
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int t = mvq_dot2(code[2 * j], code[2 * j + 1], g[2 * j], g[2 * j + 1], -mvq_group_sum(gw[j]));
        sum[j / 2] = fmaf(mvq_group_scale(gw[j]), (float) t, sum[j / 2]);
    }
    return make_float2(sum[0], sum[1]);
}

template <>
__host__ __device__ __forceinline__ float mvq_dot(const mvq_weights<BONSAI_TYPE_PQ2_0> & wt, const uint8_t * a) {
    const float2 h = mvq_halves2(wt.code, a);
    return wt.d * (1.0f / 64) * (h.x + h.y);
}

template <>
__host__ __device__ __forceinline__ float mvq_dot(const mvq_weights<BONSAI_TYPE_Q2_0> & wt, const uint8_t * a) {
    const float2 h = mvq_halves2(wt.code, a);
    return (1.0f / 64) * (wt.d[0] * h.x + wt.d[1] * h.y);
}

// Q1_0: eight bit positions, joined as 128 * (sum of bit * value) - 64 * (sum of values)
// = 64 * (sum of (2 * bit - 1) * value).
template <>
__host__ __device__ __forceinline__ float mvq_dot(const mvq_weights<BONSAI_TYPE_Q1_0> & wt, const uint8_t * a) {
    const uint4 * g = (const uint4 *) a;
    const uint4 groups = g[8];
    const uint32_t gw[4] = {groups.x, groups.y, groups.z, groups.w};
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t c = wt.code[j];
        const uint4 lo = g[2 * j], hi = g[2 * j + 1];
        const int k0 = dp4a_us(c & 0x01010101u, lo.x, 0);
        const int k1 = dp4a_us(c & 0x02020202u, lo.y, 0);
        const int k2 = dp4a_us(c & 0x04040404u, lo.z, 0);
        const int k3 = dp4a_us(c & 0x08080808u, lo.w, 0);
        const int k4 = dp4a_us(c & 0x10101010u, hi.x, 0);
        const int k5 = dp4a_us(c & 0x20202020u, hi.y, 0);
        const int k6 = dp4a_us(c & 0x40404040u, hi.z, 0);
        const int k7 = dp4a_us(c & 0x80808080u, hi.w, -64 * mvq_group_sum(gw[j]));
        const int t  = ((((((k0 * 2 + k1) * 2 + k2) * 2 + k3) * 2 + k4) * 2 + k5) * 2 + k6) * 2 + k7;
        sum = fmaf(mvq_group_scale(gw[j]), (float) t, sum);
    }
    return wt.d * (1.0f / 64) * sum;
}

// PTQ1_0. With H_n(b) = floor(b * 3^(n+1) / 256), TQ1_0's trit n of byte b, ((b * 3^n mod 256)
// * 3) >> 8, equals H_n - 3 H_(n-1) (H_-1 = 0). So sum_n trit_n * x_n = sum_n H_n * (x_n - 3
// x_(n+1)) (x past the last trit = 0): per byte H_n is the high byte of one 16-bit product (b *
// 243 < 2^16), no masking between trits, and two accumulators per group take H_n * x_n (A) and
// H_n * x_(n+1) (B). The bytes of a qs word go two by two into 16-bit lanes (even, odd bytes);
// a byte permute puts the four H_n back in byte order.
template <>
__host__ __device__ __forceinline__ float mvq_dot(const mvq_weights<BONSAI_TYPE_PTQ1_0> & wt, const uint8_t * a) {
    const uint32_t * x = (const uint32_t *) a;  // x[e / 4]: the values of elements e..e+3
    const uint4 groups = ((const uint4 *) a)[8];
    const uint32_t gw[4] = {groups.x, groups.y, groups.z, groups.w};
    int A[4], B[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        A[j] = -mvq_group_sum(gw[j]);
    }
    // qs[0..15]: trit n of byte 4w + b is element 16n + 4w + b
#pragma unroll
    for (int w = 0; w < 4; w++) {
        uint32_t even = (wt.code[w] & 0x00ff00ffu) * 3, odd = ((wt.code[w] >> 8) & 0x00ff00ffu) * 3;
#pragma unroll
        for (int n = 0; n < 5; n++) {
            const uint32_t h = byte_perm(even, odd, 0x7351u);
            A[n / 2] = dp4a_us(h, x[4 * n + w], A[n / 2]);
            if (n < 4) {
                B[(n + 1) / 2] = dp4a_us(h, x[4 * (n + 1) + w], B[(n + 1) / 2]);
            }
            even *= 3;
            odd *= 3;
        }
    }
    // qs[16..23]: trit n of byte 16 + 4w + b is element 80 + 8n + 4w + b
#pragma unroll
    for (int w = 0; w < 2; w++) {
        uint32_t even = (wt.code[4 + w] & 0x00ff00ffu) * 3, odd = ((wt.code[4 + w] >> 8) & 0x00ff00ffu) * 3;
#pragma unroll
        for (int n = 0; n < 5; n++) {
            const uint32_t h = byte_perm(even, odd, 0x7351u);
            const int e = 80 + 8 * n + 4 * w;
            A[e / 32] = dp4a_us(h, x[e / 4], A[e / 32]);
            if (n < 4) {
                B[(e + 8) / 32] = dp4a_us(h, x[(e + 8) / 4], B[(e + 8) / 32]);
            }
            even *= 3;
            odd *= 3;
        }
    }
    // qh: trit n (0..3) of byte h is element 120 + 2n + h; its two H_n go to bytes 0, 1 of the
    // word of elements 120 + 4m (n even) or to bytes 2, 3 (n odd)
    {
        uint32_t even = (wt.code[6] & 0xffu) * 3, odd = ((wt.code[6] >> 8) & 0xffu) * 3;
#pragma unroll
        for (int n = 0; n < 4; n++) {
            const uint32_t h_low  = byte_perm(even, odd, 0x7351u);  // bytes 0, 1 (2, 3 are zero)
            const uint32_t h_high = byte_perm(even, odd, 0x5173u);  // bytes 2, 3
            A[3] = dp4a_us(n % 2 ? h_high : h_low, x[30 + n / 2], A[3]);
            if (n < 3) {
                B[3] = dp4a_us(n % 2 ? h_low : h_high, x[30 + (n + 1) / 2], B[3]);
            }
            even *= 3;
            odd *= 3;
        }
    }
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        sum = fmaf(mvq_group_scale(gw[j]), (float) (A[j] - 3 * B[j]), sum);
    }
    return wt.d * sum;
}

// amax / 127 rounded to nearest, as __fdiv_rn gives it, without its slow-path branch (which
// would keep the batches below from interleaving): the product with the rounded reciprocal,
// corrected once by its exact fma residual. Equal to amax / 127 for every normal amax whose
// quotient is normal: tests/cuda/lowbit_matvec_decode_check.cu compares every float of [1, 4),
// on the host and on the GPU, and other binades only scale these by a power of two.
static __host__ __device__ __forceinline__ float mvq_div127(float amax) {
    constexpr float y = 1.0f / 127.0f;
#ifdef __CUDA_ARCH__
    const float q = __fmul_rn(amax, y);
    return __fmaf_rn(__fmaf_rn(-127.0f, q, amax), y, q);
#else
    const float q = amax * y;
    return fmaf(fmaf(-127.0f, q, amax), y, q);
#endif
}

// 1 / s rounded to nearest for a group's scale s (a normal bf16 value, below 2^122 since amax
// is finite), branch-free: the approximate reciprocal (within an ulp, says the PTX ISA) and
// one Newton step with fma, which rounds it correctly (Markstein's theorem; s's significand is
// not all ones). The decode check compares every normal bf16 s up to 2^126 on the GPU with the
// host's 1.0f / s.
static __device__ __forceinline__ float mvq_reciprocal(float s) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
    return __fmaf_rn(r, __fmaf_rn(-s, r, 1.0f), r);
}

static __device__ __forceinline__ uint32_t pack_bytes4(uint32_t b0, uint32_t b1, uint32_t b2, uint32_t b3) {
    return __byte_perm(__byte_perm(b0, b1, 0x0040u), __byte_perm(b2, b3, 0x0040u), 0x5410u);
}

// 1.5 * 2^23: for |t| <= 2^22, t + this rounds t half to even into the float's low mantissa
// bits, whose low byte is then the int8 two's complement of the rounded value.
static constexpr float    MVQ_ROUNDER      = 12582912.0f;
static constexpr uint32_t MVQ_ROUNDER_BITS = 0x4b400000u;

// The 8 bytes one thread writes (bytes 8 (piece % 16) .. + 7 of its chunk) from the low bytes
// of its eight rounded values q (elements 8 quarter .. + 7 of a group; quarter = piece & 3),
// exchanged with the group's other three threads where the layout needs it.
template <int TYPE>
static __device__ __forceinline__ uint2 mvq_pack(const uint32_t (&q)[8], int quarter) {
    if constexpr (TYPE == BONSAI_TYPE_PTQ1_0) {
        return make_uint2(pack_bytes4(q[0], q[1], q[2], q[3]), pack_bytes4(q[4], q[5], q[6], q[7]));
    } else if constexpr (TYPE == BONSAI_TYPE_Q1_0) {
        // Word k (0..7) of the group holds element 8 b + k in byte b: thread b holds byte b of
        // every word, and thread t writes words 2t, 2t + 1. A 4 x 4 transpose of the 16-bit pairs
        // p[t] = (byte b of word 2t, of word 2t + 1) across the four threads, in two exchanges.
        uint32_t p[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            p[t] = __byte_perm(q[2 * t], q[2 * t + 1], 0x0040u) & 0xffffu;
        }
        // with lane ^ 2: keep the pairs of words 4 (quarter / 2) .. + 3
        const bool     upper = quarter & 2;
        const uint32_t mine  = upper ? p[2] | p[3] << 16 : p[0] | p[1] << 16;
        const uint32_t other = __shfl_xor_sync(0xffffffffu, upper ? p[0] | p[1] << 16 : p[2] | p[3] << 16, 2);
        // with lane ^ 1: keep the pair of words 2 quarter, + 1 (rows quarter and quarter ^ 2)
        const bool     odd  = quarter & 1;
        const uint32_t keep = odd ? __byte_perm(mine, other, 0x7632u) : __byte_perm(mine, other, 0x5410u);
        const uint32_t got  = __shfl_xor_sync(0xffffffffu, odd ? __byte_perm(mine, other, 0x5410u)
                                                               : __byte_perm(mine, other, 0x7632u), 1);
        // keep: rows quarter (low half), quarter ^ 2; got: rows quarter ^ 1, quarter ^ 3
        const uint32_t r01 = odd ? __byte_perm(got, keep, 0x5410u) : __byte_perm(keep, got, 0x5410u);
        const uint32_t r23 = odd ? __byte_perm(got, keep, 0x7632u) : __byte_perm(keep, got, 0x7632u);
        const uint32_t lo  = upper ? r23 : r01;  // rows 0, 1 as two 16-bit pairs
        const uint32_t hi  = upper ? r01 : r23;  // rows 2, 3
        return make_uint2(__byte_perm(lo, hi, 0x6420u), __byte_perm(lo, hi, 0x7531u));
    } else {
        // Word k of the granule holds element 4 b + k in byte b: this thread holds bytes 2 h,
        // 2 h + 1 (h = quarter & 1) of every word; the even one writes words 0, 1, the odd 2, 3.
        uint32_t half[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            half[k] = __byte_perm(q[k], q[4 + k], 0x0040u) & 0xffffu;
        }
        const bool     odd = quarter & 1;
        const uint32_t got = __shfl_xor_sync(0xffffffffu, odd ? half[0] | half[1] << 16 : half[2] | half[3] << 16, 1);
        return odd ? make_uint2(half[2] << 16 | (got & 0xffffu), half[3] << 16 | got >> 16)
                   : make_uint2(half[0] | got << 16, half[1] | (got & 0xffff0000u));
    }
}

// NB batches at once, step by step, so that their latencies overlap: in batch b, thread
// piece[b] of a column rounds the column's elements 8 piece[b] .. + 7, v[b] (four threads, lanes
// 4k .. 4k + 3, per 32-element group), into chunk[b] (the piece's chunk, laid out as described
// above). All lanes of the warp take part (the shuffles); where on[b] is false nothing is
// written. A group's scale is amax / 127 rounded up to bf16 (so that no value rounds past 127),
// its values round(x * (1 / scale)), half to even, its word (scale bits << 16) | (sum of the
// values & 0xffff).
template <int TYPE, int NB>
static __device__ __forceinline__ void mvq_quantize(const float (&v)[NB][8], const int (&piece)[NB],
                                                    const bool (&on)[NB], uint8_t * const (&chunk)[NB]) {
    float amax[NB];
#pragma unroll
    for (int b = 0; b < NB; b++) {
        amax[b] = fmaxf(fmaxf(fmaxf(fabsf(v[b][0]), fabsf(v[b][1])), fmaxf(fabsf(v[b][2]), fabsf(v[b][3]))),
                        fmaxf(fmaxf(fabsf(v[b][4]), fabsf(v[b][5])), fmaxf(fabsf(v[b][6]), fabsf(v[b][7]))));
    }
#pragma unroll
    for (int m = 1; m <= 2; m *= 2) {
#pragma unroll
        for (int b = 0; b < NB; b++) {
            amax[b] = fmaxf(amax[b], __shfl_xor_sync(0xffffffffu, amax[b], m));
        }
    }
    uint32_t scale[NB], q[NB][8], sum[NB];
#pragma unroll
    for (int b = 0; b < NB; b++) {
        scale[b] = (__float_as_uint(mvq_div127(amax[b])) + 0xffffu) & 0xffff0000u;
        const float inverse = scale[b] ? mvq_reciprocal(__uint_as_float(scale[b])) : 0.0f;
        sum[b] = 0u - 8u * MVQ_ROUNDER_BITS;  // the values' sum: their float bits less the rounder's
#pragma unroll
        for (int j = 0; j < 8; j++) {
            q[b][j] = __float_as_uint(__fadd_rn(__fmul_rn(v[b][j], inverse), MVQ_ROUNDER));
            sum[b] += q[b][j];
        }
    }
#pragma unroll
    for (int m = 1; m <= 2; m *= 2) {
#pragma unroll
        for (int b = 0; b < NB; b++) {
            sum[b] += __shfl_xor_sync(0xffffffffu, sum[b], m);
        }
    }
#pragma unroll
    for (int b = 0; b < NB; b++) {
        const int  quarter = piece[b] & 3;
        const uint2 out    = mvq_pack<TYPE>(q[b], quarter);
        if (on[b]) {
            *(uint2 *) (chunk[b] + 8 * (piece[b] % 16)) = out;
            if (quarter == 0) {
                *(uint32_t *) (chunk[b] + 128 + 4 * (piece[b] % 16 / 4)) = scale[b] | (sum[b] & 0xffffu);
            }
        }
    }
}

struct mvq_params {
    const uint8_t * w;
    size_t          w_nb1, w_nb2, w_nb3;
    int64_t         r2, r3, ne2;  // x slice (i2, i3) uses weight slice (i2 / r2, i3 / r3)
    const float *   x;
    size_t          x_nb1, x_nb2, x_nb3;
    float *         dst;
    size_t          d_nb1, d_nb2, d_nb3;
    int64_t         M;
    int             chunks;          // K / 128
    int             rows_per_block;
};

extern __shared__ __align__(16) uint8_t mvq_smem[];

// A position in the units of a block's rows: unit u is chunk c of row `row` (both of the run).
struct mvq_cursor {
    int u, row, c;
    __device__ __forceinline__ void advance(int n, int C) {
        u += n;
        c += n;
        while (c >= C) {
            c -= C;
            row++;
        }
    }
};

// grid: (runs of rows_per_block rows, ne2 * ne3 slices); dynamic shared memory: the warps' rings,
// the activations (NC columns of mvq_column_bytes(chunks)) and the row sums (rows_per_block x NC
// floats).
template <int TYPE, int NC>
static __global__ void __launch_bounds__(MVQ_WARPS * 32, MVQ_BLOCKS) mvq_kernel(const mvq_params p) {
    using G = mvq_geometry<TYPE>;
    const int C    = p.chunks;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;

    const int64_t row0 = (int64_t) blockIdx.x * p.rows_per_block;
    const int     rows = (int) min((int64_t) p.rows_per_block, p.M - row0);
    const int64_t i2   = blockIdx.y % p.ne2;
    const int64_t i3   = blockIdx.y / p.ne2;

    // Weight bytes are addressed as 32-bit offsets from `base`, the 16-byte boundary at or below
    // the run's first byte (the host keeps a run's bytes under 2^31). 16-byte pieces that reach
    // outside the slice's bytes [lo, hi) (only at its very start and end) are copied two bytes at
    // a time.
    const uint8_t * ws    = p.w + (i2 / p.r2) * p.w_nb2 + (i3 / p.r3) * p.w_nb3;
    const uint8_t * wrun  = ws + row0 * p.w_nb1;
    const int       skew  = (int) ((uintptr_t) wrun & 15);
    const uint8_t * base  = wrun - skew;
    const int       lo    = (int) max((intptr_t) 0, (intptr_t) (ws - base));  // 0..15
    const int       hi    = (int) min((int64_t) INT32_MAX,
                                      (int64_t) ((ws + (size_t) (p.M - 1) * p.w_nb1 + (size_t) C * G::unit) - base));
    const bool      flat  = p.w_nb1 == (size_t) C * G::unit;  // rows back to back: a stage may span rows
    const int       pitch = (int) p.w_nb1;

    uint8_t * const ring   = mvq_smem + warp * (MVQ_STAGES * G::slot);
    uint8_t * const act    = mvq_smem + MVQ_WARPS * MVQ_STAGES * G::slot;
    const int       column = mvq_column_bytes(C);
    const int       odd0   = mvq_odd_chunks_at(C);
    float * const   rowsum = (float *) (act + NC * column);
    auto chunk_at = [&](int c) {  // byte offset of chunk c in a column
        return (c & 1 ? odd0 : 0) + (c >> 1) * MVQ_CHUNK;
    };

    // the warp's units (row-major over the run): an even share of the run's 32-unit pieces
    const int total  = rows * C;
    const int pieces = (total + 31) / 32;
    const int u_end  = min(total, 32 * (pieces * (warp + 1) / MVQ_WARPS));
    mvq_cursor at;
    at.u   = min(total, 32 * (pieces * warp / MVQ_WARPS));
    at.row = at.u / C;
    at.c   = at.u % C;

    auto offset = [&](const mvq_cursor & q) {  // of the unit's first byte from base
        return skew + (flat ? q.u * G::unit : q.row * pitch + q.c * G::unit);
    };
    // the stage from q: up to MVQ_UNITS units, within one row unless the rows are back to back
    auto stage_units = [&](const mvq_cursor & q) {
        const int n = min(MVQ_UNITS, u_end - q.u);
        return flat ? n : min(n, C - q.c);
    };
    // copies the n units from q into ring stage s: the 16-byte pieces from the one at or below
    // their first byte
    auto issue = [&](const mvq_cursor & q, int n, int s) {
        const int       first  = offset(q);
        const int       from   = first & ~15;
        const int       count  = ((first & 15) + n * G::unit + 15) / 16;
        const bool      inside = from >= lo && from + 16 * count <= hi;
        const uint8_t * src    = base + from + 16 * lane;
        uint8_t * const to     = ring + s * G::slot + 16 * lane;
        if (inside) {
#pragma unroll
            for (int j = 0; j < G::pieces_per_lane; j++) {
                if (lane + 32 * j < count) {
                    cp_async16(to + 512 * j, src + 512 * j);
                }
            }
            return;
        }
#pragma unroll 1
        for (int j = 0; j < G::pieces_per_lane; j++) {
            const int at_byte = from + 16 * (lane + 32 * j);
            if (lane + 32 * j < count) {
                if (at_byte >= lo && at_byte + 16 <= hi) {
                    cp_async16(to + 512 * j, src + 512 * j);
                } else {
#pragma unroll 1
                    for (int h = 0; h < 16; h += 2) {
                        if (at_byte + h >= lo && at_byte + h + 2 <= hi) {
                            *(uint16_t *) (to + 512 * j + h) = *(const uint16_t *) (src + 512 * j + h);
                        }
                    }
                }
            }
        }
    };

    // The activations: thread t of round j0 rounds task j = j0 + b * (block size) + t of each
    // batch b, elements 8 (j % pieces8) .. + 7 of column j / pieces8. The first round's loads go
    // out before the weights' first stages, which would otherwise be queued ahead of them. A
    // round's batches are rounded together (their latencies overlap); a warp with no task in a
    // batch that others have rounds zeros there and writes nothing, one with none in the round
    // skips it. Eight elements a thread (four threads a group) spread K = 3072 over 12 of the 16
    // warps.
    constexpr int  BATCH   = 4;  // batches per round (the cases of the switch below)
    const char *   xs      = (const char *) p.x + i2 * p.x_nb2 + i3 * p.x_nb3;
    const int      pieces8 = 16 * C;  // per column; a multiple of 16, so groups stay in a warp
    const int      tasks   = NC * pieces8;
    auto batch_on = [&](int j0, int b) {  // the same for all lanes of a warp
        return j0 + b * MVQ_WARPS * 32 + warp * 32 < tasks;
    };
    auto column_of = [&](int j) {  // of task j
        return NC == 1 ? 0 : (int) ((unsigned) j / (unsigned) pieces8);
    };
    auto load_round = [&](int j0, float (&v)[BATCH][8]) {
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
            if (batch_on(j0, b)) {
                const int      j   = j0 + b * MVQ_WARPS * 32 + (int) threadIdx.x;
                const int      col = column_of(j);
                const float4 * x4  = (const float4 *) (xs + col * p.x_nb1) + 2 * (j - col * pieces8);
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const float4 f = j < tasks ? __ldg(x4 + q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    v[b][4 * q] = f.x, v[b][4 * q + 1] = f.y, v[b][4 * q + 2] = f.z, v[b][4 * q + 3] = f.w;
                }
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    v[b][e] = 0.0f;
                }
            }
        }
    };
    // rounds the first NB batches of round j0 (NB: an std::integral_constant)
    auto round_batches = [&](int j0, const float (&v)[BATCH][8], auto nb) {
        constexpr int NB = decltype(nb)::value;
        int       piece[NB];
        bool      on[NB];
        uint8_t * chunk[NB];
#pragma unroll
        for (int b = 0; b < NB; b++) {
            const int j   = j0 + b * MVQ_WARPS * 32 + (int) threadIdx.x;
            const int col = column_of(j);
            piece[b]      = j - col * pieces8;
            on[b]         = j < tasks;
            chunk[b]      = act + col * column + chunk_at(piece[b] / 16);
        }
        mvq_quantize<TYPE, NB>(reinterpret_cast<const float (&)[NB][8]>(v), piece, on, chunk);
    };
    float v[BATCH][8];
    load_round(0, v);

    mvq_cursor next = at;  // the first unit not yet issued
#pragma unroll
    for (int s = 0; s < MVQ_STAGES - 1; s++) {
        if (next.u < u_end) {
            const int n = stage_units(next);
            issue(next, n, s);
            next.advance(n, C);
        }
        cp_async_commit();
    }

    for (int i = threadIdx.x; i < rows * NC; i += MVQ_WARPS * 32) {
        rowsum[i] = 0.0f;
    }
    for (int j0 = 0; j0 < tasks; j0 += BATCH * MVQ_WARPS * 32) {
        if (j0 > 0) {
            load_round(j0, v);
        }
        if (batch_on(j0, 0)) {
            switch (min(BATCH, (tasks - j0 + MVQ_WARPS * 32 - 1) / (MVQ_WARPS * 32))) {
                case 1: round_batches(j0, v, std::integral_constant<int, 1>()); break;
                case 2: round_batches(j0, v, std::integral_constant<int, 2>()); break;
                case 3: round_batches(j0, v, std::integral_constant<int, 3>()); break;
                default: round_batches(j0, v, std::integral_constant<int, 4>()); break;
            }
        }
    }
    __syncthreads();

    for (int s = 0; at.u < u_end; s = s + 1 < MVQ_STAGES ? s + 1 : 0) {
        if (next.u < u_end) {
            const int n = stage_units(next);
            issue(next, n, s == 0 ? MVQ_STAGES - 1 : s - 1);
            next.advance(n, C);
        }
        cp_async_commit();
        cp_async_wait<MVQ_STAGES - 1>();
        __syncwarp();  // every lane's pieces of this stage have landed

        // Lane l takes units `per` l .. + per - 1 of the stage's n (one each for up to 32, else
        // two): unit a, chunk c of row `row`, and (has_b) unit b after it, chunk c_b of row_b.
        // Where b starts a row, a's sums go to their row at once and the lane carries b's, so
        // that each lane ends with one row's sums for the reduction below.
        const int n   = stage_units(at);
        const int per = n > 32 ? 2 : 1;
        const int ua  = per * lane;
        int       row = at.row, c = at.c + ua;
        while (c >= C) {
            c -= C;
            row++;
        }
        const bool has_b = per == 2 && ua + 1 < n;
        const int  c_b   = c + 1 < C ? c + 1 : 0;
        const int  row_b = c_b ? row : row + 1;
        float      sum[NC];
#pragma unroll
        for (int col = 0; col < NC; col++) {
            sum[col] = 0.0f;
        }
        if (ua < n) {
            const int       start = (offset(at) & 15) + ua * G::unit;
            const uint8_t * stage = ring + s * G::slot;
            {
                const mvq_weights<TYPE> wt((const uint32_t *) (stage + (start & ~3)), start & 3);
#pragma unroll
                for (int col = 0; col < NC; col++) {
                    sum[col] = mvq_dot<TYPE>(wt, act + col * column + chunk_at(c));
                }
            }
            if (has_b) {
                if (row_b != row) {  // unit b starts a row: a's sums go to their row now
#pragma unroll
                    for (int col = 0; col < NC; col++) {
                        atomicAdd(&rowsum[row * NC + col], sum[col]);
                        sum[col] = 0.0f;
                    }
                    row = row_b;
                }
                const int               start_b = start + G::unit;
                const mvq_weights<TYPE> wt((const uint32_t *) (stage + (start_b & ~3)), start_b & 3);
#pragma unroll
                for (int col = 0; col < NC; col++) {
                    sum[col] += mvq_dot<TYPE>(wt, act + col * column + chunk_at(c_b));
                }
            }
        } else {
            row = -1;
        }
        // Lanes hold consecutive units, so each row's lanes are a run: sum every run into its
        // first lane (a segmented suffix sum), which adds it to the row's total.
#pragma unroll
        for (int offset = 1; offset < 32; offset *= 2) {
            const int other = __shfl_down_sync(0xffffffffu, row, offset);
#pragma unroll
            for (int col = 0; col < NC; col++) {
                const float v = __shfl_down_sync(0xffffffffu, sum[col], offset);
                if (lane + offset < 32 && other == row) {
                    sum[col] += v;
                }
            }
        }
        const int before = __shfl_up_sync(0xffffffffu, row, 1);
        if (row >= 0 && (lane == 0 || before != row)) {
#pragma unroll
            for (int col = 0; col < NC; col++) {
                atomicAdd(&rowsum[row * NC + col], sum[col]);  // another warp may share the row
            }
        }
        __syncwarp();  // every lane is done with this stage before it is refilled
        at.advance(n, C);
    }
    __syncthreads();

    char * ds = (char *) p.dst + i2 * p.d_nb2 + i3 * p.d_nb3 + row0 * sizeof(float);
#pragma unroll
    for (int col = 0; col < NC; col++) {
        for (int r = threadIdx.x; r < rows; r += MVQ_WARPS * 32) {
            ((float *) (ds + col * p.d_nb1))[r] = rowsum[r * NC + col];
        }
    }
}

// Copies strided f32 activations into contiguous columns [slice][N][K] for the mat-vec.
static __global__ void gather_cols_kernel(const char * __restrict__ x, int64_t K, int64_t N, int64_t ne2,
                                          size_t nb0, size_t nb1, size_t nb2, size_t nb3, float * __restrict__ y) {
    const int64_t k     = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t n     = blockIdx.y;
    const int64_t slice = blockIdx.z;
    if (k >= K) {
        return;
    }
    const int64_t i2 = slice % ne2, i3 = slice / ne2;
    y[(slice * N + n) * K + k] = *(const float *) (x + k * nb0 + n * nb1 + i2 * nb2 + i3 * nb3);
}

// Warps of mmv_kernel<TYPE, NC> that the current device holds at once (cached per device).
template <int TYPE, int NC> static int64_t mmv_resident_warps() {
    static int blocks[64];
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
        return 132 * 32;
    }
    if (blocks[device] == 0) {
        int per_sm = 0, sms = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, mmv_kernel<TYPE, NC>, MMV_WARPS * 32, 0);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        blocks[device] = max(per_sm, 1) * max(sms, 1);
    }
    return (int64_t) blocks[device] * MMV_WARPS;
}

template <int TYPE, int NC>
static cudaError_t launch_mmv(const bonsai_cuda_matmul_args & a, const float * x, size_t x_nb1, size_t x_nb2,
                              size_t x_nb3, cudaStream_t stream) {
    const int     chunks   = (int) (a.K / 128);
    const int     steps    = (chunks + MMV_CHUNKS - 1) / MMV_CHUNKS;
    const int64_t groups   = (a.M + MMV_ROWS - 1) / MMV_ROWS;
    const int64_t warps    = groups * a.ne2 * a.ne3;
    const int64_t resident = mmv_resident_warps<TYPE, NC>();
    // Less than a wave and a half of warps (all take about as long): the last wave would leave
    // the GPU mostly idle, or the first would not fill it. Split K between a block's warps until
    // there are two waves.
    int ksplit = 1;
    if (2 * warps < 3 * resident) {
        while (ksplit < MMV_WARPS && 2 * ksplit <= steps && warps * ksplit < 2 * resident) {
            ksplit *= 2;
        }
    }
    const int  per_block = MMV_WARPS / ksplit;  // row groups per block
    const dim3 grid((unsigned) ((groups + per_block - 1) / per_block), (unsigned) (a.ne2 * a.ne3));
    mmv_kernel<TYPE, NC><<<grid, MMV_WARPS * 32, 0, stream>>>(
        (const uint8_t *) a.w, a.M, chunks, a.w_nb1, a.w_nb2, a.w_nb3, a.ne2 / a.w_ne2, a.ne3 / a.w_ne3, a.ne2, x,
        x_nb1, x_nb2, x_nb3, a.dst, a.d_nb1, a.d_nb2, a.d_nb3, ksplit);
    return cudaGetLastError();
}

// Per device: SMs and the shared memory a block may opt into (cached).
struct mvq_device {
    int sms        = 0;
    int smem_optin = 0;
};

static const mvq_device * mvq_device_info(int & device) {
    static mvq_device info[64];
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
        return nullptr;
    }
    mvq_device & d = info[device];
    if (d.sms == 0) {
        cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
        cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
        d.sms = max(d.sms, 1);
    }
    return &d;
}

// The int8 mat-vec when a block's activations fit in shared memory, else the f32 one.
template <int TYPE, int NC>
static cudaError_t launch_matvec(const bonsai_cuda_matmul_args & a, const float * x, size_t x_nb1, size_t x_nb2,
                                 size_t x_nb3, cudaStream_t stream) {
    using G = mvq_geometry<TYPE>;
    int device = 0;
    const mvq_device * dev = mvq_device_info(device);
    const int     C      = (int) (a.K / 128);
    const int64_t slices = a.ne2 * a.ne3;
    // MVQ_BLOCKS blocks per SM over all slices; each takes a run of rows (at least a stage per
    // warp: every block rounds the whole activation vector again)
    const int64_t blocks = max((int64_t) 1, (int64_t) (dev ? dev->sms : 1) * MVQ_BLOCKS / slices);
    int64_t rows = (a.M + blocks - 1) / blocks;
    rows = max(rows, (int64_t) ((MVQ_MIN_UNITS + C - 1) / C));
    rows = min(rows, min((int64_t) MVQ_MAX_ROWS, a.M));
    const size_t smem = (size_t) MVQ_WARPS * MVQ_STAGES * G::slot + (size_t) NC * mvq_column_bytes(C) +
                        (size_t) rows * NC * sizeof(float);
    // the kernel addresses a run's weight bytes with 32-bit offsets
    if (!dev || smem > (size_t) dev->smem_optin || (double) rows * (double) a.w_nb1 >= (double) (1 << 30)) {
        return launch_mmv<TYPE, NC>(a, x, x_nb1, x_nb2, x_nb3, stream);
    }
    static bool raised[64];
    if (!raised[device]) {
        const cudaError_t err = cudaFuncSetAttribute(mvq_kernel<TYPE, NC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     dev->smem_optin);
        if (err != cudaSuccess) {
            return err;
        }
        raised[device] = true;
    }
    mvq_params p;
    p.w              = (const uint8_t *) a.w;
    p.w_nb1          = a.w_nb1;
    p.w_nb2          = a.w_nb2;
    p.w_nb3          = a.w_nb3;
    p.r2             = a.ne2 / a.w_ne2;
    p.r3             = a.ne3 / a.w_ne3;
    p.ne2            = a.ne2;
    p.x              = x;
    p.x_nb1          = x_nb1;
    p.x_nb2          = x_nb2;
    p.x_nb3          = x_nb3;
    p.dst            = a.dst;
    p.d_nb1          = a.d_nb1;
    p.d_nb2          = a.d_nb2;
    p.d_nb3          = a.d_nb3;
    p.M              = a.M;
    p.chunks         = C;
    p.rows_per_block = (int) rows;
    const dim3 grid((unsigned) ((a.M + rows - 1) / rows), (unsigned) slices);
    mvq_kernel<TYPE, NC><<<grid, MVQ_WARPS * 32, smem, stream>>>(p);
    return cudaGetLastError();
}

template <int TYPE>
static cudaError_t matvec_typed(const bonsai_cuda_matmul_args & a, const float * x, size_t x_nb1, size_t x_nb2,
                                size_t x_nb3, cudaStream_t stream) {
    switch (a.N) {
        case 1: return launch_matvec<TYPE, 1>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 2: return launch_matvec<TYPE, 2>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 3: return launch_matvec<TYPE, 3>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 4: return launch_matvec<TYPE, 4>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 5: return launch_matvec<TYPE, 5>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 6: return launch_matvec<TYPE, 6>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 7: return launch_matvec<TYPE, 7>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 8: return launch_matvec<TYPE, 8>(a, x, x_nb1, x_nb2, x_nb3, stream);
        default: return cudaErrorInvalidValue;
    }
}

// The mat-vec reads each column as float4s: contiguous, 16-byte aligned columns.
static bool mmv_direct(const bonsai_cuda_matmul_args & a) {
    return a.x_nb0 == sizeof(float) && (uintptr_t) a.x % 16 == 0 && a.x_nb1 % 16 == 0 && a.x_nb2 % 16 == 0 &&
           a.x_nb3 % 16 == 0;
}

// The GEMM path folds the slices into one when the weights are not sliced and the slices of x
// and dst are evenly spaced rows.
static bool gemm_single_slice(const bonsai_cuda_matmul_args & a) {
    return a.w_ne2 == 1 && a.w_ne3 == 1 && a.x_nb2 == a.N * a.x_nb1 && a.x_nb3 == a.ne2 * a.x_nb2 &&
           a.d_nb2 == a.N * a.d_nb1 && a.d_nb3 == a.ne2 * a.d_nb2;
}

static size_t align256(size_t n) {
    return (n + 255) / 256 * 256;
}

}  // namespace bonsai_cuda

using namespace bonsai_cuda;

cudaError_t bonsai_cuda_dequantize_f32(int type, const void * x, float * y, int64_t k, cudaStream_t stream) {
    return dequantize(type, x, y, k, stream);
}

cudaError_t bonsai_cuda_dequantize_f16(int type, const void * x, half * y, int64_t k, cudaStream_t stream) {
    return dequantize(type, x, y, k, stream);
}

cudaError_t bonsai_cuda_dequantize_bf16(int type, const void * x, nv_bfloat16 * y, int64_t k, cudaStream_t stream) {
    return dequantize(type, x, y, k, stream);
}

cudaError_t bonsai_cuda_get_rows(const bonsai_cuda_get_rows_args * args, cudaStream_t stream) {
    const int64_t groups = (args->ne00 / 16 + 127) / 128;
    const dim3 grid((unsigned) (groups * args->ne10), (unsigned) (args->ne11 * args->ne12));
    if (grid.x == 0 || grid.y == 0) {
        return cudaSuccess;
    }
    switch (args->type) {
#define BONSAI_ROWS_CASE(TYPE) \
        case TYPE: get_rows_kernel<TYPE><<<grid, 128, 0, stream>>>(*args, groups); break;
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_ROWS_CASE)
#undef BONSAI_ROWS_CASE
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t bonsai_cuda_quantize_f32(const bonsai_cuda_cpy_args * args, cudaStream_t stream) {
    const int64_t ne      = args->ne00 * args->ne01 * args->ne02 * args->ne03;
    const int64_t nblocks = ne / host_block_elems(args->type);
    const unsigned grid   = (unsigned) ((nblocks + 63) / 64);
    if (grid == 0) {
        return cudaSuccess;
    }
    switch (args->type) {
#define BONSAI_QCPY_CASE(TYPE) \
        case TYPE: quantize_cpy_kernel<TYPE><<<grid, 64, 0, stream>>>(*args, nblocks); break;
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_QCPY_CASE)
#undef BONSAI_QCPY_CASE
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t bonsai_cuda_dequantize_cpy(const bonsai_cuda_cpy_args * args, cudaStream_t stream) {
    const int64_t ne    = args->ne00 * args->ne01 * args->ne02 * args->ne03;
    const int64_t nsubs = ne / 16;
    const unsigned grid = (unsigned) ((nsubs + 255) / 256);
    if (grid == 0) {
        return cudaSuccess;
    }
    switch (args->type) {
#define BONSAI_DCPY_CASE(TYPE) \
        case TYPE: dequantize_cpy_kernel<TYPE><<<grid, 256, 0, stream>>>(*args, nsubs); break;
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_DCPY_CASE)
#undef BONSAI_DCPY_CASE
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

bool bonsai_cuda_matmul_supported(int type, int64_t K) {
    return host_block_elems(type) != 0 && K > 0 && K % 128 == 0;
}

// Which GEMM runs N > 8: the f16 wgmma kernel on sm_90 when it is built in, else the int8
// mma.sync kernel. BONSAI_SD_CUDA_GEMM=int8 or =f16 forces one (f16 only where it exists).
static bool use_f16_gemm() {
#ifdef BONSAI_CUDA_SM90
    static const char * forced = getenv("BONSAI_SD_CUDA_GEMM");
    if (forced && strcmp(forced, "int8") == 0) {
        return false;
    }
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major == 9 && minor == 0;
#else
    return false;
#endif
}

#ifdef BONSAI_CUDA_SM90
static size_t f16_act_bytes(int64_t n, int64_t K) {
    return align256((size_t) (bonsai_cuda_act_f16_rows(n) * bonsai_cuda_act_chunks(K) * 128) * sizeof(half));
}
#endif

// The GEMM's scratch: its activations (for the f16 GEMM, then its schedule's workspace).
static size_t gemm_act_bytes(bool f16, int64_t M, int64_t n, int64_t K) {
    const int64_t chunks = bonsai_cuda_act_chunks(K);
#ifdef BONSAI_CUDA_SM90
    if (f16) {
        return f16_act_bytes(n, K) + bonsai_cuda_gemm_f16_workspace(M, K, n, 0, 0, 0);
    }
#else
    (void) M;
#endif
    const int64_t rows = bonsai_cuda_act_rows(n);
    return align256((size_t) (rows * chunks * 128)) + align256((size_t) (rows * chunks) * sizeof(float4));
}

size_t bonsai_cuda_matmul_scratch_bytes(const bonsai_cuda_matmul_args * a) {
    const int64_t slices = a->ne2 * a->ne3;
    if (a->N <= BONSAI_CUDA_MMV_MAX_COLS) {
        return mmv_direct(*a) ? 0 : align256((size_t) (slices * a->N * a->K) * sizeof(float));
    }
    const int64_t n_eff = gemm_single_slice(*a) ? a->N * slices : a->N;  // one slice's worth, reused
    return gemm_act_bytes(use_f16_gemm(), a->M, n_eff, a->K);
}

cudaError_t bonsai_cuda_matmul(const bonsai_cuda_matmul_args * a, void * scratch, cudaStream_t stream) {
    if (!bonsai_cuda_matmul_supported(a->type, a->K)) {
        return cudaErrorInvalidValue;
    }
    if (a->M == 0 || a->N == 0 || a->ne2 * a->ne3 == 0) {
        return cudaSuccess;
    }

    if (a->N <= BONSAI_CUDA_MMV_MAX_COLS) {
        const float * x     = a->x;
        size_t        x_nb1 = a->x_nb1, x_nb2 = a->x_nb2, x_nb3 = a->x_nb3;
        if (!mmv_direct(*a)) {
            float * y = (float *) scratch;
            const dim3 grid((unsigned) ((a->K + 255) / 256), (unsigned) a->N, (unsigned) (a->ne2 * a->ne3));
            gather_cols_kernel<<<grid, 256, 0, stream>>>((const char *) a->x, a->K, a->N, a->ne2, a->x_nb0, a->x_nb1,
                                                         a->x_nb2, a->x_nb3, y);
            x     = y;
            x_nb1 = a->K * sizeof(float);
            x_nb2 = a->N * x_nb1;
            x_nb3 = a->ne2 * x_nb2;
        }
        switch (a->type) {
#define BONSAI_MMV_CASE(TYPE) \
            case TYPE: return matvec_typed<TYPE>(*a, x, x_nb1, x_nb2, x_nb3, stream);
            BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_MMV_CASE)
#undef BONSAI_MMV_CASE
            default: return cudaErrorInvalidValue;
        }
    }

    const bool    f16    = use_f16_gemm();
    const bool    single = gemm_single_slice(*a);
    const int64_t n_eff  = single ? a->N * a->ne2 * a->ne3 : a->N;
    const int64_t slices = single ? 1 : a->ne2 * a->ne3;
    for (int64_t slice = 0; slice < slices; slice++) {
        const int64_t i2 = slice % a->ne2, i3 = slice / a->ne2;
        const float * x = (const float *) ((const char *) a->x + i2 * a->x_nb2 + i3 * a->x_nb3);
        const void  * w = (const char *) a->w + (i2 / (a->ne2 / a->w_ne2)) * a->w_nb2 + (i3 / (a->ne3 / a->w_ne3)) * a->w_nb3;
        float * dst = (float *) ((char *) a->dst + i2 * a->d_nb2 + i3 * a->d_nb3);
        cudaError_t err;
#ifdef BONSAI_CUDA_SM90
        if (f16) {
            void * workspace = (char *) scratch + f16_act_bytes(n_eff, a->K);
            err = bonsai_cuda_convert_act_f16(a->type, x, a->K, n_eff, a->x_nb0, a->x_nb1, scratch, workspace,
                                              bonsai_cuda_gemm_f16_flag_bytes(a->M, a->K, n_eff, 0, 0, 0), stream);
            if (err == cudaSuccess) {
                err = bonsai_cuda_gemm_f16(a->type, w, a->M, a->K, a->w_nb1, scratch, n_eff, dst, a->d_nb1, 0, 0, 0,
                                           workspace, stream);
            }
        } else
#endif
        {
            (void) f16;
            const int64_t rows = bonsai_cuda_act_rows(n_eff), chunks = bonsai_cuda_act_chunks(a->K);
            int8_t * act    = (int8_t *) scratch;
            float4 * scales = (float4 *) ((char *) scratch + align256((size_t) (rows * chunks * 128)));
            err = bonsai_cuda_quantize_act(x, a->K, n_eff, a->x_nb0, a->x_nb1, act, scales, stream);
            if (err == cudaSuccess) {
                err = bonsai_cuda_gemm_q8(a->type, w, a->M, a->K, a->w_nb1, act, scales, n_eff, dst, a->d_nb1, 0, stream);
            }
        }
        if (err != cudaSuccess) {
            return err;
        }
    }
    return cudaSuccess;
}

bool bonsai_cuda_matmul_glu_supported(int type, int64_t K, int64_t N) {
    return bonsai_cuda_matmul_supported(type, K) && N > BONSAI_CUDA_MMV_MAX_COLS && use_f16_gemm();
}

cudaError_t bonsai_cuda_matmul_glu(const bonsai_cuda_matmul_args * a, const bonsai_cuda_act_glu * glu, void * scratch,
                                   cudaStream_t stream) {
    if (!bonsai_cuda_matmul_glu_supported(a->type, a->K, a->N) || a->ne2 != 1 || a->ne3 != 1 || a->w_ne2 != 1 ||
        a->w_ne3 != 1) {
        return cudaErrorInvalidValue;
    }
#ifdef BONSAI_CUDA_SM90
    if (a->M == 0) {
        return cudaSuccess;
    }
    void * workspace = (char *) scratch + f16_act_bytes(a->N, a->K);
    cudaError_t err = bonsai_cuda_convert_act_f16_glu(a->type, glu, a->K, a->N, scratch, workspace,
                                                      bonsai_cuda_gemm_f16_flag_bytes(a->M, a->K, a->N, 0, 0, 0), stream);
    if (err == cudaSuccess) {
        err = bonsai_cuda_gemm_f16(a->type, a->w, a->M, a->K, a->w_nb1, scratch, a->N, a->dst, a->d_nb1, 0, 0, 0,
                                   workspace, stream);
    }
    return err;
#else
    (void) glu;
    (void) scratch;
    (void) stream;
    return cudaErrorInvalidValue;
#endif
}
