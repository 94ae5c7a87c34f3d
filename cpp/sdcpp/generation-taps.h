// Testing and expert entry points into stable-diffusion.cpp (bonsai-sd): feed a generation its
// initial noise and prompt embeddings, observe the sigmas it samples at and the latent it
// decodes, and run the diffusion model or the VAE decoder alone on given tensors. They exist so
// that the engine can be compared, tensor for tensor, with a reference implementation
// (diffusers) on the same weights; FLUX.2 models only.
//
// Every function logs its failures through sd.cpp's log callback and returns a failure value;
// none asserts on bad input.
#ifndef BONSAI_SDCPP_GENERATION_TAPS_H
#define BONSAI_SDCPP_GENERATION_TAPS_H

#include <stddef.h>
#include <stdint.h>

#include "stable-diffusion.h"

#ifdef __cplusplus
extern "C" {
#endif

// A float tensor in ggml order: ne[0] varies fastest, unused dimensions are 1. A latent is
// width x height x channels (a C-contiguous torch [channels, height, width]); prompt
// embeddings are dim x tokens (torch [tokens, dim]); an image is width x height x 3.
typedef struct {
    const float* data;
    int64_t ne[4];
} bonsai_tensor_view_t;

// A tensor the engine allocated with malloc(); the caller frees `data`.
typedef struct {
    float* data;
    int64_t ne[4];
} bonsai_tensor_t;

typedef struct {
    // Inputs; a NULL `data` keeps the usual behaviour.
    bonsai_tensor_view_t noise;          // replaces the seeded initial noise (batch_count 1, no hires pass)
    bonsai_tensor_view_t prompt_embeds;  // replaces the encoded prompt (the negative prompt is still encoded)
    // Observers, called on the generating thread; NULL: not called.
    void (*on_sigmas)(const float* sigmas, size_t count, void* user);  // the noise levels sampled at, ending at 0
    void (*on_latent)(bonsai_tensor_view_t latent, void* user);       // each final latent, before decoding
    void* user;
} bonsai_generation_taps_t;

// generate_image() with taps. NULL when the generation fails or an input does not fit the model.
SD_API sd_image_t* bonsai_generate_image_tapped(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* params,
                                                const bonsai_generation_taps_t* taps);

// The noise levels (ending at 0) that generate_image() would sample at with these parameters,
// computed as it computes them, without generating: `sigmas` receives count x 1 x 1 x 1 values.
SD_API bool bonsai_sample_sigmas(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* params, bonsai_tensor_t* sigmas);

// The diffusion model's prediction (for FLUX.2, the flow velocity) for latent `x` at noise level
// `sigma` in [0, 1], conditioned on `prompt_embeds`, as one sampling step computes it; `out`
// receives a tensor shaped like `x`. Text and image positions are the engine's own (text token
// i at (0, 0, 0, i), latent pixel (h, w) at (0, h, w, 0)).
SD_API bool bonsai_diffusion_forward(sd_ctx_t* sd_ctx, bonsai_tensor_view_t x, float sigma,
                                     bonsai_tensor_view_t prompt_embeds, bonsai_tensor_t* out);

// The VAE decoder on a latent as the diffusion model sees it (normalized and patchified, as
// on_latent reports it): `image` receives width x height x 3 values in [0, 1], before the
// conversion to 8 bits. Never tiled.
SD_API bool bonsai_decode_latent(sd_ctx_t* sd_ctx, bonsai_tensor_view_t latent, bonsai_tensor_t* image);

#ifdef __cplusplus
}
#endif

#endif  // BONSAI_SDCPP_GENERATION_TAPS_H
