// The implicit-GEMM convolution on Hopper's warpgroup MMA (wgmma), for compute capability 9.0:
// see cuda-conv2d.h. bonsai_cuda_conv2d (cuda-conv2d-mma.cu) sends it the convolutions it takes:
// row stride 1 (any column stride and dilation), more than 64 output channels, a kernel whose
// stages fit shared memory three deep (3x3 and 1x1 do).
//
// A block computes 128 output channels x 256 output pixels (a TH x TW tile), each of its two
// warpgroups 64 channels x all 256 pixels with one m64n256k16 per tap and 16 input channels: A
// (weights) and B (input pixels) both K-major in shared memory without swizzling, in 8 x 16-byte
// core matrices. B must be the 256 pixels of the tile at the tap's offset, as one strided run:
// the input tile's rows are TW + (KW - 1) d0 wide, so per kernel column kx the tile is stored
// again as TW-wide rows of the columns that tap reads (KW copies). Then tap (ky, kx) reads copy
// kx from row ky d1 on, 256 consecutive pixels. The copies are written from registers as the f32
// input is converted (each input value loaded once), so the input never goes through a patch
// matrix in global memory.
//
// Three stages of (A, B) per 16 (1x1: 64) input channels: while one stage's wgmmas run, the
// block brings A of the stage after next by cp.async and converts its input into B; a stage is
// refilled only after both warpgroups' wgmmas on it completed (wgmma.wait_group 1, a barrier).

#include "cuda-conv2d.h"

#include <algorithm>

namespace {

constexpr int THREADS = 256;  // two warpgroups
constexpr int BM = 128;       // output channels per block, 64 per warpgroup
constexpr int BN = 256;       // output pixels per block
constexpr int STAGES = 3;
constexpr int BATCH = 4;      // input-tile items a thread loads before converting them

struct Geometry {
    const float * x;
    int64_t       sx_h, sx_c, sx_n;  // in floats
    const half *  w;                 // regrouped: [tap][OC][ICp]
    const float * bias;
    const float * residual;
    float *       y;
    int           IW, IH, IC, ICp, OC, OW, OH;
    int           KW, KH, s0, p0, p1, d0, d1;
    int           TW, tw_shift, TH;
    int           HH, HWF, npix;  // input-tile rows and columns; pixels of one copy (HH x TW)
    int           cps;            // 16-channel chunks per stage
    int           tiles_w, oc_tiles;
    int           a_bytes, b_bytes;  // of one stage
};

bool make_geometry(const bonsai_conv2d_args * a, int smem_max, Geometry & g, int & smem) {
    if (a->s1 != 1 || a->OC <= 64) {
        return false;
    }
    g = {};
    g.IW = a->IW, g.IH = a->IH, g.IC = a->IC, g.OC = a->OC, g.OW = a->OW, g.OH = a->OH;
    g.KW = a->KW, g.KH = a->KH, g.s0 = a->s0, g.p0 = a->p0, g.p1 = a->p1, g.d0 = a->d0, g.d1 = a->d1;
    const int64_t taps = (int64_t) a->KW * a->KH;
    g.cps = taps == 1 ? 4 : 1;  // a 1x1 stage of one k16 step would be all barriers
    g.ICp = (a->IC + 16 * g.cps - 1) / (16 * g.cps) * (16 * g.cps);
    g.tw_shift = a->OW > 16 ? 5 : a->OW > 8 ? 4 : 3;
    g.TW = 1 << g.tw_shift;
    g.TH = BN / g.TW;
    const int64_t HH = g.TH + (int64_t) (a->KH - 1) * a->d1;
    const int64_t HWF = (int64_t) (g.TW - 1) * a->s0 + (int64_t) (a->KW - 1) * a->d0 + 1;
    const int64_t a_bytes = g.cps * taps * 2 * BM * 16;
    const int64_t b_bytes = g.cps * a->KW * 2 * HH * g.TW * 16;
    const int64_t total = STAGES * (a_bytes + b_bytes);
    // Descriptors address 256 KB of shared memory and strides below 256 KB.
    if (total > smem_max || total >= (1 << 18)) {
        return false;
    }
    g.HH = (int) HH, g.HWF = (int) HWF, g.npix = (int) (HH * g.TW);
    g.a_bytes = (int) a_bytes, g.b_bytes = (int) b_bytes;
    g.sx_h = (int64_t) (a->x_nb1 / sizeof(float));
    g.sx_c = (int64_t) (a->x_nb2 / sizeof(float));
    g.sx_n = (int64_t) (a->x_nb3 / sizeof(float));
    g.tiles_w = (a->OW + g.TW - 1) / g.TW;
    g.oc_tiles = (a->OC + BM - 1) / BM;
    smem = (int) total;
    return true;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void cp_async16(uint32_t dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_1() {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

// A no-swizzle K-major operand: core matrices of 8 rows x 16 bytes, `k_bytes` apart along K and
// 128 bytes (the next 8 rows) apart along M or N.
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t addr, uint32_t k_bytes) {
    return (uint64_t) ((addr & 0x3ffff) >> 4) | ((uint64_t) ((k_bytes >> 4) & 0x3fff) << 16) | ((uint64_t) (128 >> 4) << 32);
}

#define BONSAI_CONV_ACC                                                                          \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                    \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "           \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "           \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "           \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "           \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "           \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define BONSAI_CONV_ACC8(d, i)                                                                                \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
        "+f"(d[i + 7])
#define BONSAI_CONV_ACC_OPERANDS(d)                                                                          \
    BONSAI_CONV_ACC8(d, 0), BONSAI_CONV_ACC8(d, 8), BONSAI_CONV_ACC8(d, 16), BONSAI_CONV_ACC8(d, 24),       \
        BONSAI_CONV_ACC8(d, 32), BONSAI_CONV_ACC8(d, 40), BONSAI_CONV_ACC8(d, 48), BONSAI_CONV_ACC8(d, 56),  \
        BONSAI_CONV_ACC8(d, 64), BONSAI_CONV_ACC8(d, 72), BONSAI_CONV_ACC8(d, 80), BONSAI_CONV_ACC8(d, 88),  \
        BONSAI_CONV_ACC8(d, 96), BONSAI_CONV_ACC8(d, 104), BONSAI_CONV_ACC8(d, 112), BONSAI_CONV_ACC8(d, 120)

// d[64 x 256] += a[64 x 16] * b[16 x 256], both f16 K-major in shared memory, f32 accumulation.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " BONSAI_CONV_ACC ", %128, %129, p, 1, 1, 0, 0;\n"
        "}\n"
        : BONSAI_CONV_ACC_OPERANDS(d)
        : "l"(desc_a), "l"(desc_b), "r"(1u));
}
#endif

__global__ void __launch_bounds__(THREADS, 1) conv2d_wgmma(const Geometry g) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) uint8_t smem[];
    const uint32_t smem0 = (uint32_t) __cvta_generic_to_shared(smem);
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int wg = warp / 4;
    const int taps = g.KH * g.KW;
    const int oc_tile = blockIdx.x % g.oc_tiles;  // the channel tiles of one pixel tile run together
    const int pix_tile = blockIdx.x / g.oc_tiles;
    const int ty = pix_tile / g.tiles_w;
    const int oc0 = oc_tile * BM;
    const int oy0 = ty * g.TH;
    const int ox0 = (pix_tile - ty * g.tiles_w) * g.TW;
    const int n = blockIdx.y;
    const int iy0 = oy0 - g.p1;
    const int ix0 = ox0 * g.s0 - g.p0;
    const float * xn = g.x + n * g.sx_n;
    const int stage_bytes = g.a_bytes + g.b_bytes;
    const int stages = g.ICp / (16 * g.cps);
    const int tile_px = g.HH * g.HWF;

    // Stage `st` (channels 16 cps st on) into buffer `buf`.
    //   A at [cc][tap][k half][row 0..127]: 16 bytes = 8 channels of one output channel's weights;
    //   B at [cc][kx][k half][pixel 0..npix): 8 channels of input pixel (hy, c) as tap column kx reads it.
    auto fill = [&](int st, int buf) {
        const int at = buf * stage_bytes;
        const int c0 = st * 16 * g.cps;
        for (int q = tid; q < g.cps * taps * 2 * BM; q += THREADS) {
            const int row = q % BM;
            const int kc = (q / BM) % 2;
            const int ct = q / (2 * BM);  // cc * taps + tap
            const int cc = ct / taps;
            const int oc = oc0 + row;
            const half * src = g.w + ((int64_t) (ct - cc * taps) * g.OC + min(oc, g.OC - 1)) * g.ICp + c0 + cc * 16 + kc * 8;
            cp_async16(smem0 + at + q * 16, src, oc < g.OC ? 16 : 0);
        }
        const int items = 2 * g.cps * tile_px;  // item: 8-channel group, then input-tile pixel
        for (int first = tid; first < items; first += BATCH * THREADS) {
            float v[BATCH][8];
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const int item = first + i * THREADS;
                const int grp = item / tile_px;
                const int p = item - grp * tile_px;
                const int hy = p / g.HWF;
                const int iy = iy0 + hy;
                const int ix = ix0 + p - hy * g.HWF;
                const int ch = c0 + 8 * grp;
                const bool inside = item < items && iy >= 0 && iy < g.IH && ix >= 0 && ix < g.IW;
                const float * src = xn + (int64_t) iy * g.sx_h + ix + (int64_t) ch * g.sx_c;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    v[i][j] = inside && ch + j < g.IC ? __ldg(src + j * g.sx_c) : 0.0f;
                }
            }
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const int item = first + i * THREADS;
                if (item >= items) {
                    break;
                }
                const int grp = item / tile_px;
                const int p = item - grp * tile_px;
                const int hy = p / g.HWF;
                const int hx = p - hy * g.HWF;
                const uint4 u = make_uint4(pack_half2(v[i][0], v[i][1]), pack_half2(v[i][2], v[i][3]),
                                           pack_half2(v[i][4], v[i][5]), pack_half2(v[i][6], v[i][7]));
                const int copies = (grp / 2) * g.KW;
                for (int kx = 0; kx < g.KW; kx++) {
                    const int t = hx - kx * g.d0;  // the output column c with c s0 + kx d0 = hx
                    const int c = t / g.s0;
                    if (t >= 0 && c * g.s0 == t && c < g.TW) {
                        const int off = at + g.a_bytes + (((copies + kx) * 2 + grp % 2) * g.npix + hy * g.TW + c) * 16;
                        *reinterpret_cast<uint4 *>(smem + off) = u;
                    }
                }
            }
        }
    };

    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; i++) {
        acc[i] = 0.0f;
    }
    auto issue = [&](int buf) {
        const uint32_t a_base = smem0 + buf * stage_bytes + wg * 64 * 16;
        const uint32_t b_base = smem0 + buf * stage_bytes + g.a_bytes;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        for (int cc = 0; cc < g.cps; cc++) {
            for (int ky = 0; ky < g.KH; ky++) {
                for (int kx = 0; kx < g.KW; kx++) {
                    const int ct = cc * taps + ky * g.KW + kx;
                    const uint64_t da = kmajor_desc(a_base + ct * 2 * BM * 16, BM * 16);
                    const uint64_t db = kmajor_desc(b_base + ((cc * g.KW + kx) * 2 * g.npix + ky * g.d1 * g.TW) * 16, g.npix * 16);
                    wgmma_m64n256k16(acc, da, db);
                }
            }
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    };

    fill(0, 0);
    cp_async_commit();
    if (stages > 1) {
        fill(1, 1);
    }
    cp_async_commit();
    cp_async_wait_1();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // st.shared and cp.async, then wgmma reads
    __syncthreads();
    for (int st = 0; st < stages; st++) {
        issue(st % STAGES);
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");  // the previous stage's products are done ...
        __syncthreads();                                                    // ... in both warpgroups: its buffer is free
        if (st + 2 < stages) {
            fill(st + 2, (st + 2) % STAGES);
        }
        cp_async_commit();
        cp_async_wait_1();  // the next stage's A has landed
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int i = 0; i < 128; i++) {
        asm volatile("" : "+f"(acc[i])::"memory");  // no use of acc moves above the wait
    }

    // acc[4 i + 2 hh + e]: channel row 16 (warp % 4) + lane / 4 + 8 hh of the warpgroup's 64, pixel
    // 8 i + 2 (lane % 4) + e. A group of 8 n8 tiles reads its residual values before writing (the
    // residual may be y itself).
    const float * bias = g.bias;
    const float * residual = g.residual;
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int oc = oc0 + wg * 64 + (warp % 4) * 16 + lane / 4 + 8 * hh;
        if (oc >= g.OC) {
            continue;
        }
        const float b = bias != nullptr ? bias[oc] : 0.0f;
        const int64_t plane = ((int64_t) n * g.OC + oc) * g.OH * g.OW;
#pragma unroll
        for (int group = 0; group < 4; group++) {
            int64_t idx[8];
            int count[8];  // outputs of the pair inside the image: 0, 1 or 2
            float r[8][2] = {};
#pragma unroll
            for (int t = 0; t < 8; t++) {
                const int pix = (group * 8 + t) * 8 + 2 * (lane % 4);
                const int oy = oy0 + (pix >> g.tw_shift);
                const int ox = ox0 + (pix & (g.TW - 1));
                idx[t] = plane + (int64_t) oy * g.OW + ox;
                count[t] = oy >= g.OH || ox >= g.OW ? 0 : ox + 1 < g.OW ? 2 : 1;
                if (residual != nullptr && count[t] == 2 && idx[t] % 2 == 0) {
                    const float2 v = *reinterpret_cast<const float2 *>(residual + idx[t]);
                    r[t][0] = v.x;
                    r[t][1] = v.y;
                } else if (residual != nullptr && count[t] > 0) {
                    r[t][0] = residual[idx[t]];
                    r[t][1] = count[t] == 2 ? residual[idx[t] + 1] : 0.0f;
                }
            }
#pragma unroll
            for (int t = 0; t < 8; t++) {
                const int i = group * 8 + t;
                float v0 = acc[4 * i + 2 * hh];
                float v1 = acc[4 * i + 2 * hh + 1];
                if (bias != nullptr) {  // as ggml's ADDs round it: (conv + bias) + residual
                    v0 += b;
                    v1 += b;
                }
                if (residual != nullptr) {
                    v0 += r[t][0];
                    v1 += r[t][1];
                }
                if (count[t] == 2 && idx[t] % 2 == 0) {
                    *reinterpret_cast<float2 *>(g.y + idx[t]) = make_float2(v0, v1);
                } else if (count[t] > 0) {
                    g.y[idx[t]] = v0;
                    if (count[t] == 2) {
                        g.y[idx[t] + 1] = v1;
                    }
                }
            }
        }
    }
#else
    (void) g;
#endif
}

}  // namespace

int bonsai_cuda_conv2d_sm90_channels(const bonsai_conv2d_args * a, int smem_max) {
    Geometry g;
    int smem = 0;
    return make_geometry(a, smem_max, g, smem) ? g.ICp : 0;
}

cudaError_t bonsai_cuda_conv2d_sm90(const bonsai_conv2d_args * a, const half * w_regrouped, int smem_max, cudaStream_t stream) {
    Geometry g;
    int smem = 0;
    if (!make_geometry(a, smem_max, g, smem)) {
        return cudaErrorNotSupported;
    }
    g.x = a->x, g.w = w_regrouped, g.bias = a->bias, g.residual = a->residual, g.y = a->y;
    const int64_t blocks = (int64_t) g.tiles_w * ((a->OH + g.TH - 1) / g.TH) * g.oc_tiles;
    if (blocks > INT32_MAX) {
        return cudaErrorNotSupported;
    }
    cudaError_t err = cudaFuncSetAttribute(conv2d_wgmma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) {
        return err;
    }
    conv2d_wgmma<<<dim3((unsigned) blocks, (unsigned) a->N), THREADS, smem, stream>>>(g);
    return cudaGetLastError();
}
