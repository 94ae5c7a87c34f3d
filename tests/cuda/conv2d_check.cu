// Checks and times bonsai_cuda_conv2d (cpp/cuda/cuda-conv2d-mma.cu) on a compute capability 8.0+
// GPU. From the repository root:
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icpp/cuda -Xcompiler -fopenmp \
//       cpp/cuda/cuda-conv2d-mma.cu tests/cuda/conv2d_check.cu -o conv2d_check
//   ./conv2d_check [--no-perf]
//   python3 tests/cuda/conv2d_torch.py     # the same shapes through cuDNN and cuBLAS, for comparison
//
// Correctness (exit status 1 on any failure): outputs against a float64 convolution of the same
// f16-rounded inputs and f16 weights (the rounding ggml's IM2COL applies for an f16 kernel), with
// and without the bias and the residual sum, at every convolution shape of the FLUX.2 VAE decoder
// (each level, 1x1, 32 input channels, 3 output channels) and at odd ones: sizes that leave
// partial tiles, channel counts not a multiple of 16, strides, dilations, asymmetric padding, a
// 5x5 kernel, batches, rows and channels with gaps between them, the residual read from the
// output buffer itself. Small shapes are checked at every output; the decoder's full-size ones
// at every output of 7 rows x 10 channels and 4096 random outputs. Outputs start as NaN, so an
// output left unwritten fails. Declines: what the kernel cannot take must get workspace 0.
//
// Bound per output (see tolerance()): the products of two f16 values are exact in f32 and the
// tensor cores add them in f32, 16 at a time, into a sum over K = IC x taps terms: a few units of
// 2^-24 of the running sum's magnitude (at most sum |w x|) per k16 step, plus the f32 additions of
// the bias and the residual. Bound: (K/16 + 8) 2^-22 sum |w x| + 2^-23 (|bias| + |residual| +
// |result|). One lost or doubled term, |w x| ~ sum |w x| / K, is 2^26 / K^2 times the bound: 3x at
// the decoder's largest K (4608), more below; a wrong tap or channel loses whole runs of terms.
//
// Performance (unless --no-perf): the decoder's convolutions at 1024x1024 (latent 128x128), each
// timed alone (bias and, where the decoder has one, the residual fused), in TFLOPS (2 OC IC KH KW
// OH OW per call), and their sum weighted by how often the decode runs each shape.

#include "cuda-conv2d.h"
#include "check-main.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

static int g_failures = 0;

static uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Uniform in [lo, hi), a function of (seed, i) so that large tensors fill in parallel.
static float uniform(uint64_t seed, int64_t i, float lo, float hi) {
    return lo + (hi - lo) * (float) (mix(seed * 0x100000001b3ULL + (uint64_t) i) >> 40) / 16777216.0f;
}

static double f16_of(float x) {
    return (double) __half2float(__float2half_rn(x));
}

struct Case {
    const char * name;
    int          IW, IH, IC, OC, K;  // square K x K kernels unless KH is set
    int          pad = -1;           // -1: (K - 1) / 2 on both axes
    int          N = 1;
    bool         bias = true;
    bool         residual = false;
    bool         full_check = true;
    int          s0 = 1, s1 = 1, d0 = 1, d1 = 1, KH = 0, p1 = -1;
    bool         gaps = false;          // rows and channels with unused floats between them
    bool         residual_in_y = false;  // the residual sum read from y itself
    int          per_decode = 0;         // how often a 1024x1024 decode runs this shape (perf)
};

struct Conv {
    bonsai_conv2d_args a;
    int64_t            x_floats, y_floats;
    int64_t            sh, sc, sn;  // input strides in floats
};

static Conv describe(const Case & c) {
    Conv v = {};
    bonsai_conv2d_args & a = v.a;
    a.IW = c.IW, a.IH = c.IH, a.IC = c.IC, a.N = c.N, a.OC = c.OC;
    a.KW = c.K, a.KH = c.KH ? c.KH : c.K;
    a.s0 = c.s0, a.s1 = c.s1, a.d0 = c.d0, a.d1 = c.d1;
    a.p0 = c.pad >= 0 ? c.pad : (a.KW - 1) / 2;
    a.p1 = c.p1 >= 0 ? c.p1 : c.pad >= 0 ? c.pad : (a.KH - 1) / 2;
    a.OW = (a.IW + 2 * a.p0 - a.d0 * (a.KW - 1) - 1) / a.s0 + 1;
    a.OH = (a.IH + 2 * a.p1 - a.d1 * (a.KH - 1) - 1) / a.s1 + 1;
    v.sh = a.IW + (c.gaps ? 3 : 0);
    v.sc = v.sh * a.IH + (c.gaps ? 5 : 0);
    v.sn = v.sc * a.IC + (c.gaps ? 7 : 0);
    a.x_nb1 = v.sh * sizeof(float), a.x_nb2 = v.sc * sizeof(float), a.x_nb3 = v.sn * sizeof(float);
    v.x_floats = v.sn * a.N;
    v.y_floats = (int64_t) a.OW * a.OH * a.OC * a.N;
    return v;
}

static double tolerance(double abs_sum, int64_t K, double extra) {
    return ((double) K / 16 + 8) * std::ldexp(abs_sum, -22) + std::ldexp(extra, -23) + 1e-30;
}

// Runs one case: fills, computes on the GPU, checks. perf_reps > 0 also times it.
static double run_case(const Case & c, int perf_reps) {
    Conv v = describe(c);
    bonsai_conv2d_args a = v.a;
    const int64_t w_count = (int64_t) a.KW * a.KH * a.IC * a.OC;
    std::vector<float> x(v.x_floats), bias(a.OC), res(c.residual ? v.y_floats : 0);
    std::vector<half> w(w_count);
    const uint64_t seed = (uint64_t) a.IW * 131 + a.IC * 7 + a.OC * 3 + a.KW;
    // SiLU outputs and group-normed values span about (-0.3, 3); weights ~ 1/sqrt(fan-in).
    const float w_amp = 1.5f / std::sqrt((float) (a.IC * a.KW * a.KH));
#pragma omp parallel for
    for (int64_t i = 0; i < v.x_floats; i++) {
        x[i] = uniform(seed, i, -0.5f, 2.5f);
    }
#pragma omp parallel for
    for (int64_t i = 0; i < w_count; i++) {
        w[i] = __float2half_rn(uniform(seed + 1, i, -w_amp, w_amp));
    }
    for (int i = 0; i < a.OC; i++) {
        bias[i] = uniform(seed + 2, i, -0.5f, 0.5f);
    }
#pragma omp parallel for
    for (int64_t i = 0; i < (int64_t) res.size(); i++) {
        res[i] = uniform(seed + 3, i, -4.0f, 4.0f);
    }

    const size_t ws_bytes = bonsai_cuda_conv2d_workspace(&a, 0);
    if (ws_bytes == 0) {
        printf("FAIL %s: declined\n", c.name);
        g_failures++;
        return 0.0;
    }
    float *dx, *dy, *db, *dr = nullptr;
    half * dw;
    void * ws;
    CUDA_OK(cudaMalloc(&dx, v.x_floats * sizeof(float)));
    CUDA_OK(cudaMalloc(&dy, v.y_floats * sizeof(float)));
    CUDA_OK(cudaMalloc(&db, a.OC * sizeof(float)));
    CUDA_OK(cudaMalloc(&dw, w_count * sizeof(half)));
    CUDA_OK(cudaMalloc(&ws, ws_bytes));
    CUDA_OK(cudaMemcpy(dx, x.data(), v.x_floats * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dw, w.data(), w_count * sizeof(half), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(db, bias.data(), a.OC * sizeof(float), cudaMemcpyHostToDevice));
    if (c.residual) {
        if (c.residual_in_y) {
            dr = dy;
        } else {
            CUDA_OK(cudaMalloc(&dr, v.y_floats * sizeof(float)));
        }
        CUDA_OK(cudaMemcpy(dr, res.data(), v.y_floats * sizeof(float), cudaMemcpyHostToDevice));
    }
    if (!c.residual_in_y) {
        CUDA_OK(cudaMemset(dy, 0xff, v.y_floats * sizeof(float)));  // NaN
    }
    a.x = dx, a.w = dw, a.y = dy, a.bias = c.bias ? db : nullptr, a.residual = dr;
    CUDA_OK(bonsai_cuda_conv2d(&a, ws, 0, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> y(v.y_floats);
    CUDA_OK(cudaMemcpy(y.data(), dy, v.y_floats * sizeof(float), cudaMemcpyDeviceToHost));

    // The outputs to check: all, or the decoder-size sample.
    struct Out {
        int n, oc, oy, ox;
    };
    std::vector<Out> outs;
    if (c.full_check) {
        for (int n = 0; n < a.N; n++) {
            for (int oc = 0; oc < a.OC; oc++) {
                for (int oy = 0; oy < a.OH; oy++) {
                    for (int ox = 0; ox < a.OW; ox++) {
                        outs.push_back({n, oc, oy, ox});
                    }
                }
            }
        }
    } else {
        const int rows[] = {0, 1, 7, 8, a.OH / 2, a.OH - 2, a.OH - 1};
        const int chans[] = {0, 1, 31, 32, 63, 64, 127, 128, a.OC / 2, a.OC - 1};
        for (int oc : chans) {
            if (oc >= a.OC) {
                continue;
            }
            for (int oy : rows) {
                for (int ox = 0; ox < a.OW; ox++) {
                    outs.push_back({a.N - 1, oc, oy, ox});
                }
            }
        }
        for (int i = 0; i < 4096; i++) {
            const uint64_t r = mix(seed + 100 + i);
            outs.push_back({(int) (r % a.N), (int) ((r >> 8) % a.OC), (int) ((r >> 24) % a.OH), (int) ((r >> 40) % a.OW)});
        }
    }
    const int64_t K = (int64_t) a.IC * a.KW * a.KH;
    int64_t bad = 0;
    double worst_ratio = 0.0;
    int64_t first_bad = -1;
#pragma omp parallel for schedule(dynamic, 64) reduction(+ : bad) reduction(max : worst_ratio)
    for (int64_t i = 0; i < (int64_t) outs.size(); i++) {
        const Out o = outs[i];
        double sum = 0.0, abs_sum = 0.0;
        for (int ic = 0; ic < a.IC; ic++) {
            for (int ky = 0; ky < a.KH; ky++) {
                const int iy = o.oy * a.s1 + ky * a.d1 - a.p1;
                if (iy < 0 || iy >= a.IH) {
                    continue;
                }
                for (int kx = 0; kx < a.KW; kx++) {
                    const int ix = o.ox * a.s0 + kx * a.d0 - a.p0;
                    if (ix < 0 || ix >= a.IW) {
                        continue;
                    }
                    const double xv = f16_of(x[o.n * v.sn + ic * v.sc + (int64_t) iy * v.sh + ix]);
                    const double wv = __half2float(w[(((int64_t) o.oc * a.IC + ic) * a.KH + ky) * a.KW + kx]);
                    sum += xv * wv;
                    abs_sum += std::fabs(xv * wv);
                }
            }
        }
        const int64_t yi = (((int64_t) o.n * a.OC + o.oc) * a.OH + o.oy) * a.OW + o.ox;
        double extra = 0.0;
        if (c.bias) {
            sum += bias[o.oc];
            extra += std::fabs(bias[o.oc]);
        }
        if (c.residual) {
            sum += res[yi];
            extra += std::fabs(res[yi]);
        }
        const double tol = tolerance(abs_sum, K, extra + std::fabs(sum));
        const double err = std::fabs((double) y[yi] - sum);
        if (!(err <= tol)) {
            bad++;
#pragma omp critical
            if (first_bad < 0 || i < first_bad) {
                first_bad = i;
            }
        }
        worst_ratio = std::max(worst_ratio, std::isnan(err) ? INFINITY : err / tol);
    }
    printf("%s %-34s x [%d, %d, %d, %d] w [%d, %d, %d, %d] s %d,%d p %d,%d d %d,%d%s%s%s: %zu outputs, max err/bound %.3f",
           bad ? "FAIL" : "ok  ", c.name, a.IW, a.IH, a.IC, a.N, a.KW, a.KH, a.IC, a.OC, a.s0, a.s1, a.p0, a.p1, a.d0, a.d1,
           c.bias ? " +bias" : "", c.residual ? (c.residual_in_y ? " +residual (in y)" : " +residual") : "",
           c.gaps ? " gaps" : "", outs.size(), worst_ratio);
    if (bad) {
        const Out o = outs[first_bad];
        printf("; %lld out of bound, first n %d oc %d oy %d ox %d", (long long) bad, o.n, o.oc, o.oy, o.ox);
        g_failures++;
    }
    printf("\n");

    double ms = 0.0;
    if (perf_reps > 0 && !bad) {
        for (int i = 0; i < 3; i++) {
            CUDA_OK(bonsai_cuda_conv2d(&a, ws, 0, nullptr));
        }
        cudaEvent_t t0, t1;
        CUDA_OK(cudaEventCreate(&t0));
        CUDA_OK(cudaEventCreate(&t1));
        CUDA_OK(cudaEventRecord(t0));
        for (int i = 0; i < perf_reps; i++) {
            CUDA_OK(bonsai_cuda_conv2d(&a, ws, 0, nullptr));
        }
        CUDA_OK(cudaEventRecord(t1));
        CUDA_OK(cudaEventSynchronize(t1));
        float total = 0.0f;
        CUDA_OK(cudaEventElapsedTime(&total, t0, t1));
        ms = total / perf_reps;
        const double flop = 2.0 * a.OC * K * a.OH * a.OW * a.N;
        printf("perf %-34s %8.3f ms per call, %6.1f TFLOPS\n", c.name, ms, flop / (ms * 1e-3) / 1e12);
    }
    CUDA_OK(cudaFree(dx));
    CUDA_OK(cudaFree(dy));
    CUDA_OK(cudaFree(db));
    CUDA_OK(cudaFree(dw));
    CUDA_OK(cudaFree(ws));
    if (c.residual && !c.residual_in_y) {
        CUDA_OK(cudaFree(dr));
    }
    return ms;
}

static void check_declines() {
    struct {
        const char * what;
        Case         c;
    } cases[] = {
        {"a 41x41 kernel (its taps' weights exceed shared memory)", {"", 64, 64, 16, 16, 41}},
        {"a dilation whose input tile exceeds shared memory", {"", 512, 512, 16, 16, 3, -1, 1, true, false, true, 1, 1, 200, 200}},
    };
    for (const auto & d : cases) {
        Conv v = describe(d.c);
        const size_t ws = bonsai_cuda_conv2d_workspace(&v.a, 0);
        printf("%s declines %s: workspace %zu\n", ws == 0 ? "ok  " : "FAIL", d.what, ws);
        g_failures += ws != 0;
    }
    Conv v = describe({"", 64, 64, 16, 16, 3});
    v.a.OW += 1;
    const size_t ws = bonsai_cuda_conv2d_workspace(&v.a, 0);
    printf("%s declines an output width that does not follow from the input's: workspace %zu\n", ws == 0 ? "ok  " : "FAIL", ws);
    g_failures += ws != 0;
    const cudaError_t err = bonsai_cuda_conv2d(&v.a, nullptr, 0, nullptr);
    printf("%s bonsai_cuda_conv2d returns cudaErrorNotSupported for it: %s\n", err == cudaErrorNotSupported ? "ok  " : "FAIL",
           cudaGetErrorString(err));
    g_failures += err != cudaErrorNotSupported;
}

int main(int argc, char ** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    bool perf = true;
    if (!parse_check_args(argc, argv, &perf)) {
        return 2;
    }
    print_check_device();

    // Small and odd shapes, every output checked.
    std::vector<Case> small = {
        {"3x3, 16 channels", 40, 24, 16, 16, 3},
        {"3x3, partial tiles", 45, 19, 48, 70, 3},
        {"3x3, 3 output channels (conv_out)", 67, 33, 128, 3, 3},
        {"3x3, 32 input channels (conv_in)", 33, 35, 32, 96, 3},
        {"3x3, IC 5, no bias", 20, 20, 5, 72, 3, -1, 1, false},
        {"3x3, IC 21 (channel tail)", 31, 9, 21, 100, 3},
        {"3x3, IC 21, OC 33", 31, 9, 21, 33, 3},
        {"3x3, IC 200, OC 130 (13 channel chunks)", 70, 20, 200, 130, 3},
        {"3x3, width 8", 8, 40, 32, 80, 3},
        {"3x3, width 13", 13, 50, 32, 72, 3},
        {"3x3, width 13, OC 64", 13, 50, 32, 64, 3},
        {"3x3, 1x1 image", 1, 1, 64, 128, 3},
        {"3x3, residual", 64, 16, 64, 128, 3, -1, 1, true, true},
        {"3x3, residual in y", 50, 17, 64, 128, 3, -1, 1, true, true, true, 1, 1, 1, 1, 0, -1, false, true},
        {"3x3, gaps, batch 3", 37, 21, 40, 72, 3, -1, 3, true, true, true, 1, 1, 1, 1, 0, -1, true},
        {"1x1", 70, 30, 64, 96, 1},
        {"1x1, residual, gaps", 33, 33, 128, 80, 1, -1, 1, true, true, true, 1, 1, 1, 1, 0, -1, true},
        {"1x1, IC 600, OC 130", 45, 23, 600, 130, 1},
        {"5x5, pad 2", 30, 30, 32, 96, 5},
        {"3x3, stride 2, pad 1", 63, 47, 32, 64, 3, 1, 1, true, false, true, 2, 2},
        {"3x3, stride 2, pad 0 (encoder)", 64, 64, 64, 64, 3, 0, 1, true, false, true, 2, 2},
        {"3x3, strides 3 and 5, pads 5 and 2", 141, 133, 25, 12, 3, 5, 2, true, false, true, 3, 5, 1, 1, 0, 2},
        {"3x3, dilation 2 and 4", 60, 60, 16, 96, 3, 4, 1, true, false, true, 1, 1, 2, 4},
        {"3x3, column stride 2, dilation 3", 61, 30, 48, 96, 3, 3, 1, true, false, true, 2, 1, 3, 1},
        {"2x3 kernel, pads 0 and 1", 29, 31, 24, 80, 2, 0, 1, true, false, true, 1, 1, 1, 1, 3, 1},
        {"7x7, pad 3", 40, 40, 16, 16, 7, 3},
    };
    for (const auto & c : small) {
        run_case(c, 0);
    }
    check_declines();

    // The FLUX.2 VAE decoder at 1024x1024 (latent 128x128, channels 512, 512, 256, 128).
    std::vector<Case> vae = {
        {"post_quant_conv 1x1 32->32 @128", 128, 128, 32, 32, 1},
        {"conv_in 32->512 @128", 128, 128, 32, 512, 3},
        {"3x3 512->512 @128", 128, 128, 512, 512, 3},
        {"3x3 512->512 @128 +res", 128, 128, 512, 512, 3, -1, 1, true, true},
        {"attn 1x1 512->512 @128", 128, 128, 512, 512, 1},
        {"3x3 512->512 @256", 256, 256, 512, 512, 3},
        {"3x3 512->512 @256 +res", 256, 256, 512, 512, 3, -1, 1, true, true},
        {"3x3 512->512 @512 (upsample)", 512, 512, 512, 512, 3},
        {"3x3 512->256 @512", 512, 512, 512, 256, 3},
        {"1x1 512->256 @512 (shortcut) +res", 512, 512, 512, 256, 1, -1, 1, true, true},
        {"3x3 256->256 @512", 512, 512, 256, 256, 3},
        {"3x3 256->256 @512 +res", 512, 512, 256, 256, 3, -1, 1, true, true},
        {"3x3 256->256 @1024 (upsample)", 1024, 1024, 256, 256, 3},
        {"3x3 256->128 @1024", 1024, 1024, 256, 128, 3},
        {"1x1 256->128 @1024 (shortcut) +res", 1024, 1024, 256, 128, 1, -1, 1, true, true},
        {"3x3 128->128 @1024", 1024, 1024, 128, 128, 3},
        {"3x3 128->128 @1024 +res", 1024, 1024, 128, 128, 3, -1, 1, true, true},
        {"conv_out 128->3 @1024", 1024, 1024, 128, 3, 3},
    };
    // How many of each a decode runs: mid 2 resnets (4 convs, 2 with the residual) and attention
    // (q, k, v, proj_out +res); up.3 3 resnets at 128; upsample; up.2 3 resnets at 256; upsample;
    // up.1: 512->256 resnet with the 1x1 shortcut, 2 more; upsample; up.0 likewise at 1024.
    const int per_decode[] = {1, 1, 5, 5, 4, 4, 3, 1, 1, 1, 3, 2, 1, 1, 1, 3, 2, 1};
    for (size_t i = 0; i < vae.size(); i++) {
        vae[i].full_check = false;
        vae[i].per_decode = per_decode[i];
    }
    double total_ms = 0.0, total_flop = 0.0;
    for (const auto & c : vae) {
        const double ms = run_case(c, perf ? 10 : 0);
        const Conv v = describe(c);
        total_ms += ms * c.per_decode;
        total_flop += 2.0 * v.a.OC * v.a.IC * v.a.KW * v.a.KH * (double) v.a.OH * v.a.OW * c.per_decode;
    }
    if (perf) {
        printf("perf decoder convolutions, one 1024x1024 decode (weighted by count): %.2f ms, %.2f TFLOP, %.1f TFLOPS\n",
               total_ms, total_flop * 1e-12, total_flop / (total_ms * 1e-3) / 1e12);
    }
    printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "passed", g_failures);
    return g_failures ? 1 : 0;
}
