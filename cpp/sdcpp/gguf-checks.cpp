#include "gguf-checks.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "lowbit.h"

namespace bonsai {

namespace {

std::string contract_entry(ggml_type type) {
    char buf[96];
    snprintf(buf, sizeof(buf), "%d:%s:%lld:%zu:%d", (int)type, ggml_type_name(type), (long long)ggml_blck_size(type),
             ggml_type_size(type), BONSAI_LOWBIT_LAYOUT_VERSION);
    return buf;
}

void set_error(std::string* error, const std::string& message) {
    if (error != nullptr) {
        *error = message;
    }
}

// Bytes of a tensor of `type` and shape `ne`, or false on a negative dim or an overflow.
bool tensor_bytes(const std::vector<int64_t>& ne, uint64_t block_elems, uint64_t block_bytes, uint64_t* bytes) {
    uint64_t n = 1;
    for (int64_t d : ne) {
        if (d < 0 || (d != 0 && n > UINT64_MAX / (uint64_t)d)) {
            return false;
        }
        n *= (uint64_t)d;
    }
    if (block_elems == 0 || n % block_elems != 0 || n / block_elems > UINT64_MAX / block_bytes) {
        return false;
    }
    *bytes = n / block_elems * block_bytes;
    return true;
}

}  // namespace

bool check_layout_contract(const gguf_context* gguf, std::string* error) {
    const int64_t key = gguf_find_key(gguf, kLayoutContractKey);
    if (key < 0) {
        return true;
    }
    if (gguf_get_kv_type(gguf, key) != GGUF_TYPE_ARRAY || gguf_get_arr_type(gguf, key) != GGUF_TYPE_STRING) {
        set_error(error, std::string("metadata '") + kLayoutContractKey + "' is not an array of strings");
        return false;
    }
    std::set<int> used;
    for (int64_t i = 0; i < gguf_get_n_tensors(gguf); i++) {
        const ggml_type t = gguf_get_tensor_type(gguf, i);
        if (bonsai_lowbit_is_type(t)) {
            used.insert(t);
        }
    }
    std::set<int> declared;
    for (size_t i = 0; i < gguf_get_arr_n(gguf, key); i++) {
        const std::string entry = gguf_get_arr_str(gguf, key, i);
        const int id            = atoi(entry.c_str());
        if (!used.count(id)) {
            continue;  // a type no tensor uses constrains nothing
        }
        const std::string ours = contract_entry((ggml_type)id);
        if (entry != ours) {
            set_error(error, "the file's layout contract declares type " + std::to_string(id) + " as '" + entry +
                                 "', but this build of bonsai-sd reads that id as '" + ours +
                                 "' (id:name:block elements:block bytes:layout version); the file was written for a "
                                 "different layout and cannot be read as is");
            return false;
        }
        declared.insert(id);
    }
    for (int id : used) {
        if (id >= 100 && !declared.count(id)) {
            set_error(error, "tensors use type id " + std::to_string(id) + " but the file's layout contract ('" +
                                 kLayoutContractKey + "') does not declare it");
            return false;
        }
    }
    return true;
}

void add_layout_contract(gguf_context* gguf) {
    std::set<int> used;
    for (int64_t i = 0; i < gguf_get_n_tensors(gguf); i++) {
        const ggml_type t = gguf_get_tensor_type(gguf, i);
        if (bonsai_lowbit_is_type(t)) {
            used.insert(t);
        }
    }
    if (used.empty()) {
        return;
    }
    std::vector<std::string> entries;
    for (int id : used) {
        entries.push_back(contract_entry((ggml_type)id));
    }
    std::vector<const char*> ptrs;
    for (const std::string& e : entries) {
        ptrs.push_back(e.c_str());
    }
    gguf_set_arr_str(gguf, kLayoutContractKey, ptrs.data(), ptrs.size());
}

bool check_tensor_extents(const std::vector<TensorExtent>& tensors, uint64_t data_offset, uint64_t file_size,
                          std::string* error) {
    if (data_offset > file_size) {
        set_error(error, "the tensor data section starts past the end of the file");
        return false;
    }
    const uint64_t data_size = file_size - data_offset;

    std::vector<size_t> order(tensors.size());
    for (size_t i = 0; i < order.size(); i++) {
        order[i] = i;
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });

    for (size_t k = 0; k < order.size(); k++) {
        const TensorExtent& t = tensors[order[k]];
        const uint64_t end    = k + 1 < order.size() ? tensors[order[k + 1]].offset : data_size;
        if (t.offset > data_size) {
            set_error(error, "tensor '" + t.name + "' starts past the end of the file");
            return false;
        }
        const uint64_t span = end - t.offset;
        uint64_t need       = 0;
        if (!tensor_bytes(t.ne, ggml_blck_size(t.type), ggml_type_size(t.type), &need)) {
            set_error(error, "tensor '" + t.name + "' has an invalid shape for type " + ggml_type_name(t.type));
            return false;
        }
        if (need <= span) {
            continue;
        }
        uint64_t legacy = 0;
        if (t.type == GGML_TYPE_Q2_0 && tensor_bytes(t.ne, 128, 34, &legacy) && legacy <= span) {
            set_error(error, "tensor '" + t.name +
                                 "' is stored in PrismML's legacy Q2_0 layout (128-element blocks of 34 bytes) under "
                                 "type id 42, which ggml defines as 64-element blocks of 18 bytes. This file predates "
                                 "that definition and cannot be read as is: convert the model again (bonsai-sd convert "
                                 "writes PQ2_0, type 142, the same bytes under PrismML's current id), or use PrismML's "
                                 "*-PQ2_0 / *_Q2_0_g64 files");
            return false;
        }
        set_error(error, "tensor '" + t.name + "' needs " + std::to_string(need) + " bytes of data but only " +
                             std::to_string(span) + " are left before the next tensor or the end of the file");
        return false;
    }
    return true;
}

}  // namespace bonsai
