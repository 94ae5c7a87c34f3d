// The engine part of bonsai_sd._core: model contexts, generation, progress, cancellation and
// sd.cpp's log messages (engine.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <stdexcept>

// sd.cpp reported a failure (the message carries its own error lines).
class EngineError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Installs the process-wide sd.cpp callbacks and adds Context, Cancelled, devices() and the
// sampler/scheduler name lists to `m`.
void register_engine(pybind11::module_& m);

// Forwards engine messages logged outside any engine call (ggml used directly) to Python
// logging. GIL held.
void drain_logs();
