// Testing and expert entry points (generation-taps.h): a generation fed with given noise and
// prompt embeddings and observed at its sigmas and final latents, and the diffusion model and
// the VAE decoder run alone. The checks here keep every bad tensor away from ggml's asserts.

#include "generation-taps.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "generation-taps-internal.h"
#include "guarded.h"
#include "util.h"

namespace {

constexpr int64_t kMaxLatentSide = 1024;     // 16384 pixels
constexpr int64_t kMaxPromptTokens = 65536;

// The taps of the generation running on this thread (one engine call at a time per thread).
struct ActiveTaps {
    const bonsai_generation_taps_t* taps = nullptr;
    sd::Tensor<float> noise;          // empty: the seeded noise
    sd::Tensor<float> prompt_embeds;  // empty: the encoded prompt
};

thread_local ActiveTaps* t_active = nullptr;

std::string shape_text(const int64_t* ne, int dims) {
    std::string s = "[";
    for (int i = 0; i < dims; i++) {
        s += (i ? ", " : "") + std::to_string(ne[i]);
    }
    return s + "]";
}

// Checks a view's dimensions: each of the first `dims` in [1, limit[i]], the rest 1.
bool check_view(const bonsai_tensor_view_t& v, const char* what, int dims, const int64_t* limit) {
    if (v.data == nullptr) {
        LOG_ERROR("%s: no data", what);
        return false;
    }
    for (int i = 0; i < 4; i++) {
        const int64_t high = i < dims ? limit[i] : 1;
        if (v.ne[i] < 1 || v.ne[i] > high) {
            LOG_ERROR("%s: shape %s (ggml order) is out of range: dimension %d must be in [1, %lld]", what,
                      shape_text(v.ne, 4).c_str(), i, (long long)high);
            return false;
        }
    }
    return true;
}

sd::Tensor<float> tensor_from_view(const bonsai_tensor_view_t& v, int dims) {
    std::vector<int64_t> shape(v.ne, v.ne + dims);
    const size_t count = static_cast<size_t>(v.ne[0] * v.ne[1] * v.ne[2] * v.ne[3]);
    return sd::Tensor<float>(std::move(shape), std::vector<float>(v.data, v.data + count));
}

bool all_finite(const sd::Tensor<float>& t, const char* what) {
    for (int64_t i = 0; i < t.numel(); i++) {
        if (!std::isfinite(t.data()[i])) {
            LOG_ERROR("%s: value %lld is not finite", what, (long long)i);
            return false;
        }
    }
    return true;
}

bool to_result(const sd::Tensor<float>& t, bonsai_tensor_t* out) {
    const size_t bytes = static_cast<size_t>(t.numel()) * sizeof(float);
    float* data        = static_cast<float*>(std::malloc(bytes > 0 ? bytes : 1));
    if (data == nullptr) {
        LOG_ERROR("out of memory for a result of %zu bytes", bytes);
        return false;
    }
    std::memcpy(data, t.data(), bytes);
    out->data = data;
    for (int i = 0; i < 4; i++) {
        out->ne[i] = i < t.dim() ? t.shape()[i] : 1;
    }
    return true;
}

bool check_latent(const bonsai_tensor_view_t& latent, const char* what, const bonsai::ModelFacts& facts) {
    const int64_t limit[3] = {kMaxLatentSide, kMaxLatentSide, facts.latent_channels};
    if (!check_view(latent, what, 3, limit)) {
        return false;
    }
    if (latent.ne[2] != facts.latent_channels) {
        LOG_ERROR("%s: %lld channels, the model's latents have %lld", what, (long long)latent.ne[2],
                  (long long)facts.latent_channels);
        return false;
    }
    return true;
}

bool check_prompt_embeds(const bonsai_tensor_view_t& embeds, const bonsai::ModelFacts& facts) {
    const int64_t limit[2] = {facts.context_dim, kMaxPromptTokens};
    if (!check_view(embeds, "prompt_embeds", 2, limit)) {
        return false;
    }
    if (embeds.ne[0] != facts.context_dim) {
        LOG_ERROR("prompt_embeds: %lld values per token, the model's context dimension is %lld",
                  (long long)embeds.ne[0], (long long)facts.context_dim);
        return false;
    }
    return true;
}

// The facts of a loaded FLUX.2 model, or false (logged) for another model.
bool flux2_facts(sd_ctx_t* sd_ctx, const char* what, bonsai::ModelFacts* facts) {
    if (sd_ctx == nullptr) {
        LOG_ERROR("%s: no model", what);
        return false;
    }
    *facts = bonsai::sd_model_facts(sd_ctx);
    if (!facts->flux2) {
        LOG_ERROR("%s: supported for FLUX.2 models only", what);
        return false;
    }
    return true;
}

bool check_weights_loaded(const bonsai::ModelFacts& facts, const char* what) {
    if (facts.params_freed_after_use) {
        LOG_ERROR("%s needs the weights to stay loaded: load the model with free_params_immediately off", what);
        return false;
    }
    return true;
}

struct ActivateTaps {
    explicit ActivateTaps(ActiveTaps* taps) { t_active = taps; }
    ~ActivateTaps() { t_active = nullptr; }
};

}  // namespace

// ---- hooks called by stable-diffusion.cpp during a tapped generation ------------------------

namespace bonsai {

const sd::Tensor<float>* tapped_prompt_embeds() {
    return t_active != nullptr && !t_active->prompt_embeds.empty() ? &t_active->prompt_embeds : nullptr;
}

bool tap_noise(sd::Tensor<float>* noise) {
    if (t_active == nullptr || t_active->noise.empty()) {
        return true;
    }
    const sd::Tensor<float>& given = t_active->noise;
    const auto& want               = noise->shape();
    bool same                      = given.numel() == noise->numel() && want.size() >= 3;
    for (size_t i = 0; same && i < 3; i++) {
        same = given.shape()[i] == want[i];
    }
    if (!same) {
        LOG_ERROR("noise: shape %s (ggml order), the generation's latent is %s",
                  sd::tensor_shape_to_string(given.shape()).c_str(), sd::tensor_shape_to_string(want).c_str());
        return false;
    }
    std::copy(given.values().begin(), given.values().end(), noise->values().begin());
    return true;
}

void tap_sigmas(const std::vector<float>& sigmas) {
    if (t_active != nullptr && t_active->taps->on_sigmas != nullptr) {
        t_active->taps->on_sigmas(sigmas.data(), sigmas.size(), t_active->taps->user);
    }
}

void tap_final_latents(const std::vector<sd::Tensor<float>>& latents) {
    if (t_active == nullptr || t_active->taps->on_latent == nullptr) {
        return;
    }
    for (const sd::Tensor<float>& latent : latents) {
        bonsai_tensor_view_t view{latent.data(), {1, 1, 1, 1}};
        for (int64_t i = 0; i < latent.dim() && i < 4; i++) {
            view.ne[i] = latent.shape()[i];
        }
        t_active->taps->on_latent(view, t_active->taps->user);
    }
}

}  // namespace bonsai

// ---- the C entry points -----------------------------------------------------------------------

sd_image_t* bonsai_generate_image_tapped(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* params,
                                         const bonsai_generation_taps_t* taps) {
    if (taps == nullptr) {
        return generate_image(sd_ctx, params);
    }
    if (sd_ctx == nullptr || params == nullptr) {
        return nullptr;
    }
    ActiveTaps active;
    active.taps           = taps;
    const bool has_noise  = taps->noise.data != nullptr;
    const bool has_embeds = taps->prompt_embeds.data != nullptr;
    bool ok               = bonsai::guarded("preparing the generation's inputs", false, [&] {
        if (!has_noise && !has_embeds) {
            return true;
        }
        bonsai::ModelFacts facts;
        if (!flux2_facts(sd_ctx, "noise and prompt_embeds", &facts)) {
            return false;
        }
        if (has_noise) {
            if (params->batch_count != 1 || params->hires.enabled) {
                LOG_ERROR("noise: given noise needs batch_count 1 and no hires pass");
                return false;
            }
            if (!check_latent(taps->noise, "noise", facts)) {
                return false;
            }
            active.noise = tensor_from_view(taps->noise, 3);
            if (!all_finite(active.noise, "noise")) {
                return false;
            }
        }
        if (has_embeds) {
            if (!check_prompt_embeds(taps->prompt_embeds, facts)) {
                return false;
            }
            active.prompt_embeds = tensor_from_view(taps->prompt_embeds, 3);
            if (!all_finite(active.prompt_embeds, "prompt_embeds")) {
                return false;
            }
        }
        return true;
    });
    if (!ok) {
        return nullptr;
    }
    ActivateTaps scope(&active);
    return generate_image(sd_ctx, params);
}

bool bonsai_sample_sigmas(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* params, bonsai_tensor_t* sigmas) {
    return bonsai::guarded("planning the sampling", false, [&] {
        if (sd_ctx == nullptr || params == nullptr || sigmas == nullptr) {
            return false;
        }
        const std::vector<float> planned = bonsai::sd_plan_sigmas(sd_ctx, params);
        if (planned.empty()) {
            LOG_ERROR("no sampling plan for these parameters");
            return false;
        }
        return to_result(sd::Tensor<float>({static_cast<int64_t>(planned.size())}, planned), sigmas);
    });
}

bool bonsai_diffusion_forward(sd_ctx_t* sd_ctx, bonsai_tensor_view_t x, float sigma,
                              bonsai_tensor_view_t prompt_embeds, bonsai_tensor_t* out) {
    return bonsai::guarded("the diffusion model forward", false, [&] {
        bonsai::ModelFacts facts;
        if (out == nullptr || !flux2_facts(sd_ctx, "diffusion_forward", &facts) ||
            !check_weights_loaded(facts, "diffusion_forward") || !check_latent(x, "x", facts) ||
            !check_prompt_embeds(prompt_embeds, facts)) {
            return false;
        }
        if (!(sigma >= 0.0f && sigma <= 1.0f)) {
            LOG_ERROR("sigma must be in [0, 1], got %g", sigma);
            return false;
        }
        sd::Tensor<float> latent  = tensor_from_view(x, 4);
        sd::Tensor<float> context = tensor_from_view(prompt_embeds, 3);
        if (!all_finite(latent, "x") || !all_finite(context, "prompt_embeds")) {
            return false;
        }
        sd::Tensor<float> result = bonsai::sd_diffusion_forward(sd_ctx, latent, sigma, context);
        return !result.empty() && to_result(result, out);
    });
}

bool bonsai_decode_latent(sd_ctx_t* sd_ctx, bonsai_tensor_view_t latent, bonsai_tensor_t* image) {
    return bonsai::guarded("decoding the latent", false, [&] {
        bonsai::ModelFacts facts;
        if (image == nullptr || !flux2_facts(sd_ctx, "decode_latent", &facts) ||
            !check_weights_loaded(facts, "decode_latent") || !check_latent(latent, "latent", facts)) {
            return false;
        }
        sd::Tensor<float> x = tensor_from_view(latent, 4);
        if (!all_finite(x, "latent")) {
            return false;
        }
        sd::Tensor<float> result = bonsai::sd_decode_latent(sd_ctx, x);
        return !result.empty() && to_result(result, image);
    });
}
