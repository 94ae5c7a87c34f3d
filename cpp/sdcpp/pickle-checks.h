// stable-diffusion.cpp's torch pickle reader holds values by value: building a container copies
// its items, and a memo reference copies the remembered value. Containers nested by a few bytes
// of opcodes each, or memo references to values that themselves hold memo references, made a
// small hostile file cost quadratically or exponentially many copies (a 200 KB .pt kept sd-cli
// busy for minutes; memo doubling held gigabytes). Every PickleValue carries a PickleCopyCount,
// and the reader gives up once one parse has copied more than kMaxPickleCopies values (patch
// 0053): some 50 to 100 per tensor of a torch.save state dict, so 2^21 copies are some 20 000
// tensors, and at most a few hundred MB held by a hostile file.
#ifndef BONSAI_SDCPP_PICKLE_CHECKS_H
#define BONSAI_SDCPP_PICKLE_CHECKS_H

#include <cstdint>

namespace bonsai {

constexpr uint64_t kMaxPickleCopies = uint64_t{1} << 21;

class PickleCopyCount {
public:
    PickleCopyCount() = default;
    PickleCopyCount(const PickleCopyCount&) noexcept { ++copies(); }
    PickleCopyCount& operator=(const PickleCopyCount&) noexcept {
        ++copies();
        return *this;
    }
    PickleCopyCount(PickleCopyCount&&) noexcept            = default;
    PickleCopyCount& operator=(PickleCopyCount&&) noexcept = default;

    // Values copied in this thread since the count was last set to 0.
    static uint64_t& copies() {
        static thread_local uint64_t count = 0;
        return count;
    }
};

}  // namespace bonsai

#endif  // BONSAI_SDCPP_PICKLE_CHECKS_H
