// The implicit-GEMM convolution: see cuda-conv2d.h.
//
// A block computes BM output channels x 256 output pixels (a TH x TW tile of one image, TW = 32
// on wide images) with 8 warps, 2 along the channels and 4 along the pixels, each holding MI x 8
// mma tiles of 16 x 8. The reduction runs over the input channels 16 at a time; per 16 channels
// shared memory holds
//   A: every tap's BM x 16 weights, by cp.async from the weights regrouped as [tap][oc][ic] (one
//      small kernel per call; channels past IC are zero there);
//   B: the input tile the output tile reads, (TH - 1) s1 + (KH - 1) d1 + 1 rows by the same in
//      columns, 16 channels per pixel in f16 (32 bytes), converted from f32 on the way in and zero
//      outside the image;
// and each tap is one k16 step whose B operand is the tile read at the tap's offset: ldmatrix takes
// a lane's row address freely, so the eight pixels of an n8 tile are eight (strided) tile pixels
// and no patch matrix is ever formed. Two stages: the next channels' A are in flight (cp.async)
// and their B values in registers while the tensor cores work on the current ones. Input tiles too
// large for the registers (wide kernels, strides, dilations) are read after each stage's products
// into a single B buffer instead.
//
// Shared-memory rows (a weight row or a tile pixel) are 32 bytes: two 16-byte halves, swapped on
// rows whose bit 2 is set, so that ldmatrix's eight rows of 16 bytes - eight consecutive rows of
// one half - fall in distinct banks from any starting row (the taps start at every offset).

#include "cuda-conv2d.h"

#include <algorithm>

namespace {

constexpr int THREADS = 256;
constexpr int BN = 256;          // output pixels per block
constexpr int CK = 16;           // input channels per stage: one k16 step per tap
constexpr int ROW = CK * 2;      // bytes of one shared-memory row
constexpr int B_ITEMS = 3;       // tile halves per thread kept in registers between stages

struct Geometry {
    const float * x;
    int64_t       sx_h, sx_c, sx_n;  // in floats
    const half *  w;                 // regrouped: [tap][OC][ICp]
    const float * bias;
    const float * residual;
    float *       y;
    int           IW, IH, IC, ICp, OC, OW, OH;
    int           KW, KH, s0, s1, p0, p1, d0, d1;
    int           TW, tw_shift, TH;
    int           HW, HH;            // the input tile of one output tile
    int           tiles_w, oc_tiles;
    int           a_at[2], b_at[2];  // shared-memory offsets of the stages' A and B (one B without PREFETCH)
};

// The byte offset of half h (0, 1) of shared-memory row r.
__device__ __forceinline__ int swizzled(int r, int h) {
    return r * ROW + ((h ^ ((r >> 2) & 1)) << 4);
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async16(uint32_t dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// d += a (16x16 f16, row-major) * b (16x8 f16, column-major), f32 accumulation
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}
#endif

// KS: the kernel size when it is KS x KS (3 or 1: the taps unroll), 0 for any. PREFETCH: the
// input tile's 2 x HH x HW halves fit B_ITEMS per thread, loaded a stage ahead into registers;
// otherwise each stage's tile is read after its products (larger kernels, strides, dilations).
template <int MI, int KS, bool PREFETCH>
__global__ void __launch_bounds__(THREADS, 1) conv2d_implicit_gemm(const Geometry g) {
#if __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) uint8_t smem[];
    constexpr int BM = 32 * MI;
    const int KW = KS ? KS : g.KW;
    const int taps = KS ? KS * KS : g.KH * g.KW;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int wm = warp % 2;
    const int wn = warp / 2;
    const int oc_tile = blockIdx.x % g.oc_tiles;  // the channel tiles of one pixel tile run together (its input stays in L2)
    const int pix_tile = blockIdx.x / g.oc_tiles;
    const int ty = pix_tile / g.tiles_w;
    const int oc0 = oc_tile * BM;
    const int oy0 = ty * g.TH;
    const int ox0 = (pix_tile - ty * g.tiles_w) * g.TW;
    const int n = blockIdx.y;
    const int iy0 = oy0 * g.s1 - g.p1;
    const int ix0 = ox0 * g.s0 - g.p0;
    const float * xn = g.x + n * g.sx_n;
    const int halo = g.HH * g.HW;
    const int items = 2 * halo;  // item = h * halo + p: channels 8h..8h+7 of tile pixel p
    const int chunks = g.ICp / CK;
    const uint32_t smem0 = (uint32_t) __cvta_generic_to_shared(smem);

    auto load_a = [&](int chunk, int a_at) {
        const int c0 = chunk * CK;
#pragma unroll 3
        for (int q = tid; q < taps * BM * 2; q += THREADS) {
            const int h = q % 2;
            const int row = (q / 2) % BM;
            const int tap = q / (2 * BM);
            const int oc = oc0 + row;
            const half * src = g.w + ((int64_t) tap * g.OC + min(oc, g.OC - 1)) * g.ICp + c0 + 8 * h;
            cp_async16(smem0 + a_at + tap * BM * ROW + swizzled(row, h), src, oc < g.OC ? 16 : 0);
        }
    };

    // Where item's 8 channels start in x (channel c0 + 8h), or null outside the image.
    auto b_source = [&](int item, int c0) -> const float * {
        const int h = item >= halo;
        const int p = item - h * halo;
        const int hy = p / g.HW;
        const int iy = iy0 + hy;
        const int ix = ix0 + p - hy * g.HW;
        if (iy < 0 || iy >= g.IH || ix < 0 || ix >= g.IW) {
            return nullptr;
        }
        return xn + (int64_t) iy * g.sx_h + ix + (int64_t) (c0 + 8 * h) * g.sx_c;
    };
    auto load_8 = [&](const float * src, int ch, float (&v)[8]) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            v[j] = (src != nullptr && ch + j < g.IC) ? __ldg(src + j * g.sx_c) : 0.0f;
        }
    };
    auto store_8 = [&](int item, int b_at, const float (&v)[8]) {
        const int h = item >= halo;
        const int p = item - h * halo;
        const uint4 u = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]), pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
        *reinterpret_cast<uint4 *>(smem + b_at + swizzled(p, h)) = u;
    };

    float pre[B_ITEMS][8];
    auto prefetch_b = [&](int chunk) {
#pragma unroll
        for (int i = 0; i < B_ITEMS; i++) {
            const int item = tid + i * THREADS;
            const int c0 = chunk * CK;
            load_8(item < items ? b_source(item, c0) : nullptr, c0 + 8 * (item >= halo), pre[i]);
        }
    };
    auto store_prefetched_b = [&](int b_at) {
#pragma unroll
        for (int i = 0; i < B_ITEMS; i++) {
            const int item = tid + i * THREADS;
            if (item < items) {
                store_8(item, b_at, pre[i]);
            }
        }
    };
    auto fill_b = [&](int chunk, int b_at) {
        const int c0 = chunk * CK;
        for (int item = tid; item < items; item += THREADS) {
            float v[8];
            load_8(b_source(item, c0), c0 + 8 * (item >= halo), v);
            store_8(item, b_at, v);
        }
    };

    // ldmatrix rows of this lane. A: row lane % 16 of each 16-row tile, half lane / 16 (bit 2 of
    // the row is the same in every tile). B, four x4 loads of two n8 tiles each: pixel lane % 8 of
    // tile 2 jp + lane / 16, half (lane / 8) % 2; the tap adds its offset in the input tile.
    const int a_lane = swizzled(wm * MI * 16 + lane % 16, lane / 16);
    const int b_half = (lane / 8) % 2;
    int b_pixel[4];
#pragma unroll
    for (int jp = 0; jp < 4; jp++) {
        const int pix = (wn * 8 + 2 * jp + lane / 16) * 8 + lane % 8;
        b_pixel[jp] = (pix >> g.tw_shift) * g.s1 * g.HW + (pix & (g.TW - 1)) * g.s0;
    }

    float acc[MI][8][4];
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int nj = 0; nj < 8; nj++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                acc[mi][nj][e] = 0.0f;
            }
        }
    }

    auto tap_step = [&](int tap, int ky, int kx, uint32_t a_addr, uint32_t b_addr) {
        const int offset = ky * g.d1 * g.HW + kx * g.d0;
        uint32_t b[8][2];
#pragma unroll
        for (int jp = 0; jp < 4; jp++) {
            ldmatrix_x4(b_addr + swizzled(b_pixel[jp] + offset, b_half), b[2 * jp][0], b[2 * jp][1], b[2 * jp + 1][0], b[2 * jp + 1][1]);
        }
#pragma unroll
        for (int mi = 0; mi < MI; mi++) {
            uint32_t a[4];
            ldmatrix_x4(a_addr + tap * BM * ROW + a_lane + mi * 16 * ROW, a[0], a[1], a[2], a[3]);
#pragma unroll
            for (int nj = 0; nj < 8; nj++) {
                mma_f16(acc[mi][nj], a, b[nj][0], b[nj][1]);
            }
        }
    };
    auto products = [&](int stage) {
        const uint32_t a_addr = smem0 + (stage ? g.a_at[1] : g.a_at[0]);
        const uint32_t b_addr = smem0 + (stage ? g.b_at[1] : g.b_at[0]);
        if constexpr (KS > 0) {
#pragma unroll 1
            for (int ky = 0; ky < KS; ky++) {
#pragma unroll
                for (int kx = 0; kx < KS; kx++) {
                    tap_step(ky * KS + kx, ky, kx, a_addr, b_addr);
                }
            }
        } else {
            int ky = 0;
            int kx = 0;
#pragma unroll 1
            for (int tap = 0; tap < taps; tap++) {
                tap_step(tap, ky, kx, a_addr, b_addr);
                if (++kx == KW) {
                    kx = 0;
                    ++ky;
                }
            }
        }
    };

    load_a(0, g.a_at[0]);
    cp_async_commit();
    fill_b(0, g.b_at[0]);
    cp_async_wait_all();
    __syncthreads();
    for (int chunk = 0; chunk < chunks; chunk++) {
        const int stage = chunk % 2;
        const bool more = chunk + 1 < chunks;
        if (more) {
            load_a(chunk + 1, stage ? g.a_at[0] : g.a_at[1]);
            cp_async_commit();
            if constexpr (PREFETCH) {
                prefetch_b(chunk + 1);
            }
        }
        products(stage);
        if (more) {
            if constexpr (PREFETCH) {
                store_prefetched_b(stage ? g.b_at[0] : g.b_at[1]);
            } else {
                __syncthreads();  // one B buffer: every warp is done with this stage's
                fill_b(chunk + 1, g.b_at[0]);
            }
        }
        cp_async_wait_all();
        __syncthreads();
    }

    // acc[mi][nj]: rows (channels) lane / 4 and + 8, columns (pixels) 2 (lane % 4) and + 1; two
    // neighbouring pixels of one tile row, written as a pair where aligned. A channel row's residual
    // values are all read before any of its outputs is written (the residual may be y itself).
    const float * bias = g.bias;
    const float * residual = g.residual;
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int oc = oc0 + wm * MI * 16 + mi * 16 + lane / 4 + 8 * hh;
            if (oc >= g.OC) {
                continue;
            }
            const float b = bias != nullptr ? bias[oc] : 0.0f;
            const int64_t plane = ((int64_t) n * g.OC + oc) * g.OH * g.OW;
            int64_t idx[8];
            int count[8];  // outputs of the pair inside the image: 0, 1 or 2
#pragma unroll
            for (int nj = 0; nj < 8; nj++) {
                const int pix = (wn * 8 + nj) * 8 + 2 * (lane % 4);
                const int oy = oy0 + (pix >> g.tw_shift);
                const int ox = ox0 + (pix & (g.TW - 1));
                idx[nj] = plane + (int64_t) oy * g.OW + ox;
                count[nj] = oy >= g.OH || ox >= g.OW ? 0 : ox + 1 < g.OW ? 2 : 1;
            }
            float r[8][2] = {};
            if (residual != nullptr) {
#pragma unroll
                for (int nj = 0; nj < 8; nj++) {
                    if (count[nj] == 2 && idx[nj] % 2 == 0) {
                        const float2 v = *reinterpret_cast<const float2 *>(residual + idx[nj]);
                        r[nj][0] = v.x;
                        r[nj][1] = v.y;
                    } else if (count[nj] > 0) {
                        r[nj][0] = residual[idx[nj]];
                        r[nj][1] = count[nj] == 2 ? residual[idx[nj] + 1] : 0.0f;
                    }
                }
            }
#pragma unroll
            for (int nj = 0; nj < 8; nj++) {
                float v0 = acc[mi][nj][2 * hh];
                float v1 = acc[mi][nj][2 * hh + 1];
                if (bias != nullptr) {  // as ggml's ADDs round it: (conv + bias) + residual
                    v0 += b;
                    v1 += b;
                }
                if (residual != nullptr) {
                    v0 += r[nj][0];
                    v1 += r[nj][1];
                }
                if (count[nj] == 2 && idx[nj] % 2 == 0) {
                    *reinterpret_cast<float2 *>(g.y + idx[nj]) = make_float2(v0, v1);
                } else if (count[nj] > 0) {
                    g.y[idx[nj]] = v0;
                    if (count[nj] == 2) {
                        g.y[idx[nj] + 1] = v1;
                    }
                }
            }
        }
    }
#else
    (void) g;
#endif
}

// wr[tap][oc][ic] = w[oc][ic][tap] (ggml's [KW, KH, IC, OC]), zero for ic in [IC, ICp).
__global__ void regroup_weights(const half * __restrict__ w, half * __restrict__ wr, int IC, int ICp, int OC, int taps) {
    const int64_t total = (int64_t) taps * OC * ICp;
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < total; i += (int64_t) gridDim.x * blockDim.x) {
        const int ic = (int) (i % ICp);
        const int64_t rest = i / ICp;
        const int oc = (int) (rest % OC);
        const int tap = (int) (rest / OC);
        wr[i] = ic < IC ? w[((int64_t) oc * IC + ic) * taps + tap] : __float2half_rn(0.0f);
    }
}

struct Plan {
    Geometry g;
    int      MI;
    int      KS;
    bool     prefetch;
    int      smem;
    int64_t  blocks;  // pixel tiles x channel tiles of one image
    int      images;
    size_t   workspace;
};

int64_t output_size(int in, int k, int s, int p, int d) {
    return ((int64_t) in + 2 * (int64_t) p - (int64_t) d * (k - 1) - 1) / s + 1;
}

bool make_plan(const bonsai_conv2d_args * a, int device, Plan & plan) {
    if (a->IW <= 0 || a->IH <= 0 || a->IC <= 0 || a->N <= 0 || a->KW <= 0 || a->KH <= 0 || a->OC <= 0 || a->s0 <= 0 ||
        a->s1 <= 0 || a->d0 <= 0 || a->d1 <= 0 || a->p0 < 0 || a->p1 < 0 || a->N > 65535 ||
        a->OW != output_size(a->IW, a->KW, a->s0, a->p0, a->d0) || a->OH != output_size(a->IH, a->KH, a->s1, a->p1, a->d1) ||
        a->OW <= 0 || a->OH <= 0 || a->x_nb1 % sizeof(float) != 0 || a->x_nb2 % sizeof(float) != 0 ||
        a->x_nb3 % sizeof(float) != 0 || a->IC > (1 << 24) || a->OC > (1 << 24)) {
        return false;
    }
    int major = 0;
    int smem_max = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess || major < 8) {
        return false;
    }
    Geometry & g = plan.g;
    g = {};
    g.IW = a->IW, g.IH = a->IH, g.IC = a->IC, g.OC = a->OC, g.OW = a->OW, g.OH = a->OH;
    g.KW = a->KW, g.KH = a->KH, g.s0 = a->s0, g.s1 = a->s1, g.p0 = a->p0, g.p1 = a->p1, g.d0 = a->d0, g.d1 = a->d1;
    g.ICp = (a->IC + CK - 1) / CK * CK;
    g.sx_h = (int64_t) (a->x_nb1 / sizeof(float));
    g.sx_c = (int64_t) (a->x_nb2 / sizeof(float));
    g.sx_n = (int64_t) (a->x_nb3 / sizeof(float));
    // Tiles of 256 pixels as wide as the image wants (8, 16 or 32 columns; an n8 tile stays in one row).
    g.tw_shift = a->OW > 16 ? 5 : a->OW > 8 ? 4 : 3;
    g.TW = 1 << g.tw_shift;
    g.TH = BN / g.TW;
    const int64_t HH = (int64_t) (g.TH - 1) * g.s1 + (int64_t) (g.KH - 1) * g.d1 + 1;
    const int64_t HW = (int64_t) (g.TW - 1) * g.s0 + (int64_t) (g.KW - 1) * g.d0 + 1;
    plan.MI = a->OC > 64 ? 4 : a->OC > 32 ? 2 : 1;
    const int64_t taps = (int64_t) g.KW * g.KH;
    const int64_t a_bytes = taps * 32 * plan.MI * ROW;
    const int64_t b_bytes = HH * HW * ROW;
    plan.prefetch = 2 * HH * HW <= (int64_t) B_ITEMS * THREADS;
    // Two stages of A; of B two with PREFETCH (the next one is stored while others may still read
    // the current one), else one, refilled between two barriers.
    const int64_t smem = 2 * a_bytes + (plan.prefetch ? 2 : 1) * b_bytes;
    if (smem > smem_max) {
        return false;
    }
    g.HH = (int) HH, g.HW = (int) HW;
    if (plan.prefetch) {
        g.a_at[0] = 0, g.b_at[0] = (int) a_bytes, g.a_at[1] = (int) (a_bytes + b_bytes), g.b_at[1] = (int) (2 * a_bytes + b_bytes);
    } else {
        g.a_at[0] = 0, g.a_at[1] = (int) a_bytes, g.b_at[0] = g.b_at[1] = (int) (2 * a_bytes);
    }
    plan.smem = (int) smem;
    plan.KS = plan.prefetch && g.KW == g.KH && (g.KW == 3 || g.KW == 1) ? g.KW : 0;
    g.tiles_w = (a->OW + g.TW - 1) / g.TW;
    const int64_t tiles = (int64_t) g.tiles_w * ((a->OH + g.TH - 1) / g.TH);
    g.oc_tiles = (a->OC + 32 * plan.MI - 1) / (32 * plan.MI);
    plan.blocks = tiles * g.oc_tiles;
    plan.images = a->N;
    if (plan.blocks > INT32_MAX) {
        return false;
    }
    plan.workspace = ((size_t) taps * a->OC * g.ICp * sizeof(half) + 15) / 16 * 16;
    return true;
}

template <int MI, int KS, bool PREFETCH>
cudaError_t launch(const Plan & plan, cudaStream_t stream) {
    auto kernel = conv2d_implicit_gemm<MI, KS, PREFETCH>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem);
    if (err != cudaSuccess) {
        return err;
    }
    kernel<<<dim3((unsigned) plan.blocks, (unsigned) plan.images), THREADS, plan.smem, stream>>>(plan.g);
    return cudaGetLastError();
}

template <int MI>
cudaError_t launch_variant(const Plan & plan, cudaStream_t stream) {
    if (!plan.prefetch) {
        return launch<MI, 0, false>(plan, stream);
    }
    switch (plan.KS) {
        case 3: return launch<MI, 3, true>(plan, stream);
        case 1: return launch<MI, 1, true>(plan, stream);
        default: return launch<MI, 0, true>(plan, stream);
    }
}

}  // namespace

size_t bonsai_cuda_conv2d_workspace(const bonsai_conv2d_args * a, int device) {
    Plan plan;
    return make_plan(a, device, plan) ? plan.workspace : 0;
}

cudaError_t bonsai_cuda_conv2d(const bonsai_conv2d_args * a, void * workspace, int device, cudaStream_t stream) {
    Plan plan;
    if (!make_plan(a, device, plan)) {
        return cudaErrorNotSupported;
    }
    Geometry & g = plan.g;
    g.x = a->x;
    g.w = static_cast<const half *>(workspace);
    g.bias = a->bias;
    g.residual = a->residual;
    g.y = a->y;
    const int taps = a->KW * a->KH;
    const int64_t total = (int64_t) taps * a->OC * g.ICp;
    const int blocks = (int) std::min<int64_t>((total + 255) / 256, 4096);
    regroup_weights<<<blocks, 256, 0, stream>>>(a->w, static_cast<half *>(workspace), a->IC, g.ICp, a->OC, taps);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        return err;
    }
    switch (plan.MI) {
        case 4: return launch_variant<4>(plan, stream);
        case 2: return launch_variant<2>(plan, stream);
        default: return launch_variant<1>(plan, stream);
    }
}
