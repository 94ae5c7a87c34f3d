#include "gguf-checks.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>

#include "lowbit.h"

namespace bonsai {

namespace {

void set_error(std::string* error, const std::string& message) {
    if (error != nullptr) {
        *error = message;
    }
}

std::string contract_entry(int type) {
    const ggml_type t = static_cast<ggml_type>(type);
    char buf[96];
    snprintf(buf, sizeof(buf), "%d:%s:%lld:%zu:%d", type, ggml_type_name(t), (long long)ggml_blck_size(t),
             ggml_type_size(t), BONSAI_LOWBIT_LAYOUT_VERSION);
    return buf;
}

// The contract entries must describe every low-bit type in `used` as this build does.
bool check_contract_entries(const std::vector<std::string>& entries, const std::set<int>& used, std::string* error) {
    std::set<int> declared;
    for (const std::string& entry : entries) {
        const int id = atoi(entry.c_str());
        if (!used.count(id)) {
            continue;  // a type no tensor uses constrains nothing
        }
        const std::string ours = contract_entry(id);
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

// Bytes of `ne` elements of `type`; false on a negative dim or an overflow.
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

uint64_t align_up(uint64_t x, uint64_t alignment) {
    return (x + alignment - 1) / alignment * alignment;
}

// Bounded reads from a file of known size; every length is checked against what is left.
class Reader {
public:
    explicit Reader(const std::string& path) : in_(path, std::ios::binary) {
        if (in_) {
            in_.seekg(0, std::ios::end);
            size_ = static_cast<uint64_t>(in_.tellg());
            in_.seekg(0, std::ios::beg);
        }
    }
    bool open() const { return static_cast<bool>(in_); }
    uint64_t size() const { return size_; }
    uint64_t pos() const { return pos_; }
    uint64_t left() const { return size_ - pos_; }

    template <typename T>
    bool read(T* value) {
        if (left() < sizeof(T)) {
            return false;
        }
        in_.read(reinterpret_cast<char*>(value), sizeof(T));
        pos_ += sizeof(T);
        return static_cast<bool>(in_);
    }
    bool skip(uint64_t n) {
        if (left() < n) {
            return false;
        }
        in_.seekg(static_cast<std::streamoff>(n), std::ios::cur);
        pos_ += n;
        return static_cast<bool>(in_);
    }
    // A length-prefixed string of at most max_len bytes.
    bool read_string(std::string* s, uint64_t max_len) {
        uint64_t n = 0;
        if (!read(&n) || n > max_len || n > left()) {
            return false;
        }
        s->resize(n);
        in_.read(s->data(), static_cast<std::streamsize>(n));
        pos_ += n;
        return static_cast<bool>(in_);
    }

private:
    std::ifstream in_;
    uint64_t size_ = 0;
    uint64_t pos_  = 0;
};

enum GgufValueType : uint32_t {
    kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64, kValueTypeCount
};

uint64_t scalar_size(uint32_t type) {
    switch (type) {
        case kU8: case kI8: case kBool: return 1;
        case kU16: case kI16: return 2;
        case kU32: case kI32: case kF32: return 4;
        case kU64: case kI64: case kF64: return 8;
        default: return 0;
    }
}

constexpr uint64_t kMaxKeyLength    = 65536;
constexpr uint64_t kMaxNameLength   = 65536;
constexpr uint32_t kMaxDims         = 8;  // more is not a tensor any writer produces
constexpr uint64_t kMinTensorInfo   = 8 + 1 + 4 + 8 + 4 + 8;  // name length, 1 char, n_dims, 1 dim, type, offset
constexpr uint64_t kMinKeyValue     = 8 + 1 + 4 + 1;          // key length, 1 char, type, 1-byte value

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
    std::vector<std::string> entries;
    for (size_t i = 0; i < gguf_get_arr_n(gguf, key); i++) {
        entries.push_back(gguf_get_arr_str(gguf, key, i));
    }
    return check_contract_entries(entries, used, error);
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
        entries.push_back(contract_entry(id));
    }
    std::vector<const char*> ptrs;
    for (const std::string& e : entries) {
        ptrs.push_back(e.c_str());
    }
    gguf_set_arr_str(gguf, kLayoutContractKey, ptrs.data(), ptrs.size());
}

bool check_data_section(const gguf_context* gguf, const ggml_context* meta, uint64_t file_size, std::string* error) {
    const uint64_t data_offset = gguf_get_data_offset(gguf);
    for (int64_t i = 0; i < gguf_get_n_tensors(gguf); i++) {
        const char* name        = gguf_get_tensor_name(gguf, i);
        const ggml_tensor* t    = ggml_get_tensor(const_cast<ggml_context*>(meta), name);
        const uint64_t end      = data_offset + gguf_get_tensor_offset(gguf, i) + (t != nullptr ? ggml_nbytes(t) : 0);
        if (end > file_size) {
            set_error(error, "the file is cut short: tensor '" + std::string(name) + "' needs data up to byte " +
                                 std::to_string(end) + " but the file has " + std::to_string(file_size) + " bytes");
            return false;
        }
    }
    return true;
}

bool read_gguf_index(const std::string& path, std::vector<GgufTensor>* tensors, std::string* error) {
    Reader r(path);
    if (!r.open()) {
        set_error(error, "cannot open the file");
        return false;
    }
    char magic[4];
    uint32_t version = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    if (!r.read(&magic) || std::string(magic, 4) != "GGUF") {
        set_error(error, "not a GGUF file (no GGUF magic)");
        return false;
    }
    if (!r.read(&version) || !r.read(&n_tensors) || !r.read(&n_kv)) {
        set_error(error, "the GGUF header is cut short");
        return false;
    }
    if (version != 2 && version != 3) {
        set_error(error, "GGUF version " + std::to_string(version) + " is not supported (only 2 and 3)");
        return false;
    }
    if (n_kv > r.left() / kMinKeyValue) {
        set_error(error, "the header claims " + std::to_string(n_kv) + " metadata entries, more than the file can hold");
        return false;
    }

    uint64_t alignment = 32;
    std::vector<std::string> contract;
    for (uint64_t i = 0; i < n_kv; i++) {
        std::string key;
        uint32_t type = 0;
        if (!r.read_string(&key, kMaxKeyLength) || !r.read(&type)) {
            set_error(error, "metadata entry " + std::to_string(i) + " is cut short or has an oversized key");
            return false;
        }
        if (type >= kValueTypeCount) {
            set_error(error, "metadata '" + key + "' has unknown value type " + std::to_string(type));
            return false;
        }
        if (type == kString) {
            std::string value;
            if (!r.read_string(&value, r.left())) {
                set_error(error, "metadata '" + key + "': string runs past the end of the file");
                return false;
            }
            continue;
        }
        if (type != kArray) {
            if (key == "general.alignment") {
                uint32_t a = 0;
                if (type != kU32 || !r.read(&a) || a == 0 || (a & (a - 1)) != 0) {
                    set_error(error, "general.alignment must be a power of two stored as uint32");
                    return false;
                }
                alignment = a;
            } else if (!r.skip(scalar_size(type))) {
                set_error(error, "metadata '" + key + "' runs past the end of the file");
                return false;
            }
            continue;
        }
        uint32_t elem_type = 0;
        uint64_t n         = 0;
        if (!r.read(&elem_type) || !r.read(&n) || elem_type >= kValueTypeCount || elem_type == kArray) {
            set_error(error, "metadata array '" + key + "' has an invalid element type");
            return false;
        }
        const uint64_t elem_min = elem_type == kString ? 8 : scalar_size(elem_type);
        if (n > r.left() / elem_min) {
            set_error(error, "metadata array '" + key + "' claims " + std::to_string(n) +
                                 " elements, more than the file can hold");
            return false;
        }
        const bool is_contract = key == kLayoutContractKey && elem_type == kString;
        for (uint64_t j = 0; j < n; j++) {
            if (elem_type == kString) {
                std::string value;
                if (!r.read_string(&value, r.left())) {
                    set_error(error, "metadata array '" + key + "' runs past the end of the file");
                    return false;
                }
                if (is_contract) {
                    contract.push_back(value);
                }
            } else if (!r.skip(elem_min)) {
                set_error(error, "metadata array '" + key + "' runs past the end of the file");
                return false;
            }
        }
    }

    if (n_tensors > r.left() / kMinTensorInfo) {
        set_error(error, "the header claims " + std::to_string(n_tensors) + " tensors, more than the file can hold");
        return false;
    }
    std::vector<GgufTensor> index;
    std::set<std::string> names;
    std::set<int> used;
    for (uint64_t i = 0; i < n_tensors; i++) {
        GgufTensor t;
        uint32_t n_dims = 0, type = 0;
        if (!r.read_string(&t.name, kMaxNameLength) || !r.read(&n_dims)) {
            set_error(error, "tensor info " + std::to_string(i) + " is cut short or has an oversized name");
            return false;
        }
        if (!names.insert(t.name).second) {
            set_error(error, "tensor '" + t.name + "' appears twice");
            return false;
        }
        if (n_dims == 0 || n_dims > kMaxDims) {
            set_error(error, "tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (1 to " +
                                 std::to_string(kMaxDims) + " are accepted)");
            return false;
        }
        for (uint32_t d = 0; d < n_dims; d++) {
            int64_t ne = 0;
            if (!r.read(&ne)) {
                set_error(error, "tensor '" + t.name + "': its dimensions are cut short");
                return false;
            }
            if (ne < 0) {
                set_error(error, "tensor '" + t.name + "' has a negative dimension");
                return false;
            }
            if (d < GGML_MAX_DIMS) {
                t.ne.push_back(ne);
            } else if (ne != 0 && t.ne.back() > INT64_MAX / ne) {
                set_error(error, "tensor '" + t.name + "' is too large (its dimensions overflow)");
                return false;
            } else {
                t.ne.back() *= ne;  // folded into the last dimension, as sd.cpp expects
            }
        }
        if (!r.read(&type) || !r.read(&t.offset)) {
            set_error(error, "tensor '" + t.name + "': its type and offset are cut short");
            return false;
        }
        if (type >= GGML_TYPE_COUNT || ggml_blck_size(static_cast<ggml_type>(type)) == 0) {
            set_error(error, "tensor '" + t.name + "' has unknown ggml type id " + std::to_string(type) +
                                 " (this build of bonsai-sd does not know that type)");
            return false;
        }
        t.type = static_cast<ggml_type>(type);
        if (t.ne[0] % ggml_blck_size(t.type) != 0) {
            set_error(error, "tensor '" + t.name + "' of type " + ggml_type_name(t.type) + " has a row length of " +
                                 std::to_string(t.ne[0]) + ", not a multiple of its block size " +
                                 std::to_string(ggml_blck_size(t.type)));
            return false;
        }
        if (bonsai_lowbit_is_type(t.type)) {
            used.insert(t.type);
        }
        index.push_back(std::move(t));
    }
    if (!contract.empty() && !check_contract_entries(contract, used, error)) {
        return false;
    }

    // Tensor data: packed in file order, each tensor at the aligned end of the previous one.
    const uint64_t data_start = align_up(r.pos(), alignment);
    if (data_start > r.size()) {
        set_error(error, "the file ends before its tensor data starts");
        return false;
    }
    const uint64_t data_size = r.size() - data_start;
    uint64_t expected        = 0;
    for (size_t i = 0; i < index.size(); i++) {
        GgufTensor& t = index[i];
        uint64_t need = 0, legacy = 0;
        if (!tensor_bytes(t.ne, ggml_blck_size(t.type), ggml_type_size(t.type), &need)) {
            set_error(error, "tensor '" + t.name + "' is too large (its dimensions overflow)");
            return false;
        }
        const bool legacy_fits = t.type == GGML_TYPE_Q2_0 && tensor_bytes(t.ne, 128, 34, &legacy);
        const uint64_t next = i + 1 < index.size() ? index[i + 1].offset : data_size;
        if (t.offset != expected) {
            set_error(error, "tensor '" + t.name + "' is at data offset " + std::to_string(t.offset) +
                                 " where the tensors before it end at " + std::to_string(expected));
            return false;
        }
        const bool is_last = i + 1 == index.size();
        const bool fits    = is_last ? need <= data_size - t.offset : align_up(t.offset + need, alignment) == next;
        if (!fits) {
            const bool legacy_layout =
                legacy_fits && (is_last ? legacy <= data_size - t.offset : align_up(t.offset + legacy, alignment) == next);
            if (legacy_layout) {
                set_error(error, "tensor '" + t.name +
                                     "' is stored in PrismML's legacy Q2_0 layout (128-element blocks of 34 bytes) under "
                                     "type id 42, which ggml defines as 64-element blocks of 18 bytes. This file "
                                     "predates that definition and cannot be read as is: convert the model again "
                                     "(bonsai-sd convert writes PQ2_0, type 142, the same bytes under PrismML's current "
                                     "id), or use PrismML's *-PQ2_0 / *_Q2_0_g64 files");
            } else if (is_last || next > data_size) {
                set_error(error, "tensor '" + t.name + "' needs " + std::to_string(need) +
                                     " bytes of data but the file ends first (truncated?)");
            } else {
                set_error(error, "tensor '" + t.name + "' (" + ggml_type_name(t.type) + ") needs " +
                                     std::to_string(need) + " bytes, but the next tensor starts " +
                                     std::to_string(next - t.offset) +
                                     " bytes later: its type or shape does not match its data");
            }
            return false;
        }
        expected = align_up(t.offset + need, alignment);
        t.offset += data_start;
    }
    *tensors = std::move(index);
    return true;
}

}  // namespace bonsai
