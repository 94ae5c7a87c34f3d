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

// Every tensor ggml indexed in `gguf` (meta holds their shapes) must lie inside the file's
// `file_size` bytes: ggml checks the header, not that the data section is complete.
bool check_data_section(const gguf_context* gguf, const ggml_context* meta, uint64_t file_size, std::string* error);

struct GgufTensor {
    std::string name;
    ggml_type type;
    std::vector<int64_t> ne;  // at most GGML_MAX_DIMS: further dims are folded into the last
    uint64_t offset;          // absolute position of the data in the file
};

// The tensor index of a GGUF file, read by a parser that trusts nothing in it: every count,
// length, dimension, type and offset is checked against the file's size and ggml's rules
// before anything is allocated. stable-diffusion.cpp reads a file this way when ggml's
// gguf_init refuses it, so that tensors with more than 4 dimensions (folded into the 4th,
// as sd.cpp expects) still load; everything else ggml refuses is refused here too, with a
// message that names the defect. PrismML's legacy 128-element Q2_0 at id 42 is named as such.
bool read_gguf_index(const std::string& path, std::vector<GgufTensor>* tensors, std::string* error);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_GGUF_CHECKS_H
