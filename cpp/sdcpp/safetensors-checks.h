// Checks bonsai-sd adds to stable-diffusion.cpp's safetensors reader.
#ifndef BONSAI_SDCPP_SAFETENSORS_CHECKS_H
#define BONSAI_SDCPP_SAFETENSORS_CHECKS_H

#include <cstdint>
#include <string>

#include "json.hpp"

namespace bonsai {

// The parsed header must be an object whose every tensor entry has a string dtype, a shape of
// at most 5 non-negative dimensions whose element count does not overflow, and data_offsets
// [begin, end] with begin <= end <= data_size (the bytes after the header). sd.cpp's reader
// assumes all of this; without the check a malformed header throws out of its C API.
bool check_safetensors_header(const nlohmann::json& header, uint64_t data_size, std::string* error);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_SAFETENSORS_CHECKS_H
