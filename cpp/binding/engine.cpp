// bonsai_sd._core, the engine: sd.cpp contexts driven from Python.
//
// The pinned C API keeps its log, progress and abort callbacks in process globals (and formats
// log lines in a static buffer), so:
// - one trampoline per callback kind is installed once, at import; each forwards to the job
//   that is running (g_active_job) and never touches Python;
// - every engine call (load, generate, free) is a job run by one engine thread, one at a time,
//   in the order submitted, whichever Python thread submitted it;
// - meanwhile the submitting thread, holding the GIL, forwards the job's log records and
//   progress to Python, checks for KeyboardInterrupt, and waits with the GIL released. Python
//   callbacks therefore run in the caller's own thread, and no C callback ever needs the GIL.
// One long-lived engine thread (rather than one per call) also keeps the allocator's and the
// OpenMP runtime's per-thread state from being rebuilt on every call.

#include "engine.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef _WIN32
#include <unistd.h>
#endif

#include "generation-taps.h"
#include "ggml-backend.h"
#include "stable-diffusion.h"

namespace py = pybind11;

namespace {

constexpr auto kPumpInterval     = std::chrono::milliseconds(50);
constexpr size_t kMaxPendingLogs = 10000;
constexpr size_t kShownErrors    = 6;  // later errors usually repeat the first defect
constexpr int kMaxImageSide      = 16384;

// A generation stopped by Context.cancel().
class Cancelled : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// ---- jobs and the process-wide callbacks ---------------------------------------------------

struct LogRecord {
    sd_log_level_t level;
    std::string text;
    bool after_cancel;  // logged once a cancellation was requested: expected failures
};

struct ProgressEvent {
    int step;
    int steps;
    float seconds;  // sd.cpp's timing: seconds per step (or per tile) so far
};

// One engine call and what it reports. The engine side appends, the calling thread drains.
struct Job {
    std::mutex mutex;
    std::condition_variable changed;
    std::deque<LogRecord> logs;
    size_t dropped_logs = 0;
    std::deque<ProgressEvent> progress;
    std::vector<std::string> errors;  // the first kShownErrors error lines
    size_t error_count = 0;
    std::string exception;  // what a C++ exception escaping the engine call said
    bool done = false;
    std::atomic<bool> cancel{false};
};

std::atomic<Job*> g_active_job{nullptr};

// Messages logged while no job runs (ggml used directly); forwarded by the next pump or drain_logs().
std::mutex g_idle_log_mutex;
std::deque<LogRecord> g_idle_logs;

void on_sd_log(sd_log_level_t level, const char* text, void*) {
    std::string line = text != nullptr ? text : "";
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.pop_back();
    }
    Job* job = g_active_job.load(std::memory_order_acquire);
    if (job == nullptr) {
        std::lock_guard<std::mutex> lock(g_idle_log_mutex);
        if (g_idle_logs.size() < kMaxPendingLogs) {
            g_idle_logs.push_back({level, std::move(line), false});
        }
        return;
    }
    std::lock_guard<std::mutex> lock(job->mutex);
    if (level == SD_LOG_ERROR && job->error_count++ < kShownErrors) {
        job->errors.push_back(line);
    }
    if (job->logs.size() < kMaxPendingLogs) {
        job->logs.push_back({level, std::move(line), job->cancel.load(std::memory_order_relaxed)});
    } else {
        job->dropped_logs++;
    }
}

void on_sd_progress(int step, int steps, float seconds, void*) {
    Job* job = g_active_job.load(std::memory_order_acquire);
    if (job == nullptr) {
        return;
    }
    std::lock_guard<std::mutex> lock(job->mutex);
    job->progress.push_back({step, steps, seconds});
    job->changed.notify_all();
}

// Polled by the patched sd.cpp (ggml-patches/0010) between steps and between graph nodes.
bool on_sd_abort(void*) {
    Job* job = g_active_job.load(std::memory_order_acquire);
    return job != nullptr && job->cancel.load(std::memory_order_relaxed);
}

// ---- the engine thread ---------------------------------------------------------------------

struct Task {
    Job* job;
    std::function<void()> work;
};

// Runs submitted tasks one at a time, in order. Never destroyed: its thread is detached and
// outlives static destruction (a joinable std::thread destroyed at exit would terminate).
class EngineThread {
public:
    static EngineThread& get() {
        static std::mutex mutex;
        static EngineThread* engine = nullptr;
        std::lock_guard<std::mutex> lock(mutex);
        if (engine == nullptr || engine->pid_ != current_pid()) {
            engine = new EngineThread();  // a forked child has no engine thread: start its own
        }
        return *engine;
    }

    void submit(Task* task) {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(task);
        ready_.notify_one();
    }

    // Removes a task that has not started; false when it is running or finished.
    bool withdraw(Task* task) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = std::find(queue_.begin(), queue_.end(), task);
        if (it == queue_.end()) {
            return false;
        }
        queue_.erase(it);
        return true;
    }

private:
    EngineThread() : pid_(current_pid()) { std::thread([this] { loop(); }).detach(); }

    static long current_pid() {
#ifdef _WIN32
        return 0;
#else
        return static_cast<long>(getpid());
#endif
    }

    void loop() {
        for (;;) {
            Task* task = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                ready_.wait(lock, [this] { return !queue_.empty(); });
                task = queue_.front();
                queue_.pop_front();
            }
            Job& job = *task->job;
            if (!job.cancel.load()) {
                g_active_job.store(&job, std::memory_order_release);
                try {
                    task->work();
                } catch (const std::exception& e) {
                    job.exception = e.what();
                } catch (...) {
                    job.exception = "unknown C++ exception";
                }
                g_active_job.store(nullptr, std::memory_order_release);
            }
            // The submitter may destroy the task and the job as soon as it sees `done`.
            std::lock_guard<std::mutex> lock(job.mutex);
            job.done = true;
            job.changed.notify_all();
        }
    }

    const long pid_;
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<Task*> queue_;
};

// Runs `work` as a job and waits for it, without the GIL and without forwarding anything to
// Python (for destructors). GIL held on entry.
void run_job_quietly(std::function<void()> work) {
    Job job;
    Task task{&job, std::move(work)};
    py::gil_scoped_release nogil;
    EngineThread::get().submit(&task);
    std::unique_lock<std::mutex> lock(job.mutex);
    job.changed.wait(lock, [&] { return job.done; });
}

// ---- the calling thread's side -------------------------------------------------------------

int python_log_level(const LogRecord& r) {
    if (r.after_cancel) {
        return 10;  // DEBUG: a cancelled call's failure lines are not errors
    }
    switch (r.level) {
        case SD_LOG_DEBUG: return 10;
        case SD_LOG_INFO:  return 20;
        case SD_LOG_WARN:  return 30;
        case SD_LOG_ERROR: return 40;
    }
    return 20;
}

// Forwards records to logging.getLogger("bonsai_sd.engine"). GIL held.
void forward_logs(const std::deque<LogRecord>& records, size_t dropped) {
    if (records.empty() && dropped == 0) {
        return;
    }
    py::object logger = py::module_::import("logging").attr("getLogger")("bonsai_sd.engine");
    for (const LogRecord& r : records) {
        const int level = python_log_level(r);
        if (!logger.attr("isEnabledFor")(level).cast<bool>()) {
            continue;
        }
        auto text = py::reinterpret_steal<py::str>(
            PyUnicode_DecodeUTF8(r.text.data(), static_cast<Py_ssize_t>(r.text.size()), "replace"));
        logger.attr("log")(level, "%s", text);
    }
    if (dropped > 0) {
        logger.attr("warning")("%d engine log messages were dropped (too many at once)", dropped);
    }
}

void drain_idle_logs() {
    std::deque<LogRecord> records;
    {
        std::lock_guard<std::mutex> lock(g_idle_log_mutex);
        records.swap(g_idle_logs);
    }
    forward_logs(records, 0);
}

// Runs `work` as one engine call and forwards the job's messages to Python until it ends:
// `on_progress(step, steps, seconds)` for each progress report, log records to Python logging. A
// KeyboardInterrupt or an exception raised by `on_progress` cancels the job (a queued job is
// withdrawn, a generation stops at the engine's next check, a load runs to its end); it is
// returned, to be raised by the caller once it has cleaned up. `work` does not run when the job
// is cancelled before it starts. GIL held on entry and exit.
std::optional<py::error_already_set> run_job(Job& job, const py::object& on_progress, std::function<void()> work) {
    std::optional<py::error_already_set> interrupt;
    auto take = [&](py::error_already_set&& e) {
        if (!interrupt) {
            interrupt.emplace(std::move(e));
        }
        job.cancel.store(true);
    };
    try {
        drain_idle_logs();
    } catch (py::error_already_set& e) {
        take(std::move(e));
    }

    Task task{&job, std::move(work)};
    EngineThread& engine = EngineThread::get();
    engine.submit(&task);
    for (bool finished = false; !finished;) {
        std::deque<LogRecord> logs;
        std::deque<ProgressEvent> progress;
        size_t dropped = 0;
        {
            py::gil_scoped_release nogil;
            std::unique_lock<std::mutex> lock(job.mutex);
            job.changed.wait_for(lock, kPumpInterval, [&] { return job.done || !job.progress.empty(); });
            finished = job.done;
            logs.swap(job.logs);
            progress.swap(job.progress);
            std::swap(dropped, job.dropped_logs);
        }
        try {
            forward_logs(logs, dropped);
            for (const ProgressEvent& p : progress) {
                if (interrupt || on_progress.is_none()) {
                    break;
                }
                on_progress(p.step, p.steps, p.seconds);
            }
            if (!interrupt && PyErr_CheckSignals() != 0) {
                throw py::error_already_set();
            }
        } catch (py::error_already_set& e) {
            take(std::move(e));
        }
        if (!finished && job.cancel.load() && engine.withdraw(&task)) {
            break;  // it never started
        }
    }
    return interrupt;
}

std::string with_engine_errors(const std::string& what, const Job& job) {
    std::string msg = what;
    if (!job.exception.empty()) {
        msg += ": " + job.exception;
    } else if (!job.errors.empty()) {
        for (size_t i = 0; i < job.errors.size(); i++) {
            msg += (i ? "; " : ": ") + job.errors[i];
        }
        if (job.error_count > job.errors.size()) {
            msg += "; ... and " + std::to_string(job.error_count - job.errors.size()) + " more errors (see the log)";
        }
    } else {
        msg += " (sd.cpp gave no reason; enable DEBUG logging of 'bonsai_sd.engine' for details)";
    }
    return msg;
}

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

// ---- contexts ------------------------------------------------------------------------------

struct ImageData {
    uint32_t width    = 0;
    uint32_t height   = 0;
    uint32_t channels = 0;
    std::vector<uint8_t> pixels;  // rows of width x channels bytes
};

ImageData image_from_python(const py::handle& item, size_t index) {
    auto t = item.cast<py::tuple>();
    if (t.size() != 3) {
        throw py::value_error("reference image " + std::to_string(index) + ": expected (width, height, RGB bytes)");
    }
    ImageData img;
    const long width  = t[0].cast<long>();
    const long height = t[1].cast<long>();
    const std::string bytes = t[2].cast<std::string>();
    if (width < 1 || height < 1 || width > kMaxImageSide || height > kMaxImageSide) {
        throw py::value_error("reference image " + std::to_string(index) + ": size " + std::to_string(width) + "x" +
                              std::to_string(height) + " is out of range");
    }
    if (bytes.size() != static_cast<size_t>(width) * static_cast<size_t>(height) * 3) {
        throw py::value_error("reference image " + std::to_string(index) + ": " + std::to_string(bytes.size()) +
                              " bytes for " + std::to_string(width) + "x" + std::to_string(height) + " RGB");
    }
    img.width    = static_cast<uint32_t>(width);
    img.height   = static_cast<uint32_t>(height);
    img.channels = 3;
    img.pixels.assign(bytes.begin(), bytes.end());
    return img;
}

// Copies the images generate_image() returned and frees them (each image's data, then the array).
std::vector<ImageData> take_images(sd_image_t* images, int count) {
    std::vector<ImageData> out;
    if (images == nullptr) {
        return out;
    }
    for (int i = 0; i < count; i++) {
        sd_image_t& img = images[i];
        if (img.data != nullptr) {
            ImageData copy;
            copy.width    = img.width;
            copy.height   = img.height;
            copy.channels = img.channel;
            copy.pixels.assign(img.data, img.data + static_cast<size_t>(img.width) * img.height * img.channel);
            out.push_back(std::move(copy));
            free(img.data);
        }
    }
    free(images);
    return out;
}

// ---- tensors for the testing/expert entry points (generation-taps.h) -------------------------

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// `obj` as a C-contiguous float32 array (converted when it is not one) with `dims` dimensions
// (a leading batch dimension of 1 is dropped), or a ValueError naming `what`.
FloatArray float_array(const py::handle& obj, const char* what, int dims, const char* layout) {
    FloatArray a = FloatArray::ensure(obj);
    if (!a) {
        throw py::value_error(std::string(what) + ": expected a float array " + layout);
    }
    if (a.ndim() == dims + 1 && a.shape(0) == 1) {
        std::vector<py::ssize_t> shape(a.shape() + 1, a.shape() + a.ndim());
        a = FloatArray::ensure(a.reshape(shape));
    }
    if (a.ndim() != dims) {
        throw py::value_error(std::string(what) + ": expected " + std::to_string(dims) + " dimensions " + layout +
                              ", got " + std::to_string(a.ndim()));
    }
    for (int i = 0; i < dims; i++) {
        if (a.shape(i) < 1) {
            throw py::value_error(std::string(what) + ": empty dimension " + std::to_string(i));
        }
    }
    return a;
}

// A view in ggml order (the last numpy dimension varies fastest) of an array float_array() made.
bonsai_tensor_view_t tensor_view(const FloatArray& a) {
    bonsai_tensor_view_t v{a.data(), {1, 1, 1, 1}};
    for (py::ssize_t i = 0; i < a.ndim(); i++) {
        v.ne[i] = static_cast<int64_t>(a.shape(a.ndim() - 1 - i));
    }
    return v;
}

// Owns a tensor the engine returned (malloc'd).
struct EngineTensor {
    bonsai_tensor_t t{nullptr, {0, 0, 0, 0}};
    EngineTensor() = default;
    EngineTensor(const EngineTensor&) = delete;
    EngineTensor& operator=(const EngineTensor&) = delete;
    ~EngineTensor() { free(t.data); }
};

// A numpy copy of a width x height x channels engine tensor, shaped [channels, height, width].
py::array_t<float> chw_array(const float* data, const int64_t* ne) {
    py::array_t<float> out({static_cast<py::ssize_t>(ne[2]), static_cast<py::ssize_t>(ne[1]),
                            static_cast<py::ssize_t>(ne[0])});
    std::memcpy(out.mutable_data(), data, static_cast<size_t>(ne[0] * ne[1] * ne[2]) * sizeof(float));
    return out;
}

// What a tapped generation reports, collected on the engine thread.
struct GenerationTrace {
    std::vector<float> sigmas;
    std::vector<std::vector<float>> latents;
    std::vector<std::array<int64_t, 3>> latent_shapes;  // width, height, channels

    static void on_sigmas(const float* sigmas, size_t count, void* user) {
        static_cast<GenerationTrace*>(user)->sigmas.assign(sigmas, sigmas + count);
    }
    static void on_latent(bonsai_tensor_view_t latent, void* user) {
        auto* self        = static_cast<GenerationTrace*>(user);
        const size_t size = static_cast<size_t>(latent.ne[0] * latent.ne[1] * latent.ne[2] * latent.ne[3]);
        self->latents.emplace_back(latent.data, latent.data + size);
        self->latent_shapes.push_back({latent.ne[0], latent.ne[1], latent.ne[2] * latent.ne[3]});
    }
};

template <typename NameOf>
int enum_from_name(const std::string& name, int count, NameOf name_of, const char* what) {
    std::string known;
    for (int i = 0; i < count; i++) {
        if (name == name_of(i)) {
            return i;
        }
        known += std::string(i ? ", " : "") + name_of(i);
    }
    throw py::value_error("unknown " + std::string(what) + " '" + name + "' (known: " + known + ")");
}

// Whether sd.cpp builds the VAE's convolutions as single CONV_2D nodes (vae_conv_direct): when the
// VAE runs on a CUDA device, where ggml-cuda computes them with bonsai-sd's implicit-GEMM kernel
// (cpp/cuda/cuda-conv2d.h) instead of IM2COL + MUL_MAT + a permuting copy. The CPU and Metal keep
// ggml's im2col path. BONSAI_SD_CUDA_IM2COL_CONV (set, not "0") keeps it on CUDA too, for
// before/after measurements. `device` empty: sd.cpp's default, the first GPU, else an integrated one.
bool vae_convolves_directly(const std::string& device, bool keep_vae_on_cpu) {
    const char* im2col = std::getenv("BONSAI_SD_CUDA_IM2COL_CONV");
    if (keep_vae_on_cpu || (im2col != nullptr && im2col[0] != '\0' && im2col[0] != '0')) {
        return false;
    }
    ggml_backend_dev_t dev = nullptr;
    if (device.empty()) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
        if (dev == nullptr) {
            dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
        }
    } else {
        dev = ggml_backend_dev_by_name(device.c_str());
    }
    ggml_backend_reg_t reg = dev != nullptr ? ggml_backend_dev_backend_reg(dev) : nullptr;
    return reg != nullptr && std::strcmp(ggml_backend_reg_name(reg), "CUDA") == 0;
}

// Generation parameters with the size and the sampling plan set (the rest at sd.cpp's defaults).
// `custom_sigmas` must outlive them.
sd_img_gen_params_t sampling_params(int width, int height, int steps, const std::string& sample_method,
                                    const std::string& scheduler, std::vector<float>& custom_sigmas) {
    if (width < 16 || height < 16 || width > kMaxImageSide || height > kMaxImageSide || width % 16 || height % 16) {
        throw py::value_error("width and height must be multiples of 16 in [16, " + std::to_string(kMaxImageSide) +
                              "], got " + std::to_string(width) + "x" + std::to_string(height));
    }
    if (steps < 1 && custom_sigmas.empty()) {
        throw py::value_error("steps must be >= 1, got " + std::to_string(steps));
    }
    if (!custom_sigmas.empty() && custom_sigmas.size() < 2) {
        throw py::value_error("sigmas needs at least two values (one step)");
    }
    sd_img_gen_params_t p;
    sd_img_gen_params_init(&p);
    p.width                      = width;
    p.height                     = height;
    p.sample_params.sample_steps = custom_sigmas.empty() ? steps : static_cast<int>(custom_sigmas.size()) - 1;
    if (!sample_method.empty()) {
        p.sample_params.sample_method = static_cast<sample_method_t>(enum_from_name(
            sample_method, SAMPLE_METHOD_COUNT,
            [](int i) { return sd_sample_method_name(static_cast<sample_method_t>(i)); }, "sampler"));
    }
    if (!scheduler.empty()) {
        p.sample_params.scheduler = static_cast<scheduler_t>(enum_from_name(
            scheduler, SCHEDULER_COUNT, [](int i) { return sd_scheduler_name(static_cast<scheduler_t>(i)); },
            "scheduler"));
    }
    if (!custom_sigmas.empty()) {
        p.sample_params.custom_sigmas       = custom_sigmas.data();
        p.sample_params.custom_sigmas_count = static_cast<int>(custom_sigmas.size());
    }
    return p;
}

// Owns an sd_ctx_t: loads a model once, generates many images.
class Context {
public:
    Context(const std::string& diffusion_model, const std::string& llm, const std::string& vae,
            const std::string& model, const std::string& device, int n_threads, const std::string& weight_type,
            bool offload_params_to_cpu, bool keep_clip_on_cpu, bool keep_vae_on_cpu, bool flash_attn,
            bool diffusion_flash_attn, bool vae_decode_only, bool free_params_immediately, bool enable_mmap,
            float max_vram, const py::object& on_progress) {
        sd_ctx_params_t p;
        sd_ctx_params_init(&p);
        p.diffusion_model_path    = diffusion_model.c_str();
        p.llm_path                = llm.c_str();
        p.vae_path                = vae.c_str();
        p.model_path              = model.c_str();
        p.backend_device          = device.c_str();
        p.free_params_immediately = free_params_immediately;
        p.vae_decode_only         = vae_decode_only;
        if (n_threads > 0) {
            p.n_threads = n_threads;
        }
        if (!weight_type.empty()) {
            const sd_type_t t = str_to_sd_type(weight_type.c_str());
            if (t == SD_TYPE_COUNT) {
                throw py::value_error("unknown weight type '" + weight_type + "'");
            }
            p.wtype = t;
        }
        p.offload_params_to_cpu = offload_params_to_cpu;
        p.keep_clip_on_cpu      = keep_clip_on_cpu;
        p.keep_vae_on_cpu       = keep_vae_on_cpu;
        p.vae_conv_direct       = vae_convolves_directly(device, keep_vae_on_cpu);
        p.flash_attn            = flash_attn;
        p.diffusion_flash_attn  = diffusion_flash_attn;
        p.enable_mmap           = enable_mmap;
        if (!(max_vram >= 0.0f)) {
            throw py::value_error("max_vram must be >= 0 GiB (0: no limit), got " + std::to_string(max_vram));
        }
        p.max_vram = max_vram;  // GiB per model graph on the device; needs offload_params_to_cpu

        Job job;
        auto interrupt = run_job(job, on_progress, [&] { ctx_.store(new_sd_ctx(&p)); });
        if (interrupt) {
            close();
            throw std::move(*interrupt);
        }
        if (ctx_.load() == nullptr) {
            throw EngineError(with_engine_errors("could not load the model", job));
        }
    }

    Context(const Context&)            = delete;
    Context& operator=(const Context&) = delete;

    ~Context() {
        if (ctx_.load() == nullptr) {
            return;
        }
        if (interpreter_finalizing()) {
            // The engine thread may be busy with a job of a thread that finalization froze, which
            // would never finish: leave the memory to the OS.
            return;
        }
        sd_ctx_t* ctx = ctx_.exchange(nullptr);
        run_job_quietly([ctx] { free_sd_ctx(ctx); });
    }

    void close() {
        Job job;
        auto interrupt = run_job(job, py::none(), [this] {
            if (sd_ctx_t* ctx = ctx_.exchange(nullptr)) {
                free_sd_ctx(ctx);
            }
        });
        if (interrupt) {
            throw std::move(*interrupt);
        }
    }

    bool closed() const { return ctx_.load() == nullptr; }

    // Cancels the generation this context is running or waiting to run (none: nothing happens).
    void cancel() {
        std::lock_guard<std::mutex> lock(current_mutex_);
        if (current_ != nullptr) {
            current_->cancel.store(true);
        }
    }

    py::list generate(const std::string& prompt, const std::string& negative_prompt, int width, int height,
                      int steps, int64_t seed, float cfg_scale, const std::string& sample_method,
                      const std::string& scheduler, const std::vector<float>& sigmas, const py::list& ref_images,
                      bool auto_resize_ref_images, bool increase_ref_index, bool vae_tiling, int vae_tile_size,
                      float vae_tile_overlap, int batch_count, const py::object& on_progress,
                      const py::object& noise, const py::object& prompt_embeds, const py::object& trace) {
        if (batch_count < 1) {
            throw py::value_error("batch_count must be >= 1, got " + std::to_string(batch_count));
        }
        std::vector<float> custom_sigmas = sigmas;  // sd.cpp takes a non-const pointer
        sd_img_gen_params_t p = sampling_params(width, height, steps, sample_method, scheduler, custom_sigmas);
        p.prompt                         = prompt.c_str();
        p.negative_prompt                = negative_prompt.c_str();
        p.seed                           = seed;
        p.batch_count                    = batch_count;
        p.sample_params.guidance.txt_cfg = cfg_scale;

        std::vector<ImageData> refs;
        for (size_t i = 0; i < ref_images.size(); i++) {
            refs.push_back(image_from_python(ref_images[i], i));
        }
        std::vector<sd_image_t> ref_views;
        for (ImageData& r : refs) {
            ref_views.push_back({r.width, r.height, r.channels, r.pixels.data()});
        }
        p.ref_images            = ref_views.empty() ? nullptr : ref_views.data();
        p.ref_images_count      = static_cast<int>(ref_views.size());
        p.auto_resize_ref_image = auto_resize_ref_images;
        p.increase_ref_index    = increase_ref_index;

        p.vae_tiling_params.enabled        = vae_tiling;
        p.vae_tiling_params.tile_size_x    = vae_tile_size;
        p.vae_tiling_params.tile_size_y    = vae_tile_size;
        p.vae_tiling_params.target_overlap = vae_tile_overlap;

        // Testing/expert taps: given noise and prompt embeddings, observed sigmas and latents.
        if (!trace.is_none() && !py::isinstance<py::dict>(trace)) {
            throw py::type_error("trace must be a dict or None");
        }
        FloatArray noise_array, embeds_array;
        bonsai_generation_taps_t taps{};
        GenerationTrace observed;
        if (!noise.is_none()) {
            if (batch_count != 1) {
                throw py::value_error("noise needs batch_count 1");
            }
            noise_array = float_array(noise, "noise", 3, "[channels, height / 16, width / 16]");
            taps.noise  = tensor_view(noise_array);
        }
        if (!prompt_embeds.is_none()) {
            embeds_array       = float_array(prompt_embeds, "prompt_embeds", 2, "[tokens, dim]");
            taps.prompt_embeds = tensor_view(embeds_array);
        }
        if (!trace.is_none()) {
            taps.on_sigmas = GenerationTrace::on_sigmas;
            taps.on_latent = GenerationTrace::on_latent;
            taps.user      = &observed;
        }
        const bool tapped = taps.noise.data != nullptr || taps.prompt_embeds.data != nullptr || !trace.is_none();

        auto job = std::make_shared<Job>();
        {
            std::lock_guard<std::mutex> lock(current_mutex_);
            current_ = job;
        }
        struct Forget {
            Context* self;
            ~Forget() {
                std::lock_guard<std::mutex> lock(self->current_mutex_);
                self->current_.reset();
            }
        } forget{this};

        bool was_closed = false;
        std::vector<ImageData> images;
        auto interrupt = run_job(*job, on_progress, [&] {
            sd_ctx_t* ctx = ctx_.load();
            if (ctx == nullptr) {
                was_closed = true;
                return;
            }
            images = take_images(tapped ? bonsai_generate_image_tapped(ctx, &p, &taps) : generate_image(ctx, &p),
                                 batch_count);
        });
        if (interrupt) {
            throw std::move(*interrupt);
        }
        if (job->cancel.load()) {
            throw Cancelled("the generation was cancelled");
        }
        if (was_closed) {
            throw py::value_error("the model was closed; load it again");
        }
        if (images.empty()) {
            throw EngineError(with_engine_errors("image generation failed", *job));
        }
        if (!trace.is_none()) {
            py::list latents;
            for (size_t i = 0; i < observed.latents.size(); i++) {
                latents.append(chw_array(observed.latents[i].data(), observed.latent_shapes[i].data()));
            }
            trace["sigmas"]  = observed.sigmas;
            trace["latents"] = latents;
        }
        py::list out;
        for (const ImageData& img : images) {
            out.append(py::make_tuple(img.width, img.height, img.channels,
                                      py::bytes(reinterpret_cast<const char*>(img.pixels.data()), img.pixels.size())));
        }
        return out;
    }

    // Testing/expert: the noise levels a generation with these parameters samples at (ending at 0).
    std::vector<float> sample_sigmas(int width, int height, int steps, const std::string& sample_method,
                                     const std::string& scheduler, const std::vector<float>& sigmas) {
        std::vector<float> custom_sigmas = sigmas;
        const sd_img_gen_params_t p =
            sampling_params(width, height, steps, sample_method, scheduler, custom_sigmas);
        EngineTensor planned;
        run_engine_call("planning the sampling failed",
                        [&](sd_ctx_t* ctx) { return bonsai_sample_sigmas(ctx, &p, &planned.t); });
        return std::vector<float>(planned.t.data, planned.t.data + planned.t.ne[0]);
    }

    // Testing/expert: the diffusion model's prediction for latent x [channels, h, w] at noise level
    // sigma, conditioned on prompt_embeds [tokens, dim].
    py::array_t<float> diffusion_forward(const py::object& x, float sigma, const py::object& prompt_embeds) {
        FloatArray x_array      = float_array(x, "x", 3, "[channels, height, width]");
        FloatArray embeds_array = float_array(prompt_embeds, "prompt_embeds", 2, "[tokens, dim]");
        if (!(sigma >= 0.0f && sigma <= 1.0f)) {
            throw py::value_error("sigma must be in [0, 1], got " + std::to_string(sigma));
        }
        const bonsai_tensor_view_t x_view = tensor_view(x_array), embeds_view = tensor_view(embeds_array);
        EngineTensor out;
        run_engine_call("the diffusion model forward failed", [&](sd_ctx_t* ctx) {
            return bonsai_diffusion_forward(ctx, x_view, sigma, embeds_view, &out.t);
        });
        return chw_array(out.t.data, out.t.ne);
    }

    // Testing/expert: the VAE decoder on a diffusion-space latent [channels, h, w] (as a trace
    // reports it): an image [3, height, width] with values in [0, 1], not yet 8-bit.
    py::array_t<float> decode_latent(const py::object& latent) {
        FloatArray latent_array         = float_array(latent, "latent", 3, "[channels, height, width]");
        const bonsai_tensor_view_t view = tensor_view(latent_array);
        EngineTensor image;
        run_engine_call("decoding the latent failed",
                        [&](sd_ctx_t* ctx) { return bonsai_decode_latent(ctx, view, &image.t); });
        return chw_array(image.t.data, image.t.ne);
    }

private:
    // Runs `call(ctx)` as an engine job; raises EngineError (with the engine's errors) when it
    // returns false, ValueError when the model was closed.
    void run_engine_call(const char* failure, const std::function<bool(sd_ctx_t*)>& call) {
        Job job;
        bool ok = false, was_closed = false;
        auto interrupt = run_job(job, py::none(), [&] {
            sd_ctx_t* ctx = ctx_.load();
            if (ctx == nullptr) {
                was_closed = true;
                return;
            }
            ok = call(ctx);
        });
        if (interrupt) {
            throw std::move(*interrupt);
        }
        if (was_closed) {
            throw py::value_error("the model was closed; load it again");
        }
        if (!ok) {
            throw EngineError(with_engine_errors(failure, job));
        }
    }

    std::atomic<sd_ctx_t*> ctx_{nullptr};  // changed only by jobs (on the engine thread)
    std::mutex current_mutex_;
    std::shared_ptr<Job> current_;  // the generation in progress, for cancel()
};

// ---- module functions ----------------------------------------------------------------------

py::list devices() {
    py::list out;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const char* type       = "cpu";
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU:   type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU:   type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU:  type = "igpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_ACCEL: type = "accel"; break;
        }
        py::dict row;
        row["name"]        = ggml_backend_dev_name(dev);
        row["description"] = ggml_backend_dev_description(dev);
        row["type"]        = type;
        out.append(row);
    }
    return out;
}

template <typename NameOf>
py::list names(int count, NameOf name_of) {
    py::list out;
    for (int i = 0; i < count; i++) {
        out.append(name_of(i));
    }
    return out;
}

}  // namespace

void drain_logs() {
    drain_idle_logs();
}

void register_engine(py::module_& m) {
    sd_set_log_callback(on_sd_log, nullptr);
    sd_set_progress_callback(on_sd_progress, nullptr);
    sd_set_abort_callback(on_sd_abort, nullptr);

    py::register_exception<Cancelled>(m, "Cancelled", PyExc_Exception);

    m.def("devices", &devices, "The ggml devices of this build: name, description, type (cpu, gpu, igpu, accel).");
    m.def("sample_methods", [] {
        return names(SAMPLE_METHOD_COUNT, [](int i) { return sd_sample_method_name(static_cast<sample_method_t>(i)); });
    });
    m.def("schedulers", [] {
        return names(SCHEDULER_COUNT, [](int i) { return sd_scheduler_name(static_cast<scheduler_t>(i)); });
    });
    m.def("physical_cores", &sd_get_num_physical_cores);

    py::class_<Context>(m, "Context")
        .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&,
                      const std::string&, int, const std::string&, bool, bool, bool, bool, bool, bool, bool, bool,
                      float, const py::object&>(),
             py::kw_only(), py::arg("diffusion_model") = "", py::arg("llm") = "", py::arg("vae") = "",
             py::arg("model") = "", py::arg("device") = "", py::arg("n_threads") = 0, py::arg("weight_type") = "",
             py::arg("offload_params_to_cpu") = false, py::arg("keep_clip_on_cpu") = false,
             py::arg("keep_vae_on_cpu") = false, py::arg("flash_attn") = false,
             py::arg("diffusion_flash_attn") = false, py::arg("vae_decode_only") = true,
             py::arg("free_params_immediately") = false, py::arg("enable_mmap") = false,
             py::arg("max_vram") = 0.0f, py::arg("progress") = py::none(),
             "Load a model (the engine call runs without the GIL; progress(step, steps, seconds) reports tensors).")
        .def("generate", &Context::generate, py::kw_only(), py::arg("prompt"), py::arg("negative_prompt") = "",
             py::arg("width") = 512, py::arg("height") = 512, py::arg("steps") = 4, py::arg("seed") = 0,
             py::arg("cfg_scale") = 1.0f, py::arg("sample_method") = "", py::arg("scheduler") = "",
             py::arg("sigmas") = std::vector<float>(), py::arg("ref_images") = py::list(),
             py::arg("auto_resize_ref_images") = true, py::arg("increase_ref_index") = false,
             py::arg("vae_tiling") = false, py::arg("vae_tile_size") = 0, py::arg("vae_tile_overlap") = 0.5f,
             py::arg("batch_count") = 1, py::arg("progress") = py::none(), py::arg("noise") = py::none(),
             py::arg("prompt_embeds") = py::none(), py::arg("trace") = py::none(),
             "Generate images: a list of (width, height, channels, pixel bytes).\n\n"
             "Testing/expert (FLUX.2): noise, a float array [128, height/16, width/16], replaces the seeded "
             "initial noise; prompt_embeds [tokens, dim] replaces the encoded prompt; a dict given as trace "
             "receives 'sigmas' (the noise levels sampled at) and 'latents' (each final latent "
             "[128, height/16, width/16], before decoding).")
        .def("sample_sigmas", &Context::sample_sigmas, py::kw_only(), py::arg("width") = 512,
             py::arg("height") = 512, py::arg("steps") = 4, py::arg("sample_method") = "", py::arg("scheduler") = "",
             py::arg("sigmas") = std::vector<float>(),
             "Testing/expert: the noise levels (ending at 0) a generation with these parameters samples at, "
             "planned as generate() plans them, without generating.")
        .def("diffusion_forward", &Context::diffusion_forward, py::kw_only(), py::arg("x"), py::arg("sigma"),
             py::arg("prompt_embeds"),
             "Testing/expert (FLUX.2): the diffusion model alone. x [128, h, w] is a latent as the model sees it, "
             "sigma the noise level in [0, 1], prompt_embeds [tokens, dim]; returns the prediction [128, h, w] "
             "(the flow velocity), as one sampling step computes it.")
        .def("decode_latent", &Context::decode_latent, py::kw_only(), py::arg("latent"),
             "Testing/expert (FLUX.2): the VAE decoder alone on a latent [128, h, w] as the diffusion model sees it "
             "(normalized, patchified; as generate's trace reports it); returns an image [3, 16h, 16w] in [0, 1].")
        .def("cancel", &Context::cancel, "Cancel the running generation (it raises Cancelled). Thread-safe.")
        .def("close", &Context::close, "Free the model now.")
        .def_property_readonly("closed", &Context::closed);
}
