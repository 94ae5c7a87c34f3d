// Runs engine work so that no C++ exception leaves it: a failure is logged as "WHAT failed: WHY"
// (through sd.cpp's log, which bonsai-sd's callers collect) and `failure` is returned instead.
// Used by the C entry points (api-guards.cpp) and the generation taps (generation-taps.cpp).
#ifndef BONSAI_SDCPP_GUARDED_H
#define BONSAI_SDCPP_GUARDED_H

#include <exception>
#include <new>

#include "memory-checks.h"
#include "util.h"

namespace bonsai {

template <typename Result, typename Fn>
Result guarded(const char* what, Result failure, Fn&& fn) {
    try {
        return fn();
    } catch (const OutOfMemory& e) {  // says how many bytes were needed
        LOG_ERROR("%s failed: %s", what, e.what());
    } catch (const std::bad_alloc&) {
        LOG_ERROR("%s failed: out of memory", what);
    } catch (const std::exception& e) {
        LOG_ERROR("%s failed: %s", what, e.what());
    } catch (...) {
        LOG_ERROR("%s failed: unknown error", what);
    }
    return failure;
}

}  // namespace bonsai

#endif  // BONSAI_SDCPP_GUARDED_H
