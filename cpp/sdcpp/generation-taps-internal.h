// What generation-taps.cpp and the patched stable-diffusion.cpp (ggml-patches/0040) call in
// each other. stable-diffusion.cpp calls the tap_* hooks at fixed points of generate_image()
// and provides the sd_* functions, which reach the model objects only it can see.
#ifndef BONSAI_SDCPP_GENERATION_TAPS_INTERNAL_H
#define BONSAI_SDCPP_GENERATION_TAPS_INTERNAL_H

#include <cstdint>
#include <vector>

#include "stable-diffusion.h"
#include "tensor.hpp"

namespace bonsai {

// ---- provided by stable-diffusion.cpp ----

struct ModelFacts {
    bool flux2                   = false;
    bool params_freed_after_use  = false;  // free_params_immediately: the weights do not stay loaded
    int64_t context_dim          = 0;      // the diffusion model's prompt embedding size (txt_in)
    int64_t latent_channels      = 0;      // channels of a diffusion-space latent
    int64_t vae_scale_factor     = 0;      // image pixels per latent pixel along each side
};

ModelFacts sd_model_facts(sd_ctx_t* sd_ctx);
// One diffusion model evaluation; empty on failure (logged).
sd::Tensor<float> sd_diffusion_forward(sd_ctx_t* sd_ctx, const sd::Tensor<float>& x, float sigma,
                                       const sd::Tensor<float>& context);
// The noise levels generate_image() would sample at with these parameters.
std::vector<float> sd_plan_sigmas(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* params);
// The VAE decoder (untiled) on a diffusion-space latent: values in [0, 1]; empty on failure.
sd::Tensor<float> sd_decode_latent(sd_ctx_t* sd_ctx, const sd::Tensor<float>& latent);

// ---- provided by generation-taps.cpp, called while a tapped generation runs ----

// The prompt embeddings to use instead of encoding the prompt, or nullptr.
const sd::Tensor<float>* tapped_prompt_embeds();
// Replaces `noise` with the tapped noise, if any; false (logged) when its shape differs.
bool tap_noise(sd::Tensor<float>* noise);
void tap_sigmas(const std::vector<float>& sigmas);
void tap_final_latents(const std::vector<sd::Tensor<float>>& latents);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_GENERATION_TAPS_INTERNAL_H
