// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
// counter-based generator behind torch's CUDA randn, and the normal numbers sd.cpp's PhiloxRNG
// makes from it (src/rng_philox.hpp, after AUTOMATIC1111's port of torch.cuda's randn). Upstream
// allocated two std::vectors per element and round: about 300 ms for the noise of one 1024x1024
// FLUX.2 latent (524 288 numbers) on the GPU machine's CPU. Here the same numbers come from a plain
// loop, split over threads for large n; header-only so that the caller's Box-Muller (whose float
// and double rounding depend on which log/sin overloads its file sees) is compiled where it was.
#ifndef BONSAI_SDCPP_PHILOX_H
#define BONSAI_SDCPP_PHILOX_H

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace bonsai {

// Ten rounds of Philox4x32 on `counter` with `key` (bumped by the Weyl constants between rounds).
inline void philox4x32_10(uint32_t counter[4], uint32_t key0, uint32_t key1) {
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = static_cast<uint64_t>(counter[0]) * 0xD2511F53u;
        const uint64_t p1 = static_cast<uint64_t>(counter[2]) * 0xCD9E8D57u;
        const uint32_t c1 = counter[1], c3 = counter[3];
        counter[0] = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ key0;
        counter[1] = static_cast<uint32_t>(p1);
        counter[2] = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ key1;
        counter[3] = static_cast<uint32_t>(p0);
        key0 += 0x9E3779B9u;
        key1 += 0xBB67AE85u;
    }
}

// out[i] = box_muller(float(w0), float(w1)) for i < n, where w0, w1 are the first two words of
// Philox4x32-10 of counter {offset, 0, i, 0} and key {seed's low word, high word}. Threads take
// contiguous ranges from 64k numbers on; box_muller must be safe to call from several threads.
template <typename BoxMuller>
void philox_normals(uint64_t seed, uint32_t offset, uint32_t n, float * out, const BoxMuller & box_muller) {
    const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    auto fill = [&](uint32_t begin, uint32_t end) {
        for (uint32_t i = begin; i < end; ++i) {
            uint32_t counter[4] = {offset, 0, i, 0};
            philox4x32_10(counter, key0, key1);
            out[i] = box_muller(static_cast<float>(counter[0]), static_cast<float>(counter[1]));
        }
    };
    const uint32_t per_thread = 1u << 16;
    const uint32_t threads = std::min<uint32_t>(std::max(1u, std::thread::hardware_concurrency()),
                                                std::max(1u, n / per_thread));
    if (threads <= 1) {
        fill(0, n);
        return;
    }
    std::vector<std::thread> workers;
    const uint32_t step = (n + threads - 1) / threads;
    for (uint32_t t = 1; t < threads; ++t) {
        const uint32_t begin = std::min(n, t * step), end = std::min(n, begin + step);
        try {
            workers.emplace_back(fill, begin, end);
        } catch (...) {  // no thread to be had: this one does the range
            fill(begin, end);
        }
    }
    fill(0, std::min(n, step));
    for (std::thread & w : workers) {
        w.join();
    }
}

}  // namespace bonsai

#endif  // BONSAI_SDCPP_PHILOX_H
