// bonsai_sd._core: the pybind11 module over the pinned stable-diffusion.cpp C API.
//
// Compiled against the pinned include/stable-diffusion.h (no hand-mirrored structs).
// sd.cpp's log callback is process-global, so one C callback is installed at import:
// it records each message in the calling thread's capture (to turn a failed call into
// an exception that carries sd.cpp's own error text) and queues it for Python logging,
// which is drained while the GIL is held once the call has returned.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "ops.h"
#include "stable-diffusion.h"

namespace py = pybind11;

static_assert(GGML_MAX_NAME == BONSAI_SD_GGML_MAX_NAME,
              "_core must see the same GGML_MAX_NAME as the library it links");

namespace {

// ---- logging ------------------------------------------------------------------------------

struct LogRecord {
    sd_log_level_t level;
    std::string text;
};

struct LogCapture {
    std::vector<std::string> errors;
};

// Errors are captured from every thread while an engine call runs: sd.cpp loads tensors
// and computes on worker threads, which log the defects that matter (a short read, say).
std::mutex g_log_mutex;
std::vector<LogCapture*> g_captures;
std::deque<LogRecord> g_log_queue;
constexpr size_t kMaxQueuedLogs = 4096;

void on_sd_log(sd_log_level_t level, const char* text, void*) {
    std::string line = text != nullptr ? text : "";
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.pop_back();
    }
    std::lock_guard<std::mutex> lock(g_log_mutex);
    if (level == SD_LOG_ERROR) {
        for (LogCapture* capture : g_captures) {
            capture->errors.push_back(line);
        }
    }
    if (g_log_queue.size() < kMaxQueuedLogs) {
        g_log_queue.push_back({level, std::move(line)});
    }
}

// Forwards queued engine messages to logging.getLogger("bonsai_sd.engine"). GIL held.
void drain_logs() {
    std::deque<LogRecord> records;
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        records.swap(g_log_queue);
    }
    if (records.empty()) {
        return;
    }
    py::object logger = py::module_::import("logging").attr("getLogger")("bonsai_sd.engine");
    for (const LogRecord& r : records) {
        int py_level = 10;  // DEBUG
        switch (r.level) {
            case SD_LOG_DEBUG: py_level = 10; break;
            case SD_LOG_INFO:  py_level = 20; break;
            case SD_LOG_WARN:  py_level = 30; break;
            case SD_LOG_ERROR: py_level = 40; break;
        }
        auto text = py::reinterpret_steal<py::str>(
            PyUnicode_DecodeUTF8(r.text.data(), static_cast<Py_ssize_t>(r.text.size()), "replace"));
        logger.attr("log")(py_level, "%s", text);
    }
}

// Runs `fn` without the GIL while capturing the engine's errors.
template <typename Fn>
auto call_engine(LogCapture& capture, Fn&& fn) {
    {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_captures.push_back(&capture);
    }
    struct Remove {
        LogCapture* capture;
        ~Remove() {
            std::lock_guard<std::mutex> lock(g_log_mutex);
            g_captures.erase(std::find(g_captures.begin(), g_captures.end(), capture));
        }
    } remove{&capture};
    py::gil_scoped_release release;
    return fn();
}

class EngineError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The first few errors, in order: later ones usually repeat the first defect.
std::string join_errors(const std::string& what, const LogCapture& capture) {
    constexpr size_t kShown = 6;
    std::string msg = what;
    for (size_t i = 0; i < capture.errors.size() && i < kShown; i++) {
        msg += (i ? "; " : ": ") + capture.errors[i];
    }
    if (capture.errors.size() > kShown) {
        msg += "; ... and " + std::to_string(capture.errors.size() - kShown) + " more errors (see the log)";
    }
    return msg;
}

// ---- module information -------------------------------------------------------------------

py::list backend_names() {
    py::list names;
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        names.append(ggml_backend_reg_name(ggml_backend_reg_get(i)));
    }
    return names;
}

// Every id this ggml has traits for (unused ids inside the enum range have block size 0).
py::list type_table() {
    py::list table;
    for (int id = 0; id < GGML_TYPE_COUNT; id++) {
        const ggml_type t = static_cast<ggml_type>(id);
        if (ggml_blck_size(t) == 0) {
            continue;
        }
        py::dict row;
        row["id"]           = id;
        row["name"]         = ggml_type_name(t);
        row["block_size"]   = ggml_blck_size(t);
        row["type_size"]    = ggml_type_size(t);
        row["is_quantized"] = ggml_is_quantized(t);
        table.append(row);
    }
    return table;
}

// ---- context ------------------------------------------------------------------------------

// Owns an sd_ctx_t. Paths are kept as std::string for the lifetime of the call.
class Context {
public:
    Context(const std::string& model, const std::string& diffusion_model, const std::string& llm,
            const std::string& vae, int n_threads, const std::string& wtype, bool offload_params_to_cpu,
            bool keep_clip_on_cpu, bool keep_vae_on_cpu, bool diffusion_flash_attn) {
        sd_ctx_params_t p;
        sd_ctx_params_init(&p);
        p.model_path            = model.c_str();
        p.diffusion_model_path  = diffusion_model.c_str();
        p.llm_path              = llm.c_str();
        p.vae_path              = vae.c_str();
        p.free_params_immediately = false;  // a context generates many images
        p.vae_decode_only       = true;
        if (n_threads > 0) {
            p.n_threads = n_threads;
        }
        if (!wtype.empty()) {
            const sd_type_t t = str_to_sd_type(wtype.c_str());
            if (t == SD_TYPE_COUNT) {
                throw py::value_error("unknown weight type '" + wtype + "'");
            }
            p.wtype = t;
        }
        p.offload_params_to_cpu = offload_params_to_cpu;
        p.keep_clip_on_cpu      = keep_clip_on_cpu;
        p.keep_vae_on_cpu       = keep_vae_on_cpu;
        p.diffusion_flash_attn  = diffusion_flash_attn;

        LogCapture capture;
        ctx_ = call_engine(capture, [&] { return new_sd_ctx(&p); });
        drain_logs();
        if (ctx_ == nullptr) {
            throw EngineError(join_errors("failed to load the model", capture));
        }
    }

    ~Context() { close(); }

    void close() {
        if (ctx_ != nullptr) {
            free_sd_ctx(ctx_);
            ctx_ = nullptr;
        }
    }

    bool closed() const { return ctx_ == nullptr; }

private:
    sd_ctx_t* ctx_ = nullptr;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "bonsai-sd engine: pinned stable-diffusion.cpp + ggml with low-bit types";

    sd_set_log_callback(on_sd_log, nullptr);

    m.attr("__version__")     = BONSAI_SD_VERSION;
    m.attr("sd_commit")       = sd_commit();
    m.attr("sd_version")      = sd_version();
    m.attr("ggml_version")    = ggml_version();
    m.attr("ggml_commit")     = ggml_commit();
    m.attr("ggml_max_name")   = GGML_MAX_NAME;
    m.attr("ggml_type_count") = static_cast<int>(GGML_TYPE_COUNT);

    m.def("backends", &backend_names, "Names of the ggml backends compiled into this build.");
    m.def("type_table", &type_table, "The ggml type table: id, name, block size, bytes per block.");
    m.def("system_info", [] { return std::string(sd_get_system_info()); });
    m.def("drain_logs", &drain_logs, "Forward queued engine messages to Python logging.");

    py::register_exception<EngineError>(m, "EngineError", PyExc_RuntimeError);
    register_ggml_ops(m);

    py::class_<Context>(m, "Context")
        .def(py::init<const std::string&, const std::string&, const std::string&, const std::string&, int,
                      const std::string&, bool, bool, bool, bool>(),
             py::kw_only(), py::arg("model") = "", py::arg("diffusion_model") = "", py::arg("llm") = "",
             py::arg("vae") = "", py::arg("n_threads") = 0, py::arg("wtype") = "",
             py::arg("offload_params_to_cpu") = false, py::arg("keep_clip_on_cpu") = false,
             py::arg("keep_vae_on_cpu") = false, py::arg("diffusion_flash_attn") = false)
        .def("close", &Context::close)
        .def_property_readonly("closed", &Context::closed);
}
