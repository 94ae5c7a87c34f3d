// Shape checks bonsai-sd runs before stable-diffusion.cpp builds a FLUX model's runners,
// which infer their hyper-parameters from tensor shapes and would divide by zero, index past
// their layer lists or allocate millions of blocks on a file that only looks like a model.
#ifndef BONSAI_SDCPP_MODEL_CHECKS_H
#define BONSAI_SDCPP_MODEL_CHECKS_H

#include <string>

#include "model.h"

namespace bonsai {

// The DiT ("model.diffusion_model.") of a FLUX-family model and, for FLUX.2 when present, its
// Qwen3 text encoder ("text_encoders.llm."): the tensors sd.cpp derives dimensions from exist
// with sane shapes, and block/layer indices are small. Returns false with a message that names
// the tensor otherwise.
bool check_flux_model(const String2TensorStorage& tensors, bool flux2, std::string* error);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_MODEL_CHECKS_H
