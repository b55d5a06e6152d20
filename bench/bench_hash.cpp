// SPDX-License-Identifier: BSL-1.0
// bench_hash — the local backend's key hash against the seeded hashes a library offers, on the
// keys of bench_local (`client-N`) and on longer ones. It earns its place in the code only while
// it is faster: docs/benchmarks.md keeps the figures, docs/design.md the decision.
//
//   keylock_bench_hash           3 rounds, nanoseconds per key (lower is better)
//   keylock_bench_hash --quick   one short round (CI: it builds and runs)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>  // std::_Hash_bytes: libstdc++'s seeded byte hash behind std::hash (not API)
#include <string>
#include <string_view>
#include <vector>

#include <boost/container_hash/hash.hpp>

#include "backends/local/hash.hpp"

namespace {

constexpr std::uint64_t kSeed = 0x9e3779b97f4a7c15ULL;

[[gnu::noinline]] std::uint64_t boost_seeded(std::string_view key) {
    std::size_t h = kSeed;
    boost::hash_combine(h, key);
    return h;
}

[[gnu::noinline]] std::uint64_t libstdcxx_seeded(std::string_view key) {
    return std::_Hash_bytes(key.data(), key.size(), kSeed);
}

/// Nanoseconds per key of `hash` over `keys`, `passes` times.
template <class Hash>
double ns_per_key(const std::vector<std::string>& keys, int passes, Hash hash) {
    std::uint64_t sum = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int p = 0; p < passes; ++p) {
        for (const std::string& k : keys) sum += hash(std::string_view(k));
    }
    const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
    volatile std::uint64_t sink = sum;  // keeps the loop
    (void)sink;
    return took.count() / (static_cast<double>(passes) * static_cast<double>(keys.size()));
}

std::vector<std::string> keys(const char* prefix, const char* suffix) {
    std::vector<std::string> out;
    for (int i = 0; i < 100000; ++i) {
        std::string k = prefix;
        k += std::to_string(i);
        k += suffix;
        out.push_back(std::move(k));
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const int rounds = quick ? 1 : 3;
    const int passes = quick ? 1 : 50;
    const std::vector<std::string> short_keys = keys("client-", "");
    const std::vector<std::string> long_keys = keys("tenant-42/order/2026-12-02/", "/payment-intent");
    std::printf("| keys | keylock hash_bytes | boost::hash_combine | libstdc++ _Hash_bytes |\n|---|---:|---:|---:|\n");
    for (int r = 0; r < rounds; ++r) {
        for (const auto* set : {&short_keys, &long_keys}) {
            std::printf(
                "| %s (%zu-%zu bytes) | %.2f ns | %.2f ns | %.2f ns |\n",
                set == &short_keys ? "client-N" : "tenant/order/…", set->front().size(), set->back().size(),
                ns_per_key(*set, passes, [](std::string_view k) { return keylock::local::hash_bytes(k, kSeed); }),
                ns_per_key(*set, passes, boost_seeded), ns_per_key(*set, passes, libstdcxx_seeded));
        }
    }
}
