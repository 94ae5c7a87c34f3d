#include "memory-checks.h"

#include <cinttypes>
#include <cstdio>

#include "util.h"

namespace bonsai {

namespace {

// " (CPU: 3.20 GiB free of 24.00 GiB)" as the device reports it, or "" when it does not.
std::string device_memory(ggml_backend_t backend) {
    ggml_backend_dev_t dev = backend != nullptr ? ggml_backend_get_device(backend) : nullptr;
    if (dev == nullptr) {
        return "";
    }
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(dev, &free, &total);
    if (total == 0) {
        return "";
    }
    return " (" + std::string(ggml_backend_dev_name(dev)) + ": " + format_bytes(free) + " free of " +
           format_bytes(total) + ")";
}

size_t count_tensors(ggml_context* ctx) {
    size_t n = 0;
    for (ggml_tensor* t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
        n++;
    }
    return n;
}

std::string device_name(ggml_backend_t backend) {
    return backend != nullptr ? ggml_backend_name(backend) : "the device";
}

}  // namespace

std::string format_bytes(uint64_t bytes) {
    char text[64];
    if (bytes < 1024) {
        snprintf(text, sizeof(text), "%" PRIu64 " bytes", bytes);
    } else if (bytes < (uint64_t{1} << 30)) {
        snprintf(text, sizeof(text), "%.2f MiB", bytes / (1024.0 * 1024.0));
    } else {
        snprintf(text, sizeof(text), "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
    }
    return text;
}

std::string context_alloc_error(size_t mem_size, const std::string& what) {
    return "not enough memory for " + what + ": its tensor metadata needs " + format_bytes(mem_size) + " of RAM";
}

std::string tensors_alloc_error(ggml_context* ctx, ggml_backend_t backend, const std::string& what) {
    const size_t need =
        ggml_backend_alloc_ctx_tensors_from_buft_size(ctx, ggml_backend_get_default_buffer_type(backend));
    return "not enough memory on " + device_name(backend) + " for " + what + ": " + format_bytes(need) +
           " needed for " + std::to_string(count_tensors(ctx)) + " tensors" + device_memory(backend);
}

std::string compute_alloc_error(ggml_gallocr_t allocr, ggml_cgraph* gf, ggml_backend_t backend,
                                const std::string& what) {
    size_t need = 0;
    ggml_gallocr_reserve_n_size(allocr, gf, nullptr, nullptr, &need);
    return "not enough memory on " + device_name(backend) + " to run " + what + ": its compute buffer needs " +
           format_bytes(need) + device_memory(backend) +
           "; it grows with the image size (and, for the text encoder, the prompt length)";
}

void report_loader_failure(const char* what) {
    LOG_ERROR("loading tensors failed: %s", what);
}

}  // namespace bonsai
