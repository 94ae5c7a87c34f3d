// libFuzzer target: the model-file reading path of bonsai-sd's stable-diffusion.cpp, i.e.
// ggml's gguf_init plus the checked fallback reader and layout contract (read_gguf_file),
// bonsai-sd's GGUF index reader on its own, and the safetensors reader with its header check.
// Any input must end in a return value, never a crash, an abort or a sanitizer report.
//
// Built and run by tests/test_fuzz.py (clang, -fsanitize=fuzzer,address,undefined).

#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gguf-checks.h"
#include "gguf_io.h"
#include "safetensors_io.h"
#include "util.h"

// sd.cpp's logger lives in util.cpp, which pulls in the whole engine; the readers only log.
void log_printf(sd_log_level_t, const char*, int, const char*, ...) {}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // The readers take a path: the input goes to a per-process scratch file.
    static const std::string path = "/tmp/bonsai-fuzz-" + std::to_string(getpid()) + ".bin";
    FILE* f = fopen(path.c_str(), "wb");
    if (f == nullptr) {
        return 0;
    }
    fwrite(data, 1, size, f);
    fclose(f);

    std::vector<TensorStorage> tensors;
    std::string error;
    if (is_gguf_file(path)) {
        read_gguf_file(path, tensors, &error);
        std::vector<bonsai::GgufTensor> index;
        bonsai::read_gguf_index(path, &index, &error);
    }
    if (is_safetensors_file(path)) {
        read_safetensors_file(path, tensors, &error);
    }
    return 0;
}
