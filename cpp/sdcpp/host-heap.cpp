#include "host-heap.h"

#include <cstdlib>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace bonsai {

bool keep_freed_host_memory() {
    static std::once_flag once;
    static bool in_effect = false;
    std::call_once(once, [] {
        const char* defaults = std::getenv("BONSAI_SD_MALLOC_DEFAULTS");
        if (defaults != nullptr && defaults[0] != '\0' && defaults[0] != '0') {
            return;
        }
#if defined(__GLIBC__)
        // 32 MiB is the largest threshold glibc accepts on 64-bit (mallopt fails above it).
        in_effect = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1;
#endif
    });
    return in_effect;
}

}  // namespace bonsai
