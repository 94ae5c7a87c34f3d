// ggml operations exposed to Python for tests and benchmarks: the registered codecs
// (quantize, dequantize, validate) and MUL_MAT on the CPU backend, exactly as sd.cpp's
// graphs run them. Every argument is checked here, so bad input is a Python exception.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "lowbit.h"
#include "ops.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

ggml_type type_from_name(const std::string& name) {
    for (int id = 0; id < GGML_TYPE_COUNT; id++) {
        const ggml_type t = static_cast<ggml_type>(id);
        if (ggml_blck_size(t) != 0 && ggml_type_name(t) != nullptr && name == ggml_type_name(t)) {
            return t;
        }
    }
    throw py::value_error("unknown ggml type '" + name + "'");
}

void check_row_length(ggml_type type, int64_t k) {
    if (k <= 0 || k % ggml_blck_size(type) != 0) {
        throw py::value_error("row length " + std::to_string(k) + " is not a positive multiple of " +
                              ggml_type_name(type) + "'s block size " + std::to_string(ggml_blck_size(type)));
    }
}

// x: (rows, k) float32 -> bytes of `type`, through ggml_quantize_chunk (the converter's path).
py::bytes quantize(const std::string& type_name, const FloatArray& x) {
    const ggml_type type = type_from_name(type_name);
    if (x.ndim() != 2) {
        throw py::value_error("quantize expects a 2-D array (rows, row length)");
    }
    const int64_t rows = x.shape(0), k = x.shape(1);
    check_row_length(type, k);
    if (type != GGML_TYPE_F32 && type != GGML_TYPE_F16 && type != GGML_TYPE_BF16 &&
        ggml_get_type_traits(type)->from_float_ref == nullptr) {
        throw py::value_error(std::string("ggml cannot quantize to ") + ggml_type_name(type));
    }
    std::string out(ggml_row_size(type, k) * rows, '\0');
    {
        py::gil_scoped_release release;
        ggml_quantize_chunk(type, x.data(), out.data(), 0, rows, k, nullptr);
    }
    return py::bytes(out);
}

// bytes of `type` holding rows x k elements -> (rows, k) float32, through the type's to_float.
FloatArray dequantize(const std::string& type_name, const py::bytes& data, int64_t rows, int64_t k) {
    const ggml_type type = type_from_name(type_name);
    check_row_length(type, k);
    const std::string_view bytes = data;
    if (rows <= 0 || bytes.size() != ggml_row_size(type, k) * static_cast<size_t>(rows)) {
        throw py::value_error("expected " + std::to_string(ggml_row_size(type, k) * std::max<int64_t>(rows, 0)) +
                              " bytes for " + std::to_string(rows) + " rows of " + std::to_string(k) + " " +
                              ggml_type_name(type) + " elements, got " + std::to_string(bytes.size()));
    }
    const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
    if (to_float == nullptr) {
        throw py::value_error(std::string("ggml has no dequantization for ") + ggml_type_name(type));
    }
    FloatArray out({rows, k});
    to_float(bytes.data(), out.mutable_data(), rows * k);
    return out;
}

bool validate_row(const std::string& type_name, const py::bytes& data) {
    const std::string_view bytes = data;
    return ggml_validate_row_data(type_from_name(type_name), bytes.data(), bytes.size());
}

// A CPU-backend graph computing y = x @ W^T for W (m rows of k, stored as `type`).
class MulMatGraph {
public:
    // n activation rows in each of `batch` matrices; W is broadcast over the batch.
    MulMatGraph(ggml_type type, const std::string_view weights, int64_t m, int64_t k, int64_t n, int64_t batch) {
        const size_t w_bytes = ggml_row_size(type, k) * m;
        const size_t mem = w_bytes + sizeof(float) * static_cast<size_t>((k + m) * n * batch) +
                           4 * ggml_tensor_overhead() + ggml_graph_overhead() + 1024;
        ctx_ = ggml_init({mem, nullptr, false});
        if (ctx_ == nullptr) {
            throw std::bad_alloc();
        }
        w_ = ggml_new_tensor_2d(ctx_, type, k, m);
        x_ = ggml_new_tensor_3d(ctx_, GGML_TYPE_F32, k, n, batch);
        y_ = ggml_mul_mat(ctx_, w_, x_);
        graph_ = ggml_new_graph(ctx_);
        ggml_build_forward_expand(graph_, y_);
        memcpy(w_->data, weights.data(), w_bytes);
    }
    ~MulMatGraph() { ggml_free(ctx_); }
    MulMatGraph(const MulMatGraph&) = delete;
    MulMatGraph& operator=(const MulMatGraph&) = delete;

    float* input() { return static_cast<float*>(x_->data); }
    const float* output() const { return static_cast<const float*>(y_->data); }

    void compute(int n_threads) {
        ggml_cplan plan = ggml_graph_plan(graph_, n_threads, nullptr);
        work_.resize(plan.work_size);
        plan.work_data = work_.data();
        if (ggml_graph_compute(graph_, &plan) != GGML_STATUS_SUCCESS) {
            throw std::runtime_error("ggml_graph_compute failed");
        }
    }

private:
    ggml_context* ctx_ = nullptr;
    ggml_tensor* w_    = nullptr;
    ggml_tensor* x_    = nullptr;
    ggml_tensor* y_    = nullptr;
    ggml_cgraph* graph_ = nullptr;
    std::vector<uint8_t> work_;
};

ggml_type check_mul_mat_args(const std::string& type_name, const std::string_view weights, int64_t m, int64_t k,
                             int64_t n, int n_threads) {
    const ggml_type type = type_from_name(type_name);
    check_row_length(type, k);
    if (m <= 0 || n <= 0) {
        throw py::value_error("mul_mat needs at least one weight row and one activation row");
    }
    if (weights.size() != ggml_row_size(type, k) * static_cast<size_t>(m)) {
        throw py::value_error("weights hold " + std::to_string(weights.size()) + " bytes; " + std::to_string(m) +
                              " rows of " + std::to_string(k) + " " + ggml_type_name(type) + " elements need " +
                              std::to_string(ggml_row_size(type, k) * m));
    }
    if (ggml_get_type_traits_cpu(type)->vec_dot == nullptr && type != GGML_TYPE_F32) {
        throw py::value_error(std::string("the CPU backend has no MUL_MAT for ") + ggml_type_name(type));
    }
    if (n_threads < 1) {
        throw py::value_error("n_threads must be at least 1");
    }
    return type;
}

// x: (n, k) or (batch, n, k) float32 activations -> x @ W^T, shaped (n, m) or (batch, n, m).
FloatArray mul_mat(const std::string& type_name, const py::bytes& weights, int64_t m, const FloatArray& x,
                   int n_threads) {
    if (x.ndim() != 2 && x.ndim() != 3) {
        throw py::value_error("activations must be (tokens, row length) or (batch, tokens, row length)");
    }
    const int64_t batch = x.ndim() == 3 ? x.shape(0) : 1;
    const int64_t n = x.shape(x.ndim() - 2), k = x.shape(x.ndim() - 1);
    const std::string_view w = weights;
    const ggml_type type = check_mul_mat_args(type_name, w, m, k, n * batch, n_threads);
    MulMatGraph g(type, w, m, k, n, batch);
    std::memcpy(g.input(), x.data(), sizeof(float) * k * n * batch);
    {
        py::gil_scoped_release release;
        g.compute(n_threads);
    }
    FloatArray out = x.ndim() == 3 ? FloatArray({batch, n, m}) : FloatArray({n, m});
    std::memcpy(out.mutable_data(), g.output(), sizeof(float) * m * n * batch);
    return out;
}

// Seconds of each of `repeats` computations of one MUL_MAT (after one warm-up run), with
// deterministic pseudo-random activations in [-1, 1).
std::vector<double> time_mul_mat(const std::string& type_name, const py::bytes& weights, int64_t m, int64_t k,
                                 int64_t n, int n_threads, int repeats) {
    const std::string_view w = weights;
    const ggml_type type = check_mul_mat_args(type_name, w, m, k, n, n_threads);
    if (repeats < 1) {
        throw py::value_error("repeats must be at least 1");
    }
    MulMatGraph g(type, w, m, k, n, 1);
    uint32_t state = 12345;
    for (int64_t i = 0; i < k * n; i++) {
        state = state * 1664525u + 1013904223u;
        g.input()[i] = static_cast<float>(state >> 8) / static_cast<float>(1u << 23) - 1.0f;
    }
    std::vector<double> seconds;
    py::gil_scoped_release release;
    g.compute(n_threads);
    for (int r = 0; r < repeats; r++) {
        const auto t0 = std::chrono::steady_clock::now();
        g.compute(n_threads);
        seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return seconds;
}

}  // namespace

void register_ggml_ops(py::module_& m) {
    py::module_ ops = m.def_submodule("ggml", "ggml codecs and MUL_MAT on the CPU backend (tests, benchmarks)");
    ops.def("quantize", &quantize, py::arg("type"), py::arg("x"),
            "Quantize a (rows, k) float32 array with ggml_quantize_chunk; returns the bytes.");
    ops.def("dequantize", &dequantize, py::arg("type"), py::arg("data"), py::arg("rows"), py::arg("k"),
            "Dequantize rows x k elements with the type's registered to_float.");
    ops.def("validate_row", &validate_row, py::arg("type"), py::arg("data"),
            "ggml_validate_row_data on the bytes (whole blocks).");
    ops.def("mul_mat", &mul_mat, py::arg("type"), py::arg("weights"), py::arg("rows"), py::arg("x"),
            py::arg("n_threads") = 1, "x @ W^T on the CPU backend, W given as `rows` rows of `type` bytes.");
    ops.def("time_mul_mat", &time_mul_mat, py::arg("type"), py::arg("weights"), py::arg("rows"), py::arg("k"),
            py::arg("n"), py::arg("n_threads"), py::arg("repeats"),
            "Seconds per MUL_MAT run (after a warm-up), one entry per repeat.");
    ops.def("lowbit_simd", [] { return std::string(bonsai_lowbit_simd()); },
            "Which variant of the low-bit CPU kernels this build uses: avx2, neon or scalar.");
}
