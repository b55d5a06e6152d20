// SPDX-License-Identifier: BSL-1.0
// The local backend's key hash: seeded, 64 bits; the shard index comes from its high bits and
// the bucket index from its low bits.
//
// After Wang Yi's wyhash (the Unlicense, https://github.com/wangyi-fudan/wyhash): its mix (a
// 64x64->128-bit multiply folded by xor), its first two constants (wyhash's _wyp0 and _wyp1 up
// to the "final3" version) and its way of reading a 1-7 byte tail without a loop. The rounds
// are simpler than wyhash's (one 8-byte word per multiply, no 48-byte lanes), so the values
// differ from wyhash's. Hand-written because it is faster than the seeded hashes at hand
// (libstdc++'s, Boost's) on the keys users lock: bench/bench_hash.cpp measures it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace keylock::local {

/// A seeded 64-bit hash of a key (keys may come from the network: the seed, random per
/// registry, keeps anyone from choosing keys that all land in one bucket). Out of line, as the
/// compiler chose when it was private to local_backend.cpp (how the benchmarks measured it).
[[gnu::noinline]] inline std::uint64_t hash_bytes(std::string_view key, std::uint64_t seed) noexcept {
    __extension__ using u128 = unsigned __int128;
    auto mix = [](std::uint64_t a, std::uint64_t b) {
        const u128 r = static_cast<u128>(a) * b;
        return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
    };
    constexpr std::uint64_t k1 = 0xa0761d6478bd642fULL, k2 = 0xe7037ed1a0b428dbULL;
    const char* p = key.data();
    std::size_t n = key.size();
    std::uint64_t h = seed ^ mix(n ^ k1, k2);
    while (n >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        h = mix(h ^ w, k1);
        p += 8;
        n -= 8;
    }
    // The last 0-7 bytes, without a variable-length memcpy call: two overlapping 4-byte
    // loads, or the first, middle and last byte.
    std::uint64_t tail = 0;
    if (n >= 4) {
        std::uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        tail = (static_cast<std::uint64_t>(hi) << 32) | lo;
    } else if (n > 0) {
        const auto* u = reinterpret_cast<const unsigned char*>(p);
        tail = (static_cast<std::uint64_t>(u[0]) << 16) | (static_cast<std::uint64_t>(u[n / 2]) << 8) | u[n - 1];
    }
    h = mix(h ^ tail ^ (static_cast<std::uint64_t>(n) << 56), k2);
    return mix(h, k1);
}

}  // namespace keylock::local
