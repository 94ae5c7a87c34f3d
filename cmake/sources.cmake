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

# CUDA kernels (cpp/cuda), built into ggml-cuda with its flags; the glue includes ggml-cuda's
# common.cuh, and ggml-cuda.cu, cpy.cu, getrows.cu and convert.cu (patch 0006) include the glue
# header. The Hopper GEMM and flash attention (wgmma, TMA) need the arch-specific sm_90a target
# and nothing else, so they are an object library of their own; ggml-cuda uses them on compute
# capability 9.0 devices (cuda-flash-attn.cu: the flash attention's ggml glue, patch 0067).
if(TARGET ggml-cuda)
    set(_cuda "${PROJECT_SOURCE_DIR}/cpp/cuda")
    target_sources(ggml-cuda PRIVATE
        "${_cuda}/lowbit-cuda-ops.cu"
        "${_cuda}/lowbit-cuda-gemm.cu"
        "${_cuda}/lowbit-ggml-cuda.cu"
        "${_cuda}/cuda-op-profile.cu"
        "${_cuda}/cuda-im2col.cu"
        "${_cuda}/cuda-group-norm.cu"
        "${_cuda}/cuda-fused-elementwise.cu"
        "${_cuda}/cuda-flash-attn.cu"
        "${_cuda}/cuda-quantized-gemm.cu"
        "${_cuda}/cuda-conv2d.cu"
        "${_cuda}/cuda-conv2d-mma.cu")
    target_include_directories(ggml-cuda PRIVATE "${_cuda}" "${_lowbit}" "${BONSAI_SD_UPSTREAM_SRC}/ggml/src/ggml-cuda")
    enable_language(CUDA)
    if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0)
        add_library(bonsai_sd_cuda_sm90 OBJECT "${_cuda}/lowbit-cuda-gemm-sm90.cu" "${_cuda}/cuda-flash-attn-sm90.cu")
        set_target_properties(bonsai_sd_cuda_sm90 PROPERTIES CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
        target_compile_options(bonsai_sd_cuda_sm90 PRIVATE "-gencode=arch=compute_90a,code=sm_90a")
        target_include_directories(bonsai_sd_cuda_sm90 PRIVATE "${_cuda}" "${_lowbit}")
        target_sources(ggml-cuda PRIVATE $<TARGET_OBJECTS:bonsai_sd_cuda_sm90>)
        target_compile_definitions(ggml-cuda PRIVATE BONSAI_CUDA_SM90)
    endif()
endif()

# Metal: the kernels are compiled into ggml-metal's Metal library (patch 0007 includes
# cpp/metal/lowbit-kernels.metal); the host code reads the launch parameters header.
if(TARGET ggml-metal)
    target_include_directories(ggml-metal PRIVATE "${_lowbit}" "${PROJECT_SOURCE_DIR}/cpp/metal")
endif()

# stable-diffusion.cpp: the checked GGUF reader and layout contract, safetensors and model
# shape checks, the prompt weighting scanner, allocation failures reported with their sizes;
# api-guards.cpp defines the public load/generate/convert entry points (exception-safe);
# generation-taps.cpp the testing/expert entry points (given noise and prompt embeddings, the
# diffusion model and the VAE decoder alone); host-heap.cpp glibc's settings for per-image tensors.
target_sources(stable-diffusion PRIVATE
    "${_sdcpp}/gguf-checks.cpp"
    "${_sdcpp}/safetensors-checks.cpp"
    "${_sdcpp}/model-checks.cpp"
    "${_sdcpp}/prompt-attention.cpp"
    "${_sdcpp}/memory-checks.cpp"
    "${_sdcpp}/api-guards.cpp"
    "${_sdcpp}/generation-taps.cpp"
    "${_sdcpp}/rope-positions.cpp"
    "${_sdcpp}/host-heap.cpp")
target_include_directories(stable-diffusion PRIVATE "${_sdcpp}" "${_lowbit}")
