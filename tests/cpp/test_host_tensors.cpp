// cpp/sdcpp/tensor-loops.h and cpp/sdcpp/host-heap.cpp (patch 0080).
//
// (1) bonsai::for_each_broadcast_offset against a reference that finds each element's source
//     offsets the direct way (its coordinates by division, then the dot product with each
//     operand's strides, 0 where the operand has size 1): same calls, same order, for random
//     shapes with broadcast dimensions, operands of lower rank, empty and rank-0 shapes.
// (2) bonsai::keep_freed_host_memory: with it, a 16 MB block is no longer an mmap'd chunk
//     (mallinfo2's hblks does not grow); with BONSAI_SD_MALLOC_DEFAULTS=1 (argv[1] == "defaults")
//     it stays one, and the call reports that the settings are not in effect.
#include "host-heap.h"
#include "tensor-loops.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

static int failures = 0;

static void expect(bool ok, const char * what) {
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        ++failures;
    }
}

using Shape = std::vector<int64_t>;
using Visit = std::tuple<int64_t, int64_t, int64_t>;

static Shape contiguous_strides(const Shape & shape) {
    Shape strides(shape.size());
    int64_t stride = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
        strides[d] = stride;
        stride *= shape[d];
    }
    return strides;
}

static std::vector<Visit> reference(const Shape & out, const Shape & lhs, const Shape & rhs) {
    int64_t numel = 1;
    for (int64_t e : out) {
        numel *= e;
    }
    const Shape ls = contiguous_strides(lhs), rs = contiguous_strides(rhs);
    std::vector<Visit> visits;
    for (int64_t flat = 0; flat < numel; ++flat) {
        int64_t rest = flat, lo = 0, ro = 0;
        for (size_t d = 0; d < out.size(); ++d) {
            const int64_t c = rest % out[d];
            rest /= out[d];
            if (d < lhs.size() && lhs[d] != 1) {
                lo += c * ls[d];
            }
            if (d < rhs.size() && rhs[d] != 1) {
                ro += c * rs[d];
            }
        }
        visits.emplace_back(flat, lo, ro);
    }
    return visits;
}

static std::vector<Visit> odometer(const Shape & out, const Shape & lhs, const Shape & rhs) {
    std::vector<Visit> visits;
    bonsai::for_each_broadcast_offset(out, lhs, contiguous_strides(lhs), rhs, contiguous_strides(rhs),
                                      [&](int64_t flat, int64_t lo, int64_t ro) { visits.emplace_back(flat, lo, ro); });
    return visits;
}

static void check_broadcast() {
    // Shapes of sd.cpp's own uses: token weights [1, 512] over [7680, 512]; per-channel latent
    // statistics [1, 1, C, 1] over [W, H, C, 1].
    expect(odometer({7680, 4}, {7680, 4}, {1, 4}) == reference({7680, 4}, {7680, 4}, {1, 4}), "token weights");
    expect(odometer({16, 8, 32, 1}, {16, 8, 32, 1}, {1, 1, 32, 1}) == reference({16, 8, 32, 1}, {16, 8, 32, 1}, {1, 1, 32, 1}),
           "per-channel statistics");
    expect(odometer({}, {}, {}) == std::vector<Visit>{Visit{0, 0, 0}}, "rank 0: one element");
    expect(odometer({3, 0, 2}, {3, 0, 2}, {3, 1, 1}).empty(), "an empty dimension: no element");

    std::mt19937 rng(1234);
    for (int trial = 0; trial < 2000; ++trial) {
        const size_t ndim = rng() % 5 + 1;
        Shape out(ndim), lhs, rhs;
        for (size_t d = 0; d < ndim; ++d) {
            out[d] = rng() % 5 + 1;
        }
        // Each operand has a prefix of the output's rank (the missing trailing dimensions are
        // broadcast), each of its dimensions either the output's or 1.
        const size_t lrank = rng() % ndim + 1, rrank = rng() % ndim + 1;
        for (size_t d = 0; d < lrank; ++d) {
            lhs.push_back(rng() % 3 == 0 ? 1 : out[d]);
        }
        for (size_t d = 0; d < rrank; ++d) {
            rhs.push_back(rng() % 3 == 0 ? 1 : out[d]);
        }
        if (odometer(out, lhs, rhs) != reference(out, lhs, rhs)) {
            std::printf("FAIL: random broadcast, trial %d, rank %zu/%zu/%zu\n", trial, ndim, lrank, rrank);
            ++failures;
            return;
        }
    }
}

static void check_heap(bool defaults) {
#if defined(__GLIBC__)
    const bool in_effect = bonsai::keep_freed_host_memory();
    expect(in_effect == !defaults, defaults ? "BONSAI_SD_MALLOC_DEFAULTS=1 keeps glibc's settings"
                                            : "the settings are in effect");
    const size_t before = mallinfo2().hblks;
    std::vector<float> * block = new std::vector<float>(4u << 20);  // 16 MB, as the text embeddings
    const size_t during = mallinfo2().hblks;
    delete block;
    if (defaults) {
        expect(during == before + 1, "without the settings a 16 MB block is mmap'd");
    } else {
        expect(during == before, "with the settings a 16 MB block comes from the heap");
    }
#else
    (void) defaults;
    expect(!bonsai::keep_freed_host_memory(), "no settings outside glibc");
#endif
}

int main(int argc, char ** argv) {
    const bool defaults = argc > 1 && std::strcmp(argv[1], "defaults") == 0;
    if (defaults) {
        setenv("BONSAI_SD_MALLOC_DEFAULTS", "1", 1);
    }
    check_broadcast();
    check_heap(defaults);
    if (failures != 0) {
        return 1;
    }
    std::printf("ok\n");
    return 0;
}
