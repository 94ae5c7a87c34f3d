// Registration functions of the _core module's parts.
#pragma once

#include <pybind11/pybind11.h>

void register_ggml_ops(pybind11::module_& m);
