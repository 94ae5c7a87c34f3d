// The low-bit types on CUDA, everything but the GEMM: dequantization (convert), get_rows,
// f32 <-> type copies, the small-batch mat-vec, and the MUL_MAT entry point that picks
// between the mat-vec and the GEMM of lowbit-cuda-gemm.cu.

#include "lowbit-cuda.h"
#include "lowbit-cuda-common.cuh"

#include <cstdlib>
#include <cstring>

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
// A warp computes ROWS weight rows; each lane walks 16-element sub-blocks and multiplies
// their codes with the activations (contiguous per column, 16-byte aligned), which stay f32:
// the result is exact up to fp32 rounding.

static constexpr int MMV_WARPS = 4;
static constexpr int MMV_ROWS  = 2;

template <int TYPE, int NC>
static __global__ void __launch_bounds__(MMV_WARPS * 32) mmv_kernel(
        const uint8_t * __restrict__ w, int64_t M, int64_t K, size_t w_nb1, size_t w_nb2, size_t w_nb3,
        int64_t r2, int64_t r3, int64_t ne2, const float * __restrict__ x, size_t x_nb1, size_t x_nb2,
        size_t x_nb3, float * __restrict__ dst, size_t d_nb1, size_t d_nb2, size_t d_nb3) {
    constexpr int SUBS  = traits<TYPE>::qk / 16;
    constexpr int BYTES = traits<TYPE>::bytes;
    const int     lane  = threadIdx.x % 32;
    const int64_t row0  = ((int64_t) blockIdx.x * MMV_WARPS + threadIdx.x / 32) * MMV_ROWS;
    const int64_t i2    = blockIdx.y % ne2;
    const int64_t i3    = blockIdx.y / ne2;
    if (row0 >= M) {
        return;
    }
    const uint8_t * wr[MMV_ROWS];
#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
        wr[r] = w + min(row0 + r, M - 1) * w_nb1 + (i2 / r2) * w_nb2 + (i3 / r3) * w_nb3;
    }
    const char * xs = (const char *) x + i2 * x_nb2 + i3 * x_nb3;

    float acc[MMV_ROWS][NC] = {};
    const int64_t subs = K / 16;
    for (int64_t s = lane; s < subs; s += 32) {
        float4 xv[NC][4];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float4 * xp = (const float4 *) (xs + c * x_nb1) + s * 4;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                xv[c][q] = xp[q];
            }
        }
#pragma unroll
        for (int r = 0; r < MMV_ROWS; r++) {
            float d;
            const uint32_t codes = codes16<TYPE>(wr[r] + (s / SUBS) * BYTES, (int) (s % SUBS), d);
            float v[16];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                v[i] = code_value(codes, i);
            }
#pragma unroll
            for (int c = 0; c < NC; c++) {
                float sum = 0.0f;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    sum = fmaf(v[4 * q + 0], xv[c][q].x, sum);
                    sum = fmaf(v[4 * q + 1], xv[c][q].y, sum);
                    sum = fmaf(v[4 * q + 2], xv[c][q].z, sum);
                    sum = fmaf(v[4 * q + 3], xv[c][q].w, sum);
                }
                acc[r][c] = fmaf(d, sum, acc[r][c]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < MMV_ROWS; r++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float v = acc[r][c];
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) {
                v += __shfl_xor_sync(0xffffffffu, v, offset);
            }
            if (lane == 0 && row0 + r < M) {
                *(float *) ((char *) dst + (row0 + r) * sizeof(float) + c * d_nb1 + i2 * d_nb2 + i3 * d_nb3) = v;
            }
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

template <int TYPE, int NC>
static cudaError_t launch_mmv(const bonsai_cuda_matmul_args & a, const float * x, size_t x_nb1, size_t x_nb2,
                              size_t x_nb3, cudaStream_t stream) {
    const dim3 grid((unsigned) ((a.M + MMV_WARPS * MMV_ROWS - 1) / (MMV_WARPS * MMV_ROWS)), (unsigned) (a.ne2 * a.ne3));
    mmv_kernel<TYPE, NC><<<grid, MMV_WARPS * 32, 0, stream>>>(
        (const uint8_t *) a.w, a.M, a.K, a.w_nb1, a.w_nb2, a.w_nb3, a.ne2 / a.w_ne2, a.ne3 / a.w_ne3, a.ne2, x,
        x_nb1, x_nb2, x_nb3, a.dst, a.d_nb1, a.d_nb2, a.d_nb3);
    return cudaGetLastError();
}

template <int TYPE>
static cudaError_t mmv_typed(const bonsai_cuda_matmul_args & a, const float * x, size_t x_nb1, size_t x_nb2,
                             size_t x_nb3, cudaStream_t stream) {
    switch (a.N) {
        case 1: return launch_mmv<TYPE, 1>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 2: return launch_mmv<TYPE, 2>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 3: return launch_mmv<TYPE, 3>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 4: return launch_mmv<TYPE, 4>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 5: return launch_mmv<TYPE, 5>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 6: return launch_mmv<TYPE, 6>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 7: return launch_mmv<TYPE, 7>(a, x, x_nb1, x_nb2, x_nb3, stream);
        case 8: return launch_mmv<TYPE, 8>(a, x, x_nb1, x_nb2, x_nb3, stream);
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

// The GEMM's scratch: its activations (for the f16 GEMM, then the partial sums of a split K).
static size_t gemm_act_bytes(bool f16, int64_t M, int64_t n, int64_t K) {
    const int64_t chunks = bonsai_cuda_act_chunks(K);
#ifdef BONSAI_CUDA_SM90
    if (f16) {
        return f16_act_bytes(n, K) + bonsai_cuda_gemm_f16_workspace(M, K, n, 0, 0);
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
            case TYPE: return mmv_typed<TYPE>(*a, x, x_nb1, x_nb2, x_nb3, stream);
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
            err = bonsai_cuda_convert_act_f16(x, a->K, n_eff, a->x_nb0, a->x_nb1, scratch, stream);
            if (err == cudaSuccess) {
                err = bonsai_cuda_gemm_f16(a->type, w, a->M, a->K, a->w_nb1, scratch, n_eff, dst, a->d_nb1, 0, 0, workspace,
                                           stream);
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
