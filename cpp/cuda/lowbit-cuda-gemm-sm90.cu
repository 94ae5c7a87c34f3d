// The large-batch GEMM of the low-bit types on Hopper (sm_90a): f16 wgmma with the weights
// decoded exactly to f16 straight into the A-operand registers. Built only for sm_90a
// (-gencode arch=compute_90a,code=sm_90a).
//
// dst[n][m] = sum_k W[m][k] * x[n][k]. Every weight is (code - 1) * d with d an fp16 number, so
// W is exact in f16; the activations are rounded to f16 by a pre-pass (relative error 2^-11 per
// element) and the tensor cores accumulate in f32.
//
// A block has WGS consumer warpgroups (BM = 64 * WGS weight rows) and one producer warpgroup,
// takes BN tokens, and walks K in steps of 64 elements (a 128-element chunk is two steps):
//   - Weights are wgmma's A operand from registers: each thread decodes its part of the
//     m16n8k16 A fragment (rows g and g + 8 of its warp's 16; K columns 2t, 2t+1, 2t+8, 2t+9 of
//     each k16) from the raw bytes, so decoded weights never go through shared memory. Each
//     consumer warp cp.asyncs its own 16 rows' raw bytes (file layout, any 2-byte alignment) two
//     chunks ahead into private slots: no block-wide barrier in the main loop.
//   - Activations (B, read by the tensor cores from shared memory): the pre-pass writes them as
//     f16 in the exact image of a shared-memory stage (per step, every token's 128-byte line,
//     128-byte swizzled), so one producer thread moves a BN-token stage with one bulk copy whose
//     bytes an mbarrier counts; the consumers hand the stage back through a second mbarrier.
//     The producer warpgroup gives its registers to the consumers (setmaxnreg).
//   - Schedules (plan_f16 picks one per shape): one block per tile; or stream-K, one wave of
//     blocks (SMs x blocks per SM, all resident at once) each taking an equal contiguous share
//     of the tiles' K chunks, so that a share runs over pieces of several tiles with the
//     pipeline (stages, mbarrier phases, raw slots) carried on from piece to piece. The block
//     whose piece holds a tile's first chunk owns the tile: it waits on the flags of the shares
//     that hold the rest (blocks launched before it), brings their f32 sums into its idle
//     activation stages by bulk copies and adds them in share order, so the result does not
//     depend on timing. The pre-pass clears the flags; each owner clears those it consumed.
//     (A split of K into parts, each its own slice of a partial buffer that a second kernel
//     adds in order, is kept for comparison in the test program.)
// In-chunk order: thread t's four columns of k16 number s (of the chunk's 8) come from code word
// t + 4 (s / 4) (elements 16w .. 16w + 15 of the chunk); its pairs (2t, 2t+1) and (2t+8, 2t+9)
// are fields (j, j + 8) of that word with j = 2 (s % 4) and 2 (s % 4) + 1: one shift and mask
// per pair. PTQ1_0 has an order of its own (ptq1_position_element), in which every thread
// decodes all the trits of the bytes it reads; the pre-pass writes the order of the type.

#include "lowbit-cuda.h"
#include "lowbit-cuda-gemm.cuh"
#include "cuda-sm90-async.cuh"

namespace bonsai_cuda {

static constexpr int F16_ROWS_ALIGN = 256;  // every configuration's BN divides this
static constexpr int STAGES         = 4;    // activation stages in flight
static constexpr int RAW_STAGES     = 3;    // raw weight chunks per warp: decoding, landed, in flight
static constexpr int PRODUCER_REGS  = 40;   // registers the producer warpgroup keeps
static constexpr int FIX_PARTS      = 4;    // bulk copies of another share's partial sums, each with its barrier

// Element of a 128-chunk that in-chunk activation position p holds.
static __host__ __device__ __forceinline__ int position_element(int p) {
    const int half_chunk = p / 64, k16 = (p % 64) / 16, q = p % 16;
    const int t = (q % 8) / 2, upper = q / 8, odd = q % 2;
    return 16 * (t + 4 * half_chunk) + 2 * k16 + upper + 8 * odd;
}

// The same for PTQ1_0. Thread t (columns 2t, 2t+1, 2t+8, 2t+9 of each k16) takes, per row and
// chunk, 16 pairs v = 8 * half_chunk + 2 * k16 + upper; each pair is trit n of two bytes
// (DESIGN 4: trit n of qs[m < 16] is element 16n + m, of qs[16 + m] element 80 + 8n + m, of
// qh[h] element 120 + 2n + h):
//   v 0..4:   trit v       of qs[4t], qs[4t + 2]        v 8..12:  trit v - 8  of qs[4t + 1], qs[4t + 3]
//   v 5..7:   trit v - 5   of qs[16 + 2t], qs[17 + 2t]  v 13, 14: trit v - 10 of qs[16 + 2t], qs[17 + 2t]
//   v 15:     trit t       of qh[0], qh[1]
// so each half chunk decodes runs of trits of whole bytes (ptq1_first_half, ptq1_second_half).
// Without branches (the pre-pass's lanes hold different v): pair v's element for t = 0 and the
// low lane is byte v of FIRST, and t and the lane step by 4 and 2 (qs[0..15]) or by 2 and 1.
static __host__ __device__ __forceinline__ int ptq1_position_element(int p) {
    constexpr uint64_t FIRST_LO = 0x6058504030201000ull;  // v 0..7:  0, 16, 32, 48, 64, 80, 88, 96
    constexpr uint64_t FIRST_HI = 0x7870684131211101ull;  // v 8..15: 1, 17, 33, 49, 65, 104, 112, 120
    const int q = p % 16, t = (q % 8) / 2, odd = q % 2;
    const int v      = 8 * (p / 64) + 2 * ((p % 64) / 16) + q / 8;
    const int first  = (int) (((v < 8 ? FIRST_LO : FIRST_HI) >> (8 * (v % 8))) & 0xff);
    const int narrow = (0xe0e0 >> v) & 1;  // v 5..7 and 13..15: qs[16..23] and qh
    return first + (t << (2 - narrow)) + (odd << (1 - narrow));
}

// ---- activation pre-pass: f32 -> f16 stage images ---------------------------------------------

// Where the pre-pass reads the activations: x[token][k] at any strides.
struct plain_acts {
    const char * x;
    size_t       nb0, nb1;
    __device__ float operator()(int64_t token, int64_t k) const { return *(const float *) (x + token * nb1 + k * nb0); }
};

// Activations built on the fly (bonsai_cuda_act_glu): element k < from of a token is x's (unit
// stride); element from + j is silu(gate) * up, gate and up being elements j and half + j of the
// token's glu row (the other way round when swapped), rounded as ggml's SWIGLU rounds them.
struct glu_acts {
    const float * x;
    size_t        x_nb1;
    const float * glu;
    size_t        glu_nb1;
    int64_t       from, half;
    bool          swapped;
    __device__ float operator()(int64_t token, int64_t k) const {
        if (k < from) {
            return x[token * (int64_t) (x_nb1 / sizeof(float)) + k];
        }
        const float * row  = glu + token * (int64_t) (glu_nb1 / sizeof(float));
        const int64_t j    = k - from;
        const float   gate = row[swapped ? half + j : j];
        const float   up   = row[swapped ? j : half + j];
        return gate / (1.0f + expf(-gate)) * up;
    }
};

// One warp per (token row, chunk): lane l converts positions 4l..4l+3 and stores them where the
// stage image wants them: step 2 * chunk + l / 16, line `token`, swizzled 16-byte piece. Rows
// past N are zeros; values beyond the f16 range saturate to +-65504 (NaN stays NaN). PTQ1:
// PTQ1_0's in-chunk order. Block 0 also clears `zero_words` words at `zero` (the GEMM's
// stream-K flags).
template <bool PTQ1, typename Acts>
static __global__ void __launch_bounds__(256) convert_act_f16_kernel(Acts acts, int64_t N, int64_t rows, int64_t chunks,
                                                                     uint8_t * __restrict__ act, uint32_t * __restrict__ zero,
                                                                     int zero_words) {
    asm volatile("griddepcontrol.launch_dependents;\n");  // the GEMM may start, and waits for this grid's end
    if (blockIdx.x == 0) {
        for (int i = threadIdx.x; i < zero_words; i += blockDim.x) {
            zero[i] = 0;
        }
    }
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
            const int element = PTQ1 ? ptq1_position_element(4 * lane + j) : position_element(4 * lane + j);
            v = acts(token, chunk * CHUNK + element);
        }
        if (fabsf(v) > 65504.0f) {
            v = copysignf(65504.0f, v);
        }
        h[j] = __float2half_rn(v);
    }
    uint2 packed;
    packed.x = (uint32_t) __half_as_ushort(h[0]) | (uint32_t) __half_as_ushort(h[1]) << 16;
    packed.y = (uint32_t) __half_as_ushort(h[2]) | (uint32_t) __half_as_ushort(h[3]) << 16;
    const int64_t step  = 2 * chunk + lane / 16;
    const int     pos   = (4 * lane) % 64;  // f16 position within the step's line
    const int     piece = pos / 8;
    uint8_t * line = act + (step * rows + token) * 128;
    *(uint2 *) (line + ((piece ^ (int) (token & 7)) << 4) + (pos % 8) * 2) = packed;
}

// ---- wgmma with A from registers ------------------------------------------------------------

// Barrier 1 for the first `threads` threads (the consumer warpgroups; the producer has left).
static __device__ __forceinline__ void consumer_sync(int threads) {
    asm volatile("bar.sync 1, %0;\n" ::"r"(threads) : "memory");
}

// A flag between blocks: the writes before a release are seen by a block that acquires it.
static __device__ __forceinline__ void store_release(uint32_t * p, uint32_t v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

static __device__ __forceinline__ uint32_t load_acquire(const uint32_t * p) {
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// d[64 x n] (+)= a[64 x 16] * b[16 x n]: a from registers (this thread's four f16 pairs of the
// m16n8k16 A fragment of its warp's 16 rows), b f16 in shared memory (K-major, 128-byte swizzle,
// described by desc_b), f32 accumulation; accumulate = 0 ignores d's old values.
static __device__ __forceinline__ void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t * a, uint64_t desc_b,
                                                           uint32_t accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"
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
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
#else
    __trap();
#endif
}

static __device__ __forceinline__ void wgmma_rs_m64n256k16(float (&d)[128], const uint32_t * a, uint64_t desc_b,
                                                           uint32_t accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
#else
    __trap();
#endif
}

template <int BN>
static __device__ __forceinline__ void wgmma_rs(float (&d)[BN / 2], const uint32_t * a, uint64_t desc_b, uint32_t accumulate);

template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t * a, uint64_t desc_b, uint32_t accumulate) {
    wgmma_rs_m64n128k16(d, a, desc_b, accumulate);
}

template <>
__device__ __forceinline__ void wgmma_rs<256>(float (&d)[128], const uint32_t * a, uint64_t desc_b, uint32_t accumulate) {
    wgmma_rs_m64n256k16(d, a, desc_b, accumulate);
}

// ---- decode -------------------------------------------------------------------------------------

// f16 pair ((c_lo - 1) * d, (c_hi - 1) * d) from the 2-bit fields at bits 0 and 16 of `codes`:
// code c at a 16-bit lane of 0x6400 | c is the half 1024 + c; minus 1025 gives c - 1, times d the
// weight (both exact).
static __device__ __forceinline__ uint32_t decode_pair(uint32_t codes, half2 d) {
    const uint32_t bits = (codes & 0x00030003u) | 0x64006400u;
    const half2 v = __hmul2(__hsub2(*(const half2 *) &bits, __half2half2(__ushort_as_half(0x6401))), d);
    return *(const uint32_t *) &v;
}

// The pairs of code word W (elements 16W .. 16W+15 of a row's chunk) that one thread's A
// fragment takes: pair[j] holds the codes of fields j and j + 8 at bits 0 and 16 (other bits
// are ignored). `raw`: the row's chunk in the file layout, 2-byte aligned, in shared memory;
// d: the scale of the block the word lies in.
template <int TYPE>
static __device__ __forceinline__ void chunk_pairs(const uint8_t * raw, int W, uint32_t (&pair)[8], float & d) {
    constexpr int  SUBS = traits<TYPE>::qk / 16;
    const uint32_t word = codes16<TYPE>(raw + (W / SUBS) * traits<TYPE>::bytes, W % SUBS, d);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        pair[j] = word >> (2 * j);
    }
}

// PTQ1_0 in its own order (ptq1_position_element): an f16 pair is trit n of two bytes b, b',
// held as the 16-bit lanes [b, 0, b', 0] of one word. Trit n of b is
//   floor(b 3^(n+1) / 256) - 3 floor(b 3^n / 256)
// (the codec's ((uint8_t) (b 3^n) * 3) >> 8 with the low byte's overflow kept). Per lane,
// X = lanes * 3^n stays below 2^16 up to n = 5 (255 * 243), and one byte_perm (ptq1_floor)
// moves floor(X / 256) to the lane's low byte with a constant byte c above it; G(n + 1) - 3 G(n)
// is then the lane's trit plus -2c, which for these two bytes c is the f16 1024 + t in the low
// lane and 1535 + t in the high one. Per pair: three integer instructions, then the f16
// subtraction and scale multiplication (both exact) that the 2-bit types have too.
static constexpr uint32_t PTQ1_CONSTANT_BYTES = 0x4d4e;      // c: 0x4e over the low lane, 0x4d over the high one
static constexpr uint32_t PTQ1_FLOOR_OF_BYTES = 0x4d004e00;  // ptq1_floor of lanes below 256

// Per 16-bit lane of x: floor(lane / 256), then the lane's constant byte (c_bytes holds
// PTQ1_CONSTANT_BYTES).
static __device__ __forceinline__ uint32_t ptq1_floor(uint32_t x, uint32_t c_bytes) {
    return __byte_perm(x, c_bytes, 0x5341);
}

// The f16 pair (t - 1) * d from G(n + 1) and G(n) of one pair of lanes.
static __device__ __forceinline__ uint32_t ptq1_pair(uint32_t g_next, uint32_t g, half2 d) {
    const uint32_t biased = g_next - 3 * g;  // f16 (1024 + t, 1535 + t)
    const half2    base   = __halves2half2(__ushort_as_half(0x6401), __ushort_as_half(0x6600));  // 1025, 1536
    const half2    v      = __hmul2(__hsub2(*(const half2 *) &biased, base), d);
    return *(const uint32_t *) &v;
}

// Trits N0 .. N0 + COUNT - 1 of the bytes in lanes [b, 0, b', 0] into out[0 .. COUNT), given
// g = G(N0); returns G(N0 + COUNT).
template <int N0, int COUNT>
static __device__ __forceinline__ uint32_t ptq1_trit_run(uint32_t lanes, uint32_t g, half2 d, uint32_t c_bytes,
                                                         uint32_t * out) {
    constexpr uint32_t pow3[6] = {1, 3, 9, 27, 81, 243};
#pragma unroll
    for (int i = 0; i < COUNT; i++) {
        const uint32_t g_next = ptq1_floor(lanes * pow3[N0 + i + 1], c_bytes);
        out[i] = ptq1_pair(g_next, g, d);
        g      = g_next;
    }
    return g;
}

// What the first half of a row's chunk leaves for the second (the same thread decodes both).
struct ptq1_carry {
    uint32_t o_lanes;   // qs[4t + 1], qs[4t + 3]
    uint32_t s_lanes;   // qs[16 + 2t], qs[17 + 2t]
    uint32_t s_floor3;  // their G(3)
    half2    d;
};

// One row's pairs v = 0..7 of ptq1_position_element from its chunk's bytes `raw` (2-byte
// aligned in shared memory).
static __device__ __forceinline__ void ptq1_first_half(const uint8_t * raw, int t, uint32_t c_bytes, uint32_t (&pair)[8],
                                                       ptq1_carry & carry) {
    const uint32_t d_pair = __byte_perm(load_u16(raw + 26), 0, 0x1010);
    const half2    d      = *(const half2 *) &d_pair;
    const uint32_t q01 = load_u16(raw + 4 * t), q23 = load_u16(raw + 4 * t + 2);
    const uint32_t s   = __byte_perm(load_u16(raw + 16 + 2 * t), 0, 0x3120);
    ptq1_trit_run<0, 5>(__byte_perm(q01, q23, 0x3420), PTQ1_FLOOR_OF_BYTES, d, c_bytes, pair);  // qs[4t], qs[4t + 2]
    carry.s_floor3 = ptq1_trit_run<0, 3>(s, PTQ1_FLOOR_OF_BYTES, d, c_bytes, pair + 5);
    carry.o_lanes  = __byte_perm(q01, q23, 0x3521);
    carry.s_lanes  = s;
    carry.d        = d;
}

// Pairs v = 8..15; pow3_t = 3^t.
static __device__ __forceinline__ void ptq1_second_half(const uint8_t * raw, uint32_t pow3_t, uint32_t c_bytes,
                                                        const ptq1_carry & carry, uint32_t (&pair)[8]) {
    ptq1_trit_run<0, 5>(carry.o_lanes, PTQ1_FLOOR_OF_BYTES, carry.d, c_bytes, pair);
    ptq1_trit_run<3, 2>(carry.s_lanes, carry.s_floor3, carry.d, c_bytes, pair + 5);
    const uint32_t qh = __byte_perm(load_u16(raw + 24), 0, 0x3120);  // qh[0], qh[1]
    pair[7] = ptq1_pair(ptq1_floor(qh * (3 * pow3_t), c_bytes), ptq1_floor(qh * pow3_t, c_bytes), carry.d);
}

// ---- the kernel -------------------------------------------------------------------------------

template <int WGS, int BN> struct f16_shape {
    static constexpr int threads  = (WGS + 1) * 128;  // + the producer warpgroup
    static constexpr int bm       = WGS * 64;
    static constexpr int b_stage  = BN * 128;  // one step: BN lines of 64 f16
    static constexpr int raw_warp = RAW_STAGES * 16 * RAW_SLOT;
    static constexpr int smem     = 1024 + STAGES * b_stage + WGS * 4 * raw_warp + (2 * STAGES + FIX_PARTS) * 8;
    static_assert(smem <= 227 * 1024, "shared memory");
    static_assert(bm * BN * 4 <= STAGES * b_stage, "a tile's f32 sums fit in the activation stages");
};

// Registers per consumer thread once the producer warpgroup keeps only PRODUCER_REGS. setmaxnreg
// only moves registers within the block's allocation (threads x the per-thread count the launch
// bounds give: 64K / (threads x blocks per SM), a multiple of 8), so the consumers get what the
// producer gives back, a multiple of 8 and at most 232; asking for more would wait forever.
static __host__ __device__ constexpr int launch_regs(int threads, int min_blocks) {
    return (65536 / (threads * min_blocks) > 255 ? 255 : 65536 / (threads * min_blocks)) / 8 * 8;
}

static __host__ __device__ constexpr int consumer_regs(int wgs, int min_blocks) {
    return ((launch_regs((wgs + 1) * 128, min_blocks) * (wgs + 1) - PRODUCER_REGS) / wgs) / 8 * 8 > 232
               ? 232
               : ((launch_regs((wgs + 1) * 128, min_blocks) * (wgs + 1) - PRODUCER_REGS) / wgs) / 8 * 8;
}

static_assert(consumer_regs(2, 1) == 232 && consumer_regs(1, 2) == 216, "register split of the tile configurations");
// How the blocks share the work: tiles x chunks iterations (one K chunk of one BM x BN tile),
// numbered tile by tile, the tile index running over M first.
struct f16_schedule {
    int tiles_m;  // tiles along M: tile t covers weight rows (t % tiles_m) * BM, tokens (t / tiles_m) * BN
    int tiles;    // all tiles
    int chunks;   // K chunks of a tile
    int splits;   // > 1: K split, block b takes part b % splits of tile b / splits into its own slice
                  // of `partials` (sum_split_k adds them); 1: shares (share_start)
};

// Stream-K: of `blocks` blocks, share r takes iterations [share_start(r), share_start(r + 1)), an
// equal contiguous run that may start and end inside tiles. The piece of a tile that holds its
// first chunk (the tile's owner) adds the other pieces (the next shares, each the first piece of
// its block) in share order and stores the tile; the others leave their sums in their share's
// slot of `partials` and raise its flag. One block per tile (blocks = tiles) is the plain
// schedule: every share is a whole tile.
static __host__ __device__ __forceinline__ int64_t share_start(int r, int64_t iterations, int blocks) {
    return (int64_t) r * iterations / blocks;
}

template <int TYPE, int WGS, int BN, int MIN_BLOCKS>
static __global__ void __launch_bounds__((WGS + 1) * 128, MIN_BLOCKS) gemm_f16_kernel(
        const uint8_t * __restrict__ w, int64_t M, size_t w_nb1, const uint8_t * __restrict__ act, int64_t rows,
        int64_t N, float * __restrict__ dst, int64_t ldd, f16_schedule sched, float * __restrict__ partials,
        uint32_t * __restrict__ flags) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = f16_shape<WGS, BN>;
    constexpr int CB        = chunk_bytes(TYPE);
    constexpr int CONSUMERS = WGS * 128;

    extern __shared__ uint8_t smem_unaligned[];
    const uint32_t smem_base = smem_u32(smem_unaligned);
    uint8_t  * smem  = smem_unaligned + (((smem_base + 1023) & ~1023u) - smem_base);
    uint8_t  * s_b   = smem;                                          // [STAGES][BN][128] activations
    uint8_t  * s_raw = s_b + STAGES * S::b_stage;                      // [warp][RAW_STAGES][16][RAW_SLOT]
    uint64_t * full  = (uint64_t *) (s_raw + WGS * 4 * S::raw_warp);  // stage landed
    uint64_t * empty = full + STAGES;                                  // stage read by every warp
    uint64_t * fix   = empty + STAGES;                                 // part of another share's sums landed

    const int tid  = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int C    = sched.chunks;

    // This block's iterations [start, end). The shares go to the blocks in reverse, so that an
    // owner waits only on blocks launched before it.
    const int     share      = (int) (gridDim.x - 1 - blockIdx.x);
    const int64_t iterations = (int64_t) sched.tiles * C;
    int64_t start, end;
    if (sched.splits > 1) {
        const int64_t tile = blockIdx.x / sched.splits, part = blockIdx.x % sched.splits;
        start = tile * C + part * C / sched.splits;
        end   = tile * C + (part + 1) * C / sched.splits;
    } else {
        start = share_start(share, iterations, gridDim.x);
        end   = share_start(share + 1, iterations, gridDim.x);
    }

    // pieces: tile first_tile from chunk first_k on, then whole tiles, `chunks` chunks in all
    const int first_tile = (int) (start / C), first_k = (int) (start % C);
    const int chunks     = (int) (end - start);

    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], WGS * 4);
        }
        for (int part = 0; part < FIX_PARTS; part++) {
            mbar_init(&fix[part], 1);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the kernels before this one are done

    if (warp >= WGS * 4) {  // the producer warpgroup: one thread moves every stage of every piece
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS));
        if (warp == WGS * 4 && lane == 0) {
            // over all pieces: the stage and the mbarrier phases run on
            int tile = first_tile, k_step = 2 * first_k;
            const uint8_t * src = act + (int64_t) (tile / sched.tiles_m) * BN * 128;
            for (int step = 0; step < 2 * chunks; step++) {
                const int stage = step % STAGES;
                if (step >= STAGES) {
                    mbar_wait(&empty[stage], (step / STAGES - 1) & 1);
                }
                mbar_arrive_expect_tx(&full[stage], S::b_stage);
                bulk_copy_to_shared(s_b + stage * S::b_stage, src + (int64_t) k_step * rows * 128, S::b_stage, &full[stage]);
                if (++k_step == 2 * C) {
                    k_step = 0;
                    tile++;
                    src = act + (int64_t) (tile / sched.tiles_m) * BN * 128;
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(consumer_regs(WGS, MIN_BLOCKS)));
    const int wg = warp / 4;
    const int wi = warp % 4;
    const int g  = lane / 4;
    const int t  = lane % 4;
    const int warp_row = wg * 64 + wi * 16;  // this warp's first row in a tile

    // Raw bytes of this warp's 16 rows, two chunks ahead of the decode and across pieces: the
    // cursor (load_tile, load_k) walks the block's iterations. Lane copies 16-byte pieces
    // (lane + 32 j) % 4 of rows (lane + 32 j) / 4. Rows past M read row M - 1; their results are
    // dropped.
    uint8_t * my_raw    = s_raw + warp * S::raw_warp;
    int       load_tile = first_tile, load_k = first_k;
    int64_t copy_row[2];  // the two rows this lane copies from
    auto aim_rows = [&]() {
        const int64_t first_row = (int64_t) (load_tile % sched.tiles_m) * S::bm + warp_row;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            copy_row[j] = min(first_row + g + 8 * j, M - 1);  // row (lane + 32 j) / 4
        }
    };
    aim_rows();
    auto load_raw = [&](int slot) {  // the cursor's chunk into `slot`; the cursor moves on
        uint8_t * slots = my_raw + slot * 16 * RAW_SLOT;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int       i     = lane + 32 * j;
            const int       piece = i % 4;
            const uint8_t * src   = w + copy_row[j] * w_nb1 + (int64_t) load_k * CB;
            const int       shift = (int) ((uintptr_t) src & 15);
            if (piece * 16 < shift + CB) {
                cp_async16(slots + (i / 4) * RAW_SLOT + piece * 16, src - shift + piece * 16);
            }
        }
        if (++load_k == C) {
            load_k = 0;
            load_tile++;
            aim_rows();
        }
    };

    // The shares whose first pieces complete the tile this block ends in (when it owns it):
    // share + 1 .. owner_until - 1.
    int owner_until = share + 1;
    while (sched.splits == 1 && owner_until < (int) gridDim.x &&
           share_start(owner_until, iterations, gridDim.x) < ((end - 1) / C + 1) * C) {
        owner_until++;
    }
    load_raw(0);
    cp_async_commit();
    if (chunks > 1) {
        load_raw(1);
    }
    cp_async_commit();

    // PTQ1_0: 3^t for its qh trit, its byte_perm constant in a register of its own (M >= 0: the
    // OR adds nothing; a literal would be rebuilt before every byte_perm), and what the first
    // half of each chunk leaves for the second.
    const uint32_t pow3_t  = t == 0 ? 1 : t == 1 ? 3 : t == 2 ? 9 : 27;
    const uint32_t c_bytes = PTQ1_CONSTANT_BYTES | (uint32_t) (M >> 63);
    ptq1_carry     carry_lo, carry_hi;

    float    d[BN / 2];  // set by each piece's first wgmma (accumulate = 0)
    uint32_t a_even[16], a_odd[16];
    int      j = 0;      // chunks of this block done: chunk j sits in raw slot j % RAW_STAGES, its steps are 2j, 2j + 1
    for (int tile = first_tile, ka = first_k, left = chunks; left > 0; tile++, ka = 0) {
        const int kb = min(C, ka + left);
        left -= kb - ka;
        // the 16-byte alignment of the two rows this thread decodes
        const int64_t row_lo   = (int64_t) (tile % sched.tiles_m) * S::bm + warp_row + g;
        const int     align_lo = (int) ((uintptr_t) (w + min(row_lo, M - 1) * w_nb1) & 15);
        const int     align_hi = (int) ((uintptr_t) (w + min(row_lo + 8, M - 1) * w_nb1) & 15);

        // This thread's A fragments of the four k16 of half `half` of K chunk k (raw slot `slot`;
        // PTQ1_0: half 1 right after half 0 of the same chunk, which leaves the carry).
        auto decode = [&](int slot, int k, int half, uint32_t (&a)[16]) {
            const uint8_t * slots  = my_raw + slot * 16 * RAW_SLOT;
            const uint8_t * raw_lo = slots + g * RAW_SLOT + ((align_lo + k * CB) & 15);
            const uint8_t * raw_hi = slots + (g + 8) * RAW_SLOT + ((align_hi + k * CB) & 15);
            if constexpr (TYPE == BONSAI_TYPE_PTQ1_0) {
                // f16 pairs of rows g and g + 8: of k16 q, columns (2t, 2t+1) in 2q, (2t+8, 2t+9) in 2q + 1
                uint32_t p_lo[8], p_hi[8];
                if (half == 0) {
                    ptq1_first_half(raw_lo, t, c_bytes, p_lo, carry_lo);
                    ptq1_first_half(raw_hi, t, c_bytes, p_hi, carry_hi);
                } else {
                    ptq1_second_half(raw_lo, pow3_t, c_bytes, carry_lo, p_lo);
                    ptq1_second_half(raw_hi, pow3_t, c_bytes, carry_hi, p_hi);
                }
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    a[4 * q + 0] = p_lo[2 * q];
                    a[4 * q + 1] = p_hi[2 * q];
                    a[4 * q + 2] = p_lo[2 * q + 1];
                    a[4 * q + 3] = p_hi[2 * q + 1];
                }
            } else {
                const int W = t + 4 * half;
                float    d_lo, d_hi;
                uint32_t p_lo[8], p_hi[8];
                chunk_pairs<TYPE>(raw_lo, W, p_lo, d_lo);
                chunk_pairs<TYPE>(raw_hi, W, p_hi, d_hi);
                const half2 s_lo = __float2half2_rn(d_lo);  // exact: the scales are fp16 numbers
                const half2 s_hi = __float2half2_rn(d_hi);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    a[4 * q + 0] = decode_pair(p_lo[2 * q], s_lo);      // row g,     columns 2t, 2t+1
                    a[4 * q + 1] = decode_pair(p_hi[2 * q], s_hi);      // row g + 8, columns 2t, 2t+1
                    a[4 * q + 2] = decode_pair(p_lo[2 * q + 1], s_lo);  // row g,     columns 2t+8, 2t+9
                    a[4 * q + 3] = decode_pair(p_hi[2 * q + 1], s_hi);  // row g + 8, columns 2t+8, 2t+9
                }
            }
        };

        // The tensor cores take `step` (of the block's steps); then the stage of step - 1 goes
        // back to the producer, unless `step` starts the piece (the previous piece gave its
        // last stage back when it ended).
        auto multiply = [&](int step, bool first, const uint32_t (&a)[16]) {
            const int stage = step % STAGES;
            mbar_wait(&full[stage], (step / STAGES) & 1);
            const uint64_t db = smem_desc(s_b + stage * S::b_stage);
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < 4; k++) {  // k16 step k starts 32 bytes into each 128-byte line
                wgmma_rs<BN>(d, &a[4 * k], db + (uint64_t) (k * 32 >> 4), !first || k > 0);
            }
            wgmma_commit();
            wgmma_wait<1>();
            if (!first && lane == 0) {
                mbar_arrive(&empty[(step - 1) % STAGES]);
            }
        };

        // Step s is decoded while the tensor cores work on step s - 1 (two A buffers). Decoding
        // two steps ahead into three buffers was measured slower at every DiT shape.
        for (int k = ka; k < kb; k++, j++) {
            cp_async_wait<1>();  // this chunk's bytes landed (for this lane) ...
            __syncwarp();        // ... and for every lane; every lane is done with chunk j - 1
            if (j + 2 < chunks) {
                load_raw((j + 2) % RAW_STAGES);  // into the slots chunk j - 1 used
            }
            cp_async_commit();
            decode(j % RAW_STAGES, k, 0, a_even);
            multiply(2 * j, k == ka, a_even);
            decode(j % RAW_STAGES, k, 1, a_odd);
            multiply(2 * j + 1, false, a_odd);
        }
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < BN / 2; i++) {
            fence_register(d[i]);
        }
        if (lane == 0) {
            mbar_arrive(&empty[(2 * j - 1) % STAGES]);
        }

        if (sched.splits == 1 && ka > 0) {
            // A later piece of the tile: its sums go to this share's slot for the owner, float4
            // q of consumer thread tid at q * CONSUMERS + tid.
            float4 * slot = (float4 *) (partials + (int64_t) share * S::bm * BN) + tid;
#pragma unroll
            for (int q = 0; q < BN / 8; q++) {
                __stcg(slot + q * CONSUMERS, make_float4(d[4 * q], d[4 * q + 1], d[4 * q + 2], d[4 * q + 3]));
            }
            __threadfence();
            consumer_sync(CONSUMERS);
            if (tid == 0) {
                store_release(&flags[share], 1);
            }
        } else {
            if (sched.splits == 1 && kb < C) {
                // The tile's owner, ending inside it: the next shares hold the rest of its K, each
                // in its first piece, added in share order (the sum does not depend on timing).
                // Each comes into the idle activation stages by bulk copies, in FIX_PARTS parts
                // of BN / 8 / FIX_PARTS float4 rows with a barrier each.
                constexpr int ROWS_PER_PART = BN / 8 / FIX_PARTS;
                constexpr int PART_BYTES    = ROWS_PER_PART * CONSUMERS * 16;
                for (int from = share + 1, n = 0; from < owner_until; from++, n++) {
                    consumer_sync(CONSUMERS);  // every thread is done with the stages
                    if (tid == 0) {
                        while (load_acquire(&flags[from]) == 0) {
                        }
                        flags[from] = 0;  // for the next call
                        asm volatile("fence.proxy.async.global;\n" ::: "memory");      // the acquired sums, for the copy
                        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the stages' last reads, before it
                        const uint8_t * src = (const uint8_t *) (partials + (int64_t) from * S::bm * BN);
                        for (int part = 0; part < FIX_PARTS; part++) {
                            mbar_arrive_expect_tx(&fix[part], PART_BYTES);
                            bulk_copy_to_shared(s_b + part * PART_BYTES, src + part * PART_BYTES, PART_BYTES, &fix[part]);
                        }
                    }
                    const float4 * slot = (const float4 *) s_b + tid;
#pragma unroll
                    for (int part = 0; part < FIX_PARTS; part++) {
                        mbar_wait(&fix[part], n & 1);
#pragma unroll
                        for (int q = part * ROWS_PER_PART; q < (part + 1) * ROWS_PER_PART; q++) {
                            const float4 v = slot[q * CONSUMERS];
                            d[4 * q] += v.x;
                            d[4 * q + 1] += v.y;
                            d[4 * q + 2] += v.z;
                            d[4 * q + 3] += v.w;
                        }
                    }
                }
            }
            // Columns 8q .. 8q + 7 of this thread's rows: d[4q], d[4q + 1] at row wi*16 + g of
            // this warpgroup's 64, columns 8q + 2t, 8q + 2t + 1; d[4q + 2], d[4q + 3] the same
            // columns 8 rows further down. A split of K stores into its part's slice of `partials`.
            float * const out = sched.splits > 1 ? partials + (int64_t) (blockIdx.x % sched.splits) * N * M : dst;
            const int64_t ld  = sched.splits > 1 ? M : ldd;
            const int64_t row = (int64_t) (tile % sched.tiles_m) * S::bm + warp_row + g;
            const int64_t n0  = (int64_t) (tile / sched.tiles_m) * BN;
#pragma unroll
            for (int q = 0; q < BN / 8; q++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int64_t r = row + (e >= 2 ? 8 : 0);
                    const int64_t col = n0 + 8 * q + 2 * t + (e & 1);
                    if (r < M && col < N) {
                        out[col * ld + r] = d[4 * q + e];
                    }
                }
            }
        }
    }
#else
    __trap();
#endif
}

// dst[n][m] = the sum of the splits' partials[z][n][m], in split order (a fixed result).
static __global__ void __launch_bounds__(256) sum_split_k_kernel(const float * __restrict__ partials, int splits,
                                                                 int64_t N, int64_t M, float * __restrict__ dst,
                                                                 int64_t ldd) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * M) {
        return;
    }
    float sum = partials[i];
    for (int z = 1; z < splits; z++) {
        sum += partials[z * N * M + i];
    }
    dst[(i / M) * ldd + i % M] = sum;
}

// ---- host side ----------------------------------------------------------------------------------

// Tile configurations: BM x BN, blocks per SM, and the share of the tensor cores' rate each
// reaches on an H100 (tests/cuda/lowbit_cuda_check at the FLUX.2 DiT shapes). A 64 x 64 tile
// with three blocks per SM was measured too and lost everywhere (n = 64 wgmma leaves the
// decode too little tensor work to hide behind).
struct f16_config_info {
    int    bm, bn, blocks_per_sm;
    double efficiency;
};

static const f16_config_info f16_configs[BONSAI_CUDA_F16_CONFIGS] = {
    {128, 256, 1, 1.00},
    {128, 128, 1, 0.80},
    {64, 128, 2, 0.78},
};

static int device_sms() {
    static int sms = 0;
    if (sms == 0) {
        int device = 0, count = 0;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
        sms = count > 0 ? count : 132;
    }
    return sms;
}

static double device_l2_bytes() {
    static int bytes = 0;
    if (bytes == 0) {
        int device = 0, size = 0;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&size, cudaDevAttrL2CacheSize, device);
        bytes = size > 0 ? size : 50 << 20;
    }
    return bytes;
}

static int64_t config_tiles(int config, int64_t M, int64_t rows) {
    const f16_config_info & info = f16_configs[config - 1];
    return (M + info.bm - 1) / info.bm * (rows / info.bn);
}

// Whether some share of `blocks` starts inside a tile (then the tiles' owners wait on flags).
static bool shares_split_tiles(int64_t tiles, int chunks, int blocks) {
    for (int r = 1; r < blocks; r++) {
        if (share_start(r, tiles * chunks, blocks) % chunks != 0) {
            return true;
        }
    }
    return false;
}

// Stream-K workspace: a flag per share, then a BM x BN f32 slot per share.
static size_t flag_bytes(int blocks) {
    return ((size_t) blocks * sizeof(uint32_t) + 255) / 256 * 256;
}

template <int TYPE, int WGS, int BN, int MIN_BLOCKS>
static cudaError_t launch_f16(const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const uint8_t * act, int64_t rows,
                              int64_t N, float * dst, int64_t ldd, int splits, int blocks, void * workspace,
                              cudaStream_t stream) {
    using S = f16_shape<WGS, BN>;
    auto kernel = gemm_f16_kernel<TYPE, WGS, BN, MIN_BLOCKS>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::smem);
    if (err != cudaSuccess) {
        return err;
    }
    f16_schedule sched;
    sched.tiles_m = (int) ((M + S::bm - 1) / S::bm);
    sched.tiles   = sched.tiles_m * (int) (rows / BN);
    sched.chunks  = chunks;
    sched.splits  = splits > 1 ? splits : 1;
    float *    partials = (float *) workspace;
    uint32_t * flags    = nullptr;
    int        grid     = splits > 1 ? sched.tiles * splits : blocks > 0 ? blocks : sched.tiles;
    if (splits == 0 && shares_split_tiles(sched.tiles, chunks, grid)) {
        // An owner spins on flags of lower-numbered blocks (which the hardware starts first),
        // and every block must fit on the GPU at once, so a block waited on always runs.
        static int resident = 0;
        if (resident == 0) {
            int per_sm = 0;
            err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, S::threads, S::smem);
            if (err != cudaSuccess) {
                return err;
            }
            resident = per_sm * device_sms();
        }
        if (grid > resident) {
            return cudaErrorInvalidValue;
        }
        flags    = (uint32_t *) workspace;
        partials = (float *) ((char *) workspace + flag_bytes(grid));
    }
    // Launched as a programmatic dependent of the pre-pass: its blocks may start while the
    // pre-pass ends, and wait (griddepcontrol.wait) before touching global memory.
    cudaLaunchConfig_t  launch = {};
    cudaLaunchAttribute early;
    early.id                                         = cudaLaunchAttributeProgrammaticStreamSerialization;
    early.val.programmaticStreamSerializationAllowed = 1;
    launch.gridDim          = dim3((unsigned) grid);
    launch.blockDim         = dim3(S::threads);
    launch.dynamicSmemBytes = S::smem;
    launch.stream           = stream;
    launch.attrs            = &early;
    launch.numAttrs         = 1;
    err = cudaLaunchKernelEx(&launch, kernel, w, M, w_nb1, act, rows, N, dst, ldd, sched, partials, flags);
    if (err != cudaSuccess) {
        return err;
    }
    if (splits > 1) {
        sum_split_k_kernel<<<(unsigned) ((N * M + 255) / 256), 256, 0, stream>>>(partials, splits, N, M, dst, ldd);
    }
    return cudaGetLastError();
}

template <int TYPE>
static cudaError_t f16_typed(int config, const uint8_t * w, int64_t M, size_t w_nb1, int chunks, const uint8_t * act,
                             int64_t rows, int64_t N, float * dst, int64_t ldd, int splits, int blocks, void * workspace,
                             cudaStream_t stream) {
    switch (config) {
        case 1:  return launch_f16<TYPE, 2, 256, 1>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, splits, blocks, workspace, stream);
        case 2:  return launch_f16<TYPE, 2, 128, 1>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, splits, blocks, workspace, stream);
        case 3:  return launch_f16<TYPE, 1, 128, 2>(w, M, w_nb1, chunks, act, rows, N, dst, ldd, splits, blocks, workspace, stream);
        default: return cudaErrorInvalidValue;
    }
}

struct f16_plan {
    int config, splits, blocks;  // splits >= 1: one block per (tile, part of K); else stream-K over `blocks`
};

// Stream-K's cost beyond its share of the work, in chunk times of its tile: the first piece's
// partial sums out, and an owner's wait for and adding of the other pieces.
static constexpr double STREAM_K_EXTRA_CHUNKS = 1.5;
// Stream-K only where the model gives it at least this edge over the best other schedule.
static constexpr double STREAM_K_MIN_GAIN = 0.95;
// ... and only where the f16 activations take at most this share of the L2 cache: the shares
// run all over the tiles at once (every token tile at every K), where one block per tile walks
// K in step over neighbouring tiles. Measured on the H100 (50 MB): 25-28 MB of activations (K =
// 3072, N = 4096, 4608) ran as fast or faster; 75-113 MB (K = 9216, 12288 at N = 4096, 4608)
// 1.3-1.8x slower.
static constexpr double STREAM_K_MAX_L2_SHARE = 0.6;

// The schedule with the least estimated time, each BM x BN tile-chunk costing its
// configuration's 1 / efficiency:
//   - one block per tile: the busiest SM runs ceil(tiles / SMs) tiles one after the other;
//   - stream-K, one wave of blocks (SMs x blocks per SM): every SM runs an equal share of the
//     tiles x chunks, plus STREAM_K_EXTRA_CHUNKS for its first piece and for each piece an
//     owner adds (the most pieces a tile has).
// Against the best plan without stream-K (H100, lowbit_cuda_check, 2-bit types), the plan runs
// 0.74-0.98x of its time at N = 512 and 0.96x at proj with N = 4608; as fast elsewhere. It
// replaced the split of K in two at M = 3072, N = 512 (48 tiles of 128 x 256 for 132 SMs).
static f16_plan plan_f16(int64_t M, int64_t rows, int chunks) {
    const int sms  = device_sms();
    f16_plan  best = {1, 1, 0};
    double    best_cost = 0.0;
    for (int c = 1; c <= BONSAI_CUDA_F16_CONFIGS; c++) {
        const f16_config_info & info  = f16_configs[c - 1];
        const int64_t           tiles = config_tiles(c, M, rows);
        const double            cost  = (double) ((tiles + sms - 1) / sms) * chunks * info.bm * info.bn / info.efficiency;
        if (c == 1 || cost < best_cost) {
            best      = {c, 1, 0};
            best_cost = cost;
        }
    }
    if ((double) rows * chunks * CHUNK * sizeof(half) > STREAM_K_MAX_L2_SHARE * device_l2_bytes()) {
        return best;
    }
    for (int c = 1; c <= BONSAI_CUDA_F16_CONFIGS; c++) {
        const f16_config_info & info   = f16_configs[c - 1];
        const int64_t           tiles  = config_tiles(c, M, rows);
        const int               blocks = sms * info.blocks_per_sm;
        if (tiles * chunks < blocks || !shares_split_tiles(tiles, chunks, blocks)) {
            continue;
        }
        const int64_t share  = (tiles * chunks + blocks - 1) / blocks;
        const int64_t pieces = (chunks + share - 1) / share + 1;  // the most pieces of a tile
        const double  cost   = ((double) share + STREAM_K_EXTRA_CHUNKS * pieces) * info.blocks_per_sm * info.bm * info.bn /
                            info.efficiency;
        if (cost < STREAM_K_MIN_GAIN * best_cost) {
            best      = {c, 0, blocks};
            best_cost = cost;
        }
    }
    return best;
}

}  // namespace bonsai_cuda

using namespace bonsai_cuda;

int64_t bonsai_cuda_act_f16_rows(int64_t N) {
    return (N + F16_ROWS_ALIGN - 1) / F16_ROWS_ALIGN * F16_ROWS_ALIGN;
}

int bonsai_cuda_act_f16_position_element(int type, int p) {
    return type == BONSAI_TYPE_PTQ1_0 ? ptq1_position_element(p) : position_element(p);
}

template <typename Acts>
static cudaError_t convert_act_f16(int type, const Acts & acts, int64_t K, int64_t N, void * act, void * zero,
                                   size_t zero_bytes, cudaStream_t stream) {
    const int64_t chunks = bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_f16_rows(N);
    const int64_t warps  = rows * chunks;
    if (zero_bytes % sizeof(uint32_t) != 0 || (zero_bytes > 0 && zero == nullptr)) {
        return cudaErrorInvalidValue;
    }
    auto kernel = type == BONSAI_TYPE_PTQ1_0 ? convert_act_f16_kernel<true, Acts> : convert_act_f16_kernel<false, Acts>;
    kernel<<<(unsigned) ((warps + 7) / 8), 256, 0, stream>>>(acts, N, rows, chunks, (uint8_t *) act, (uint32_t *) zero,
                                                             (int) (zero_bytes / sizeof(uint32_t)));
    return cudaGetLastError();
}

cudaError_t bonsai_cuda_convert_act_f16(int type, const float * x, int64_t K, int64_t N, size_t x_nb0, size_t x_nb1,
                                        void * act, void * zero, size_t zero_bytes, cudaStream_t stream) {
    return convert_act_f16(type, plain_acts{(const char *) x, x_nb0, x_nb1}, K, N, act, zero, zero_bytes, stream);
}

cudaError_t bonsai_cuda_convert_act_f16_glu(int type, const bonsai_cuda_act_glu * a, int64_t K, int64_t N, void * act,
                                            void * zero, size_t zero_bytes, cudaStream_t stream) {
    if (a->from < 0 || a->from % CHUNK != 0 || a->from > K || 2 * (K - a->from) != a->glu_ne0) {
        return cudaErrorInvalidValue;
    }
    const glu_acts acts = {a->x, a->x_nb1, a->glu, a->glu_nb1, a->from, K - a->from, a->swapped};
    return convert_act_f16(type, acts, K, N, act, zero, zero_bytes, stream);
}

int bonsai_cuda_gemm_f16_max_blocks(int config) {
    if (config < 1 || config > BONSAI_CUDA_F16_CONFIGS) {
        return 0;
    }
    return device_sms() * f16_configs[config - 1].blocks_per_sm;
}

// The schedule a call runs: the planner's for config 0, else the caller's; false when invalid.
static bool resolve_schedule(int64_t M, int64_t K, int64_t N, int & config, int & splits, int & blocks) {
    const int     chunks = (int) bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_f16_rows(N);
    if (chunks <= 0 || config < 0 || config > BONSAI_CUDA_F16_CONFIGS || splits < 0 || blocks < 0) {
        return false;
    }
    if (config == 0) {
        if (splits != 0 || blocks != 0) {
            return false;
        }
        const f16_plan plan = plan_f16(M, rows, chunks);
        config = plan.config;
        splits = plan.splits;
        blocks = plan.blocks;
        return true;
    }
    const int64_t tiles = config_tiles(config, M, rows);
    if ((splits > 0) == (blocks > 0) || splits > chunks || blocks > tiles * chunks) {
        return false;
    }
    return blocks == 0 || !shares_split_tiles(tiles, chunks, blocks) || blocks <= bonsai_cuda_gemm_f16_max_blocks(config);
}

// Whether the schedule (resolved) is stream-K with tiles split between shares (flags needed).
static bool schedule_has_flags(int64_t M, int64_t K, int64_t N, int config, int blocks) {
    return blocks > 0 &&
           shares_split_tiles(config_tiles(config, M, bonsai_cuda_act_f16_rows(N)), (int) bonsai_cuda_act_chunks(K), blocks);
}

size_t bonsai_cuda_gemm_f16_flag_bytes(int64_t M, int64_t K, int64_t N, int config, int splits, int blocks) {
    if (!resolve_schedule(M, K, N, config, splits, blocks) || !schedule_has_flags(M, K, N, config, blocks)) {
        return 0;
    }
    return flag_bytes(blocks);
}

size_t bonsai_cuda_gemm_f16_workspace(int64_t M, int64_t K, int64_t N, int config, int splits, int blocks) {
    if (!resolve_schedule(M, K, N, config, splits, blocks)) {
        return 0;
    }
    if (splits > 1) {
        return (size_t) (splits * N * M) * sizeof(float);
    }
    if (!schedule_has_flags(M, K, N, config, blocks)) {
        return 0;
    }
    const f16_config_info & info = f16_configs[config - 1];
    return flag_bytes(blocks) + (size_t) blocks * info.bm * info.bn * sizeof(float);
}

cudaError_t bonsai_cuda_gemm_f16(int type, const void * w, int64_t M, int64_t K, size_t w_nb1, const void * act,
                                 int64_t N, float * dst, size_t d_nb1, int config, int splits, int blocks,
                                 void * workspace, cudaStream_t stream) {
    if (!resolve_schedule(M, K, N, config, splits, blocks)) {
        return cudaErrorInvalidValue;
    }
    const int     chunks = (int) bonsai_cuda_act_chunks(K);
    const int64_t rows   = bonsai_cuda_act_f16_rows(N);
    const int64_t ldd    = (int64_t) (d_nb1 / sizeof(float));
    if (workspace == nullptr && bonsai_cuda_gemm_f16_workspace(M, K, N, config, splits, blocks) > 0) {
        return cudaErrorInvalidValue;
    }
    const uint8_t * wb = (const uint8_t *) w;
    const uint8_t * ab = (const uint8_t *) act;
    switch (type) {
#define BONSAI_F16_CASE(TYPE)                                                                                      \
        case TYPE:                                                                                                 \
            return f16_typed<TYPE>(config, wb, M, w_nb1, chunks, ab, rows, N, dst, ldd, splits, blocks, workspace, \
                                   stream);
        BONSAI_CUDA_FOR_EACH_TYPE(BONSAI_F16_CASE)
#undef BONSAI_F16_CASE
        default: return cudaErrorInvalidValue;
    }
}
