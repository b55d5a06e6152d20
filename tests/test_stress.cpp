// SPDX-License-Identifier: BSL-1.0
// Many threads, random interleavings, exact counts. Run under ThreadSanitizer in CI.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "sanitized.hpp"

using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::LocalOptions;
using namespace std::chrono_literals;

namespace {

constexpr int kOpsPerThread = keylock::test::unless_sanitized(20000, 4000);

struct alignas(64) Slot {
    long value = 0;           // read-modify-write without atomics: only the lock protects it
    int inside = 0;           // holders right now; must never exceed 1
    std::uint64_t fence = 0;  // last fencing token seen
};

/// 16 threads over 64 keys, each op a random way of taking the lock.
void hammer(const LocalOptions& options) {
    KeyedLockRegistry r(options);
    constexpr int kThreads = 16;
    constexpr int kKeys = 64;
    std::vector<Slot> slots(kKeys);
    std::vector<std::string> keys;
    for (int k = 0; k < kKeys; ++k) keys.push_back("account-" + std::to_string(k));
    std::atomic<long> done{0};
    std::atomic<int> violations{0};
    std::stop_source never;

    auto critical = [&](int k, std::uint64_t fence) {
        Slot& s = slots[k];
        if (++s.inside != 1) ++violations;
        if (fence <= s.fence) ++violations;
        s.fence = fence;
        long v = s.value;
        if ((v & 7) == 0) std::this_thread::yield();  // widen the race window now and then
        s.value = v + 1;
        --s.inside;
        ++done;
    };

    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(1234u + static_cast<unsigned>(t));
            std::uniform_int_distribution<int> key(0, kKeys - 1), how(0, 5);
            for (int i = 0; i < kOpsPerThread; ++i) {
                const int k = key(rng);
                switch (how(rng)) {
                    case 0: {
                        Guard g = r.lock(keys[k]);
                        critical(k, g.fencing_token());
                        break;
                    }
                    case 1: {
                        if (auto g = r.try_lock(keys[k])) critical(k, g->fencing_token());
                        break;
                    }
                    case 2: {
                        if (auto g = r.try_lock_for(keys[k], std::chrono::microseconds(rng() % 200))) {
                            critical(k, g->fencing_token());
                        }
                        break;
                    }
                    case 3: {
                        r.with_lock(keys[k], [&](Guard& g) { critical(k, g.fencing_token()); });
                        break;
                    }
                    case 4: {
                        auto m = r.obtain(keys[k]);
                        std::unique_lock lk(m);
                        critical(k, m.fencing_token());
                        break;
                    }
                    default: {
                        Guard g = r.lock(keys[k], never.get_token());
                        critical(k, g.fencing_token());
                        break;
                    }
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    long sum = 0;
    for (const auto& s : slots) sum += s.value;
    CHECK(violations == 0);
    CHECK(sum == done.load());
    const auto st = r.stats();
    CHECK(st.waiting == 0);
    CHECK(st.acquisitions == static_cast<std::uint64_t>(done.load()));
    // Idle entries go at once, or within idle_ttl plus a sweep.
    const auto limit = std::chrono::steady_clock::now() + 10s;
    while (r.stats().entries != 0 && std::chrono::steady_clock::now() < limit) std::this_thread::sleep_for(1ms);
    CHECK(r.stats().entries == 0);
}

}  // namespace

TEST_CASE("16 threads on 64 keys: exact counts, one holder, rising tokens", "[stress]") {
    LocalOptions o;
    SECTION("default") {}
    SECTION("fair") { o.fair = true; }
    SECTION("one shard") { o.shards = 1; }
    SECTION("idle_ttl") { o.idle_ttl = 1ms; }
    hammer(o);
}

TEST_CASE("threads sharing one KeyMutex, and others locking its key by name", "[stress]") {
    // A KeyMutex locks its pinned entry without the shard mutex; registry.lock() of the same key
    // goes through it. Both must exclude each other, with tokens rising in lock order.
    for (bool fair : {false, true}) {
        LocalOptions o;
        o.fair = fair;
        KeyedLockRegistry r(o);
        auto shared = r.obtain("hot");
        long counter = 0;
        std::uint64_t last_token = 0;
        std::atomic<int> violations{0};
        auto inside = [&](std::uint64_t token) {
            if (token <= last_token) ++violations;
            last_token = token;
            long v = counter;
            if ((v & 15) == 0) std::this_thread::yield();
            counter = v + 1;
        };
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t) {
            threads.emplace_back([&] {
                for (int i = 0; i < kOpsPerThread / 2; ++i) {
                    std::lock_guard lk(shared);
                    inside(shared.fencing_token());
                }
            });
            threads.emplace_back([&] {
                for (int i = 0; i < kOpsPerThread / 2; ++i) {
                    Guard g = r.lock("hot");
                    inside(g.fencing_token());
                }
            });
        }
        for (auto& t : threads) t.join();
        CHECK(violations == 0);
        CHECK(counter == 8L * (kOpsPerThread / 2));
        CHECK(r.stats().acquisitions == static_cast<std::uint64_t>(counter));
        CHECK(r.stats().waiting == 0);
        CHECK(r.stats().entries == 1);  // pinned by `shared`
    }
}

TEST_CASE("one hot key locked by name from many threads: exact, rising tokens, nothing left", "[stress]") {
    // Locks by name of one key from several threads publish its entry (then a thread's next lock
    // of the key skips the table, spinners join it, a release may linger), free it when it goes
    // idle and publish the next one again: every cycle must keep the lock exclusive, the tokens
    // rising and the counts exact.
    struct Case {
        const char* name;
        LocalOptions options;
        int threads;
    };
    std::vector<Case> cases;
    cases.push_back({"default, 2 threads", {}, 2});
    cases.push_back({"default, 6 threads", {}, 6});
    LocalOptions fair;
    fair.fair = true;
    cases.push_back({"fair, 4 threads", fair, 4});
    LocalOptions ttl;
    ttl.idle_ttl = 1ms;
    cases.push_back({"idle_ttl=1ms, 4 threads", ttl, 4});
    for (const Case& c : cases) {
        INFO(c.name);
        KeyedLockRegistry r(c.options);
        long counter = 0;
        int inside = 0;
        std::uint64_t last_token = 0;
        std::atomic<int> violations{0};
        std::atomic<long> timeouts{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < c.threads; ++t) {
            threads.emplace_back([&, t] {
                for (int i = 0; i < kOpsPerThread; ++i) {
                    std::optional<Guard> g;
                    if (i % 97 == 0) {
                        g = r.try_lock("hot");  // a try never waits, spinning included
                    } else if (i % 89 == 0) {
                        g = r.try_lock_for("hot", std::chrono::microseconds(50 + t));
                    } else {
                        g = r.lock("hot");
                    }
                    if (!g) {
                        ++timeouts;
                        continue;
                    }
                    if (++inside != 1) ++violations;
                    if (g->fencing_token() <= last_token) ++violations;
                    last_token = g->fencing_token();
                    long v = counter;
                    if ((v & 31) == 0) std::this_thread::yield();
                    counter = v + 1;
                    --inside;
                }
            });
        }
        for (auto& t : threads) t.join();
        CHECK(violations == 0);
        CHECK(counter + timeouts == static_cast<long>(c.threads) * kOpsPerThread);
        CHECK(r.stats().acquisitions == static_cast<std::uint64_t>(counter));
        CHECK(r.stats().waiting == 0);
        const auto limit = std::chrono::steady_clock::now() + 10s;
        while (r.stats().entries != 0 && std::chrono::steady_clock::now() < limit) std::this_thread::sleep_for(1ms);
        CHECK(r.stats().entries == 0);
    }
}

TEST_CASE("registries come and go while threads remember their entries", "[stress]") {
    // A thread remembers the last shared entry it locked, across registries. Registries made
    // and destroyed in a loop (often at the same address) must never let a remembered entry of
    // a dead registry be used or freed twice (ASan and TSan watch this test).
    for (int round = 0; round < 200; ++round) {
        KeyedLockRegistry r;
        std::atomic<bool> go{false};
        long counter = 0;
        std::vector<std::thread> threads;
        for (int t = 0; t < 2; ++t) {
            threads.emplace_back([&] {
                while (!go.load()) std::this_thread::yield();
                for (int i = 0; i < 50; ++i) {
                    Guard g = r.lock("k");
                    ++counter;
                }
            });
        }
        go = true;
        for (int i = 0; i < 50; ++i) {
            Guard g = r.lock("k");
            ++counter;
        }
        for (auto& t : threads) t.join();
        REQUIRE(counter == 150);
        REQUIRE(r.stats().entries == 0);
        REQUIRE(r.stats().acquisitions == 150);
    }
}

TEST_CASE("soak: 2,000,000 local locks on 100,000 keys from 16 threads leave nothing behind", "[stress][soak]") {
    // The second half must end with no entries and a resident size within 16 MiB of the first
    // half's end (no growth per key or per lock); LeakSanitizer checks the rest in the asan build.
    KeyedLockRegistry r;
    constexpr int threads = 16, keys = 100'000, total = 2'000'000, per_thread = total / threads;
    auto half = [&](int from, int to) {
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                std::mt19937 rng(static_cast<unsigned>(t) + 1);
                std::uniform_int_distribution<int> pick(0, keys - 1);
                std::string key;
                for (int n = from; n < to; ++n) {
                    key = "soak-" + std::to_string(pick(rng));
                    Guard g = r.lock(key);
                }
            });
        }
        for (auto& th : pool) th.join();
    };
    auto rss_bytes = [] {
        long size = 0, resident = 0;
        if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
            if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
            std::fclose(f);
        }
        return resident * ::sysconf(_SC_PAGESIZE);
    };
    half(0, per_thread / 2);
    CHECK(r.stats().entries == 0);
    const long warm = rss_bytes();
    half(per_thread / 2, per_thread);
    CHECK(r.stats().entries == 0);
    CHECK(r.stats().acquisitions == static_cast<std::uint64_t>(total));
    if (!keylock::test::kSanitized) CHECK(rss_bytes() - warm < (16L << 20));
}
