// GGUF checks bonsai-sd adds to stable-diffusion.cpp's loader and writer.
#ifndef BONSAI_SDCPP_GGUF_CHECKS_H
#define BONSAI_SDCPP_GGUF_CHECKS_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

namespace bonsai {

// The metadata key of the layout contract: a string array with one entry per low-bit type
// a file uses, "<id>:<name>:<block elements>:<block bytes>:<layout version>".
constexpr const char* kLayoutContractKey = "bonsai_sd.types";

// A file's contract must agree with this build on every low-bit type its tensors use.
// Files without a contract are accepted: 41/42 are mainline ggml's and 142/143 PrismML's
// published layouts, which are the ones implemented here.
bool check_layout_contract(const gguf_context* gguf, std::string* error);

// Records the contract for the low-bit types used by the tensors already added to `gguf`.
void add_layout_contract(gguf_context* gguf);

struct TensorExtent {
    std::string name;
    ggml_type type;
    std::vector<int64_t> ne;
    uint64_t offset;  // relative to the start of the data section
};

// For readers that do not validate sizes themselves: every tensor's data must fit between
// its offset and the next tensor (or the end of the file). A type-42 tensor that fits only
// PrismML's legacy 128-element Q2_0 layout gets a message that says so.
bool check_tensor_extents(const std::vector<TensorExtent>& tensors, uint64_t data_offset, uint64_t file_size,
                          std::string* error);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_GGUF_CHECKS_H
