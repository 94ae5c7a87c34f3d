#include "safetensors-checks.h"

namespace bonsai {

namespace {

bool fail(std::string* error, const std::string& message) {
    if (error != nullptr) {
        *error = message;
    }
    return false;
}

constexpr size_t kMaxDims        = 5;                 // sd.cpp's SD_MAX_DIMS
constexpr uint64_t kMaxElements  = uint64_t(1) << 48;  // far beyond any model tensor

}  // namespace

bool check_safetensors_header(const nlohmann::json& header, uint64_t data_size, std::string* error) {
    if (!header.is_object()) {
        return fail(error, "the safetensors header is not a JSON object");
    }
    for (const auto& item : header.items()) {
        const std::string& name = item.key();
        const nlohmann::json& info = item.value();
        if (name == "__metadata__") {
            continue;
        }
        const std::string where = "tensor '" + name + "': ";
        if (!info.is_object()) {
            return fail(error, where + "its header entry is not a JSON object");
        }
        if (!info.contains("dtype") || !info["dtype"].is_string()) {
            return fail(error, where + "no dtype string");
        }
        if (!info.contains("shape") || !info["shape"].is_array() || info["shape"].size() > kMaxDims) {
            return fail(error, where + "the shape must be an array of at most 5 dimensions");
        }
        uint64_t elements = 1;
        for (const auto& d : info["shape"]) {
            if (!d.is_number_unsigned()) {
                return fail(error, where + "a dimension is not a non-negative integer");
            }
            const uint64_t n = d.get<uint64_t>();
            if (n != 0 && elements > kMaxElements / n) {
                return fail(error, where + "the shape holds more elements than any tensor could");
            }
            elements *= n;
        }
        const nlohmann::json* offsets = info.contains("data_offsets") ? &info["data_offsets"] : nullptr;
        if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
            !(*offsets)[1].is_number_unsigned()) {
            return fail(error, where + "data_offsets must be two non-negative integers");
        }
        const uint64_t begin = (*offsets)[0].get<uint64_t>();
        const uint64_t end   = (*offsets)[1].get<uint64_t>();
        if (begin > end || end > data_size) {
            return fail(error, where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   "] lie outside the " + std::to_string(data_size) + " bytes of tensor data");
        }
    }
    return true;
}

}  // namespace bonsai
