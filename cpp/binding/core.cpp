// bonsai_sd._core: the pybind11 module over the pinned stable-diffusion.cpp C API.
//
// Compiled against the pinned include/stable-diffusion.h (no hand-mirrored structs). This file
// holds the module's report (versions, backends, the type table); engine.cpp the contexts,
// generation, progress, cancellation and the routing of sd.cpp's log to Python logging.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "engine.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "ops.h"
#include "stable-diffusion.h"

namespace py = pybind11;

static_assert(GGML_MAX_NAME == BONSAI_SD_GGML_MAX_NAME,
              "_core must see the same GGML_MAX_NAME as the library it links");

namespace {

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

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "bonsai-sd engine: pinned stable-diffusion.cpp + ggml with low-bit types";

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

    register_engine(m);
}
