# Our sources compiled into the upstream targets. The patches in ggml-patches/ only add
# the hooks (enum values, trait tables, switch cases) that call into these files.

set(_lowbit "${PROJECT_SOURCE_DIR}/cpp/lowbit")
set(_sdcpp  "${PROJECT_SOURCE_DIR}/cpp/sdcpp")

# Codecs: type traits (to_float, reference quantizers), validation. Backend-independent.
target_sources(ggml-base PRIVATE "${_lowbit}/lowbit-codec.c")
target_include_directories(ggml-base PRIVATE "${_lowbit}")

# CPU kernels, built with ggml-cpu's own architecture flags (AVX2 on portable x86-64
# builds, NEON on AArch64); each SIMD file compiles to nothing where its ISA is absent.
target_sources(ggml-cpu PRIVATE
    "${_lowbit}/lowbit-kernels.c"
    "${_lowbit}/lowbit-avx2.c"
    "${_lowbit}/lowbit-neon.c"
    "${_lowbit}/lowbit-ggml-cpu.c")
target_include_directories(ggml-cpu PRIVATE "${_lowbit}")

# Metal: the kernels are compiled into ggml-metal's Metal library (patch 0007 includes
# cpp/metal/lowbit-kernels.metal); the host code reads the launch parameters header.
if(TARGET ggml-metal)
    target_include_directories(ggml-metal PRIVATE "${_lowbit}" "${PROJECT_SOURCE_DIR}/cpp/metal")
endif()

# stable-diffusion.cpp: the checked GGUF reader and layout contract, safetensors and model
# shape checks, the prompt weighting scanner, allocation failures reported with their sizes;
# api-guards.cpp defines the public load/generate/convert entry points (exception-safe).
target_sources(stable-diffusion PRIVATE
    "${_sdcpp}/gguf-checks.cpp"
    "${_sdcpp}/safetensors-checks.cpp"
    "${_sdcpp}/model-checks.cpp"
    "${_sdcpp}/prompt-attention.cpp"
    "${_sdcpp}/memory-checks.cpp"
    "${_sdcpp}/api-guards.cpp")
target_include_directories(stable-diffusion PRIVATE "${_sdcpp}" "${_lowbit}")
