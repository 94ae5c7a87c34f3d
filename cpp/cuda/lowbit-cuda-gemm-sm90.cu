// The large-batch GEMM of the low-bit types on Hopper (sm_90a): f16 wgmma on weights decoded
// exactly to f16 in shared memory. Built only for sm_90a (-gencode arch=compute_90a,code=sm_90a).
//
// dst[n][m] = sum_k W[m][k] * x[n][k]. Every weight is (code - 1) * d with d an fp16 number, so
// W is exact in f16; the activations are rounded to f16 by a pre-pass (relative error 2^-11 per
// element) and the tensor cores accumulate in f32. No per-block rescaling is left: the weight
// scale is folded into the f16 operand.
//
// A block has WGS warpgroups (BM = 64*WGS weight rows) and BN tokens, and walks K in steps of
// 64 elements (one 128-byte-wide wgmma atom; a 128-element chunk is two steps):
//   - cp.async brings each step's BN x 64 f16 activations two steps ahead (three stages, in
//     wgmma's K-major 128-byte-swizzled layout) and each chunk's raw weight bytes (file layout,
//     any 2-byte alignment; two stages);
//   - each warpgroup decodes its 64 rows of step s+1 into f16 in the same layout while the
//     tensor cores work on step s (code c at a 16-bit lane of 0x6400 | c is the half 1024 + c;
//     minus 1025 gives c - 1, times d the weight; both exact);
//   - four wgmma m64nBNk16 per warpgroup and step, both operands from shared memory.
// In-chunk order: a 2-bit code word (16 elements) becomes 16 f16 values, pairs (i, i+8) from one
// shift and mask, so activation position 16w + q holds element 16w + q/2 + 8*(q%2).

#include "lowbit-cuda.h"
#include "lowbit-cuda-gemm.cuh"

namespace bonsai_cuda {

static constexpr int F16_ROWS_ALIGN = 256;  // every configuration's BN divides this
static constexpr int B_STAGES       = 3;    // step s in the tensor cores, s+1 landed, s+2 in flight
static constexpr int RAW_STAGES     = 2;    // raw weight bytes of the chunk being decoded and the next

static __host__ __device__ __forceinline__ int f16_position_element(int p) {
    const int w = p / 16, q = p % 16;
    return 16 * w + q / 2 + 8 * (q % 2);
}

// ---- activation pre-pass: f32 -> f16 in the in-chunk order ----------------------------------

// One warp per (token row, chunk); lane l writes positions 4l..4l+3. Rows past N are zeros.
// Values beyond the f16 range saturate to +-65504 (NaN stays NaN).
static __global__ void __launch_bounds__(256) convert_act_f16_kernel(
        const char * __restrict__ x, int64_t N, size_t nb0, size_t nb1, int64_t rows, int64_t chunks,
        half * __restrict__ act) {
    const int     lane  = threadIdx.x % 32;
    const int64_t item  = (int64_t) blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int64_t token = item / chunks;
    const int64_t chunk = item % chunks;
    if (token >= rows) {
        return;
    }
    half h[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float v = 0.0f;
        if (token < N) {
            v = *(const float *) (x + token * nb1 + (chunk * CHUNK + f16_position_element(4 * lane + j)) * nb0);
        }
        if (fabsf(v) > 65504.0f) {
            v = copysignf(65504.0f, v);
        }
        h[j] = __float2half_rn(v);
    }
    uint2 packed;
    packed.x = (uint32_t) __half_as_ushort(h[0]) | (uint32_t) __half_as_ushort(h[1]) << 16;
    packed.y = (uint32_t) __half_as_ushort(h[2]) | (uint32_t) __half_as_ushort(h[3]) << 16;
    *(uint2 *) (act + token * (chunks * CHUNK) + chunk * CHUNK + 4 * lane) = packed;
}

// ---- PTX wrappers -------------------------------------------------------------------------------

static __device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N> static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Barrier of one warpgroup (ids 1..4; 0 is __syncthreads).
static __device__ __forceinline__ void warpgroup_barrier(int wg) {
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
}

// Keeps the compiler from moving uses of an accumulator register across a wgmma wait.
static __device__ __forceinline__ void fence_register(float & r) {
    asm volatile("" : "+f"(r)::"memory");
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
static __device__ __forceinline__ uint64_t smem_desc(const void * p) {
    const uint32_t addr = (uint32_t) __cvta_generic_to_shared(p);
    return (uint64_t) ((addr & 0x3ffff) >> 4) | ((uint64_t) (1024 >> 4) << 32) | ((uint64_t) 1 << 62);
}

// d[64 x 64] += a[64 x 16] * b[16 x 64], both f16 in shared memory (K-major, 128-byte swizzle,
// described by desc_a and desc_b), f32 accumulation.
static __device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "n"(1));
#else
    __trap();
#endif
}

// d[64 x 128] += a[64 x 16] * b[16 x 128], both f16 in shared memory (K-major, 128-byte swizzle,
// described by desc_a and desc_b), f32 accumulation.
static __device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "n"(1));
#else
    __trap();
#endif
}

// One k16 step of a warpgroup's 64 x BN tile.
template <int BN> static __device__ __forceinline__ void wgmma_tile(float (&d)[BN / 2], uint64_t desc_a, uint64_t desc_b);

template <> __device__ __forceinline__ void wgmma_tile<64>(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
    wgmma_m64n64k16(d, desc_a, desc_b);
}

template <> __device__ __forceinline__ void wgmma_tile<128>(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    wgmma_m64n128k16(d, desc_a, desc_b);
}

// ---- decode: raw bytes of one row's chunk -> f16 weights ---------------------------------------
// Two threads share a row; for each 64-element step each decodes two of the chunk's eight 2-bit
// code words (codes16 / the PTQ1_0 word builders of lowbit-cuda-common.cuh).

// f16 pair ((c_lo - 1) * d, (c_hi - 1) * d) from the 2-bit fields at bits 0 and 16 of `codes`.
static __device__ __forceinline__ uint32_t decode_pair(uint32_t codes, half2 d) {
    const uint32_t bits = (codes & 0x00030003u) | 0x64006400u;  // halves 1024 + c
    const half2 v = __hmul2(__hsub2(*(const half2 *) &bits, __half2half2(__ushort_as_half(0x6401))), d);
    return *(const uint32_t *) &v;
}

// Writes code word w (16 elements) of a row as 16 f16 values: positions 16(w%4) + 2i and
// 16(w%4) + 2i + 1 of the step's 64 hold fields i and i + 8. `line`: the row's 128 bytes.
static __device__ __forceinline__ void store_word(uint8_t * line, int r, int w, uint32_t word, float d) {
    const half2 d2 = __float2half2_rn(d);  // exact: d came from an fp16
    uint4 lo, hi;
    lo.x = decode_pair(word, d2);
    lo.y = decode_pair(word >> 2, d2);
    lo.z = decode_pair(word >> 4, d2);
    lo.w = decode_pair(word >> 6, d2);
    hi.x = decode_pair(word >> 8, d2);
    hi.y = decode_pair(word >> 10, d2);
    hi.z = decode_pair(word >> 12, d2);
    hi.w = decode_pair(word >> 14, d2);
    const int piece = 2 * (w % 4);  // 16-byte pieces of the 128-byte line, swizzled
    *(uint4 *) (line + ((piece ^ (r & 7)) << 4))       = lo;
    *(uint4 *) (line + (((piece + 1) ^ (r & 7)) << 4)) = hi;
}

// N 32-bit words from 2-byte aligned shared memory: aligned 32-bit loads and a funnel shift.
// Reads one word past the end (inside the raw slot).
template <int N> static __host__ __device__ __forceinline__ void load_words(const uint8_t * p, uint32_t (&out)[N]) {
    const int        misaligned = (int) ((uintptr_t) p & 2);
    const uint32_t * a          = (const uint32_t *) (p - misaligned);
    uint32_t         x[N + 1];
#pragma unroll
    for (int i = 0; i <= N; i++) {
        x[i] = a[i];
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        out[i] = (uint32_t) ((((uint64_t) x[i + 1] << 32) | x[i]) >> (8 * misaligned));
    }
}

// Code words w0 and w0 + 1 (w0 even) of a chunk (`raw`: the row's 128 elements in their file
// layout, 2-byte aligned) with their scales. The two threads that share a row ask for different
// w0 but run the same instructions (no divergence inside a warp).
template <int TYPE>
static __host__ __device__ __forceinline__ void chunk_words(const uint8_t * raw, int w0, uint32_t & a, uint32_t & b,
                                                            float & d0, float & d1) {
    if constexpr (TYPE == BONSAI_TYPE_PTQ1_0) {
        d0 = d1 = load_half(raw + 26);
        uint32_t q[4];
        load_words<4>(raw, q);
        if (w0 < 4) {
            a = ptq1_0_word_low(q, w0);
            b = ptq1_0_word_low(q, w0 + 1);
        } else {
            uint32_t g[3], w5, w6, w7;
            load_words<3>(raw + 16, g);
            ptq1_0_words_high(g[0], g[1], g[2], w5, w6, w7);
            const uint32_t w4 = ptq1_0_word_low(q, 4);
            a = w0 == 4 ? w4 : w6;
            b = w0 == 4 ? w5 : w7;
        }
    } else if constexpr (TYPE == BONSAI_TYPE_Q1_0) {
        uint32_t bits[1];
        load_words<1>(raw + 2 + 2 * w0, bits);  // 16 sign bits per word
        d0 = d1 = load_half(raw);
        a = spread_bits16(bits[0] & 0xffffu) << 1;
        b = spread_bits16(bits[0] >> 16) << 1;
    } else {
        // Q2_0 (two 64-element blocks) and PQ2_0: the words are the file's qs words
        constexpr int SUBS = traits<TYPE>::qk / 16;
        const uint8_t * block = raw + (w0 / SUBS) * traits<TYPE>::bytes;
        uint32_t q[2];
        load_words<2>(block + 2 + 4 * (w0 % SUBS), q);
        d0 = d1 = load_half(block);
        a = q[0];
        b = q[1];
    }
}

template <int TYPE>
static __device__ __forceinline__ void decode_two_words(const uint8_t * raw, uint8_t * line, int r, int w0) {
    uint32_t a, b;
    float    d0, d1;
    chunk_words<TYPE>(raw, w0, a, b, d0, d1);
    store_word(line, r, w0, a, d0);
    store_word(line, r, w0 + 1, b, d1);
}

// ---- the kernel -------------------------------------------------------------------------------

template <int WGS, int BN> struct f16_shape {
    static constexpr int threads   = WGS * 128;
    static constexpr int bm        = WGS * 64;
    static constexpr int a_buf     = bm * 128;  // one step: BM rows x 64 f16
    static constexpr int b_stage   = BN * 128;  // one step: BN rows x 64 f16
    static constexpr int a_bytes   = 2 * a_buf;
    static constexpr int b_bytes   = B_STAGES * b_stage;
    static constexpr int raw_bytes = RAW_STAGES * bm * RAW_SLOT;
    static constexpr int smem      = 1024 + a_bytes + b_bytes + raw_bytes;  // + alignment slack
    static_assert(smem <= 227 * 1024, "shared memory");
};

template <int TYPE, int WGS, int BN, int MIN_BLOCKS>
static __global__ void __launch_bounds__(WGS * 128, MIN_BLOCKS) gemm_f16_kernel(
        const uint8_t * __restrict__ w, int64_t M, size_t w_nb1, int chunks, const half * __restrict__ act,
        int64_t N, float * __restrict__ dst, int64_t ldd) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = f16_shape<WGS, BN>;
    constexpr int BM       = S::bm;
    constexpr int CB       = chunk_bytes(TYPE);
    constexpr int B_PIECES   = BN * 8;  // 16-byte activation pieces per step
    constexpr int RAW_PIECES = BM * 4;  // 16-byte raw weight pieces per chunk (some unused)
    constexpr int B_EACH     = (B_PIECES + S::threads - 1) / S::threads;
    constexpr int RAW_EACH   = (RAW_PIECES + S::threads - 1) / S::threads;

    // 1024-byte alignment for the swizzled tiles, by an offset from the shared array (keeps the
    // compiler's knowledge that these pointers are shared memory: ld/st.shared, not generic)
    extern __shared__ uint8_t smem_unaligned[];
    const uint32_t smem_base = (uint32_t) __cvta_generic_to_shared(smem_unaligned);
    uint8_t * smem  = smem_unaligned + (((smem_base + 1023) & ~1023u) - smem_base);
    uint8_t * s_a   = smem;                       // [2][BM][128], swizzled f16 weights of a step
    uint8_t * s_b   = smem + S::a_bytes;          // [B_STAGES][BN][128], swizzled f16 activations
    uint8_t * s_raw = s_b + S::b_bytes;           // [RAW_STAGES][BM][RAW_SLOT] raw weight bytes

    const int tid  = threadIdx.x;
    const int lane = tid % 32;
    const int wg   = tid / 128;
    const int wi   = (tid / 32) % 4;  // warp within its warpgroup
    const int g    = lane / 4;
    const int t    = lane % 4;

    const int64_t m0     = (int64_t) blockIdx.x * BM;
    const int64_t n0     = (int64_t) blockIdx.y * BN;
    const int64_t kbytes = (int64_t) chunks * CHUNK * 2;
    const int     steps  = 2 * chunks;

    // This thread's copy jobs, fixed for the whole loop.
    const uint8_t * b_src[B_EACH];
    int             b_dst[B_EACH];
#pragma unroll
    for (int j = 0; j < B_EACH; j++) {
        const int i = min(tid + j * S::threads, B_PIECES - 1);  // see the bounds check in load_step
        const int r = i / 8, c = i % 8;  // 16-byte piece c of token row r's 128-byte step
        b_src[j] = (const uint8_t *) act + (n0 + r) * kbytes + c * 16;
        b_dst[j] = r * 128 + ((c ^ (r & 7)) << 4);
    }
    const uint8_t * raw_row[RAW_EACH];
    int             raw_piece[RAW_EACH];
#pragma unroll
    for (int j = 0; j < RAW_EACH; j++) {
        const int i = min(tid + j * S::threads, RAW_PIECES - 1);
        raw_row[j]   = w + min(m0 + i / 4, M - 1) * w_nb1;  // rows past M read row M-1, dropped later
        raw_piece[j] = i;                                     // row i / 4, 16-byte piece i % 4
    }
    // Decode job: row dec_r (of this warpgroup's 64), part dec_part.
    const int       dec_r    = wg * 64 + (tid % 128) / 2;
    const int       dec_part = tid % 2;
    const uint8_t * dec_row  = w + min(m0 + dec_r, M - 1) * w_nb1;

    // Activations of `step` (and, on even steps, the raw weights of its chunk).
    auto load_step = [&](int step) {
        uint8_t * b = s_b + (step % B_STAGES) * S::b_stage;
#pragma unroll
        for (int j = 0; j < B_EACH; j++) {
            if (B_PIECES % S::threads == 0 || tid + j * S::threads < B_PIECES) {
                cp_async16(b + b_dst[j], b_src[j] + (int64_t) step * 128);
            }
        }
        if (step % 2 == 0) {
            const int chunk = step / 2;
            uint8_t * raw = s_raw + (chunk % RAW_STAGES) * BM * RAW_SLOT;
#pragma unroll
            for (int j = 0; j < RAW_EACH; j++) {
                // the 16-byte-aligned pieces that cover the row's CB bytes of this chunk
                const uint8_t * src   = raw_row[j] + (int64_t) chunk * CB;
                const int       shift = (int) ((uintptr_t) src & 15);
                const int       piece = raw_piece[j] % 4;
                if ((RAW_PIECES % S::threads == 0 || tid + j * S::threads < RAW_PIECES) && piece * 16 < shift + CB) {
                    cp_async16(raw + (raw_piece[j] / 4) * RAW_SLOT + piece * 16, src - shift + piece * 16);
                }
            }
        }
    };

    // This thread's two code words of `step` into the step's A buffer.
    auto decode = [&](int step) {
        const int       chunk = step / 2;
        const uint8_t * row   = dec_row + (int64_t) chunk * CB;
        const uint8_t * raw   = s_raw + (chunk % RAW_STAGES) * BM * RAW_SLOT + dec_r * RAW_SLOT + ((uintptr_t) row & 15);
        uint8_t       * line  = s_a + (step % 2) * S::a_buf + dec_r * 128;
        decode_two_words<TYPE>(raw, line, dec_r, 4 * (step % 2) + 2 * dec_part);
        fence_proxy_async();  // generic-proxy stores read by the tensor cores
    };

    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        d[i] = 0.0f;
    }

    load_step(0);
    cp_async_commit();
    load_step(1);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    decode(0);
    warpgroup_barrier(wg);

    for (int step = 0; step < steps; step++) {
        // the tensor cores take `step` (A: this warpgroup's 64 rows; B: all BN tokens)
        {
            const uint64_t da = smem_desc(s_a + (step % 2) * S::a_buf + wg * 64 * 128);
            const uint64_t db = smem_desc(s_b + (step % B_STAGES) * S::b_stage);
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < 4; k++) {  // k16 step k starts 32 bytes into each 128-byte line
                wgmma_tile<BN>(d, da + (uint64_t) (k * 32 >> 4), db + (uint64_t) (k * 32 >> 4));
            }
            wgmma_commit();
        }
        wgmma_wait<1>();     // this warpgroup's step - 1 is done
        cp_async_wait<0>();  // step + 1 (and its chunk's raw weights) landed
        fence_proxy_async();
        __syncthreads();     // ... for every thread; every warpgroup is done with step - 1
        if (step + 2 < steps) {
            load_step(step + 2);  // into the stages step - 1 and chunk - 1 used
        }
        cp_async_commit();
        if (step + 1 < steps) {
            decode(step + 1);     // into the A buffer step - 1 used
        }
        warpgroup_barrier(wg);
    }
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        fence_register(d[i]);
    }

    // d[4j + e]: row wi*16 + g (+8 for e >= 2) of this warpgroup's 64, column 8j + 2t + (e & 1)
    const int row_a = wg * 64 + wi * 16 + g;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t row = m0 + row_a + (e >= 2 ? 8 : 0);
            const int64_t col = n0 + 8 * j + 2 * t + (e & 1);
            if (row < M && col < N) {
                dst[col * ldd + row] = d[4 * j + e];
            }
        }
    }
#else
    __trap();
#endif
}

// ---- host side ----------------------------------------------------------------------------------

template <int TYPE, int WGS, int BN, int MIN_BLOCKS>
static cudaError_t launch_f16(const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const half * act, int64_t rows,
                              int64_t N, float * dst, int64_t ldd, cudaStream_t stream) {
    using S = f16_shape<WGS, BN>;
    auto kernel = gemm_f16_kernel<TYPE, WGS, BN, MIN_BLOCKS>;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::smem);
    if (err != cudaSuccess) {
        return err;
    }
    const dim3 grid((unsigned) ((M + S::bm - 1) / S::bm), (unsigned) (rows / BN));
    kernel<<<grid, S::threads, S::smem, stream>>>(w, M, w_nb1, chunks, act, N, dst, ldd);
    return cudaGetLastError();
}

// Tile configurations. 1 (BM = BN = 128, two warpgroups, two blocks per SM) was the fastest at
// every FLUX.2 DiT shape on an H100 (tests/cuda/lowbit_cuda_check); the others stay for that
// comparison: 2: BM = 256 (four warpgroups); 3: BN = 64. (A warp-specialized version, two
// producer and two consumer warpgroups handing stages over through mbarriers, was slower:
// BENCHMARKS.md.)
template <int TYPE>
static cudaError_t f16_typed(int config, const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const half * act,
                             int64_t rows, int64_t N, float * dst, int64_t ldd, cudaStream_t stream) {
    switch (config) {
        case 1:  return launch_f16<TYPE, 2, 128, 2>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, stream);
        case 2:  return launch_f16<TYPE, 4, 128, 1>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, stream);
        case 3:  return launch_f16<TYPE, 2, 64, 2>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace bonsai_cuda

using namespace bonsai_cuda;

int64_t bonsai_cuda_act_f16_rows(int64_t N) {
    return (N + F16_ROWS_ALIGN - 1) / F16_ROWS_ALIGN * F16_ROWS_ALIGN;
}

int bonsai_cuda_act_f16_position_element(int p) {
    return f16_position_element(p);
}

cudaError_t bonsai_cuda_convert_act_f16(const float * x, int64_t K, int64_t N, size_t x_nb0, size_t x_nb1, half * act,
                                        cudaStream_t stream) {
    const int64_t chunks = bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_f16_rows(N);
    const int64_t warps  = rows * chunks;
    convert_act_f16_kernel<<<(unsigned) ((warps + 7) / 8), 256, 0, stream>>>((const char *) x, N, x_nb0, x_nb1, rows,
                                                                             chunks, act);
    return cudaGetLastError();
}

cudaError_t bonsai_cuda_gemm_f16(int type, const void * w, int64_t M, int64_t K, size_t w_nb1, const half * act,
                                 int64_t N, float * dst, size_t d_nb1, int config, cudaStream_t stream) {
    if (config <= 0 || config > BONSAI_CUDA_F16_CONFIGS) {
        config = 1;
    }
    const int     chunks = (int) bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_f16_rows(N);
    const int64_t ldd    = (int64_t) (d_nb1 / sizeof(float));
    const uint8_t * wb   = (const uint8_t *) w;
    switch (type) {
#define BONSAI_F16_CASE(TYPE) \
        case TYPE: return f16_typed<TYPE>(config, wb, M, w_nb1, chunks, act, rows, N, dst, ldd, stream);
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_F16_CASE)
#undef BONSAI_F16_CASE
        default: return cudaErrorInvalidValue;
    }
}
