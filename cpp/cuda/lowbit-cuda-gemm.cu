// The large-batch GEMM of the low-bit types: int8 tensor cores (mma.sync m16n8k32, sm_80+),
// weights kept packed in VRAM and decoded in shared memory and registers. The MUL_MAT path on
// sm_80..89 (on sm_90 the f16 wgmma GEMM of lowbit-cuda-gemm-sm90.cu runs instead: mma.sync
// runs at half the tensor rate there).
//
// dst[n][m] = sum_k W[m][k] * x[n][k] with W in a low-bit type and x in f32.
//
// 1. Activation pre-pass (quantize_act_kernel): per token and 128-element chunk of K, int8
//    codes q = round(x * 127 / amax) and the scale amax / 127. The codes are stored in the
//    in-chunk order that the weight decode below produces, so no shuffling happens in the
//    GEMM. Alongside the scale it stores MAGIC - sum(q) (over the chunk and its two halves).
// 2. GEMM: per 128-chunk of K, a block copies the raw weight bytes of its BM rows (the file's
//    blocks, any 2-byte alignment) and BN token rows of int8 codes into shared memory with
//    cp.async, STAGES chunks ahead. Each chunk's weight bytes are rewritten once per block into
//    one common form, eight 32-bit words of 2-bit codes per row (PQ2_0's element order) plus
//    the fp32 scale(s) ("normalize"). Warps turn those words into u8 codes with a shift and a
//    mask, and multiply them with the int8 activations on the tensor cores:
//      acc_i32 = (MAGIC - sum q) + sum code*q = MAGIC + sum (code-1)*q,
//    the bit pattern of the float 1.5*2^23 + sum (code-1)*q (|sum| < 2^22), so the int32 sum
//    becomes a float with one subtraction, and one FMA folds in d_w * d_x per 128 (per 64 for
//    Q2_0, whose weight scale changes every 64).
//
// In-chunk order: u8 word (w, s) = (clean word w >> 2s) & 0x03030303 holds elements
// 16w + 4b + s (b = byte). The A fragment of mma m16n8k32 gives thread t words t and t+4
// of each k32 step, so word position p = 16B + 4s + t (B = w / 4, t = w % 4); byte b of
// position p is element 64B + 16t + 4b + s.

#include "lowbit-cuda.h"
#include "lowbit-cuda-gemm.cuh"

#include <algorithm>

namespace bonsai_cuda {

static constexpr uint32_t MAGIC      = 0x4B400000u;  // bits of 12582912.0f = 1.5 * 2^23

// The GEMM kernel's helpers: only its sm_80+ body uses them.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
static constexpr float MAGIC_F = 12582912.0f;

static __device__ __forceinline__ void ldmatrix_x4(const void * smem, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    const uint32_t s = (uint32_t) __cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s));
}

// ---- normalize: one chunk of a weight row -> 8 words of 2-bit codes + 2 scales -----------------
// `raw` points at the row's chunk (2-byte aligned, in shared memory); part 0 or 1 does half the
// work. Word w is stored at index 2*(w%4) + w/4, so thread t of a warp finds its two words
// (t and t+4) side by side.

static __device__ __forceinline__ int clean_index(int w) {
    return 2 * (w % 4) + w / 4;
}

template <int TYPE> static __device__ __forceinline__ void normalize(const uint8_t * raw, int part, uint32_t * clean, float * dw);

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_Q1_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int w = 4 * part + i;
        clean[clean_index(w)] = spread_bits16(load_u16(raw + 2 + 2 * w)) << 1;
    }
    dw[part] = load_half(raw);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_Q2_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
    const uint8_t * block = raw + 18 * part;  // 64-element block `part` of the chunk
#pragma unroll
    for (int i = 0; i < 4; i++) {
        clean[clean_index(4 * part + i)] = load_u32_a2(block + 2 + 4 * i);
    }
    dw[part] = load_half(block);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_PQ2_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int w = 4 * part + i;
        clean[clean_index(w)] = load_u32_a2(raw + 2 + 4 * w);
    }
    dw[part] = load_half(raw);
}

template <> __device__ __forceinline__ void normalize<BONSAI_TYPE_PTQ1_0>(const uint8_t * raw, int part, uint32_t * clean, float * dw) {
    if (part == 0) {
        const uint32_t q[4] = {load_u32_a2(raw), load_u32_a2(raw + 4), load_u32_a2(raw + 8), load_u32_a2(raw + 12)};
#pragma unroll
        for (int n = 0; n < 5; n++) {
            clean[clean_index(n)] = ptq1_0_word_low(q, n);
        }
    } else {
        uint32_t w5, w6, w7;
        ptq1_0_words_high(load_u32_a2(raw + 16), load_u32_a2(raw + 20), load_u16(raw + 24), w5, w6, w7);
        clean[clean_index(5)] = w5;
        clean[clean_index(6)] = w6;
        clean[clean_index(7)] = w7;
        dw[0] = dw[1] = load_half(raw + 26);
    }
}

// d += a (16x32 u8, row-major) * b (32x8 s8, column-major)
static __device__ __forceinline__ void mma_u8s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif  // sm_80+

// ---- activation pre-pass --------------------------------------------------------------------

// Element e = 64B + 16t + 4b + s of a chunk is stored at byte 4 * (16B + 4s + t) + b (the inverse
// of bonsai_cuda_act_position_element). One warp per (token row, chunk). Rows past N get zero codes.
static __global__ void __launch_bounds__(256) quantize_act_kernel(
        const char * __restrict__ x, int64_t N, size_t nb0, size_t nb1, int64_t rows, int64_t chunks,
        int8_t * __restrict__ act, float4 * __restrict__ scales) {
    const int     lane  = threadIdx.x % 32;
    const int64_t item  = (int64_t) blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int64_t token = item / chunks;
    const int64_t chunk = item % chunks;
    if (token >= rows) {
        return;
    }

    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (token < N) {
        const char * src = x + token * nb1 + (chunk * CHUNK + 4 * lane) * nb0;
        if (nb0 == sizeof(float) && ((uintptr_t) src & 15) == 0) {
            const float4 f = *(const float4 *) src;
            v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                v[j] = *(const float *) (src + j * nb0);
            }
        }
    }

    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    }
    const float inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;

    int      sum    = 0;
    uint32_t packed = 0;  // byte j: code of element 4*lane + j
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int q = max(-127, min(127, __float2int_rn(__fmul_rn(v[j], inv))));
        sum += q;
        packed |= (uint32_t) (q & 0xff) << (8 * j);
    }
    // Sums over each 64-element half (lanes 0..15 and 16..31).
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    const int sum_hi = __shfl_sync(0xffffffffu, sum, 16);
    const int sum_lo = __shfl_sync(0xffffffffu, sum, 0);

    // Lane 4q+b holds elements 16q + 4b + {0..3}, i.e. B = q/4, t = q%4, byte b, s = 0..3.
    // The word at position 16B + 4s + t gathers byte b = 0..3 from the quad's four lanes at
    // their element s: lane 4q+s' collects s = s'.
    const int quad = lane & ~3;
    const int b    = lane & 3;
    uint32_t  word = 0;
#pragma unroll
    for (int src = 0; src < 4; src++) {
        const uint32_t other = __shfl_sync(0xffffffffu, packed, quad + src);
        word |= ((other >> (8 * b)) & 0xffu) << (8 * src);
    }
    const int q_index  = lane >> 2;
    const int position = 16 * (q_index >> 2) + 4 * b + (q_index & 3);
    ((uint32_t *) (act + token * (chunks * CHUNK) + chunk * CHUNK))[position] = word;

    if (lane == 0) {
        scales[chunk * rows + token] = make_float4(
            __fdiv_rn(amax, 127.0f), __int_as_float((int) MAGIC - (sum_lo + sum_hi)),
            __int_as_float((int) MAGIC - sum_lo), __int_as_float((int) MAGIC - sum_hi));
    }
}

// ---- the GEMM kernel ------------------------------------------------------------------------------

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES> struct gemm_shape {
    static constexpr int threads   = WARPS_M * WARPS_N * 32;
    static constexpr int wm        = BM / WARPS_M;  // warp tile
    static constexpr int wn        = BN / WARPS_N;
    static constexpr int mi        = wm / 16;       // mma tiles per warp
    static constexpr int ni        = wn / 8;
    static constexpr int act_bytes = STAGES * BN * CHUNK;
    static constexpr int scl_bytes = STAGES * BN * (int) sizeof(float4);
    static constexpr int raw_bytes = STAGES * BM * RAW_SLOT;
    static constexpr int cln_bytes = 2 * BM * 8 * (int) sizeof(uint32_t);
    static constexpr int dw_bytes  = 2 * BM * (int) sizeof(float2);
    static constexpr int smem      = act_bytes + scl_bytes + raw_bytes + cln_bytes + dw_bytes;
    static_assert(wm % 16 == 0 && wn % 8 == 0, "warp tile");
};

template <int TYPE, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int MIN_BLOCKS>
static __global__ void __launch_bounds__(WARPS_M * WARPS_N * 32, MIN_BLOCKS) gemm_kernel(
        const uint8_t * __restrict__ w, int64_t M, size_t w_nb1, int chunks,
        const int8_t * __restrict__ act, const float4 * __restrict__ scales, int64_t rows, int64_t N,
        float * __restrict__ dst, int64_t ldd) {
#if __CUDA_ARCH__ >= 800
    using S = gemm_shape<BM, BN, WARPS_M, WARPS_N, STAGES>;
    constexpr int CB = chunk_bytes(TYPE);
    constexpr bool SPLIT64 = TYPE == BONSAI_TYPE_Q2_0;

    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t  * s_act = smem;                                                        // [STAGES][BN][128], swizzled
    float4   * s_scl = (float4 *) (smem + S::act_bytes);                             // [STAGES][BN]
    uint8_t  * s_raw = smem + S::act_bytes + S::scl_bytes;                            // [STAGES][BM][RAW_SLOT]
    uint32_t * s_cln = (uint32_t *) (s_raw + S::raw_bytes);                           // [2][BM][8]
    float2   * s_dw  = (float2 *) (s_raw + S::raw_bytes + S::cln_bytes);              // [2][BM]

    const int tid  = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int wm   = warp / WARPS_N;
    const int wn   = warp % WARPS_N;
    const int g    = lane / 4;
    const int t    = lane % 4;

    const int64_t m0 = (int64_t) blockIdx.x * BM;
    const int64_t n0 = (int64_t) blockIdx.y * BN;
    const int64_t kbytes = (int64_t) chunks * CHUNK;

    const int8_t * act_tile = act + n0 * kbytes;

    auto row_chunk = [&](int r, int chunk) -> const uint8_t * {
        const int64_t row = min(m0 + r, M - 1);  // rows past M read row M-1; their results are dropped
        return w + row * w_nb1 + (int64_t) chunk * CB;
    };

    auto load_stage = [&](int chunk, int stage) {
        uint8_t * a = s_act + stage * BN * CHUNK;
        for (int i = tid; i < BN * 8; i += S::threads) {
            const int r = i / 8;
            const int c = i % 8;
            cp_async16(a + r * CHUNK + ((c ^ (r & 7)) << 4), act_tile + r * kbytes + (int64_t) chunk * CHUNK + c * 16);
        }
        for (int i = tid; i < BN; i += S::threads) {
            cp_async16(s_scl + stage * BN + i, scales + (int64_t) chunk * rows + n0 + i);
        }
        uint8_t * raw = s_raw + stage * BM * RAW_SLOT;
        for (int i = tid; i < BM * 4; i += S::threads) {
            const int       r     = i / 4;
            const int       c     = i % 4;
            const uint8_t * src   = row_chunk(r, chunk);
            const int       shift = (int) ((uintptr_t) src & 15);
            if (c * 16 < shift + CB) {
                cp_async16(raw + r * RAW_SLOT + c * 16, src - shift + c * 16);
            }
        }
    };

    float acc[S::mi][S::ni][4];
#pragma unroll
    for (int i = 0; i < S::mi; i++) {
#pragma unroll
        for (int j = 0; j < S::ni; j++) {
            acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
        }
    }

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < chunks) {
            load_stage(s, s);
        }
        cp_async_commit();
    }

    for (int chunk = 0; chunk < chunks; chunk++) {
        const int stage = chunk % STAGES;
        const int half  = chunk % 2;
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // this chunk's copies landed; every warp is done with chunk - 1

        {
            const uint8_t * raw = s_raw + stage * BM * RAW_SLOT;
            for (int i = tid; i < BM * 2; i += S::threads) {
                const int r     = i / 2;
                const int shift = (int) ((uintptr_t) row_chunk(r, chunk) & 15);
                normalize<TYPE>(raw + r * RAW_SLOT + shift, i % 2, s_cln + (half * BM + r) * 8,
                                (float *) (s_dw + half * BM + r));
            }
        }

        if (chunk + STAGES - 1 < chunks) {
            load_stage(chunk + STAGES - 1, (chunk + STAGES - 1) % STAGES);
        }
        cp_async_commit();
        __syncthreads();  // normalized weights visible

        // A fragments (u8 codes) of all k32 steps of the chunk, and the row scales.
        uint32_t a[S::mi][4][4];
        float2   dwa[S::mi], dwb[S::mi];
#pragma unroll
        for (int i = 0; i < S::mi; i++) {
            const int  r  = wm * S::wm + i * 16 + g;
            const uint2 pa = ((const uint2 *) (s_cln + (half * BM + r) * 8))[t];
            const uint2 pb = ((const uint2 *) (s_cln + (half * BM + r + 8) * 8))[t];
            dwa[i] = s_dw[half * BM + r];
            dwb[i] = s_dw[half * BM + r + 8];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint32_t wa = k < 2 ? pa.x : pa.y;
                const uint32_t wb = k < 2 ? pb.x : pb.y;
                const int      s0 = 4 * (k & 1);  // shift of code s = 2*(k&1)
                a[i][k][0] = (wa >> s0) & 0x03030303u;
                a[i][k][1] = (wb >> s0) & 0x03030303u;
                a[i][k][2] = (wa >> (s0 + 2)) & 0x03030303u;
                a[i][k][3] = (wb >> (s0 + 2)) & 0x03030303u;
            }
        }

        const uint8_t * act_s = s_act + stage * BN * CHUNK;
        const float4  * scl_s = s_scl + stage * BN;
#pragma unroll
        for (int j = 0; j < S::ni; j++) {
            const int nr = wn * S::wn + j * 8 + (lane & 7);
            const int c  = lane >> 3;
            uint32_t  b[4][2];
            ldmatrix_x4(act_s + nr * CHUNK + ((c ^ (nr & 7)) << 4), b[0][0], b[0][1], b[1][0], b[1][1]);
            ldmatrix_x4(act_s + nr * CHUNK + (((c + 4) ^ (nr & 7)) << 4), b[2][0], b[2][1], b[3][0], b[3][1]);
            const int    col = wn * S::wn + j * 8 + 2 * t;
            const float4 x0  = scl_s[col];
            const float4 x1  = scl_s[col + 1];
#pragma unroll
            for (int i = 0; i < S::mi; i++) {
                if constexpr (SPLIT64) {
                    int lo[4] = {__float_as_int(x0.z), __float_as_int(x1.z), __float_as_int(x0.z), __float_as_int(x1.z)};
                    int hi[4] = {__float_as_int(x0.w), __float_as_int(x1.w), __float_as_int(x0.w), __float_as_int(x1.w)};
                    mma_u8s8(lo, a[i][0], b[0][0], b[0][1]);
                    mma_u8s8(lo, a[i][1], b[1][0], b[1][1]);
                    mma_u8s8(hi, a[i][2], b[2][0], b[2][1]);
                    mma_u8s8(hi, a[i][3], b[3][0], b[3][1]);
                    acc[i][j][0] += (__int_as_float(lo[0]) - MAGIC_F) * (dwa[i].x * x0.x) + (__int_as_float(hi[0]) - MAGIC_F) * (dwa[i].y * x0.x);
                    acc[i][j][1] += (__int_as_float(lo[1]) - MAGIC_F) * (dwa[i].x * x1.x) + (__int_as_float(hi[1]) - MAGIC_F) * (dwa[i].y * x1.x);
                    acc[i][j][2] += (__int_as_float(lo[2]) - MAGIC_F) * (dwb[i].x * x0.x) + (__int_as_float(hi[2]) - MAGIC_F) * (dwb[i].y * x0.x);
                    acc[i][j][3] += (__int_as_float(lo[3]) - MAGIC_F) * (dwb[i].x * x1.x) + (__int_as_float(hi[3]) - MAGIC_F) * (dwb[i].y * x1.x);
                } else {
                    int d[4] = {__float_as_int(x0.y), __float_as_int(x1.y), __float_as_int(x0.y), __float_as_int(x1.y)};
                    mma_u8s8(d, a[i][0], b[0][0], b[0][1]);
                    mma_u8s8(d, a[i][1], b[1][0], b[1][1]);
                    mma_u8s8(d, a[i][2], b[2][0], b[2][1]);
                    mma_u8s8(d, a[i][3], b[3][0], b[3][1]);
                    acc[i][j][0] = fmaf(__int_as_float(d[0]) - MAGIC_F, dwa[i].x * x0.x, acc[i][j][0]);
                    acc[i][j][1] = fmaf(__int_as_float(d[1]) - MAGIC_F, dwa[i].x * x1.x, acc[i][j][1]);
                    acc[i][j][2] = fmaf(__int_as_float(d[2]) - MAGIC_F, dwb[i].x * x0.x, acc[i][j][2]);
                    acc[i][j][3] = fmaf(__int_as_float(d[3]) - MAGIC_F, dwb[i].x * x1.x, acc[i][j][3]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < S::mi; i++) {
#pragma unroll
        for (int j = 0; j < S::ni; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t row = m0 + wm * S::wm + i * 16 + g + (e >= 2 ? 8 : 0);
                const int64_t col = n0 + wn * S::wn + j * 8 + 2 * t + (e & 1);
                if (row < M && col < N) {
                    dst[col * ldd + row] = acc[i][j][e];
                }
            }
        }
    }
#else
    __trap();
#endif
}

// ---- host side --------------------------------------------------------------------------------

struct gemm_config_info {
    int    bm, bn;
    double speed;  // relative throughput at large shapes (H100, PQ2_0, tests/cuda/lowbit_cuda_check)
};

// Tile configurations (index 1..); 0 picks one from the shape.
static const gemm_config_info gemm_configs[] = {
    {0, 0, 0.0},
    {128, 128, 0.90},  // 1: 4x2 warps of 32x64
    {64, 128, 0.72},   // 2: 2x4 warps of 32x32
    {128, 64, 0.61},   // 3: 4x2 warps of 32x32
    {128, 128, 0.90},  // 4: as 1, four stages
    {128, 64, 0.85},   // 5: as 3, two blocks per SM (128 registers)
    {256, 128, 1.00},  // 6: 8x2 warps of 32x64 (512 threads, 128 registers)
    {128, 128, 0.92},  // 7: 2x4 warps of 64x32
};
static constexpr int GEMM_ROWS_ALIGN = 128;  // every configuration's BN divides this

template <int TYPE, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int MIN_BLOCKS>
static cudaError_t launch_gemm(const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const int8_t * act,
                               const float4 * scales, int64_t rows, int64_t N, float * dst, int64_t ldd,
                               cudaStream_t stream) {
    using S = gemm_shape<BM, BN, WARPS_M, WARPS_N, STAGES>;
    auto kernel = gemm_kernel<TYPE, BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS>;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::smem);
    if (err != cudaSuccess) {
        return err;
    }
    const dim3 grid((unsigned) ((M + BM - 1) / BM), (unsigned) (rows / BN));
    kernel<<<grid, S::threads, S::smem, stream>>>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd);
    return cudaGetLastError();
}

template <int TYPE>
static cudaError_t gemm_typed(int config, const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const int8_t * act,
                              const float4 * scales, int64_t rows, int64_t N, float * dst, int64_t ldd,
                              cudaStream_t stream) {
    switch (config) {
        case 1:  return launch_gemm<TYPE, 128, 128, 4, 2, 3, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 2:  return launch_gemm<TYPE,  64, 128, 2, 4, 3, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 3:  return launch_gemm<TYPE, 128,  64, 4, 2, 3, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 4:  return launch_gemm<TYPE, 128, 128, 4, 2, 4, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 5:  return launch_gemm<TYPE, 128,  64, 4, 2, 3, 2>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 6:  return launch_gemm<TYPE, 256, 128, 8, 2, 3, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        case 7:  return launch_gemm<TYPE, 128, 128, 2, 4, 3, 1>(w, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        default: return cudaErrorInvalidValue;
    }
}

static int pick_config(int64_t M, int64_t N) {
    int sms = 132;
    int device;
    if (cudaGetDevice(&device) == cudaSuccess) {
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    // One block per SM: estimate the time as waves x tile area / speed and take the smallest.
    int    best      = 1;
    double best_cost = 0.0;
    for (int c : {1, 2, 3, 6, 7}) {
        const int64_t tiles = ((M + gemm_configs[c].bm - 1) / gemm_configs[c].bm) * ((N + gemm_configs[c].bn - 1) / gemm_configs[c].bn);
        const int64_t waves = (tiles + sms - 1) / sms;
        const double cost = (double) waves * gemm_configs[c].bm * gemm_configs[c].bn / gemm_configs[c].speed;
        if (c == 1 || cost < best_cost) {
            best      = c;
            best_cost = cost;
        }
    }
    return best;
}

}  // namespace bonsai_cuda

using namespace bonsai_cuda;

int64_t bonsai_cuda_act_chunks(int64_t K) {
    return (K + CHUNK - 1) / CHUNK;
}

int64_t bonsai_cuda_act_rows(int64_t N) {
    return (N + GEMM_ROWS_ALIGN - 1) / GEMM_ROWS_ALIGN * GEMM_ROWS_ALIGN;
}

int bonsai_cuda_act_position_element(int p) {
    const int word = p / 4, b = p % 4;
    const int B = word / 16, s = (word % 16) / 4, t = word % 4;
    return 64 * B + 16 * t + 4 * b + s;
}

cudaError_t bonsai_cuda_quantize_act(const float * x, int64_t K, int64_t N, size_t x_nb0, size_t x_nb1,
                                     int8_t * act, float4 * scales, cudaStream_t stream) {
    const int64_t chunks = bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_rows(N);
    const int64_t warps  = rows * chunks;
    quantize_act_kernel<<<(unsigned) ((warps + 7) / 8), 256, 0, stream>>>((const char *) x, N, x_nb0, x_nb1, rows,
                                                                          chunks, act, scales);
    return cudaGetLastError();
}

cudaError_t bonsai_cuda_gemm_q8(int type, const void * w, int64_t M, int64_t K, size_t w_nb1, const int8_t * act,
                                const float4 * scales, int64_t N, float * dst, size_t d_nb1, int config,
                                cudaStream_t stream) {
    if (config <= 0 || config > BONSAI_CUDA_GEMM_CONFIGS) {
        config = pick_config(M, N);
    }
    const int     chunks = (int) bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_rows(N);
    const int64_t ldd    = (int64_t) (d_nb1 / sizeof(float));
    const uint8_t * wb   = (const uint8_t *) w;
    switch (type) {
#define BONSAI_GEMM_CASE(TYPE) \
        case TYPE: return gemm_typed<TYPE>(config, wb, M, w_nb1, chunks, act, scales, rows, N, dst, ldd, stream);
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_GEMM_CASE)
#undef BONSAI_GEMM_CASE
        default: return cudaErrorInvalidValue;
    }
}
