// Allocation failures in stable-diffusion.cpp become errors that say what needed how many bytes
// on which device. Upstream aborts on some (ggml_init's metadata pool, the cache buffer, a
// loader thread's std::bad_alloc, the text encoder's failed run) and, where it does report one,
// says only that a buffer could not be allocated.
#ifndef BONSAI_SDCPP_MEMORY_CHECKS_H
#define BONSAI_SDCPP_MEMORY_CHECKS_H

#include <atomic>
#include <cstdint>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

namespace bonsai {

// Not enough memory for something sd.cpp cannot go on without; what() names it, the bytes and
// the device. api-guards.cpp turns it into the failure of the C API call that was running.
class OutOfMemory : public std::bad_alloc {
public:
    explicit OutOfMemory(std::string message) : message_(std::move(message)) {}
    const char* what() const noexcept override { return message_.c_str(); }

private:
    std::string message_;
};

// "512 bytes", "12.00 MiB", "1.50 GiB"
std::string format_bytes(uint64_t bytes);

// The message for a ggml_init that could not allocate its `mem_size`-byte metadata pool.
std::string context_alloc_error(size_t mem_size, const std::string& what);

// `ctx` as ggml_init returned it (patch 0052 makes ggml_init return NULL when its metadata pool
// cannot be allocated); throws OutOfMemory when it is NULL. `describe()` names what the context
// was for; it is called only then (a runner's get_desc() is pure virtual in its constructor).
template <typename Describe>
ggml_context* require_context(ggml_context* ctx, size_t mem_size, Describe describe) {
    if (ctx == nullptr) {
        throw OutOfMemory(context_alloc_error(mem_size, describe()));
    }
    return ctx;
}

// The error line for a failed allocation of the tensors of `ctx` (weights, a cache) on `backend`.
std::string tensors_alloc_error(ggml_context* ctx, ggml_backend_t backend, const std::string& what);

// The error line for a failed compute buffer of graph `gf` (planned by `allocr`) on `backend`.
std::string compute_alloc_error(ggml_gallocr_t allocr, ggml_cgraph* gf, ggml_backend_t backend,
                                const std::string& what);

// Logs an exception that ended a model-loading thread (before it could stop the process).
void report_loader_failure(const char* what);

// Starts a model-loading thread running `body`. An exception `body` throws is logged and sets
// `failed` instead of terminating the process; a thread that cannot be started (no memory for
// its stack) sets `failed` too, and the threads already started are still joined by the caller.
template <typename Body>
void start_loader_thread(std::vector<std::thread>& threads, std::atomic<bool>& failed, Body body) {
    auto guarded = [&failed, body]() mutable {
        try {
            body();
        } catch (const std::exception& e) {
            report_loader_failure(e.what());
            failed = true;
        }
    };
    try {
        threads.emplace_back(std::move(guarded));
    } catch (const std::system_error& e) {
        report_loader_failure(e.what());
        failed = true;
    }
}

}  // namespace bonsai

#endif  // BONSAI_SDCPP_MEMORY_CHECKS_H
