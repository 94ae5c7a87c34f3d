// FLASH_ATTN_EXT of head size 128 on Hopper (sm_90a; see cuda-flash-attn.h). Built only for
// sm_90a (-gencode arch=compute_90a,code=sm_90a).
//
// A block takes BM = 128 query rows of one head, in two consumer warpgroups of 64 rows, and walks
// the keys in tiles of BN = 128:
//   - One producer thread brings each K and V tile with the tensor memory accelerator: two boxes
//     of 64 dims x BN keys, 128-byte swizzled (one 128-byte line per key and half of the head),
//     keys past Lk filled with zeros by the copy engine. STAGES tiles of each in flight; an
//     mbarrier per stage says "landed" (the bytes counted), another "read by all 8 warps".
//   - Each consumer warpgroup rounds its 64 query rows to f16 once, into shared memory in the
//     same swizzled image (rows past Lq are zeros; their results are not stored).
//   - S = Q K^T: wgmma m64n128k16, both operands K-major in shared memory, f32 in registers.
//   - Online softmax in registers: each thread holds two rows (g, g + 8) x 32 columns; the row
//     maximum goes over the 4 threads of a row by shuffles; exp2 with the scale folded into one
//     FMA; the row sums stay per thread until the end. Keys past Lk get -inf in the last tile.
//   - O += P V: P rounded to f16 where it was computed. The accumulator of m64nNk16 holds, for
//     columns 16k .. 16k + 15, exactly the A fragment of k16 step k (rows g and g + 8, columns
//     2t, 2t + 1, 2t + 8, 2t + 9), so the pairs pack in order with no shuffles. V is the B
//     operand from shared memory as it landed: key-major lines are N-major (transposed) B.
//   - The S of tile j goes to the tensor cores with the PV of tile j - 1, and the softmax of
//     tile j runs while PV j - 1 is still in flight (two warpgroups: the other one's products run
//     under this one's softmax too). On an H100 at 24 heads x 4608 tokens this measured 619
//     TFLOPS against 555 with each softmax between its own products, and 606 with the two
//     warpgroups taking turns to issue (FlashAttention-3's ping-pong, named barriers).
// Accuracy: Q and P rounded to f16 (relative 2^-11 each), K and V exact (f16 operands); every
// product and sum in f32. |q| beyond 65504 overflows f16, as in ggml's own kernels.

#include "cuda-flash-attn.h"
#include "cuda-sm90-async.cuh"

#include <cuda.h>  // CUtensorMap and its encoder's signature; the encoder comes through the runtime
#include <cuda_fp16.h>

#include <cmath>

namespace bonsai_cuda {
namespace {

constexpr int HEAD           = 128;                 // head size (dims of q, k and v)
constexpr int BM             = 128;                 // query rows per block
constexpr int BN             = 128;                 // keys per tile
constexpr int STAGES         = 2;                   // K and V tiles in flight
constexpr int CONSUMER_WARPS = 8;                   // two warpgroups of 64 rows
constexpr int THREADS        = 128 * 3;             // + the producer warpgroup
constexpr int HALF_TILE      = BN * 128;            // one box: BN lines of 64 f16
constexpr int TILE_BYTES     = 2 * HALF_TILE;
constexpr int Q_HALF         = BM * 128;
constexpr int Q_BYTES        = 2 * Q_HALF;
constexpr int SMEM_BYTES     = 1024 + Q_BYTES + 2 * STAGES * TILE_BYTES + 4 * STAGES * 8;
static_assert(SMEM_BYTES <= 227 * 1024, "shared memory");

// Registers: 65536 / 384 threads = 170, rounded down to 168 each; the producer keeps 24 and gives
// the rest to the consumers: (3 x 168 - 24) / 2 = 240.
constexpr int PRODUCER_REGS = 24;
constexpr int CONSUMER_REGS = 240;
static_assert(PRODUCER_REGS + 2 * CONSUMER_REGS <= 3 * (65536 / THREADS / 8 * 8), "register split");

// Named barrier of warpgroup w's Q rows: BAR_Q0 + w (0 is __syncthreads).
constexpr int BAR_Q0 = 1;

struct params {
    const float * q;
    int64_t       q_s1, q_s2, q_s3;  // in floats
    float *       dst;
    int64_t       d_s1, d_s2, d_s3;  // in floats
    int           Lq, Lk;
    int           k_group, v_group;  // query heads per K head, per V head
    bool          k_heads_inner;     // k_map's dims are (dim, head, key, batch), else (dim, key, head, batch)
    bool          v_heads_inner;     // the same for v_map
    float         c;                 // scale * log2(e)
};

#define BONSAI_FA_ACC                                                                                                  \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
    "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
    "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

#define BONSAI_FA_ACC_OPERANDS(d)                                                                                    \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                 \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),           \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),         \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),         \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),         \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),         \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),         \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d[64 x 128] (+)= a[64 x 16] * b[16 x 128], a and b f16 K-major in shared memory (descriptors),
// f32 accumulation; accumulate = 0 ignores d's old values.
__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " BONSAI_FA_ACC ", %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : BONSAI_FA_ACC_OPERANDS(d)
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#else
    __trap();
#endif
}

// d[64 x 128] += a[64 x 16] * b[16 x 128], a from registers (this thread's four f16 pairs of the
// m16n8k16 A fragment of its warp's 16 rows), b f16 N-major in shared memory (transposed B).
__device__ __forceinline__ void wgmma_rs_m64n128k16_bt(float (&d)[64], const uint32_t * a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " BONSAI_FA_ACC ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
        "}\n"
        : BONSAI_FA_ACC_OPERANDS(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1u));
#else
    __trap();
#endif
}

__device__ __forceinline__ float exp2_approx(float x) {  // 2^x; 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

__global__ void __launch_bounds__(THREADS, 1) flash_attn_kernel(const __grid_constant__ CUtensorMap k_map,
                                                                const __grid_constant__ CUtensorMap v_map, const params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_unaligned[];
    const uint32_t smem_base = smem_u32(smem_unaligned);
    uint8_t  * s_q     = smem_unaligned + (((smem_base + 1023) & ~1023u) - smem_base);  // [2][BM][128]: dims 0-63, 64-127
    uint8_t  * s_k     = s_q + Q_BYTES;                                                 // [STAGES][2][BN][128]
    uint8_t  * s_v     = s_k + STAGES * TILE_BYTES;                                     // [STAGES][2][BN][128]
    uint64_t * full_k  = (uint64_t *) (s_v + STAGES * TILE_BYTES);
    uint64_t * empty_k = full_k + STAGES;
    uint64_t * full_v  = empty_k + STAGES;
    uint64_t * empty_v = full_v + STAGES;

    const int     tid   = threadIdx.x;
    const int     warp  = tid / 32;
    const int     lane  = tid % 32;
    const int     head  = blockIdx.y;
    const int     batch = blockIdx.z;
    const int64_t q0    = (int64_t) blockIdx.x * BM;
    const int     tiles = (p.Lk + BN - 1) / BN;

    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full_k[s], 1);
            mbar_init(&full_v[s], 1);
            mbar_init(&empty_k[s], CONSUMER_WARPS);
            mbar_init(&empty_v[s], CONSUMER_WARPS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= CONSUMER_WARPS) {  // the producer warpgroup: one thread moves every tile
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS));
        if (warp == CONSUMER_WARPS && lane == 0) {
            const int kh = head / p.k_group;
            const int vh = head / p.v_group;
            for (int j = 0; j < tiles; j++) {
                const int      stage  = j % STAGES;
                const uint32_t parity = ((j / STAGES) & 1) ^ 1;  // the stage's previous release
                const int      key    = j * BN;
                if (j >= STAGES) {
                    mbar_wait(&empty_k[stage], parity);
                }
                uint8_t * kt = s_k + stage * TILE_BYTES;
                mbar_arrive_expect_tx(&full_k[stage], TILE_BYTES);
                for (int half = 0; half < 2; half++) {
                    tensor_copy_to_shared(kt + half * HALF_TILE, &k_map, 64 * half, p.k_heads_inner ? kh : key,
                                          p.k_heads_inner ? key : kh, batch, &full_k[stage]);
                }
                if (j >= STAGES) {
                    mbar_wait(&empty_v[stage], parity);
                }
                uint8_t * vt = s_v + stage * TILE_BYTES;
                mbar_arrive_expect_tx(&full_v[stage], TILE_BYTES);
                for (int half = 0; half < 2; half++) {
                    tensor_copy_to_shared(vt + half * HALF_TILE, &v_map, 64 * half, p.v_heads_inner ? vh : key,
                                          p.v_heads_inner ? key : vh, batch, &full_v[stage]);
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS));
    const int wg = warp / 4;  // this warpgroup's rows: q0 + 64 wg ...
    const int wi = warp % 4;  // ... + 16 wi + g and + 8
    const int g  = lane / 4;
    const int t  = lane % 4;

    // Q rows to f16: warp-wide 512-byte row reads; lane l's four values land in 16-byte piece
    // (l % 16) / 2 of the row's line in half l / 16, swizzled with the line number.
    {
        const float * q_head = p.q + batch * p.q_s3 + head * p.q_s2;
#pragma unroll 4
        for (int i = 0; i < 16; i++) {
            const int     r   = wi + 4 * i;
            const int64_t row = q0 + 64 * wg + r;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (row < p.Lq) {
                x = *(const float4 *) (q_head + row * p.q_s1 + 4 * lane);
            }
            uint8_t * line = s_q + (lane / 16) * Q_HALF + (64 * wg + r) * 128;
            *(uint2 *) (line + ((((lane % 16) / 2) ^ (r & 7)) << 4) + (lane % 2) * 8) =
                make_uint2(pack_half2(x.x, x.y), pack_half2(x.z, x.w));
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // st.shared, then wgmma reads
        asm volatile("bar.sync %0, 128;\n" ::"r"(BAR_Q0 + wg) : "memory");
    }

    const uint64_t q_desc = smem_desc(s_q + 64 * wg * 128);

    float    o[64];
    float    s[64];
    uint32_t pf[32];  // P as f16 pairs: the A fragments of the BN / 16 k16 steps
#pragma unroll
    for (int i = 0; i < 64; i++) {
        o[i] = 0.0f;
    }
    float m_lo = -INFINITY, m_hi = -INFINITY;  // rows g and g + 8: running maximum of q.k ...
    float l_lo = 0.0f, l_hi = 0.0f;            // ... and this thread's part of the row sum

    auto release = [&](uint64_t * bar) {
        if (lane == 0) {
            mbar_arrive(bar);
        }
    };

    auto issue_qk = [&](int j) {
        const int stage = j % STAGES;
        mbar_wait(&full_k[stage], (j / STAGES) & 1);
        const uint64_t k_desc = smem_desc(s_k + stage * TILE_BYTES);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HEAD / 16; kk++) {  // dims 16 kk ..: half kk / 4, 32 bytes per k16
            wgmma_ss_m64n128k16(s, q_desc + (kk / 4) * (Q_HALF >> 4) + (kk % 4) * 2,
                                k_desc + (kk / 4) * (HALF_TILE >> 4) + (kk % 4) * 2, kk > 0);
        }
        wgmma_commit();
    };

    auto issue_pv = [&](int j) {
        const int stage = j % STAGES;
        mbar_wait(&full_v[stage], (j / STAGES) & 1);
        const uint64_t v_desc = smem_desc(s_v + stage * TILE_BYTES, HALF_TILE);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {  // keys 16 kk ..: 16 lines of 128 bytes each
            wgmma_rs_m64n128k16_bt(o, &pf[4 * kk], v_desc + kk * (16 * 128 >> 4));
        }
        wgmma_commit();
    };

    // s = q.k of tile j becomes exp2((s - m) * c) with the new row maxima m; returns through alpha
    // the factors 2^((m_old - m) c) that rescale the rows' earlier sums.
    auto softmax = [&](int j, float & alpha_lo, float & alpha_hi) {
#pragma unroll
        for (int i = 0; i < 64; i++) {
            fence_register(s[i]);
        }
        const int valid = p.Lk - j * BN;
        if (valid < BN) {
#pragma unroll
            for (int i = 0; i < 64; i++) {
                if (8 * (i / 4) + 2 * t + (i & 1) >= valid) {
                    s[i] = -INFINITY;
                }
            }
        }
        float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
        for (int q = 0; q < 16; q++) {
            mx_lo = fmaxf(mx_lo, fmaxf(s[4 * q], s[4 * q + 1]));
            mx_hi = fmaxf(mx_hi, fmaxf(s[4 * q + 2], s[4 * q + 3]));
        }
#pragma unroll
        for (int x = 1; x <= 2; x *= 2) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
        }
        alpha_lo = exp2_approx((m_lo - mx_lo) * p.c);
        alpha_hi = exp2_approx((m_hi - mx_hi) * p.c);
        m_lo = mx_lo;
        m_hi = mx_hi;
        const float mc_lo = mx_lo * p.c, mc_hi = mx_hi * p.c;
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int q = 0; q < 16; q++) {
            s[4 * q + 0] = exp2_approx(fmaf(s[4 * q + 0], p.c, -mc_lo));
            s[4 * q + 1] = exp2_approx(fmaf(s[4 * q + 1], p.c, -mc_lo));
            s[4 * q + 2] = exp2_approx(fmaf(s[4 * q + 2], p.c, -mc_hi));
            s[4 * q + 3] = exp2_approx(fmaf(s[4 * q + 3], p.c, -mc_hi));
            sum_lo += s[4 * q + 0] + s[4 * q + 1];
            sum_hi += s[4 * q + 2] + s[4 * q + 3];
        }
        l_lo = l_lo * alpha_lo + sum_lo;
        l_hi = l_hi * alpha_hi + sum_hi;
    };

    // O's rows to the new maxima, and P to f16 (after the PV that read the old P).
    auto rescale_and_pack = [&](float alpha_lo, float alpha_hi) {
#pragma unroll
        for (int q = 0; q < 16; q++) {
            fence_register(o[4 * q + 0]);
            fence_register(o[4 * q + 1]);
            fence_register(o[4 * q + 2]);
            fence_register(o[4 * q + 3]);
            o[4 * q + 0] *= alpha_lo;
            o[4 * q + 1] *= alpha_lo;
            o[4 * q + 2] *= alpha_hi;
            o[4 * q + 3] *= alpha_hi;
        }
#pragma unroll
        for (int i = 0; i < 32; i++) {
            pf[i] = pack_half2(s[2 * i], s[2 * i + 1]);
        }
    };

    float alpha_lo, alpha_hi;
    issue_qk(0);
    wgmma_wait<0>();
    release(&empty_k[0]);
    softmax(0, alpha_lo, alpha_hi);
    rescale_and_pack(alpha_lo, alpha_hi);
    for (int j = 1; j < tiles; j++) {
        issue_qk(j);
        issue_pv(j - 1);
        wgmma_wait<1>();  // S of tile j
        release(&empty_k[j % STAGES]);
        softmax(j, alpha_lo, alpha_hi);
        wgmma_wait<0>();  // PV of tile j - 1
        release(&empty_v[(j - 1) % STAGES]);
        rescale_and_pack(alpha_lo, alpha_hi);
    }
    issue_pv(tiles - 1);
    wgmma_wait<0>();
    release(&empty_v[(tiles - 1) % STAGES]);
#pragma unroll
    for (int i = 0; i < 64; i++) {
        fence_register(o[i]);
    }

#pragma unroll
    for (int x = 1; x <= 2; x *= 2) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, x);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, x);
    }
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
    const int64_t row = q0 + 64 * wg + 16 * wi + g;
    float * out = p.dst + batch * p.d_s3 + head * p.d_s1;
    if (row < p.Lq) {
        float * r = out + row * p.d_s2 + 2 * t;
#pragma unroll
        for (int q = 0; q < 16; q++) {
            *(float2 *) (r + 8 * q) = make_float2(o[4 * q] * inv_lo, o[4 * q + 1] * inv_lo);
        }
    }
    if (row + 8 < p.Lq) {
        float * r = out + (row + 8) * p.d_s2 + 2 * t;
#pragma unroll
        for (int q = 0; q < 16; q++) {
            *(float2 *) (r + 8 * q) = make_float2(o[4 * q + 2] * inv_hi, o[4 * q + 3] * inv_hi);
        }
    }
#else
    __trap();
#endif
}

// ---- host side ----------------------------------------------------------------------------------

using encode_tiled_fn = CUresult (*)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                     const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                     CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda).
encode_tiled_fn tensor_map_encoder() {
    static const encode_tiled_fn fn = [] {
        void * f = nullptr;
        cudaDriverEntryPointQueryResult found;
#if CUDART_VERSION >= 12050
        const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found);
#else
        const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &found);
#endif
        return err == cudaSuccess && found == cudaDriverEntryPointSuccess ? (encode_tiled_fn) f : nullptr;
    }();
    return fn;
}

bool aligned16(const void * ptr, size_t stride) {
    return (uintptr_t) ptr % 16 == 0 && stride % 16 == 0;
}

// The map of a K or V tensor [128, L, H, B] (f16): boxes of 64 dims x BN keys of one head. Its
// dims go in the order of their strides (as the driver's documentation asks): (dim, head, key)
// when the heads are the inner ones (ggml's permuted views of [128, H, L] tensors; heads_inner
// says so), else (dim, key, head). A stride that no coordinate uses (one head, one batch) is
// replaced by one in that order.
bool encode_kv_map(CUtensorMap * map, const void * data, int64_t L, int64_t H, int64_t B, size_t nb1, size_t nb2,
                   size_t nb3, bool & heads_inner) {
    const encode_tiled_fn encode = tensor_map_encoder();
    if (encode == nullptr) {
        return false;
    }
    heads_inner = H > 1 && nb2 < nb1;
    if (H == 1) {
        nb2 = nb1 * (size_t) L;
    }
    const size_t     outer      = heads_inner ? nb1 * (size_t) L : nb2 * (size_t) H;
    const cuuint64_t dims[4]    = {HEAD, (cuuint64_t) (heads_inner ? H : L), (cuuint64_t) (heads_inner ? L : H), (cuuint64_t) B};
    const cuuint64_t strides[3] = {heads_inner ? nb2 : nb1, heads_inner ? nb1 : nb2, B > 1 ? nb3 : outer};
    const cuuint32_t box[4]     = {64, heads_inner ? 1u : (cuuint32_t) BN, heads_inner ? (cuuint32_t) BN : 1u, 1};
    const cuuint32_t unit[4]    = {1, 1, 1, 1};
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void *>(data), dims, strides, box, unit,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace
}  // namespace bonsai_cuda

using namespace bonsai_cuda;

cudaError_t bonsai_cuda_flash_attn_sm90(const bonsai_flash_attn_args * a, cudaStream_t stream) {
    const int64_t int_max = 0x7fffffff;
    if (a->Lq <= 0 || a->Lk <= 0 || a->Hq <= 0 || a->Hk <= 0 || a->Hv <= 0 || a->B <= 0 || a->Hq % a->Hk != 0 ||
        a->Hq % a->Hv != 0 || a->Lq > int_max - BM || a->Lk > int_max - BN || a->Hq > 65535 || a->B > 65535 ||
        !(a->scale > 0.0f) || !std::isfinite(a->scale)) {
        return cudaErrorNotSupported;
    }
    if (!aligned16(a->q, a->q_nb1) || !aligned16(a->q, a->q_nb2) || !aligned16(a->dst, a->d_nb1) ||
        !aligned16(a->dst, a->d_nb2) || !aligned16(a->k, a->k_nb1) || !aligned16(a->k, a->k_nb2) ||
        !aligned16(a->v, a->v_nb1) || !aligned16(a->v, a->v_nb2) ||
        (a->B > 1 && (a->q_nb3 % 16 != 0 || a->d_nb3 % 16 != 0 || a->k_nb3 % 16 != 0 || a->v_nb3 % 16 != 0))) {
        return cudaErrorNotSupported;
    }
    params p;
    CUtensorMap k_map, v_map;
    if (!encode_kv_map(&k_map, a->k, a->Lk, a->Hk, a->B, a->k_nb1, a->k_nb2, a->k_nb3, p.k_heads_inner) ||
        !encode_kv_map(&v_map, a->v, a->Lk, a->Hv, a->B, a->v_nb1, a->v_nb2, a->v_nb3, p.v_heads_inner)) {
        return cudaErrorNotSupported;
    }
    p.q           = (const float *) a->q;
    p.q_s1        = (int64_t) (a->q_nb1 / sizeof(float));
    p.q_s2        = (int64_t) (a->q_nb2 / sizeof(float));
    p.q_s3        = (int64_t) (a->q_nb3 / sizeof(float));
    p.dst         = (float *) a->dst;
    p.d_s1        = (int64_t) (a->d_nb1 / sizeof(float));
    p.d_s2        = (int64_t) (a->d_nb2 / sizeof(float));
    p.d_s3        = (int64_t) (a->d_nb3 / sizeof(float));
    p.Lq          = (int) a->Lq;
    p.Lk          = (int) a->Lk;
    p.k_group     = (int) (a->Hq / a->Hk);
    p.v_group     = (int) (a->Hq / a->Hv);
    p.c           = a->scale * 1.4426950408889634f;

    const cudaError_t err = cudaFuncSetAttribute(flash_attn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES);
    if (err != cudaSuccess) {
        return err;
    }
    const dim3 grid((unsigned) ((a->Lq + BM - 1) / BM), (unsigned) a->Hq, (unsigned) a->B);
    flash_attn_kernel<<<grid, THREADS, SMEM_BYTES, stream>>>(k_map, v_map, p);
    return cudaGetLastError();
}
