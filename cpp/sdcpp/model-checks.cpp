#include "model-checks.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace bonsai {

namespace {

constexpr const char* kDit = "model.diffusion_model.";
constexpr const char* kLlm = "text_encoders.llm.";
constexpr long kMaxBlocks  = 1024;     // FLUX.2 dev has 8 + 48, Qwen3-4B 36 layers
constexpr int64_t kMaxDim  = 1 << 20;  // any hidden size, head size or vocabulary fits

bool fail(std::string* error, const std::string& message) {
    if (error != nullptr) {
        *error = message;
    }
    return false;
}

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

// The block index after `marker` in `name` (e.g. "double_blocks."), or -1 when absent.
long block_index(const std::string& name, const std::string& marker) {
    const size_t pos = name.find(marker);
    if (pos == std::string::npos) {
        return -1;
    }
    const char* digits = name.c_str() + pos + marker.size();
    char* end          = nullptr;
    const long index   = strtol(digits, &end, 10);
    return end == digits ? -1 : index;
}

bool dims_ok(const TensorStorage& t, int n_dims) {
    if (t.n_dims != n_dims) {
        return false;
    }
    for (int i = 0; i < n_dims; i++) {
        if (t.ne[i] <= 0 || t.ne[i] > kMaxDim) {
            return false;
        }
    }
    return true;
}

}  // namespace

bool check_flux_model(const String2TensorStorage& tensors, bool flux2, std::string* error) {
    const TensorStorage* txt_in   = nullptr;
    const TensorStorage* key_norm = nullptr;
    const TensorStorage* embed    = nullptr;
    bool has_llm                  = false;
    long llm_layers               = 0;

    for (const auto& [name, t] : tensors) {
        if (starts_with(name, kDit)) {
            for (const char* marker : {"double_blocks.", "single_blocks."}) {
                const long index = block_index(name, marker);
                if (index >= kMaxBlocks) {
                    return fail(error, "diffusion model tensor '" + name.substr(strlen(kDit)) + "' names block " +
                                           std::to_string(index) + "; a FLUX.2 model has far fewer");
                }
            }
            if (name == std::string(kDit) + "txt_in.weight") {
                txt_in = &t;
            }
            if (name == std::string(kDit) + "single_blocks.0.norm.key_norm.scale" ||
                name == std::string(kDit) + "double_blocks.0.txt_attn.norm.key_norm.scale") {
                key_norm = &t;
            }
        } else if (flux2 && starts_with(name, kLlm)) {
            has_llm          = true;
            const long index = block_index(name, "layers.");
            if (index >= kMaxBlocks) {
                return fail(error, "text encoder tensor '" + name.substr(strlen(kLlm)) + "' names layer " +
                                       std::to_string(index) + "; Qwen3 has far fewer");
            }
            llm_layers = std::max(llm_layers, index + 1);
            if (name.find("embed_tokens.weight") != std::string::npos) {
                embed = &t;
            }
        }
    }

    if (txt_in == nullptr || !dims_ok(*txt_in, 2)) {
        return fail(error, "the diffusion model has no usable 'txt_in.weight' (a 2-D [hidden, context] matrix); "
                           "it is not a FLUX transformer in BFL/sd.cpp naming (diffusers-named files must be "
                           "converted first: bonsai-sd convert)");
    }
    if (key_norm == nullptr || !dims_ok(*key_norm, 1) || txt_in->ne[1] % key_norm->ne[0] != 0) {
        return fail(error, "the diffusion model's attention key norm ('single_blocks.0.norm.key_norm.scale' or "
                           "'double_blocks.0.txt_attn.norm.key_norm.scale') is missing or does not divide the hidden "
                           "size " + std::to_string(txt_in->ne[1]));
    }
    if (has_llm) {
        if (embed == nullptr || !dims_ok(*embed, 2)) {
            return fail(error, "the text encoder has no usable 'embed_tokens.weight' (a 2-D matrix)");
        }
        if (llm_layers < 28) {
            return fail(error, "the text encoder has " + std::to_string(llm_layers) +
                                   " layers; FLUX.2 reads the hidden states after layers 9, 18 and 27 of Qwen3, so it "
                                   "needs at least 28");
        }
    }
    return true;
}

}  // namespace bonsai
