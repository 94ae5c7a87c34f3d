// cpp/sdcpp/philox.h against (1) the known-answer vectors of Philox4x32-10 published with
// Random123 (kat_vectors), and (2) a reference written the way sd.cpp's PhiloxRNG computes: all
// counters of a call advanced round by round as columns, the key bumped between rounds. Both
// feed the same Box-Muller (sd.cpp's formula), so the normals must agree bit for bit.
#include "philox.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int failures = 0;

static void expect(bool ok, const char * what) {
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        ++failures;
    }
}

static float box_muller(float x, float y) {
    const float inv = 2.3283064e-10f, inv_2pi = 2.3283064e-10f * 6.2831855f;
    const float u = x * inv + inv / 2, v = y * inv_2pi + inv_2pi / 2;
    const float s = std::sqrt(-2.0f * std::log(u));
    return s * std::sin(v);
}

static std::vector<float> reference(uint64_t seed, uint32_t offset, uint32_t n) {
    std::vector<uint32_t> c0(n, offset), c1(n, 0), c2(n), c3(n, 0);
    for (uint32_t i = 0; i < n; ++i) {
        c2[i] = i;
    }
    uint32_t k0 = static_cast<uint32_t>(seed & 0xFFFFFFFFu), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        for (uint32_t i = 0; i < n; ++i) {
            const uint64_t a = uint64_t(c0[i]) * 0xD2511F53ull, b = uint64_t(c2[i]) * 0xCD9E8D57ull;
            const uint32_t n0 = uint32_t(b >> 32) ^ c1[i] ^ k0, n1 = uint32_t(b), n2 = uint32_t(a >> 32) ^ c3[i] ^ k1;
            c3[i] = uint32_t(a);
            c0[i] = n0;
            c1[i] = n1;
            c2[i] = n2;
        }
    }
    std::vector<float> out(n);
    for (uint32_t i = 0; i < n; ++i) {
        out[i] = box_muller(float(c0[i]), float(c1[i]));
    }
    return out;
}

int main() {
    struct Kat {
        uint32_t counter[4], key[2], want[4];
    };
    const Kat kats[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (const Kat & k : kats) {
        uint32_t c[4];
        std::memcpy(c, k.counter, sizeof c);
        bonsai::philox4x32_10(c, k.key[0], k.key[1]);
        expect(std::memcmp(c, k.want, sizeof c) == 0, "Philox4x32-10 known-answer vector");
    }

    struct Case {
        uint64_t seed;
        uint32_t offset, n;
    };
    // n from empty to several threads' worth, not a multiple of the per-thread size
    const Case cases[] = {{0, 0, 0}, {0, 0, 1}, {42, 0, 1000}, {42, 1, 1000}, {0xFFFFFFFF12345678ull, 3, 200003},
                          {7, 0, 524288}};
    for (const Case & c : cases) {
        std::vector<float> fast(c.n);
        bonsai::philox_normals(c.seed, c.offset, c.n, fast.data(), box_muller);
        const std::vector<float> slow = reference(c.seed, c.offset, c.n);
        expect(c.n == 0 || std::memcmp(fast.data(), slow.data(), c.n * sizeof(float)) == 0, "normals equal the reference");
    }

    // the numbers are standard normal: 524288 of them, mean within 5 standard errors of 0, variance of 1
    std::vector<float> x(524288);
    bonsai::philox_normals(1234, 0, static_cast<uint32_t>(x.size()), x.data(), box_muller);
    double sum = 0, squares = 0;
    for (float v : x) {
        sum += v;
        squares += double(v) * v;
    }
    const double mean = sum / x.size(), var = squares / x.size() - mean * mean;
    expect(std::fabs(mean) < 5.0 / std::sqrt(double(x.size())), "mean of the normals");
    expect(std::fabs(var - 1.0) < 0.01, "variance of the normals");

    if (failures == 0) {
        std::printf("ok philox\n");
    }
    return failures == 0 ? 0 : 1;
}
