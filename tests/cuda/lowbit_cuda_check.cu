// Checks and times the CUDA kernels of cpp/cuda against the scalar codec of cpp/lowbit.
//
//   lowbit_cuda_check [--json FILE] [--no-perf] [--quick] [--tokens N] [--matvec] [--f16-configs DIGITS]
//
// Correctness (exit status 1 on any failure):
//   - dequantize to f32/f16/bf16, get_rows, f32 -> type and type -> f32 copies: bit-exact
//     against lowbit-codec.c (the reference quantizers and dequantizers);
//   - the activation pre-pass: bit-exact against a scalar re-implementation here;
//   - the GEMM on the pre-pass's own int8 activations: against a float64 sum of the same
//     integers and scales (only fp32 accumulation order differs: 1e-5 of the output's rms);
//   - on sm_90a, the f16 GEMM on its own f16 activations, each tile configuration and schedule
//     (K whole, K split, stream-K with uneven shares): against float64 sums of the same values
//     (5e-5 of the rms), and a second run bit-identical;
//   - MUL_MAT through the public entry point, GEMM (N > 8), batched and strided: against
//     float64 products of the dequantized weights and the f32 activations (3e-2, the int8
//     activation rounding, measured and printed);
//   - the mat-vec (N <= 8, --matvec: only this and its timings): against float64 products of
//     the dequantized weights and the activations rounded as the kernel rounds them (1e-5), and
//     within the worst case of that rounding (check_matvec).
// Accuracy: relative error of the int8 (per 128) path on the DiT shapes, beside the same
// error for per-32 activations (ggml's q8_1) and for bf16 operands, on sampled outputs.
// Performance (unless --no-perf): the DiT GEMM shapes for the four types against cuBLAS
// bf16/f16 (and int8 for the tensor-core ceiling), and the mat-vec against cuBLAS f16.

#include "lowbit.h"
#include "lowbit-cuda.h"
#include "matvec-rounding.h"
#include "cuda-ok.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef BONSAI_HAVE_CUBLAS
#    include <cublas_v2.h>
#endif

static int g_failures = 0;

// --quick: the DiT sweep covers two shapes only; --tokens N: only N tokens (0: all).
static bool    g_quick  = false;
static int64_t g_tokens = 0;

// f16 GEMM configurations to check and time (--f16-configs); all by default.
static bool g_f16_config[BONSAI_CUDA_F16_CONFIGS + 1] = {false};
static bool f16_config_on(int c) {
    return c >= 1 && c <= BONSAI_CUDA_F16_CONFIGS && g_f16_config[c];
}

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            g_failures++;                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                         \
            fprintf(stderr, "\n");                                \
        }                                                         \
    } while (0)

// ---- random numbers (splitmix64) ----------------------------------------------------------------

struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    double uniform() { return (next() >> 11) * 0x1p-53; }
    float normal() {
        const double u = uniform() + 1e-300, v = uniform();
        return (float) (std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * v));
    }
};

// ---- types ----------------------------------------------------------------------------------------

struct TypeInfo {
    int          id;
    const char * name;
    int          qk, bytes;
};
static const TypeInfo TYPES[] = {
    {BONSAI_TYPE_Q1_0, "q1_0", QK1_0, sizeof(block_q1_0)},
    {BONSAI_TYPE_Q2_0, "q2_0", QK2_0, sizeof(block_q2_0)},
    {BONSAI_TYPE_PQ2_0, "pq2_0", QKPQ2_0, sizeof(block_pq2_0)},
    {BONSAI_TYPE_PTQ1_0, "ptq1_0", QKPTQ1_0, sizeof(block_ptq1_0)},
};

static size_t row_bytes(const TypeInfo & t, int64_t K) {
    return (size_t) (K / t.qk) * t.bytes;
}

static void cpu_dequantize_row(const TypeInfo & t, const void * x, float * y, int64_t k) {
    switch (t.id) {
        case BONSAI_TYPE_Q1_0:   bonsai_dequantize_row_q1_0((const block_q1_0 *) x, y, k); break;
        case BONSAI_TYPE_Q2_0:   bonsai_dequantize_row_q2_0((const block_q2_0 *) x, y, k); break;
        case BONSAI_TYPE_PQ2_0:  bonsai_dequantize_row_pq2_0((const block_pq2_0 *) x, y, k); break;
        case BONSAI_TYPE_PTQ1_0: bonsai_dequantize_row_ptq1_0((const block_ptq1_0 *) x, y, k); break;
    }
}

static void cpu_quantize_row(const TypeInfo & t, const float * x, void * y, int64_t k) {
    switch (t.id) {
        case BONSAI_TYPE_Q1_0:   bonsai_quantize_row_q1_0_ref(x, (block_q1_0 *) y, k); break;
        case BONSAI_TYPE_Q2_0:   bonsai_quantize_row_q2_0_ref(x, (block_q2_0 *) y, k); break;
        case BONSAI_TYPE_PQ2_0:  bonsai_quantize_row_pq2_0_ref(x, (block_pq2_0 *) y, k); break;
        case BONSAI_TYPE_PTQ1_0: bonsai_quantize_row_ptq1_0_ref(x, (block_ptq1_0 *) y, k); break;
    }
}

// Random weights as Bonsai's are: per block a positive or negative fp16 scale and random codes
// (every code the layout has, 0..3 for the 2-bit types; trits for PTQ1_0, made by quantizing
// exact ternary values with the reference quantizer).
static std::vector<uint8_t> random_weights(const TypeInfo & t, int64_t M, int64_t K, Rng & rng) {
    std::vector<uint8_t> w(row_bytes(t, K) * M);
    const int64_t blocks = M * (K / t.qk);
    if (t.id == BONSAI_TYPE_PTQ1_0) {
        std::vector<float> values(t.qk);
        for (int64_t b = 0; b < blocks; b++) {
            const float s = bonsai_half_to_float(bonsai_float_to_half((float) (0.004 + 0.016 * rng.uniform())));
            for (int j = 0; j < t.qk; j++) {
                values[j] = s * (float) ((int) (rng.next() % 3) - 1);
            }
            values[rng.next() % t.qk] = s;  // d = max |x| = s exactly
            cpu_quantize_row(t, values.data(), w.data() + b * t.bytes, t.qk);
        }
        return w;
    }
    for (auto & byte : w) {
        byte = (uint8_t) rng.next();
    }
    for (int64_t b = 0; b < blocks; b++) {
        float s = (float) (0.004 + 0.016 * rng.uniform());
        if (rng.next() % 8 == 0) {
            s = -s;
        }
        const bonsai_half d = bonsai_float_to_half(s);
        memcpy(w.data() + b * t.bytes, &d, 2);  // d leads the block in Q1_0, Q2_0, PQ2_0
    }
    return w;
}

// Activations like a DiT's: unit normal, with a few channels 8x larger (outliers).
static std::vector<float> random_activations(int64_t N, int64_t K, Rng & rng) {
    std::vector<float> x((size_t) (N * K));
    std::vector<float> channel(K, 1.0f);
    for (int64_t k = 0; k < K; k++) {
        if (rng.next() % 64 == 0) {
            channel[k] = 8.0f;
        }
    }
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) {
            x[n * K + k] = rng.normal() * channel[k];
        }
    }
    return x;
}

template <typename T> struct DeviceBuffer {
    T *    ptr   = nullptr;
    size_t count = 0;
    explicit DeviceBuffer(size_t n) : count(n) { CUDA_OK(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T) + 64)); }
    DeviceBuffer(const DeviceBuffer &) = delete;
    ~DeviceBuffer() { cudaFree(ptr); }
    void upload(const T * src, size_t n) { CUDA_OK(cudaMemcpy(ptr, src, n * sizeof(T), cudaMemcpyHostToDevice)); }
    void upload(const std::vector<T> & v) { upload(v.data(), v.size()); }
    std::vector<T> download(size_t n) const {
        std::vector<T> v(n);
        CUDA_OK(cudaMemcpy(v.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return v;
    }
    void poison() { CUDA_OK(cudaMemset(ptr, 0xff, count * sizeof(T))); }
};

// ---- JSON output ----------------------------------------------------------------------------

static std::vector<std::string> g_json;

static void json_record(const std::string & fields) {
    g_json.push_back("{" + fields + "}");
}

static std::string jstr(const char * key, const std::string & v) { return "\"" + std::string(key) + "\": \"" + v + "\""; }
static std::string jnum(const char * key, double v) {
    char buf[64];
    snprintf(buf, sizeof(buf), "\"%s\": %.6g", key, v);
    return buf;
}

// ---- correctness: codecs ----------------------------------------------------------------------

static void check_dequantize(const TypeInfo & t, Rng & rng) {
    const int64_t M = 37, K = 1024, n = M * K;
    const auto w = random_weights(t, M, K, rng);
    std::vector<float> ref(n);
    for (int64_t r = 0; r < M; r++) {
        cpu_dequantize_row(t, w.data() + r * row_bytes(t, K), ref.data() + r * K, K);
    }
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float>       f32(n);
    DeviceBuffer<half>        f16(n);
    DeviceBuffer<nv_bfloat16> bf16(n);
    f32.poison(); f16.poison(); bf16.poison();
    CUDA_OK(bonsai_cuda_dequantize_f32(t.id, dw.ptr, f32.ptr, n, 0));
    CUDA_OK(bonsai_cuda_dequantize_f16(t.id, dw.ptr, f16.ptr, n, 0));
    CUDA_OK(bonsai_cuda_dequantize_bf16(t.id, dw.ptr, bf16.ptr, n, 0));
    const auto g32 = f32.download(n);
    const auto g16 = f16.download(n);
    const auto gbf = bf16.download(n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const bool ok = memcmp(&g32[i], &ref[i], 4) == 0 &&
                        __half_as_ushort(g16[i]) == __half_as_ushort(__float2half_rn(ref[i])) &&
                        __bfloat16_as_ushort(gbf[i]) == __bfloat16_as_ushort(__float2bfloat16_rn(ref[i]));
        bad += !ok;
    }
    CHECK(bad == 0, "%s dequantize: %lld of %lld elements differ from lowbit-codec.c", t.name, (long long) bad, (long long) n);
    printf("  %-7s dequantize f32/f16/bf16 : %s\n", t.name, bad == 0 ? "exact" : "MISMATCH");
}

static void check_get_rows(const TypeInfo & t, Rng & rng) {
    const int64_t K = 512, rows = 50, slices = 3, picks = 7;
    const auto w = random_weights(t, rows * slices, K, rng);
    const size_t rb = row_bytes(t, K);
    std::vector<int32_t> ids(picks * slices);
    for (auto & id : ids) {
        id = (int32_t) (rng.next() % rows);
    }
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<int32_t> did(ids.size());
    did.upload(ids);
    DeviceBuffer<float> out(K * picks * slices);
    out.poison();
    bonsai_cuda_get_rows_args a = {};
    a.type = t.id;
    a.src0 = dw.ptr; a.ne00 = K; a.nb01 = rb; a.nb02 = rb * rows; a.nb03 = rb * rows * slices;
    a.ids = did.ptr; a.ne10 = picks; a.ne11 = slices; a.ne12 = 1; a.nb10 = 4; a.nb11 = 4 * picks; a.nb12 = 4 * picks * slices;
    a.dst = out.ptr; a.nb1 = K * 4; a.nb2 = K * 4 * picks; a.nb3 = K * 4 * picks * slices;
    CUDA_OK(bonsai_cuda_get_rows(&a, 0));
    const auto got = out.download(K * picks * slices);
    std::vector<float> ref(K);
    int64_t bad = 0;
    for (int64_t s = 0; s < slices; s++) {
        for (int64_t p = 0; p < picks; p++) {
            cpu_dequantize_row(t, w.data() + (s * rows + ids[s * picks + p]) * rb, ref.data(), K);
            bad += memcmp(ref.data(), got.data() + (s * picks + p) * K, K * 4) != 0;
        }
    }
    CHECK(bad == 0, "%s get_rows: %lld rows differ", t.name, (long long) bad);
    printf("  %-7s get_rows                : %s\n", t.name, bad == 0 ? "exact" : "MISMATCH");
}

static void check_copies(const TypeInfo & t, Rng & rng) {
    // f32 rows with a padded stride -> packed rows; and back into padded f32 rows.
    const int64_t K = 1024, rows = 33, pad = 48;
    std::vector<float> x((K + pad) * rows);
    for (auto & v : x) {
        v = (float) (2.0 * rng.uniform() - 1.0);
    }
    for (int j = 0; j < 128; j++) {
        x[j] = 0.0f;                                   // an all-zero block
        x[(K + pad) + j] = (j % 3 - 1) * 0.0625f;      // an exactly ternary block
    }
    const size_t rb = row_bytes(t, K);
    std::vector<uint8_t> ref(rb * rows);
    for (int64_t r = 0; r < rows; r++) {
        cpu_quantize_row(t, x.data() + r * (K + pad), ref.data() + r * rb, K);
    }
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    DeviceBuffer<uint8_t> dq(ref.size());
    dq.poison();
    bonsai_cuda_cpy_args q = {};
    q.type = t.id;
    q.src = dx.ptr; q.ne00 = K; q.ne01 = rows; q.ne02 = 1; q.ne03 = 1;
    q.nb00 = 4; q.nb01 = (K + pad) * 4; q.nb02 = q.nb01 * rows; q.nb03 = q.nb02;
    q.dst = dq.ptr; q.ne10 = K; q.ne11 = rows; q.ne12 = 1; q.ne13 = 1;
    q.nb10 = t.bytes; q.nb11 = rb; q.nb12 = rb * rows; q.nb13 = q.nb12;
    CUDA_OK(bonsai_cuda_quantize_f32(&q, 0));
    const auto got = dq.download(ref.size());
    int64_t bad = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        bad += got[i] != ref[i];
    }
    CHECK(bad == 0, "%s f32 -> type copy: %lld of %zu bytes differ from the reference quantizer", t.name, (long long) bad, ref.size());

    bonsai_cuda_cpy_args d = {};
    d.type = t.id;
    d.src = dq.ptr; d.ne00 = K; d.ne01 = rows; d.ne02 = 1; d.ne03 = 1;
    d.nb00 = t.bytes; d.nb01 = rb; d.nb02 = rb * rows; d.nb03 = d.nb02;
    DeviceBuffer<float> back(x.size());
    back.poison();
    d.dst = back.ptr; d.ne10 = K; d.ne11 = rows; d.ne12 = 1; d.ne13 = 1;
    d.nb10 = 4; d.nb11 = (K + pad) * 4; d.nb12 = d.nb11 * rows; d.nb13 = d.nb12;
    CUDA_OK(bonsai_cuda_dequantize_cpy(&d, 0));
    const auto gx = back.download(x.size());
    std::vector<float> row(K);
    int64_t bad_back = 0;
    for (int64_t r = 0; r < rows; r++) {
        cpu_dequantize_row(t, ref.data() + r * rb, row.data(), K);
        bad_back += memcmp(row.data(), gx.data() + r * (K + pad), K * 4) != 0;
    }
    CHECK(bad_back == 0, "%s type -> f32 copy: %lld rows differ", t.name, (long long) bad_back);
    printf("  %-7s cpy f32->type, type->f32: %s\n", t.name, bad == 0 && bad_back == 0 ? "exact" : "MISMATCH");
}

// ---- correctness: activation pre-pass and GEMM ---------------------------------------------

struct QuantizedActs {
    std::vector<int8_t> q;       // [rows][chunks*128], in the GEMM's in-chunk order
    std::vector<float4> scales;  // [chunks][rows]
    int64_t rows, chunks;
};

// The pre-pass, written out scalar: per (token, chunk) amax, scale amax/127, codes
// round-half-even(x * (127/amax)), placed by bonsai_cuda_act_position_element.
static QuantizedActs cpu_quantize_act(const float * x, int64_t N, int64_t K, int64_t ldx) {
    QuantizedActs a;
    a.chunks = bonsai_cuda_act_chunks(K);
    a.rows   = bonsai_cuda_act_rows(N);
    a.q.assign(a.rows * a.chunks * 128, 0);
    a.scales.assign(a.rows * a.chunks, make_float4(0, 0, 0, 0));
    int element_of[128];
    for (int p = 0; p < 128; p++) {
        element_of[p] = bonsai_cuda_act_position_element(p);
    }
    const int magic = 0x4B400000;
    for (int64_t n = 0; n < a.rows; n++) {
        for (int64_t c = 0; c < a.chunks; c++) {
            float v[128] = {0};
            if (n < N) {
                for (int j = 0; j < 128; j++) {
                    v[j] = x[n * ldx + c * 128 + j];
                }
            }
            float amax = 0.0f;
            for (int j = 0; j < 128; j++) {
                amax = std::max(amax, std::fabs(v[j]));
            }
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int q[128], sum_lo = 0, sum_hi = 0;
            for (int j = 0; j < 128; j++) {
                q[j] = std::max(-127, std::min(127, (int) std::nearbyint(v[j] * inv)));
                (j < 64 ? sum_lo : sum_hi) += q[j];
            }
            for (int p = 0; p < 128; p++) {
                a.q[n * a.chunks * 128 + c * 128 + p] = (int8_t) q[element_of[p]];
            }
            float lo, hi, all;
            const int ilo = magic - sum_lo, ihi = magic - sum_hi, iall = magic - sum_lo - sum_hi;
            memcpy(&lo, &ilo, 4); memcpy(&hi, &ihi, 4); memcpy(&all, &iall, 4);
            a.scales[c * a.rows + n] = make_float4(amax / 127.0f, all, lo, hi);
        }
    }
    return a;
}

static QuantizedActs gpu_quantize_act(const float * dx, int64_t N, int64_t K, size_t nb1) {
    QuantizedActs a;
    a.chunks = bonsai_cuda_act_chunks(K);
    a.rows   = bonsai_cuda_act_rows(N);
    DeviceBuffer<int8_t> q(a.rows * a.chunks * 128);
    DeviceBuffer<float4> s(a.rows * a.chunks);
    q.poison(); s.poison();
    CUDA_OK(bonsai_cuda_quantize_act(dx, K, N, 4, nb1, q.ptr, s.ptr, 0));
    a.q      = q.download(q.count);
    a.scales = s.download(s.count);
    return a;
}

static void check_quantize_act(Rng & rng) {
    const int64_t N = 300, K = 768, ld = K + 16;
    auto x = random_activations(N, ld, rng);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    const auto gpu = gpu_quantize_act(dx.ptr, N, K, ld * 4);
    const auto cpu = cpu_quantize_act(x.data(), N, K, ld);
    const bool same_q = gpu.q == cpu.q;
    const bool same_s = memcmp(gpu.scales.data(), cpu.scales.data(), cpu.scales.size() * sizeof(float4)) == 0;
    CHECK(same_q && same_s, "activation pre-pass differs from the scalar version (codes %s, scales %s)",
          same_q ? "same" : "differ", same_s ? "same" : "differ");
    printf("  activation pre-pass (int8 per 128)  : %s\n", same_q && same_s ? "exact" : "MISMATCH");
}

// dst[n][m] from the int8 activations and the weights, in float64.
static double gemm_reference_element(const TypeInfo & t, const uint8_t * wrow, const QuantizedActs & a,
                                     int64_t n, int64_t K, std::vector<float> & wbuf) {
    cpu_dequantize_row(t, wrow, wbuf.data(), K);  // (code-1)*d per element
    int element_of[128];
    for (int p = 0; p < 128; p++) {
        element_of[p] = bonsai_cuda_act_position_element(p);
    }
    double sum = 0.0;
    for (int64_t c = 0; c < K / 128; c++) {
        const float da = a.scales[c * a.rows + n].x;
        double partial = 0.0;
        for (int p = 0; p < 128; p++) {
            partial += (double) wbuf[c * 128 + element_of[p]] * a.q[n * a.chunks * 128 + c * 128 + p];
        }
        sum += partial * da;
    }
    return sum;
}

static void check_gemm_exact(const TypeInfo & t, int64_t M, int64_t N, int64_t K, int config, Rng & rng, int samples) {
    const auto w = random_weights(t, M, K, rng);
    const auto x = random_activations(N, K, rng);
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    const int64_t rows = bonsai_cuda_act_rows(N), chunks = bonsai_cuda_act_chunks(K);
    DeviceBuffer<int8_t> q(rows * chunks * 128);
    DeviceBuffer<float4> s(rows * chunks);
    DeviceBuffer<float>  out(M * N);
    out.poison();
    CUDA_OK(bonsai_cuda_quantize_act(dx.ptr, K, N, 4, K * 4, q.ptr, s.ptr, 0));
    CUDA_OK(bonsai_cuda_gemm_q8(t.id, dw.ptr, M, K, row_bytes(t, K), q.ptr, s.ptr, N, out.ptr, M * 4, config, 0));
    CUDA_OK(cudaDeviceSynchronize());
    QuantizedActs a;
    a.rows = rows; a.chunks = chunks;
    a.q = q.download(q.count);
    a.scales = s.download(s.count);
    const auto got = out.download(M * N);

    std::vector<float> wbuf(K);
    double err2 = 0.0, ref2 = 0.0, max_err = 0.0;
    int64_t nan_count = 0;
    const int64_t total = M * N;
    const int64_t count = samples > 0 ? samples : total;
    for (int64_t i = 0; i < count; i++) {
        const int64_t idx = samples > 0 ? (int64_t) (rng.next() % total) : i;
        const int64_t n = idx / M, m = idx % M;
        const double ref = gemm_reference_element(t, w.data() + m * row_bytes(t, K), a, n, K, wbuf);
        const double g = got[n * M + m];
        if (!std::isfinite(g)) {
            nan_count++;
            continue;
        }
        err2 += (g - ref) * (g - ref);
        ref2 += ref * ref;
        max_err = std::max(max_err, std::fabs(g - ref));
    }
    const double rms = std::sqrt(ref2 / count);
    const double rel = max_err / (rms > 0 ? rms : 1.0);
    CHECK(nan_count == 0 && rel < 1e-5, "%s GEMM %lldx%lldx%lld config %d: max error %.3g of rms %.3g (%lld non-finite)",
          t.name, (long long) M, (long long) N, (long long) K, config, max_err, rms, (long long) nan_count);
    printf("  %-7s GEMM int8 exact  M=%-5lld N=%-5lld K=%-5lld cfg %d: max err / rms = %.2e %s\n", t.name,
           (long long) M, (long long) N, (long long) K, config, rel, rel < 1e-5 && nan_count == 0 ? "ok" : "FAIL");
}

#ifdef BONSAI_CUDA_SM90
// The Hopper f16 GEMM on its own f16 activations, against float64 sums of the same values
// (exact products; only the f32 accumulation order differs). The schedule is (config, splits,
// blocks) of bonsai_cuda_gemm_f16; a second run must give the same bits (stream-K adds the
// pieces of a tile in a fixed order, whatever the timing).
static void check_gemm_f16_exact(const TypeInfo & t, int64_t M, int64_t N, int64_t K, int config, int splits, int blocks,
                                 Rng & rng, int samples) {
    const auto w = random_weights(t, M, K, rng);
    const auto x = random_activations(N, K, rng);
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    const int64_t rows = bonsai_cuda_act_f16_rows(N);
    DeviceBuffer<half>  act(rows * K);
    DeviceBuffer<float> out(M * N);
    out.poison();
    // the flags (stream-K) cleared by the pre-pass, the rest of the workspace poisoned
    const size_t ws_bytes   = bonsai_cuda_gemm_f16_workspace(M, K, N, config, splits, blocks);
    const size_t flag_bytes = bonsai_cuda_gemm_f16_flag_bytes(M, K, N, config, splits, blocks);
    DeviceBuffer<uint8_t> workspace(ws_bytes + 1);
    workspace.poison();
    CUDA_OK(bonsai_cuda_convert_act_f16(t.id, dx.ptr, K, N, 4, K * 4, act.ptr, workspace.ptr, flag_bytes, 0));
    CUDA_OK(bonsai_cuda_gemm_f16(t.id, dw.ptr, M, K, row_bytes(t, K), act.ptr, N, out.ptr, M * 4, config, splits, blocks,
                                 workspace.ptr, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto h   = act.download(rows * K);
    const auto got = out.download(M * N);
    // Again on the flags the first call left (they must be zero again) and re-poisoned sums.
    const auto flags = workspace.download(flag_bytes);
    const bool flags_clear = std::all_of(flags.begin(), flags.end(), [](uint8_t b) { return b == 0; });
    out.poison();
    CUDA_OK(cudaMemset(workspace.ptr + flag_bytes, 0xff, ws_bytes + 1 - flag_bytes));
    CUDA_OK(bonsai_cuda_gemm_f16(t.id, dw.ptr, M, K, row_bytes(t, K), act.ptr, N, out.ptr, M * 4, config, splits, blocks,
                                 workspace.ptr, 0));
    const bool same = flags_clear && memcmp(got.data(), out.download(M * N).data(), M * N * sizeof(float)) == 0;

    // the pre-pass: position p of a chunk holds f16(element(p)) (no value here exceeds f16's range)
    int element_of[128];
    for (int p = 0; p < 128; p++) {
        element_of[p] = bonsai_cuda_act_f16_position_element(t.id, p);
    }
    // activation position k of token n in the buffer: [K / 64 steps][rows][64], each 128-byte
    // line's 16-byte pieces swizzled by n % 8
    auto act_at = [&](int64_t n, int64_t k) -> half {
        const int64_t step = k / 64, pos = k % 64;
        return h[(step * rows + n) * 64 + (((pos / 8) ^ (n % 8)) * 8) + pos % 8];
    };
    int64_t bad_act = 0;
    for (int64_t n = 0; n < rows; n++) {
        for (int64_t k = 0; k < K; k++) {
            const int64_t c = k / 128, p = k % 128;
            const float   v = n < N ? x[n * K + c * 128 + element_of[p]] : 0.0f;  // padding rows are zeros
            bad_act += __half_as_ushort(act_at(n, k)) != __half_as_ushort(__float2half_rn(v));
        }
    }
    CHECK(bad_act == 0, "f16 activation pre-pass: %lld values differ", (long long) bad_act);

    std::vector<float> wf(K);
    double ref2 = 0.0, max_err = 0.0;
    int64_t nonfinite = 0;
    const int64_t total = M * N, count = samples > 0 ? samples : total;
    for (int64_t i = 0; i < count; i++) {
        const int64_t idx = samples > 0 ? (int64_t) (rng.next() % total) : i;
        const int64_t n = idx / M, m = idx % M;
        cpu_dequantize_row(t, w.data() + m * row_bytes(t, K), wf.data(), K);
        double ref = 0.0;
        for (int64_t k = 0; k < K; k++) {
            const int64_t c = k / 128, p = k % 128;
            ref += (double) wf[c * 128 + element_of[p]] * (double) __half2float(act_at(n, k));
        }
        const double g = got[n * M + m];
        if (!std::isfinite(g)) {
            nonfinite++;
            continue;
        }
        ref2 += ref * ref;
        max_err = std::max(max_err, std::fabs(g - ref));
    }
    const double rms = std::sqrt(ref2 / count);
    const double rel = max_err / (rms > 0 ? rms : 1.0);
    char schedule[48];
    if (blocks > 0) {
        snprintf(schedule, sizeof(schedule), "cfg %d, stream-K %3d", config, blocks);
    } else {
        snprintf(schedule, sizeof(schedule), "cfg %d, K in %d", config, splits);
    }
    const bool ok = nonfinite == 0 && rel < 5e-5 && same;
    CHECK(ok, "%s f16 GEMM %lldx%lldx%lld %s: max error %.3g of rms %.3g (%lld non-finite), second run %s", t.name,
          (long long) M, (long long) N, (long long) K, schedule, max_err, rms, (long long) nonfinite,
          same ? "identical, flags clear" : "DIFFERENT or flags left set");
    printf("  %-7s GEMM f16 exact   M=%-5lld N=%-5lld K=%-5lld %-20s: max err / rms = %.2e, rerun %s %s\n", t.name,
           (long long) M, (long long) N, (long long) K, schedule, rel, same ? "identical" : "DIFFERENT", ok ? "ok" : "FAIL");
}
#endif

// The f16 GEMM's weight decode, bit for bit: with one-hot activations (token n is element n of
// K) the output is the weights themselves, W[m][n] = (code - 1) * d exactly (one exact product,
// the rest zeros), compared with the scalar codec. Byte i of every block of row m is
// (m + 37 i + 101 c) % 256 (block c), so that over the 256 rows every byte position holds every
// value (PTQ1_0: every qs and qh byte, valid encodings and the 13 that are not); the scales
// include negative, tiny (subnormal) and the largest values whose weights stay finite (2d for
// the 2-bit types' code 3: an infinite weight would turn its whole row into NaN, inf * 0).
static void check_gemm_f16_decode(const TypeInfo & t, int config, int splits) {
    const int64_t M = 256, K = 384, N = K;
    const size_t  rb = row_bytes(t, K);
    std::vector<uint8_t> w(rb * M);
    const bool  two_bit  = t.id == BONSAI_TYPE_Q2_0 || t.id == BONSAI_TYPE_PQ2_0;
    const float scales[] = {0.0123f, -0.5f, two_bit ? 32752.0f : 65504.0f, 6.0e-8f, -3.1e-5f, 1.0f, 0.0078125f, -2.75f};
    const int   d_offset = t.id == BONSAI_TYPE_PTQ1_0 ? 26 : 0;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t c = 0; c < K / t.qk; c++) {
            uint8_t * block = w.data() + m * rb + c * t.bytes;
            for (int i = 0; i < t.bytes; i++) {
                block[i] = (uint8_t) (m + 37 * i + 101 * c);
            }
            const bonsai_half d = bonsai_float_to_half(scales[(m + c) % 8]);
            memcpy(block + d_offset, &d, 2);
        }
    }
    std::vector<float> x(N * K, 0.0f);
    for (int64_t n = 0; n < N; n++) {
        x[n * K + n] = 1.0f;
    }
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    DeviceBuffer<half>  act(bonsai_cuda_act_f16_rows(N) * K);
    DeviceBuffer<float> out(M * N);
    out.poison();
    DeviceBuffer<uint8_t> workspace(bonsai_cuda_gemm_f16_workspace(M, K, N, config, splits, 0) + 1);
    CUDA_OK(bonsai_cuda_convert_act_f16(t.id, dx.ptr, K, N, 4, K * 4, act.ptr, nullptr, 0, 0));
    CUDA_OK(bonsai_cuda_gemm_f16(t.id, dw.ptr, M, K, rb, act.ptr, N, out.ptr, M * 4, config, splits, 0, workspace.ptr, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = out.download(M * N);
    std::vector<float> wf(K);
    int64_t bad = 0;
    for (int64_t m = 0; m < M; m++) {
        cpu_dequantize_row(t, w.data() + m * rb, wf.data(), K);
        for (int64_t n = 0; n < N; n++) {
            bad += !(got[n * M + m] == wf[n]);  // -0 and +0 both fine
        }
    }
    CHECK(bad == 0, "%s f16 GEMM decode, config %d, K in %d: %lld of %lld weights differ", t.name, config, splits,
          (long long) bad, (long long) (M * N));
    printf("  %-7s GEMM f16 decode  M=%-5lld N=%-5lld K=%-5lld cfg %d, K in %d: %s\n", t.name, (long long) M, (long long) N,
           (long long) K, config, splits, bad == 0 ? "bit-exact" : "FAIL");
}

// Public entry point against float64 products of dequantized weights and f32 activations.
// Weights are sliced w_ne2 ways and broadcast over ne2 slices of x; x rows are ldx apart.
static double check_matmul(const TypeInfo & t, int64_t M, int64_t N, int64_t K, int64_t w_ne2, int64_t ne2,
                           int64_t ldx, double tolerance, Rng & rng) {
    const size_t rb = row_bytes(t, K);
    const auto w = random_weights(t, M * w_ne2, K, rng);
    const auto x = random_activations(N * ne2, ldx, rng);
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    DeviceBuffer<float> out(M * N * ne2);
    out.poison();
    bonsai_cuda_matmul_args a = {};
    a.type = t.id;
    a.w = dw.ptr; a.M = M; a.K = K; a.w_ne2 = w_ne2; a.w_ne3 = 1; a.w_nb1 = rb; a.w_nb2 = rb * M; a.w_nb3 = rb * M * w_ne2;
    a.x = dx.ptr; a.N = N; a.ne2 = ne2; a.ne3 = 1; a.x_nb0 = 4; a.x_nb1 = ldx * 4; a.x_nb2 = ldx * 4 * N; a.x_nb3 = a.x_nb2 * ne2;
    a.dst = out.ptr; a.d_nb1 = M * 4; a.d_nb2 = M * N * 4; a.d_nb3 = a.d_nb2 * ne2;
    const size_t scratch_bytes = bonsai_cuda_matmul_scratch_bytes(&a);
    DeviceBuffer<uint8_t> scratch(scratch_bytes);
    CUDA_OK(bonsai_cuda_matmul(&a, scratch.ptr, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = out.download(M * N * ne2);

    std::vector<float> wf(K);
    double err2 = 0.0, ref2 = 0.0;
    int64_t bad = 0;
    for (int64_t s = 0; s < ne2; s++) {
        const int64_t ws = s / (ne2 / w_ne2);
        for (int64_t m = 0; m < M; m++) {
            cpu_dequantize_row(t, w.data() + (ws * M + m) * rb, wf.data(), K);
            for (int64_t n = 0; n < N; n++) {
                const float * xr = x.data() + (s * N + n) * ldx;
                double ref = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    ref += (double) wf[k] * xr[k];
                }
                const double g = got[(s * N + n) * M + m];
                bad += !std::isfinite(g);
                err2 += (g - ref) * (g - ref);
                ref2 += ref * ref;
            }
        }
    }
    const double rel = std::sqrt(err2 / ref2);
    CHECK(bad == 0 && rel < tolerance, "%s matmul M=%lld N=%lld K=%lld slices %lld/%lld: relative error %.3g (limit %.3g)",
          t.name, (long long) M, (long long) N, (long long) K, (long long) w_ne2, (long long) ne2, rel, tolerance);
    printf("  %-7s matmul %-7s M=%-4lld N=%-3lld K=%-5lld slices %lld/%lld ldx %lld: rel err %.2e %s\n", t.name,
           N <= BONSAI_CUDA_MMV_MAX_COLS ? "mat-vec" : "GEMM", (long long) M, (long long) N, (long long) K,
           (long long) w_ne2, (long long) ne2, (long long) ldx, rel, bad == 0 && rel < tolerance ? "ok" : "FAIL");
    return rel;
}

// ---- the mat-vec (N <= 8) ------------------------------------------------------------------
// The mat-vec rounds the activations to int8, one scale per 32 elements of K (lowbit-cuda-ops.cu):
// scale = amax / 127 rounded up to bf16 (its bits kept whole), value = round-half-even(x * (1 /
// scale)). Its re-implementation (matvec-rounding.h) gives the reference the same numbers, so
// the kernel must match sum_j w_j * scale_g(j) * value_j up to f32 arithmetic (1e-5 of the
// outputs' rms). Where a
// block's activations do not fit in shared memory the f32 mat-vec runs instead, and must match
// the exact product to the same 1e-5.
static void cpu_matvec_round(const float * x, int64_t K, std::vector<float> & xq, std::vector<float> & scales) {
    xq.resize(K);
    scales.resize(K / 32);
    for (int64_t g = 0; g < K / 32; g++) {
        int8_t q[32];
        scales[g] = matvec_round_group(x + 32 * g, q);
        for (int j = 0; j < 32; j++) {
            xq[32 * g + j] = scales[g] * q[j];  // exact: 8 x 7 bits
        }
    }
}

enum class MatvecPath { INT8, F32, EITHER };

struct MatvecCase {
    int64_t M, N, K;
    int64_t w_ne2    = 1;      // weight slices, broadcast over
    int64_t ne2      = 1;      // slices of x
    int64_t ldx      = 0;      // x row stride in floats (0: K); other strides go through a gather
    int64_t w_pad    = 0;      // bytes between weight rows (0: back to back)
    int64_t w_offset = 0;      // bytes the weights start past an aligned address
    bool    uniform  = false;  // activations uniform in [-1, 1] (as test-backend-ops) instead of DiT-like
};

// One MUL_MAT with N <= 8 through the entry point, against the reference of whichever path ran
// (see above; `expect` pins it where the shape decides), and per output against the worst case
// of the rounding: |y - sum_j w_j x_j| <= sum_j |w_j| * (scale_g(j) / 2 + 1e-5 * (|x_j| +
// scale_g(j))): every rounded value is within half a scale of x (up to the 2^-23 of the inverse),
// and the rest covers the f32 sums. With uniform activations the normalized squared error against
// the exact product must also stay under 1e-4: test-backend-ops allows 5e-4 between this and the
// CPU backend, whose activations are rounded to int8 (q8_0) too.
static void check_matvec(const TypeInfo & t, const MatvecCase & c, MatvecPath expect, Rng & rng) {
    const int64_t M = c.M, N = c.N, K = c.K, ne2 = c.ne2, ldx = c.ldx ? c.ldx : K;
    const size_t  rb = row_bytes(t, K), w_nb1 = rb + c.w_pad;
    const auto    packed = random_weights(t, M * c.w_ne2, K, rng);
    std::vector<uint8_t> w(c.w_offset + w_nb1 * M * c.w_ne2, 0xa5);  // the gaps between rows: garbage
    for (int64_t r = 0; r < M * c.w_ne2; r++) {
        memcpy(w.data() + c.w_offset + r * w_nb1, packed.data() + r * rb, rb);
    }
    std::vector<float> x;
    if (c.uniform) {
        x.resize((size_t) (N * ne2 * ldx));
        for (auto & v : x) {
            v = (float) (2.0 * rng.uniform() - 1.0);
        }
    } else {
        x = random_activations(N * ne2, ldx, rng);
    }
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size());
    dx.upload(x);
    DeviceBuffer<float> out(M * N * ne2);
    out.poison();
    bonsai_cuda_matmul_args a = {};
    a.type = t.id;
    a.w = dw.ptr + c.w_offset; a.M = M; a.K = K; a.w_ne2 = c.w_ne2; a.w_ne3 = 1;
    a.w_nb1 = w_nb1; a.w_nb2 = w_nb1 * M; a.w_nb3 = w_nb1 * M * c.w_ne2;
    a.x = dx.ptr; a.N = N; a.ne2 = ne2; a.ne3 = 1; a.x_nb0 = 4; a.x_nb1 = ldx * 4; a.x_nb2 = ldx * 4 * N; a.x_nb3 = a.x_nb2 * ne2;
    a.dst = out.ptr; a.d_nb1 = M * 4; a.d_nb2 = M * N * 4; a.d_nb3 = a.d_nb2 * ne2;
    DeviceBuffer<uint8_t> scratch(bonsai_cuda_matmul_scratch_bytes(&a));
    CUDA_OK(bonsai_cuda_matmul(&a, scratch.ptr, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = out.download(M * N * ne2);

    std::vector<float> wf(K), xq, scales;
    double e_int8 = 0.0, e_exact = 0.0, ref2 = 0.0, ref_q2 = 0.0, worst = 0.0;  // worst: error / bound
    int64_t bad = 0;
    for (int64_t s = 0; s < ne2; s++) {
        const int64_t ws = s / (ne2 / c.w_ne2);
        for (int64_t n = 0; n < N; n++) {
            const float * xr = x.data() + (s * N + n) * ldx;
            cpu_matvec_round(xr, K, xq, scales);
            for (int64_t m = 0; m < M; m++) {
                cpu_dequantize_row(t, w.data() + c.w_offset + (ws * M + m) * w_nb1, wf.data(), K);
                double ref = 0.0, ref_q = 0.0, bound = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    const double wk = wf[k], sk = scales[k / 32];
                    ref += wk * xr[k];
                    ref_q += wk * xq[k];
                    bound += std::fabs(wk) * (sk / 2 + 1e-5 * (std::fabs((double) xr[k]) + sk));
                }
                const double g = got[(s * N + n) * M + m];
                bad += !std::isfinite(g);
                e_int8 += (g - ref_q) * (g - ref_q);
                e_exact += (g - ref) * (g - ref);
                ref2 += ref * ref;
                ref_q2 += ref_q * ref_q;
                worst = std::max(worst, bound > 0 ? std::fabs(g - ref) / bound : (g == ref ? 0.0 : INFINITY));
            }
        }
    }
    const double r_int8 = std::sqrt(e_int8 / ref_q2), r_exact = std::sqrt(e_exact / ref2), nmse = e_exact / ref2;
    const bool   is_int8 = r_int8 < 1e-5, is_f32 = r_exact < 1e-5;
    const char * path    = is_int8 ? "int8" : is_f32 ? "f32" : "neither";
    const bool   path_ok = (is_int8 && expect != MatvecPath::F32) || (is_f32 && expect != MatvecPath::INT8);
    const bool   ok      = bad == 0 && path_ok && worst <= 1.0 && (!c.uniform || nmse < 1e-4);
    CHECK(ok, "%s mat-vec M=%lld N=%lld K=%lld slices %lld/%lld ldx %lld row gap %lld offset %lld: %s path (expected %s), "
          "error vs the int8 reference %.3g, vs exact %.3g (nmse %.3g), worst error / bound %.3g",
          t.name, (long long) M, (long long) N, (long long) K, (long long) c.w_ne2, (long long) ne2, (long long) ldx,
          (long long) c.w_pad, (long long) c.w_offset, path,
          expect == MatvecPath::INT8 ? "int8" : expect == MatvecPath::F32 ? "f32" : "either", r_int8, r_exact, nmse, worst);
    printf("  %-7s mat-vec M=%-6lld N=%lld K=%-5lld slices %lld/%lld ldx %-5lld gap %lld off %lld%s: %-4s vs ref %.1e, "
           "vs exact %.1e, error/bound %.2f %s\n",
           t.name, (long long) M, (long long) N, (long long) K, (long long) c.w_ne2, (long long) ne2, (long long) ldx,
           (long long) c.w_pad, (long long) c.w_offset, c.uniform ? " uniform" : "", path, is_int8 ? r_int8 : r_exact,
           r_exact, worst, ok ? "ok" : "FAIL");
}

// Every type: N = 1..8; row tails (M not a multiple of anything); K of 1, 3 (rows of an odd
// number of 18- or 34-byte chunks start at alternating 4-byte phases), 8, 25 and 96 chunks; rows
// with gaps between them and weights starting 2 bytes past alignment (the copy's edge pieces);
// strided (gathered) and broadcast activations; more rows than one block's share; K too long for
// the activations to fit in shared memory at N = 8 (the f32 kernel).
static void check_matvecs() {
    Rng rng(7);
    for (const auto & t : TYPES) {
        for (int64_t n = 1; n <= BONSAI_CUDA_MMV_MAX_COLS; n++) {
            check_matvec(t, {333, n, 1024}, MatvecPath::INT8, rng);
        }
        check_matvec(t, {77, 1, 128}, MatvecPath::INT8, rng);
        check_matvec(t, {301, 3, 384}, MatvecPath::INT8, rng);
        check_matvec(t, {64, 2, 3200}, MatvecPath::INT8, rng);
        check_matvec(t, {1, 1, 12288}, MatvecPath::INT8, rng);
        MatvecCase gaps = {200, 2, 384};
        gaps.w_pad      = 6;
        gaps.w_offset   = 2;
        check_matvec(t, gaps, MatvecPath::INT8, rng);
        MatvecCase strided = {130, 4, 512};
        strided.w_ne2      = 2;
        strided.ne2        = 4;
        strided.ldx        = 513;
        check_matvec(t, strided, MatvecPath::INT8, rng);
        MatvecCase uniform = {1000, 1, 3072};
        uniform.uniform    = true;
        check_matvec(t, uniform, MatvecPath::INT8, rng);
        check_matvec(t, {70, 8, 32768}, MatvecPath::F32, rng);
    }
    check_matvec(TYPES[0], {140000, 2, 128}, MatvecPath::INT8, rng);  // 531 rows per block: capped at 512
}

// ---- accuracy on DiT shapes: int8 per 128 vs per 32 (q8_1) vs bf16 ----------------------------

static float round_bf16(float v) {
    return __bfloat162float(__float2bfloat16_rn(v));
}

struct ShapeMNK {
    int64_t M, K;
    const char * name;
};
static const ShapeMNK DIT_SHAPES[] = {
    {3072, 3072, "proj"},  {9216, 3072, "qkv"},       {18432, 3072, "mlp_in"},
    {3072, 9216, "mlp_out"}, {27648, 3072, "linear1"}, {3072, 12288, "linear2"},
};
static const int64_t DIT_TOKENS[] = {512, 4096, 4608};

// ---- timing -------------------------------------------------------------------------------------

// Median over 5 rounds of the time per call of f(), which enqueues its work on `stream` (the
// events are recorded there: a non-blocking stream does not wait for the legacy default one).
template <typename F> static double time_us(F && f, int reps = 10, cudaStream_t stream = 0) {
    for (int i = 0; i < 3; i++) {
        f();
    }
    CUDA_OK(cudaDeviceSynchronize());
    cudaEvent_t start, stop;
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreate(&stop));
    std::vector<double> rounds;
    for (int r = 0; r < 5; r++) {
        CUDA_OK(cudaEventRecord(start, stream));
        for (int i = 0; i < reps; i++) {
            f();
        }
        CUDA_OK(cudaEventRecord(stop, stream));
        CUDA_OK(cudaEventSynchronize(stop));
        float ms = 0;
        CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
        rounds.push_back(1000.0 * ms / reps);
    }
    CUDA_OK(cudaGetLastError());
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::sort(rounds.begin(), rounds.end());
    return rounds[rounds.size() / 2];
}

static void dit_accuracy_and_perf(bool perf) {
    Rng rng(1234);
#ifdef BONSAI_HAVE_CUBLAS
    cublasHandle_t handle;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        exit(2);
    }
#endif
    printf("\nDiT shapes (dst = W x, W: M x K low-bit, x: N tokens of K, f32 out)\n");
    printf("%-8s %6s %6s %6s | %-7s %8s %6s %6s | %11s | f16 pre-pass us, pre-pass + GEMM with K in two (cfg 1) us | "
           "f16 GEMM TFLOPS without the pre-pass: the plan | configurations 1 2 3, K whole | 1 3, K in two | 1 2 3, stream-K\n",
           "layer", "M", "N", "K", "type", "us", "TFLOPS", "vs bf16", "int8 TFLOPS");
    for (const auto & shape : DIT_SHAPES) {
        if (g_quick && strcmp(shape.name, "qkv") != 0 && strcmp(shape.name, "linear2") != 0) {
            continue;
        }
        const int64_t M = shape.M, K = shape.K;
        // One set of weights per shape and type, reused for every token count.
        std::vector<std::vector<uint8_t>> weights;
        std::vector<DeviceBuffer<uint8_t> *> dweights;
        for (const auto & t : TYPES) {
            weights.push_back(random_weights(t, M, K, rng));
            dweights.push_back(new DeviceBuffer<uint8_t>(weights.back().size()));
            dweights.back()->upload(weights.back());
        }
#ifdef BONSAI_HAVE_CUBLAS
        DeviceBuffer<nv_bfloat16> dwb(M * K);
        if (perf) {
            std::vector<nv_bfloat16> wb(M * K);
            for (auto & v : wb) v = __float2bfloat16_rn((float) (0.02 * rng.uniform() - 0.01));
            dwb.upload(wb);
        }
#endif
        for (const int64_t N : DIT_TOKENS) {
            if (g_tokens > 0 && N != g_tokens) {
                continue;
            }
            const double flops = 2.0 * M * N * K;
            const auto x = random_activations(N, K, rng);
            DeviceBuffer<float> dx(x.size());
            dx.upload(x);
            DeviceBuffer<float> out(M * N);

            double bf16_us = 0;
#ifdef BONSAI_HAVE_CUBLAS
            if (perf) {
                double f16_us = 0, i8_us = 0;
                // cuBLAS on the same shape: W (M x K, K contiguous) times x^T, f32 out. The f16 and
                // int8 runs reuse the bf16 bytes (finite, non-zero values either way).
                std::vector<nv_bfloat16> xb(N * K);
                for (int64_t i = 0; i < N * K; i++) xb[i] = __float2bfloat16_rn(x[i]);
                DeviceBuffer<nv_bfloat16> dxb(xb.size());
                dxb.upload(xb);
                const float one = 1.0f, zero = 0.0f;
                bf16_us = time_us([&] {
                    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int) M, (int) N, (int) K, &one, dwb.ptr, CUDA_R_16BF, (int) K,
                                 dxb.ptr, CUDA_R_16BF, (int) K, &zero, out.ptr, CUDA_R_32F, (int) M, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT);
                });
                f16_us = time_us([&] {
                    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int) M, (int) N, (int) K, &one, dwb.ptr, CUDA_R_16F, (int) K,
                                 dxb.ptr, CUDA_R_16F, (int) K, &zero, out.ptr, CUDA_R_32F, (int) M, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT);
                });
                const int32_t ione = 1, izero = 0;
                i8_us = time_us([&] {
                    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int) M, (int) N, (int) K, &ione, dwb.ptr, CUDA_R_8I, (int) K,
                                 dxb.ptr, CUDA_R_8I, (int) K, &izero, out.ptr, CUDA_R_32I, (int) M, CUBLAS_COMPUTE_32I,
                                 CUBLAS_GEMM_DEFAULT);
                });
                for (auto [name, t_us] : {std::pair<const char *, double>{"cublas_bf16", bf16_us}, {"cublas_f16", f16_us},
                                          {"cublas_int8", i8_us}}) {
                    json_record(jstr("kind", "gemm") + ", " + jstr("layer", shape.name) + ", " + jstr("type", name) + ", " +
                                jnum("M", M) + ", " + jnum("N", N) + ", " + jnum("K", K) + ", " + jnum("us", t_us) + ", " +
                                jnum("tflops", flops / t_us * 1e-6));
                }
                printf("%-8s %6lld %6lld %6lld | %-7s %9.1f %8.1f | cuBLAS f16 %.1f TFLOPS, int8 %.1f TOPS\n", shape.name,
                       (long long) M, (long long) N, (long long) K, "bf16", bf16_us, flops / bf16_us * 1e-6,
                       flops / f16_us * 1e-6, flops / i8_us * 1e-6);
            }
#endif
            for (size_t ti = 0; ti < sizeof(TYPES) / sizeof(TYPES[0]); ti++) {
                const auto & t = TYPES[ti];
                const auto & w = weights[ti];
                bonsai_cuda_matmul_args a = {};
                a.type = t.id;
                a.w = dweights[ti]->ptr; a.M = M; a.K = K; a.w_ne2 = 1; a.w_ne3 = 1; a.w_nb1 = row_bytes(t, K); a.w_nb2 = a.w_nb1 * M; a.w_nb3 = a.w_nb2;
                a.x = dx.ptr; a.N = N; a.ne2 = 1; a.ne3 = 1; a.x_nb0 = 4; a.x_nb1 = K * 4; a.x_nb2 = K * 4 * N; a.x_nb3 = a.x_nb2;
                a.dst = out.ptr; a.d_nb1 = M * 4; a.d_nb2 = M * N * 4; a.d_nb3 = a.d_nb2;
                DeviceBuffer<uint8_t> scratch(bonsai_cuda_matmul_scratch_bytes(&a));
                out.poison();
                CUDA_OK(bonsai_cuda_matmul(&a, scratch.ptr, 0));
                CUDA_OK(cudaDeviceSynchronize());

                // accuracy on sampled outputs against float64: the entry point's path, the int8
                // path, and emulated per-32 int8 (ggml's q8_1) and bf16 operands
                if (N == 4608 || (N == 512 && t.id == BONSAI_TYPE_PQ2_0)) {
                    const auto got = out.download(M * N);
                    DeviceBuffer<int8_t> q(bonsai_cuda_act_rows(N) * (K / 128) * 128);
                    DeviceBuffer<float4> sc(bonsai_cuda_act_rows(N) * (K / 128));
                    CUDA_OK(bonsai_cuda_quantize_act(dx.ptr, K, N, 4, K * 4, q.ptr, sc.ptr, 0));
                    CUDA_OK(bonsai_cuda_gemm_q8(t.id, a.w, M, K, a.w_nb1, q.ptr, sc.ptr, N, out.ptr, M * 4, 0, 0));
                    const auto got8 = out.download(M * N);
                    std::vector<float> wf(K);
                    double emain = 0, e128 = 0, e32 = 0, ebf = 0, r2 = 0;
                    int64_t nonfinite = 0;
                    for (int i = 0; i < 512; i++) {
                        const int64_t m = (int64_t) (rng.next() % M), n = (int64_t) (rng.next() % N);
                        cpu_dequantize_row(t, w.data() + m * a.w_nb1, wf.data(), K);
                        const float * xr = x.data() + n * K;
                        double ref = 0, q32 = 0, bf = 0;
                        for (int64_t c = 0; c < K; c += 32) {
                            float amax = 0;
                            for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(xr[c + j]));
                            const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
                            double part = 0;
                            for (int j = 0; j < 32; j++) {
                                ref += (double) wf[c + j] * xr[c + j];
                                part += (double) wf[c + j] * std::nearbyint(xr[c + j] * id);
                                bf += (double) round_bf16(wf[c + j]) * round_bf16(xr[c + j]);
                            }
                            q32 += part * d;
                        }
                        const double g = got[n * M + m], g8 = got8[n * M + m];
                        nonfinite += !std::isfinite(g) + !std::isfinite(g8);
                        emain += (g - ref) * (g - ref);
                        e128 += (g8 - ref) * (g8 - ref);
                        e32 += (q32 - ref) * (q32 - ref);
                        ebf += (bf - ref) * (bf - ref);
                        r2 += ref * ref;
                    }
                    const double relmain = std::sqrt(emain / r2), rel128 = std::sqrt(e128 / r2);
                    const double rel32 = std::sqrt(e32 / r2), relbf = std::sqrt(ebf / r2);
                    CHECK(nonfinite == 0 && relmain < 3e-2 && rel128 < 3e-2, "%s %s N=%lld: errors %.3g (entry point), %.3g (int8)",
                          t.name, shape.name, (long long) N, relmain, rel128);
                    json_record(jstr("kind", "accuracy") + ", " + jstr("layer", shape.name) + ", " + jstr("type", t.name) + ", " +
                                jnum("M", M) + ", " + jnum("N", N) + ", " + jnum("K", K) + ", " + jnum("rel_err_entry_point", relmain) +
                                ", " + jnum("rel_err_int8_per128", rel128) + ", " + jnum("rel_err_int8_per32_q8_1", rel32) + ", " +
                                jnum("rel_err_bf16", relbf));
                    printf("%-8s %6lld %6lld %6lld | %-7s rel err: entry point %.2e, int8/128 %.2e, int8/32 (q8_1) %.2e, bf16 %.2e\n",
                           shape.name, (long long) M, (long long) N, (long long) K, t.name, relmain, rel128, rel32, relbf);
                }
                if (!perf) {
                    continue;
                }
                // the entry point (pre-pass + GEMM, the path ggml takes), then each GEMM alone
                const double us = time_us([&] { bonsai_cuda_matmul(&a, scratch.ptr, 0); });
                DeviceBuffer<int8_t> q(bonsai_cuda_act_rows(N) * (K / 128) * 128);
                DeviceBuffer<float4> s(bonsai_cuda_act_rows(N) * (K / 128));
                CUDA_OK(cudaGetLastError());
                const double i8_pre_us = time_us([&] { bonsai_cuda_quantize_act(dx.ptr, K, N, 4, K * 4, q.ptr, s.ptr, 0); });
                const double i8_us = time_us([&] {
                    bonsai_cuda_gemm_q8(t.id, a.w, M, K, a.w_nb1, q.ptr, s.ptr, N, out.ptr, M * 4, 0, 0);
                });
                std::string line = jstr("kind", "gemm") + ", " + jstr("layer", shape.name) + ", " + jstr("type", t.name) + ", " +
                                   jnum("M", M) + ", " + jnum("N", N) + ", " + jnum("K", K) + ", " + jnum("us", us) + ", " +
                                   jnum("tflops", flops / us * 1e-6) + ", " + jnum("vs_cublas_bf16", bf16_us > 0 ? bf16_us / us : 0) +
                                   ", " + jnum("int8_gemm_us", i8_us) + ", " + jnum("int8_prepass_us", i8_pre_us);
                std::string cfgs;
#ifdef BONSAI_CUDA_SM90
                DeviceBuffer<half> h(bonsai_cuda_act_f16_rows(N) * K);
                const double f16_pre_us = time_us([&] { bonsai_cuda_convert_act_f16(t.id, dx.ptr, K, N, 4, K * 4, h.ptr, nullptr, 0, 0); });
                line += ", " + jnum("f16_prepass_us", f16_pre_us);
                // the plan the shape picks; each configuration with K whole; 1 and 3 with K in two;
                // each configuration stream-K over a full wave of blocks
                const int variants[][3] = {{0, 0, 0}, {1, 1, 0}, {2, 1, 0}, {3, 1, 0}, {1, 2, 0}, {3, 2, 0}, {1, 0, -1}, {2, 0, -1}, {3, 0, -1}};
                size_t workspace_bytes = 0;
                for (const auto & v : variants) {
                    const int blocks = v[2] < 0 ? bonsai_cuda_gemm_f16_max_blocks(v[0]) : v[2];
                    workspace_bytes = std::max(workspace_bytes, bonsai_cuda_gemm_f16_workspace(M, K, N, v[0], v[1], blocks));
                }
                DeviceBuffer<uint8_t> workspace(workspace_bytes);
                CUDA_OK(cudaMemset(workspace.ptr, 0, workspace_bytes));  // flags clear; each call leaves them so
                double split_us = 0;
                for (const auto & v : variants) {
                    if (v[0] > 0 && !f16_config_on(v[0])) {
                        continue;
                    }
                    const int blocks = v[2] < 0 ? bonsai_cuda_gemm_f16_max_blocks(v[0]) : v[2];
                    auto gemm = [&] {
                        return bonsai_cuda_gemm_f16(t.id, a.w, M, K, a.w_nb1, h.ptr, N, out.ptr, M * 4, v[0], v[1], blocks,
                                                    workspace.ptr, 0);
                    };
                    CUDA_OK(gemm());
                    const double cfg_us = time_us(gemm);
                    char key[32], buf[32];
                    if (v[0] == 0) {
                        snprintf(key, sizeof(key), "f16_chosen_us");
                    } else if (blocks > 0) {
                        snprintf(key, sizeof(key), "f16_cfg%d_streamk_us", v[0]);
                    } else {
                        snprintf(key, sizeof(key), "f16_cfg%d_k%d_us", v[0], v[1]);
                    }
                    line += ", " + jnum(key, cfg_us);
                    const bool group = (v[0] == 1 && v[2] == 0) || (v[0] == 1 && v[1] == 2) || (v[0] == 1 && blocks > 0);
                    snprintf(buf, sizeof(buf), "%s%5.0f", group ? " |" : " ", flops / cfg_us * 1e-6);
                    cfgs += buf;
                    if (v[0] == 1 && v[1] == 2) {
                        split_us = cfg_us;
                    }
                }
                // the whole op as the split of K in two ran it: pre-pass, GEMM, summing pass
                char ops[64];
                snprintf(ops, sizeof(ops), " | pre %5.1f, K in two %6.1f us", f16_pre_us, f16_pre_us + split_us);
                cfgs = ops + cfgs;
                CUDA_OK(cudaGetLastError());
#endif
                json_record(line);
                printf("%-8s %6lld %6lld %6lld | %-7s %8.1f %6.1f %5.2fx | int8 %6.1f |%s\n", shape.name, (long long) M,
                       (long long) N, (long long) K, t.name, us, flops / us * 1e-6, bf16_us > 0 ? bf16_us / us : 0.0,
                       flops / i8_us * 1e-6, cfgs.c_str());
            }
        }
        for (auto * d : dweights) {
            delete d;
        }
    }

#ifdef BONSAI_HAVE_CUBLAS
    cublasDestroy(handle);
#endif
}

// Time per call of f(stream) captured 20 times into one CUDA graph: the GPU's time with the
// gaps between back-to-back kernels but without the CPU's launch cost per call, which can exceed
// a small kernel's run time (test-backend-ops runs ggml's CUDA graphs the same way).
template <typename F> static double time_graph_us(F && f) {
    constexpr int CALLS = 20;
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < CALLS; i++) {
        f(stream);
    }
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    const double us = time_us([&] { CUDA_OK(cudaGraphLaunch(exec, stream)); }, 5, stream) / CALLS;
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
    return us;
}

// Mat-vec timings: N = 1 at the DiT's and the text encoder's shapes for every type, next to
// cuBLAS on f16 weights (f32 output) in the same run; then N = 2, 4, 8 for PQ2_0 at two shapes.
// Each call reads the same weights (they stay in L2 where they fit). Two times per call: launched
// one by one from the CPU ("stream"), and from a CUDA graph ("graph", see time_graph_us).
static void matvec_perf() {
    Rng rng(99);
#ifdef BONSAI_HAVE_CUBLAS
    cublasHandle_t handle;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        exit(2);
    }
#endif
    struct Shape {
        int64_t M, K;
        const char * name;
    };
    const Shape shapes[] = {{3072, 3072, "proj"},       {2560, 9728, "te_down"},  {9728, 2560, "te_up"},
                            {3072, 9216, "mlp_out"},    {9216, 3072, "qkv"},      {3072, 12288, "linear2"},
                            {18432, 3072, "mlp_in"},    {27648, 3072, "linear1"}};
    struct Times {
        double stream, graph;
    };
    auto time_type = [&](const TypeInfo & t, const Shape & shape, int64_t N, const float * dx, float * out) {
        const auto w = random_weights(t, shape.M, shape.K, rng);
        DeviceBuffer<uint8_t> dw(w.size());
        dw.upload(w);
        bonsai_cuda_matmul_args a = {};
        a.type = t.id;
        a.w = dw.ptr; a.M = shape.M; a.K = shape.K; a.w_ne2 = 1; a.w_ne3 = 1;
        a.w_nb1 = row_bytes(t, shape.K); a.w_nb2 = a.w_nb1 * shape.M; a.w_nb3 = a.w_nb2;
        a.x = dx; a.N = N; a.ne2 = 1; a.ne3 = 1; a.x_nb0 = 4; a.x_nb1 = shape.K * 4; a.x_nb2 = a.x_nb1 * N; a.x_nb3 = a.x_nb2;
        a.dst = out; a.d_nb1 = shape.M * 4; a.d_nb2 = a.d_nb1 * N; a.d_nb3 = a.d_nb2;
        Times times;
        times.stream = time_us([&] { bonsai_cuda_matmul(&a, nullptr, 0); }, 50);
        times.graph  = time_graph_us([&](cudaStream_t stream) { bonsai_cuda_matmul(&a, nullptr, stream); });
        return times;
    };

    printf("\nMat-vec, N = 1: us per call, stream / graph (x: cuBLAS f16 / this, graph)\n");
    for (const auto & shape : shapes) {
        const int64_t M = shape.M, K = shape.K;
        const auto x = random_activations(1, K, rng);
        DeviceBuffer<float> dx(x.size()), out(M);
        dx.upload(x);
        Times f16 = {0, 0};
#ifdef BONSAI_HAVE_CUBLAS
        {
            std::vector<half> wh(M * K), xh(K);
            for (auto & v : wh) v = __float2half_rn(0.01f * rng.normal());
            for (int64_t k = 0; k < K; k++) xh[k] = __float2half_rn(x[k]);
            DeviceBuffer<half> dwh(wh.size()), dxh(xh.size());
            dwh.upload(wh); dxh.upload(xh);
            const float one = 1.0f, zero = 0.0f;
            auto gemv = [&] {
                cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, (int) M, 1, (int) K, &one, dwh.ptr, CUDA_R_16F, (int) K,
                             dxh.ptr, CUDA_R_16F, (int) K, &zero, out.ptr, CUDA_R_32F, (int) M, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            };
            f16.stream = time_us(gemv, 50);
            f16.graph  = time_graph_us([&](cudaStream_t stream) {
                cublasSetStream(handle, stream);
                gemv();
            });
            cublasSetStream(handle, 0);
            json_record(jstr("kind", "matvec") + ", " + jstr("layer", shape.name) + ", " + jstr("type", "cublas_f16") + ", " +
                        jnum("M", M) + ", " + jnum("K", K) + ", " + jnum("N", 1) + ", " + jnum("us", f16.stream) + ", " +
                        jnum("graph_us", f16.graph));
        }
#endif
        printf("%-8s %5lld x %-5lld f16 %5.1f / %5.1f |", shape.name, (long long) M, (long long) K, f16.stream, f16.graph);
        for (const auto & t : TYPES) {
            const Times us = time_type(t, shape, 1, dx.ptr, out.ptr);
            json_record(jstr("kind", "matvec") + ", " + jstr("layer", shape.name) + ", " + jstr("type", t.name) + ", " +
                        jnum("M", M) + ", " + jnum("K", K) + ", " + jnum("N", 1) + ", " + jnum("us", us.stream) + ", " +
                        jnum("graph_us", us.graph) + ", " + jnum("vs_cublas_f16_graph", f16.graph > 0 ? f16.graph / us.graph : 0));
            printf(" %s %4.1f / %4.1f (%.1fx)", t.name, us.stream, us.graph, f16.graph > 0 ? f16.graph / us.graph : 0.0);
        }
        printf("\n");
    }

    printf("\nMat-vec, pq2_0, N = 2, 4, 8: us per call, stream / graph\n");
    for (const auto & shape : {shapes[0], shapes[7]}) {
        const auto x = random_activations(8, shape.K, rng);
        DeviceBuffer<float> dx(x.size()), out(shape.M * 8);
        dx.upload(x);
        printf("%-8s %5lld x %-5lld |", shape.name, (long long) shape.M, (long long) shape.K);
        for (int64_t N : {2, 4, 8}) {
            const Times us = time_type(TYPES[2], shape, N, dx.ptr, out.ptr);
            json_record(jstr("kind", "matvec") + ", " + jstr("layer", shape.name) + ", " + jstr("type", TYPES[2].name) + ", " +
                        jnum("M", shape.M) + ", " + jnum("K", shape.K) + ", " + jnum("N", (double) N) + ", " + jnum("us", us.stream) +
                        ", " + jnum("graph_us", us.graph));
            printf(" N=%lld %5.1f / %5.1f", (long long) N, us.stream, us.graph);
        }
        printf("\n");
    }
#ifdef BONSAI_HAVE_CUBLAS
    cublasDestroy(handle);
#endif
}

// One GEMM or mat-vec (N <= 8) (no checks), for a profiler: type, M, N, K, configuration (int8
// GEMM; 100 + c: f16 GEMM c).
static int profile_one(int type, int64_t M, int64_t N, int64_t K, int config) {
    const TypeInfo * t = nullptr;
    for (const auto & ti : TYPES) {
        if (ti.id == type) t = &ti;
    }
    if (!t) return 2;
    Rng rng(5);
    const auto w = random_weights(*t, M, K, rng);
    const auto x = random_activations(N, K, rng);
    DeviceBuffer<uint8_t> dw(w.size());
    dw.upload(w);
    DeviceBuffer<float> dx(x.size()), out(M * N);
    dx.upload(x);
    if (N <= BONSAI_CUDA_MMV_MAX_COLS) {  // the mat-vec, through the entry point
        bonsai_cuda_matmul_args a = {};
        a.type = type;
        a.w = dw.ptr; a.M = M; a.K = K; a.w_ne2 = 1; a.w_ne3 = 1; a.w_nb1 = row_bytes(*t, K); a.w_nb2 = a.w_nb1 * M; a.w_nb3 = a.w_nb2;
        a.x = dx.ptr; a.N = N; a.ne2 = 1; a.ne3 = 1; a.x_nb0 = 4; a.x_nb1 = K * 4; a.x_nb2 = a.x_nb1 * N; a.x_nb3 = a.x_nb2;
        a.dst = out.ptr; a.d_nb1 = M * 4; a.d_nb2 = a.d_nb1 * N; a.d_nb3 = a.d_nb2;
        for (int i = 0; i < 2; i++) {
            CUDA_OK(bonsai_cuda_matmul(&a, nullptr, 0));
        }
        CUDA_OK(cudaDeviceSynchronize());
        return 0;
    }
#ifdef BONSAI_CUDA_SM90
    if (config > 100) {  // the f16 GEMM, configuration config - 100
        DeviceBuffer<half> h(bonsai_cuda_act_f16_rows(N) * K);
        CUDA_OK(bonsai_cuda_convert_act_f16(type, dx.ptr, K, N, 4, K * 4, h.ptr, nullptr, 0, 0));
        for (int i = 0; i < 2; i++) {
            CUDA_OK(bonsai_cuda_gemm_f16(type, dw.ptr, M, K, row_bytes(*t, K), h.ptr, N, out.ptr, M * 4, config - 100, 1, 0,
                                         nullptr, 0));
        }
        CUDA_OK(cudaDeviceSynchronize());
        return 0;
    }
#endif
    const int64_t rows = bonsai_cuda_act_rows(N), chunks = bonsai_cuda_act_chunks(K);
    DeviceBuffer<int8_t> q(rows * chunks * 128);
    DeviceBuffer<float4> s(rows * chunks);
    CUDA_OK(bonsai_cuda_quantize_act(dx.ptr, K, N, 4, K * 4, q.ptr, s.ptr, 0));
    for (int i = 0; i < 2; i++) {
        CUDA_OK(bonsai_cuda_gemm_q8(type, dw.ptr, M, K, row_bytes(*t, K), q.ptr, s.ptr, N, out.ptr, M * 4, config, 0));
    }
    CUDA_OK(cudaDeviceSynchronize());
    return 0;
}

// Writes the JSON records (when asked) and the verdict; the exit status.
static int finish(const char * json_path, const cudaDeviceProp & prop) {
    if (json_path) {
        FILE * f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "cannot write %s\n", json_path);
            return 2;
        }
        fprintf(f, "{\"device\": \"%s\", \"sms\": %d, \"failures\": %d, \"records\": [\n", prop.name,
                prop.multiProcessorCount, g_failures);
        for (size_t i = 0; i < g_json.size(); i++) {
            fprintf(f, "  %s%s\n", g_json[i].c_str(), i + 1 < g_json.size() ? "," : "");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    printf("\n%s: %d failure(s)\n", g_failures == 0 ? "PASS" : "FAIL", g_failures);
    return g_failures == 0 ? 0 : 1;
}

int main(int argc, char ** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line into a pipe: a hang shows where it is
    const char * json_path = nullptr;
    bool perf = true, matvec_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            json_path = argv[++i];
        } else if (!strcmp(argv[i], "--no-perf")) {
            perf = false;
        } else if (!strcmp(argv[i], "--f16-configs") && i + 1 < argc) {
            for (const char * c = argv[++i]; *c; c++) {
                if (*c >= '1' && *c <= '9') {
                    g_f16_config[*c - '0'] = true;
                }
            }
        } else if (!strcmp(argv[i], "--quick")) {
            g_quick = true;
        } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
            g_tokens = atoll(argv[++i]);
        } else if (!strcmp(argv[i], "--matvec")) {
            matvec_only = true;
        } else if (!strcmp(argv[i], "--profile") && i + 5 < argc) {
            return profile_one(atoi(argv[i + 1]), atoll(argv[i + 2]), atoll(argv[i + 3]), atoll(argv[i + 4]), atoi(argv[i + 5]));
        } else {
            fprintf(stderr, "usage: %s [--json FILE] [--no-perf] [--quick] [--tokens N] [--matvec] [--f16-configs DIGITS] | --profile TYPE M N K CONFIG\n", argv[0]);
            return 2;
        }
    }
    bool any_config = false;
    for (bool on : g_f16_config) {
        any_config = any_config || on;
    }
    if (!any_config) {
        for (bool & on : g_f16_config) {
            on = true;
        }
    }
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);

    if (matvec_only) {
        printf("\nmat-vec (N <= 8) vs float64\n");
        check_matvecs();
        if (perf) {
            matvec_perf();
        }
        return finish(json_path, prop);
    }

    Rng rng(42);
    printf("\ncodecs\n");
    for (const auto & t : TYPES) {
        check_dequantize(t, rng);
        check_get_rows(t, rng);
        check_copies(t, rng);
    }
    printf("\nGEMM path\n");
    check_quantize_act(rng);
    for (const auto & t : TYPES) {
        for (int cfg = 1; cfg <= BONSAI_CUDA_GEMM_CONFIGS; cfg++) {
            check_gemm_exact(t, 200, 300, 768, cfg, rng, 0);
        }
        check_gemm_exact(t, 3072, 512, 3072, 0, rng, 2000);
#ifdef BONSAI_CUDA_SM90
        for (int cfg = 1; cfg <= BONSAI_CUDA_F16_CONFIGS; cfg++) {
            if (f16_config_on(cfg)) {
                check_gemm_f16_decode(t, cfg, 1);
                check_gemm_f16_decode(t, cfg, 3);
                check_gemm_f16_exact(t, 200, 300, 768, cfg, 1, 0, rng, 0);
                check_gemm_f16_exact(t, 130, 17, 128, cfg, 1, 0, rng, 0);  // one chunk; tails in M and N
                check_gemm_f16_exact(t, 200, 300, 768, cfg, 4, 0, rng, 0);  // K in 1 + 2 + 1 + 2 chunks
                // Stream-K, tails in M and N throughout. Configuration 1 has 4 tiles x 6 chunks
                // here: 7 blocks take shares of 3 or 4 chunks (each tile in two or three pieces),
                // 13 blocks cut every tile in three or four pieces (middle shares inside one
                // tile), 24 blocks one chunk each (six pieces a tile); the smaller tiles of
                // configurations 2 and 3 give shares over several tiles.
                check_gemm_f16_exact(t, 200, 300, 768, cfg, 0, 7, rng, 0);
                check_gemm_f16_exact(t, 200, 300, 768, cfg, 0, 13, rng, 0);
                check_gemm_f16_exact(t, 200, 300, 768, cfg, 0, 24, rng, 0);
                // Several tiles per share: K of one chunk (no tile split), then 6 chunks with
                // shares running over two or more tiles, starting and ending inside them.
                check_gemm_f16_exact(t, 700, 300, 128, cfg, 0, 5, rng, 0);
                check_gemm_f16_exact(t, 700, 300, 768, cfg, 0, 5, rng, 0);
                // A full wave of blocks (288 to 1056 chunks of tiles for 132 or 264 blocks).
                check_gemm_f16_exact(t, 700, 300, 3072, cfg, 0, bonsai_cuda_gemm_f16_max_blocks(cfg), rng, 4000);
            }
        }
        check_gemm_f16_exact(t, 3072, 512, 3072, 0, 0, 0, rng, 2000);
        check_gemm_f16_exact(t, 3072, 512, 9216, 0, 0, 0, rng, 500);  // the planner runs stream-K on all three
        check_gemm_f16_exact(t, 3072, 512, 12288, 0, 0, 0, rng, 500);
#endif
    }
    printf("\nMUL_MAT entry point vs float64\n");
    for (const auto & t : TYPES) {
        check_matmul(t, 130, 77, 512, 1, 3, 512, 3e-2, rng);   // slices folded into one GEMM
        check_matmul(t, 130, 40, 512, 2, 4, 520, 3e-2, rng);   // sliced weights: one GEMM per slice
    }

    printf("\nmat-vec (N <= 8) vs float64\n");
    check_matvecs();

    dit_accuracy_and_perf(perf);
    if (perf) {
        matvec_perf();
    }
    return finish(json_path, prop);
}

