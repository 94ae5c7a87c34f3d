// stable-diffusion.cpp's C entry points that load or generate, renamed by the patch series so
// that bonsai-sd can define the public names as exception-safe wrappers (api-guards.cpp).
#ifndef BONSAI_SDCPP_API_GUARDS_H
#define BONSAI_SDCPP_API_GUARDS_H

#include "stable-diffusion.h"

sd_ctx_t* new_sd_ctx_unguarded(const sd_ctx_params_t* sd_ctx_params);
sd_image_t* generate_image_unguarded(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* sd_img_gen_params);
bool convert_unguarded(const char* input_path, const char* vae_path, const char* output_path, sd_type_t output_type,
                       const char* tensor_type_rules, bool convert_name);

#endif  // BONSAI_SDCPP_API_GUARDS_H
