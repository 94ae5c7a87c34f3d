// A C++ exception must not cross the C API: sd-cli would abort, and other callers (C, ctypes)
// cannot catch it. Anything that still escapes stable-diffusion.cpp's code (an allocation that
// fails, a library that throws) becomes a logged error and the function's failure value.
// generate_image also refuses requests whose numbers would crash or exhaust the engine before
// any work starts.

#include "api-guards.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "guarded.h"
#include "memory-checks.h"
#include "util.h"

namespace {

constexpr int kMaxSide          = 16384;  // per image side, generated or given as a reference
constexpr int kMaxSteps         = 10000;
constexpr int kMaxBatch         = 1024;
constexpr size_t kMaxPromptSize = 16384;  // bytes; klein reads 512 tokens (about 2 KB of English)

// A float parameter that must be a number: finite, or +inf where upstream uses it for "unset".
std::string check_number(const char* name, float value, bool inf_means_unset) {
    if (std::isfinite(value) || (inf_means_unset && value == INFINITY)) {
        return "";
    }
    return std::string(name) + " must be a finite number, got " + (std::isnan(value) ? "nan" : "inf");
}

std::string check_prompt(const char* name, const char* text) {
    const size_t size = text != nullptr ? strlen(text) : 0;
    if (size <= kMaxPromptSize) {
        return "";
    }
    return std::string(name) + " is " + std::to_string(size) + " bytes, more than the " +
           std::to_string(kMaxPromptSize) + " this build accepts";
}

std::string check_image(const char* name, const sd_image_t& image) {
    if (image.data == nullptr || image.width == 0 || image.height == 0 || image.channel == 0 || image.channel > 4) {
        return std::string(name) + " is empty or has " + std::to_string(image.channel) + " channels";
    }
    if (image.width > kMaxSide || image.height > kMaxSide) {
        return std::string(name) + " is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
               ", larger than " + std::to_string(kMaxSide) + " pixels per side";
    }
    return "";
}

// Why the request cannot be generated, or "" when its numbers are fine.
std::string check_request(const sd_img_gen_params_t& p) {
    if (p.width > kMaxSide || p.height > kMaxSide) {
        // The smallest thing the engine would hold: the decoded image as 3 floats per pixel.
        const double pixel_bytes = 3.0 * sizeof(float) * (double)p.width * (double)p.height;
        return "a " + std::to_string(p.width) + "x" + std::to_string(p.height) + " image is larger than " +
               std::to_string(kMaxSide) + "x" + std::to_string(kMaxSide) +
               ", the largest this build generates: its decoded pixels alone would need " +
               bonsai::format_bytes((uint64_t)pixel_bytes) + " of memory";
    }
    if (p.width < 1 || p.height < 1) {
        return "image size " + std::to_string(p.width) + "x" + std::to_string(p.height) + " is not positive";
    }
    const sd_sample_params_t& s = p.sample_params;
    if (s.custom_sigmas_count == 0 && (s.sample_steps < 1 || s.sample_steps > kMaxSteps)) {
        return "steps must be in [1, " + std::to_string(kMaxSteps) + "], got " + std::to_string(s.sample_steps);
    }
    for (int i = 0; i < s.custom_sigmas_count; i++) {
        if (s.custom_sigmas == nullptr || !std::isfinite(s.custom_sigmas[i])) {
            return "sigma " + std::to_string(i) + " is not a finite number";
        }
    }
    if (p.batch_count < 1 || p.batch_count > kMaxBatch) {
        return "batch count must be in [1, " + std::to_string(kMaxBatch) + "], got " + std::to_string(p.batch_count);
    }
    const std::string numbers[] = {
        check_number("cfg scale", s.guidance.txt_cfg, false),
        check_number("image cfg scale", s.guidance.img_cfg, true),
        check_number("guidance", s.guidance.distilled_guidance, false),
        check_number("skip layer guidance scale", s.guidance.slg.scale, false),
        check_number("eta", s.eta, true),
        check_number("flow shift", s.flow_shift, true),
        check_number("strength", p.strength, false),
        check_number("control strength", p.control_strength, false),
        check_prompt("the prompt", p.prompt),
        check_prompt("the negative prompt", p.negative_prompt),
    };
    for (const std::string& error : numbers) {
        if (!error.empty()) {
            return error;
        }
    }
    if (p.ref_images_count < 0 || (p.ref_images_count > 0 && p.ref_images == nullptr)) {
        return "reference images: none given for a count of " + std::to_string(p.ref_images_count);
    }
    for (int i = 0; i < p.ref_images_count; i++) {
        const std::string error = check_image(("reference image " + std::to_string(i)).c_str(), p.ref_images[i]);
        if (!error.empty()) {
            return error;
        }
    }
    return "";
}

}  // namespace

sd_ctx_t* new_sd_ctx(const sd_ctx_params_t* sd_ctx_params) {
    return bonsai::guarded<sd_ctx_t*>("loading the model", nullptr, [&] { return new_sd_ctx_unguarded(sd_ctx_params); });
}

sd_image_t* generate_image(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* sd_img_gen_params) {
    return bonsai::guarded<sd_image_t*>("generating the image", nullptr, [&]() -> sd_image_t* {
        if (sd_ctx != nullptr && sd_img_gen_params != nullptr) {
            const std::string error = check_request(*sd_img_gen_params);
            if (!error.empty()) {
                LOG_ERROR("cannot generate: %s", error.c_str());
                return nullptr;
            }
        }
        return generate_image_unguarded(sd_ctx, sd_img_gen_params);
    });
}

bool convert(const char* input_path, const char* vae_path, const char* output_path, sd_type_t output_type,
             const char* tensor_type_rules, bool convert_name) {
    return bonsai::guarded<bool>("converting the model", false, [&] {
        return convert_unguarded(input_path, vae_path, output_path, output_type, tensor_type_rules, convert_name);
    });
}
