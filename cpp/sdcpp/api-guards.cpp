// A C++ exception must not cross the C API: sd-cli would abort, and other callers (C, ctypes)
// cannot catch it. Anything that still escapes stable-diffusion.cpp's code (an allocation that
// fails, a library that throws) becomes a logged error and the function's failure value.

#include "api-guards.h"

#include <exception>
#include <new>

#include "util.h"

namespace {

template <typename Result, typename Fn>
Result guarded(const char* what, Result failure, Fn&& fn) {
    try {
        return fn();
    } catch (const std::bad_alloc&) {
        LOG_ERROR("%s failed: out of memory", what);
    } catch (const std::exception& e) {
        LOG_ERROR("%s failed: %s", what, e.what());
    } catch (...) {
        LOG_ERROR("%s failed: unknown error", what);
    }
    return failure;
}

}  // namespace

sd_ctx_t* new_sd_ctx(const sd_ctx_params_t* sd_ctx_params) {
    return guarded<sd_ctx_t*>("loading the model", nullptr, [&] { return new_sd_ctx_unguarded(sd_ctx_params); });
}

sd_image_t* generate_image(sd_ctx_t* sd_ctx, const sd_img_gen_params_t* sd_img_gen_params) {
    return guarded<sd_image_t*>("generating the image", nullptr,
                                [&] { return generate_image_unguarded(sd_ctx, sd_img_gen_params); });
}

bool convert(const char* input_path, const char* vae_path, const char* output_path, sd_type_t output_type,
             const char* tensor_type_rules, bool convert_name) {
    return guarded<bool>("converting the model", false, [&] {
        return convert_unguarded(input_path, vae_path, output_path, output_type, tensor_type_rules, convert_name);
    });
}
