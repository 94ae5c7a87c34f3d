// Checks and times bonsai_cuda_flash_attn_sm90 (cpp/cuda/cuda-flash-attn-sm90.cu) on a compute
// capability 9.0 GPU. From the repository root:
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icpp/cuda -c cpp/cuda/cuda-flash-attn-sm90.cu -o fa.o
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icpp/cuda -Xcompiler -fopenmp -c tests/cuda/flash_attn_check.cu -o check.o
//   nvcc -arch=sm_90 fa.o check.o -Xcompiler -fopenmp -o flash_attn_check
//   ./flash_attn_check [--no-perf]
//
// Correctness (exit status 1 on any failure): every output against a float64 softmax(scale q.k) v
// of the same inputs, for odd and small shapes (query and key tails, one key, one query), grouped
// K and V heads, batches, and three layouts: sd.cpp's (q, k and v permuted views of [128, heads,
// tokens] tensors), plain contiguous [128, tokens, heads], and rows with padding between them.
// The bound each output is held to is computed per query row from the data (see row_tolerance).
// Declines: misaligned strides and sizes the kernel does not take must return cudaErrorNotSupported.
// Performance (unless --no-perf): FLUX.2 [klein]'s 1024x1024 attention, 24 heads x 4608 tokens,
// in sd.cpp's layout, in TFLOPS (4 L^2 128 heads per call).

#include "cuda-flash-attn.h"
#include "check-main.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

static int g_failures = 0;

static constexpr int D = 128;

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint32_t next() {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return (uint32_t) (s >> 33);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float) next() / 2147483648.0f; }
};

static float round_f16(float x) {
    return __half2float(__float2half_rn(x));
}

enum Layout { SDCPP, CONTIGUOUS, PADDED };
static const char * layout_name(Layout l) {
    return l == SDCPP ? "sd.cpp" : l == CONTIGUOUS ? "contiguous" : "padded";
}

// A tensor [128, L, H, B] of `elem`-byte values in one of the layouts; strides in bytes.
struct Shape {
    int64_t L, H, B;
    size_t  nb1, nb2, nb3, bytes;
    Shape(int64_t L, int64_t H, int64_t B, size_t elem, Layout layout) : L(L), H(H), B(B) {
        const size_t row = D * elem + (layout == PADDED ? 48 : 0);
        if (layout == SDCPP) {  // memory [128, H, L, B]
            nb2 = row;
            nb1 = H * row;
            nb3 = L * nb1;
        } else {                // memory [128, L, H, B]
            nb1 = row;
            nb2 = L * row;
            nb3 = H * nb2;
        }
        bytes = B * nb3;
    }
    size_t at(int64_t i, int64_t h, int64_t b) const { return i * nb1 + h * nb2 + b * nb3; }  // bytes
};

struct Case {
    int64_t Lq, Lk, Hq, Hk, Hv, B;
    Layout  layout;
    float   q_amp;    // q uniform in (-q_amp, q_amp): the spread of the logits
    bool    q_exact;  // q values that f16 holds exactly (isolates the rounding of P)
};

// Bound on |kernel - exact| for every output of one query row, from the kernel's roundings:
//   - q to f16 and the f32 dot products shift each logit by at most
//       delta = scale max_j sum_d (|q_d - f16(q_d)| + 2^-17 |f16(q_d)|) |k_jd|   (128-term f32 sums)
//     plus the exp2 argument's rounding; weights w_j e^{eps_j}, |eps_j| <= delta, move a convex
//     combination of the v_j by at most (e^{2 delta} - 1) max|v|;
//   - P to f16 in the numerator only: relative 2^-11 per weight (at most 2^-11 max|v| after
//     normalizing), and absolute 2^-25 per weight below f16's normal range (Lk 2^-25 max|v| / l,
//     l >= e^-delta since the largest weight is 1);
//   - the f32 sums of Lk products and of the row sum: Lk 2^-23 max|v|.
static double row_tolerance(double delta, int64_t Lk, double vmax) {
    return vmax * (std::expm1(2.0 * delta) + std::ldexp(1.0, -11) + (double) Lk * (std::ldexp(std::exp(delta), -25) + std::ldexp(1.0, -23))) +
           1e-7;
}

static void run_case(const Case & c, Rng & rng) {
    const Shape qs(c.Lq, c.Hq, c.B, sizeof(float), c.layout);
    const Shape ks(c.Lk, c.Hk, c.B, sizeof(half), c.layout);
    const Shape vs(c.Lk, c.Hv, c.B, sizeof(half), c.layout);
    const float scale = 1.0f / std::sqrt((float) D);

    std::vector<uint8_t> q(qs.bytes, 0), k(ks.bytes, 0), v(vs.bytes, 0);
    for (int64_t b = 0; b < c.B; b++) {
        for (int64_t h = 0; h < c.Hq; h++) {
            for (int64_t i = 0; i < c.Lq; i++) {
                float * row = (float *) (q.data() + qs.at(i, h, b));
                for (int d = 0; d < D; d++) {
                    const float x = rng.uniform(-c.q_amp, c.q_amp);
                    row[d] = c.q_exact ? round_f16(x) : x;
                }
            }
        }
        for (int which = 0; which < 2; which++) {
            const Shape & s = which ? vs : ks;
            std::vector<uint8_t> & t = which ? v : k;
            for (int64_t h = 0; h < s.H; h++) {
                for (int64_t j = 0; j < c.Lk; j++) {
                    half * row = (half *) (t.data() + s.at(j, h, b));
                    for (int d = 0; d < D; d++) {
                        row[d] = __float2half_rn(rng.uniform(-1.0f, 1.0f));
                    }
                }
            }
        }
    }

    // dst [128, Hq, Lq, B], contiguous; filled with NaN so that a row left unwritten fails
    const size_t d_nb1 = D * sizeof(float), d_nb2 = c.Hq * d_nb1, d_nb3 = c.Lq * d_nb2;
    const size_t d_bytes = c.B * d_nb3;
    void *dq, *dk, *dv, *dd;
    CUDA_OK(cudaMalloc(&dq, qs.bytes));
    CUDA_OK(cudaMalloc(&dk, ks.bytes));
    CUDA_OK(cudaMalloc(&dv, vs.bytes));
    CUDA_OK(cudaMalloc(&dd, d_bytes));
    CUDA_OK(cudaMemcpy(dq, q.data(), qs.bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dk, k.data(), ks.bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dv, v.data(), vs.bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dd, 0xff, d_bytes));

    bonsai_flash_attn_args a = {dq, qs.nb1, qs.nb2, qs.nb3, dk, ks.nb1, ks.nb2, ks.nb3, dv, vs.nb1, vs.nb2, vs.nb3,
                                dd, d_nb1, d_nb2, d_nb3, c.Lq, c.Lk, c.Hq, c.Hk, c.Hv, c.B, scale};
    const cudaError_t err = bonsai_cuda_flash_attn_sm90(&a, nullptr);
    if (err != cudaSuccess) {
        printf("FAIL Lq=%lld Lk=%lld: %s\n", (long long) c.Lq, (long long) c.Lk, cudaGetErrorString(err));
        g_failures++;
        return;
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> out(d_bytes / sizeof(float));
    CUDA_OK(cudaMemcpy(out.data(), dd, d_bytes, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaFree(dq));
    CUDA_OK(cudaFree(dk));
    CUDA_OK(cudaFree(dv));
    CUDA_OK(cudaFree(dd));

    const int64_t rows = c.B * c.Hq * c.Lq;
    std::vector<double> worst_err(rows, 0.0), worst_ratio(rows, 0.0);
    std::vector<int64_t> bad(rows, 0);
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = r % c.Lq, h = (r / c.Lq) % c.Hq, b = r / (c.Lq * c.Hq);
        const int64_t kh = h / (c.Hq / c.Hk), vh = h / (c.Hq / c.Hv);
        const float * qr = (const float *) (q.data() + qs.at(i, h, b));
        std::vector<double> s(c.Lk);
        double delta = 0.0, smax = -INFINITY, vmax = 0.0;
        for (int64_t j = 0; j < c.Lk; j++) {
            const half * kr = (const half *) (k.data() + ks.at(j, kh, b));
            const half * vr = (const half *) (v.data() + vs.at(j, vh, b));
            double dot = 0.0, shift = 0.0;
            for (int d = 0; d < D; d++) {
                const double kd = __half2float(kr[d]);
                const double q16 = round_f16(qr[d]);
                dot += (double) qr[d] * kd;
                shift += (std::fabs(qr[d] - q16) + std::ldexp(std::fabs(q16), -17)) * std::fabs(kd);
                vmax = std::max(vmax, (double) std::fabs(__half2float(vr[d])));
            }
            s[j] = scale * dot;
            smax = std::max(smax, s[j]);
            delta = std::max(delta, scale * shift);
        }
        // the exp2 argument (s - m) log2(e) in f32: one FMA of magnitude up to |s| log2(e)
        double smag = 0.0;
        for (int64_t j = 0; j < c.Lk; j++) {
            smag = std::max(smag, std::fabs(s[j]));
        }
        delta += std::ldexp(smag * 1.4426950408889634 + 1.0, -22);
        std::vector<double> o(D, 0.0);
        double l = 0.0;
        for (int64_t j = 0; j < c.Lk; j++) {
            const double w = std::exp(s[j] - smax);
            const half * vr = (const half *) (v.data() + vs.at(j, vh, b));
            for (int d = 0; d < D; d++) {
                o[d] += w * __half2float(vr[d]);
            }
            l += w;
        }
        const double tol = row_tolerance(delta, c.Lk, vmax);
        const float * got = out.data() + (b * d_nb3 + i * d_nb2 + h * d_nb1) / sizeof(float);
        for (int d = 0; d < D; d++) {
            const double e = std::fabs((double) got[d] - o[d] / l);
            if (!(e <= tol)) {  // NaN fails too
                bad[r]++;
            }
            worst_err[r] = std::max(worst_err[r], std::isnan(e) ? INFINITY : e);
            worst_ratio[r] = std::max(worst_ratio[r], std::isnan(e) ? INFINITY : e / tol);
        }
    }
    int64_t bad_total = 0, first_bad = -1;
    double max_err = 0.0, ratio = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        bad_total += bad[r];
        if (bad[r] && first_bad < 0) {
            first_bad = r;
        }
        max_err = std::max(max_err, worst_err[r]);
        ratio = std::max(ratio, worst_ratio[r]);
    }
    printf("%s Lq=%5lld Lk=%5lld heads %lld/%lld/%lld batch %lld %-10s q in +-%g%s: max |err| %.3g, max err/bound %.3f",
           bad_total ? "FAIL" : "ok  ", (long long) c.Lq, (long long) c.Lk, (long long) c.Hq, (long long) c.Hk,
           (long long) c.Hv, (long long) c.B, layout_name(c.layout), c.q_amp, c.q_exact ? " (f16 values)" : "", max_err, ratio);
    if (bad_total) {
        const int64_t r = first_bad;
        printf("; %lld outputs out of bound, first in row %lld (token %lld, head %lld, batch %lld)", (long long) bad_total,
               (long long) r, (long long) (r % c.Lq), (long long) ((r / c.Lq) % c.Hq), (long long) (r / (c.Lq * c.Hq)));
        g_failures++;
    }
    printf("\n");
}

// What the kernel must decline, launching nothing.
static void check_declines() {
    const Shape qs(64, 2, 1, sizeof(float), SDCPP);
    const Shape ks(64, 2, 1, sizeof(half), SDCPP);
    void * buf;
    CUDA_OK(cudaMalloc(&buf, 1 << 20));
    const size_t d_nb1 = D * 4, d_nb2 = 2 * d_nb1, d_nb3 = 64 * d_nb2;
    bonsai_flash_attn_args ok = {buf, qs.nb1, qs.nb2, qs.nb3, buf, ks.nb1, ks.nb2, ks.nb3, buf, ks.nb1, ks.nb2, ks.nb3,
                                 buf, d_nb1, d_nb2, d_nb3, 64, 64, 2, 2, 2, 1, 0.1f};
    struct {
        const char * what;
        bonsai_flash_attn_args a;
    } cases[] = {{"k rows 8 bytes apart", ok}, {"q misaligned", ok}, {"no keys", ok}, {"3 query heads on 2 key heads", ok},
                 {"scale 0", ok}, {"2 batches, V's batch stride 8 bytes", ok}};
    cases[0].a.k_nb2 = 8;
    cases[1].a.q = (char *) buf + 4;
    cases[2].a.Lk = 0;
    cases[3].a.Hq = 3;
    cases[4].a.scale = 0.0f;
    cases[5].a.B = 2;
    cases[5].a.v_nb3 = 8;
    for (const auto & c : cases) {
        const cudaError_t err = bonsai_cuda_flash_attn_sm90(&c.a, nullptr);
        printf("%s declines %s: %s\n", err == cudaErrorNotSupported ? "ok  " : "FAIL", c.what, cudaGetErrorString(err));
        g_failures += err != cudaErrorNotSupported;
    }
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaFree(buf));
}

static void time_flux(int64_t L, int64_t H) {
    const Shape qs(L, H, 1, sizeof(float), SDCPP);
    const Shape ks(L, H, 1, sizeof(half), SDCPP);
    const size_t d_nb1 = D * 4, d_nb2 = H * d_nb1, d_nb3 = L * d_nb2;
    void *dq, *dk, *dv, *dd;
    CUDA_OK(cudaMalloc(&dq, qs.bytes));
    CUDA_OK(cudaMalloc(&dk, ks.bytes));
    CUDA_OK(cudaMalloc(&dv, ks.bytes));
    CUDA_OK(cudaMalloc(&dd, d_nb3));
    {
        Rng rng(7);
        std::vector<float> q(qs.bytes / 4);
        std::vector<half>  k(ks.bytes / 2);
        for (auto & x : q) {
            x = rng.uniform(-2.0f, 2.0f);
        }
        for (auto & x : k) {
            x = __float2half_rn(rng.uniform(-1.0f, 1.0f));
        }
        CUDA_OK(cudaMemcpy(dq, q.data(), qs.bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(dk, k.data(), ks.bytes, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(dv, k.data(), ks.bytes, cudaMemcpyHostToDevice));
    }
    bonsai_flash_attn_args a = {dq, qs.nb1, qs.nb2, qs.nb3, dk, ks.nb1, ks.nb2, ks.nb3, dv, ks.nb1, ks.nb2, ks.nb3,
                                dd, d_nb1, d_nb2, d_nb3, L, L, H, H, H, 1, 1.0f / std::sqrt((float) D)};
    for (int i = 0; i < 3; i++) {
        CUDA_OK(bonsai_cuda_flash_attn_sm90(&a, nullptr));
    }
    cudaEvent_t t0, t1;
    CUDA_OK(cudaEventCreate(&t0));
    CUDA_OK(cudaEventCreate(&t1));
    const int reps = 20;
    CUDA_OK(cudaEventRecord(t0));
    for (int i = 0; i < reps; i++) {
        CUDA_OK(bonsai_cuda_flash_attn_sm90(&a, nullptr));
    }
    CUDA_OK(cudaEventRecord(t1));
    CUDA_OK(cudaEventSynchronize(t1));
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, t0, t1));
    ms /= reps;
    const double flop = 4.0 * (double) L * L * D * H;
    printf("perf L=%lld heads %lld (sd.cpp layout): %.3f ms per call, %.1f TFLOPS\n", (long long) L, (long long) H, ms,
           flop / (ms * 1e-3) / 1e12);
    CUDA_OK(cudaFree(dq));
    CUDA_OK(cudaFree(dk));
    CUDA_OK(cudaFree(dv));
    CUDA_OK(cudaFree(dd));
}

int main(int argc, char ** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    bool perf = true;
    if (!parse_check_args(argc, argv, &perf)) {
        return 2;
    }
    const cudaDeviceProp prop = print_check_device();
    if (prop.major != 9 || prop.minor != 0) {
        printf("the kernel is sm_90a code: nothing to check here\n");
        return 2;
    }

    Rng rng(42);
    const Case cases[] = {
        //  Lq    Lk  Hq Hk Hv  B  layout      q_amp  q_exact
        {    1,    1, 1, 1, 1, 1, SDCPP,      1.0f, true},
        {   77,   77, 2, 2, 2, 1, CONTIGUOUS, 1.0f, true},
        {  128,  128, 3, 3, 3, 1, SDCPP,      2.0f, true},
        {  129,  129, 1, 1, 1, 1, SDCPP,      8.0f, true},   // peaked rows; one key past a tile
        {  300,  300, 3, 1, 1, 1, CONTIGUOUS, 3.0f, false},  // grouped K/V heads
        {  300,  300, 2, 2, 1, 2, SDCPP,      2.0f, true},   // K and V grouped differently; batches
        {   77,  300, 2, 2, 2, 1, PADDED,     2.0f, true},
        {  300,   77, 2, 2, 2, 2, SDCPP,      2.0f, false},
        {  200,    1, 2, 2, 2, 1, PADDED,     1.0f, true},   // one key: the output is v
        { 1536, 1536, 2, 2, 2, 1, SDCPP,      2.0f, true},
        { 1536, 1536, 1, 1, 1, 1, CONTIGUOUS, 2.0f, false},
        { 1100, 1100, 3, 3, 3, 1, SDCPP,     16.0f, false},  // logits far from 0: the running maximum matters
    };
    for (const Case & c : cases) {
        run_case(c, rng);
    }
    check_declines();
    if (perf) {
        time_flux(4608, 24);
        time_flux(1024, 24);
    }
    printf("%s\n", g_failures ? "FAILED" : "all checks passed");
    return g_failures ? 1 : 0;
}
