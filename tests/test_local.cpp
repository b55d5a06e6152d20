// SPDX-License-Identifier: BSL-1.0
// The local backend's own promises (docs/semantics.md): copies sharing one registry, shards, the
// lifetime of entries and memory, idle_ttl, max_keys, fairness, a dying thread's guard, and state
// that outlives the registry. Each would fail if its promise broke. The promises every backend
// keeps (exclusion, deadlines, cancellation, bad keys, fencing tokens, the standard lock types,
// get_or_create) are the conformance suite's (tests/conformance/), which runs them against
// local:// too.
#include <catch2/catch.hpp>

#include <malloc.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "eventually.hpp"
#include "thread_checks.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// From the sanitizers' allocator interface (GCC ships no header for it).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#define KEYLOCK_SANITIZED 1
#endif

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::LocalOptions;
using keylock::test::eventually;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// Heap bytes in use now (the sanitizers' allocator when one is in use).
std::size_t heap_in_use() {
#ifdef KEYLOCK_SANITIZED
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().uordblks;
#endif
}

LocalOptions with(auto&& edit) {
    LocalOptions o;
    edit(o);
    return o;
}

/// "k" + i, built by appending: GCC 12 warns falsely (-Wrestrict, its bug 105329) about
/// `"k" + std::to_string(i)` at -O2.
std::string numbered(const char* prefix, int i) {
    std::string s(prefix);
    s += std::to_string(i);
    return s;
}

errc error_of(auto&& fn) {
    try {
        fn();
    } catch (const keylock::Error& e) {
        return static_cast<errc>(e.code().value());
    }
    return errc{};
}

}  // namespace

TEST_CASE("copies of a registry share one registry", "[local]") {
    KeyedLockRegistry r;
    KeyedLockRegistry copy = r;
    Guard g = r.lock("a");
    CHECK_FALSE(copy.try_lock("a").has_value());
    CHECK(copy.stats().entries == 1);
}

TEST_CASE("unrelated keys never wait on each other, even in one shard", "[local]") {
    for (std::size_t shards : {std::size_t{1}, std::size_t{128}}) {
        KeyedLockRegistry r(with([&](auto& o) { o.shards = shards; }));
        std::vector<Guard> held;
        for (int i = 0; i < 100; ++i) held.push_back(r.lock("held-" + std::to_string(i)));
        // Another thread locks thousands of other keys while those are held: none may fail.
        ThreadChecks tc;
        std::thread t([&] {
            for (int i = 0; i < 10000; ++i) {
                auto g = r.try_lock("free-" + std::to_string(i));
                THREAD_CHECK(tc, g.has_value());
            }
        });
        t.join();
        tc.report();
        CHECK(r.stats().entries == 100);
        CHECK(r.stats().timeouts == 0);
    }
}

TEST_CASE("an entry is never freed while held, awaited or pinned", "[local]") {
    SECTION("held past idle_ttl: the cache-expiry bug cannot happen") {
        KeyedLockRegistry r(with([](auto& o) { o.idle_ttl = 1ms; }));
        Guard g = r.lock("k");
        std::this_thread::sleep_for(50ms);  // many sweeps later
        CHECK(r.stats().entries == 1);
        bool taken = false;
        std::thread t([&] { taken = r.try_lock("k").has_value(); });
        t.join();
        CHECK_FALSE(taken);
    }
    SECTION("awaited: the waiter's entry survives the holder's release") {
        KeyedLockRegistry r;
        auto g = std::make_optional(r.lock("k"));
        const auto first = g->fencing_token();
        std::uint64_t second = 0;
        std::uint64_t entries_while_held = 0;
        std::thread t([&] {
            Guard g2 = r.lock("k");
            second = g2.fencing_token();
            entries_while_held = r.stats().entries;
        });
        REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        CHECK(r.stats().entries == 1);
        g.reset();
        t.join();
        CHECK(entries_while_held == 1);
        CHECK(second > first);
        CHECK(r.stats().entries == 0);
    }
    SECTION("pinned by a handle, locked or not") {
        KeyedLockRegistry r;
        {
            auto m = r.obtain("k");
            CHECK(r.stats().entries == 1);
            m.lock();
            m.unlock();
            CHECK(r.stats().entries == 1);
            CHECK_FALSE(r.try_lock("k") == std::nullopt);
            CHECK(r.stats().entries == 1);
            // A handle assigned over it drops its pin: "k"'s entry is freed, "j"'s is pinned.
            const std::uint64_t before_free = r.lock("k").fencing_token();
            m = r.obtain("j");
            CHECK(r.stats().entries == 1);
            CHECK(r.lock("k").fencing_token() > before_free);  // tokens rise across the freeing
            CHECK(r.stats().entries == 1);
        }
        CHECK(r.stats().entries == 0);
    }
    SECTION("max_keys pressure evicts only idle entries") {
        KeyedLockRegistry r(with([](auto& o) {
            o.max_keys = 2;
            o.shards = 1;
            o.idle_ttl = 1h;
        }));
        Guard held = r.lock("held");
        { Guard idle = r.lock("idle"); }
        CHECK(r.stats().entries == 2);
        Guard fresh = r.lock("fresh");  // evicts "idle", never "held"
        CHECK(r.stats().entries == 2);
        CHECK(error_of([&] { (void)r.lock("one-too-many"); }) == errc::too_many_keys);
        bool taken = false;
        std::thread t([&] { taken = r.try_lock("held").has_value(); });
        t.join();
        CHECK_FALSE(taken);
    }
}

TEST_CASE("entries are freed at once when their last reference goes", "[local]") {
    // At once: within the release, with no `eventually` (the conformance suite allows a
    // distributed backend a round trip for it).
    KeyedLockRegistry r;
    for (int i = 0; i < 1000; ++i) {
        Guard g = r.lock(numbered("k", i));
        CHECK(r.stats().entries == 1);
    }
    CHECK(r.stats().entries == 0);
    auto g = r.try_lock_for("x", 1ms);
    g.reset();
    CHECK(r.stats().entries == 0);
}

namespace {

/// Makes `key` a key shared by two threads: the test's thread holds it while a helper thread
/// comes for it, so the helper joins it (a second reference) and takes it over. The helper
/// then releases it as its last reference, which it may keep as a deferred reference (see
/// docs/semantics.md), and parks until `go` is set, then runs `after`.
class SharedKey {
public:
    template <class After>
    SharedKey(KeyedLockRegistry& r, std::string key, After after)
        : helper_([this, &r, key, after] {
              started_.store(true);
              {
                  Guard g = r.lock(key);
                  THREAD_CHECK(checks_, g.owns_lock());
              }
              done_.store(true);
              std::unique_lock lk(mu_);
              cv_.wait(lk, [this] { return go_; });
              lk.unlock();
              after();
          }) {
        Guard g = r.lock(key);
        // Hold the key until the helper has had time to find it taken and to join it.
        while (!started_.load()) std::this_thread::yield();
        std::this_thread::sleep_for(50ms);
        g.release();
        while (!done_.load()) std::this_thread::yield();
    }
    SharedKey(const SharedKey&) = delete;
    SharedKey& operator=(const SharedKey&) = delete;
    ~SharedKey() { finish(); }

    void finish() {
        if (!helper_.joinable()) return;
        {
            std::lock_guard lk(mu_);
            go_ = true;
        }
        cv_.notify_all();
        helper_.join();
        checks_.report();
    }

private:
    ThreadChecks checks_;
    std::atomic<bool> started_{false}, done_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    bool go_ = false;
    std::thread helper_;  // last: starts once the rest exists
};

}  // namespace

TEST_CASE("a key threads took turns on is not counted once they are done with it", "[local]") {
    // A thread that releases a shared key's last reference may keep it for its next lock of
    // the key; stats() does not count such entries, and they do not outlive the registry.
    auto r = std::make_unique<KeyedLockRegistry>();
    SharedKey shared(*r, "hot", [] {
        // Stale per-thread state from the destroyed registry must not confuse a new one.
        KeyedLockRegistry fresh;
        for (int i = 0; i < 100; ++i) Guard g = fresh.lock("hot");
    });
    CHECK(r->stats().entries == 0);
    std::uint64_t token = 0;
    {
        Guard g = r->lock("hot");
        token = g.fencing_token();
        CHECK(token == 3);
    }
    CHECK(r->stats().entries == 0);
    CHECK(r->stats().acquisitions == 3);
    r.reset();  // while the helper may still keep a reference to one of its entries
    shared.finish();
}

TEST_CASE("a thread's remembered key never leads it to another key's entry", "[local]") {
    // A thread remembers the last shared key it locked (its entry and that entry's
    // incarnation). Here that entry is freed and its memory reused for another key, which
    // the thread then keeps a reference to: its next lock of the remembered key must not
    // take that other key's entry.
    KeyedLockRegistry r;
    {
        // "x" becomes shared: a helper holds it while this thread comes for it.
        std::atomic<bool> held{false};
        std::thread h([&] {
            Guard g = r.lock("x");
            held = true;
            std::this_thread::sleep_for(50ms);
        });
        while (!held) std::this_thread::yield();
        Guard g = r.lock("x");
        h.join();
    }
    CHECK(r.stats().entries == 0);  // "x"'s entry freed, into this thread's cache
    {
        Guard k = r.lock("k");  // most likely in the memory "x"'s entry had
        bool taken = true;
        std::thread h([&] { taken = r.try_lock_for("k", 20ms).has_value(); });  // shares "k"
        h.join();
        CHECK_FALSE(taken);
    }  // this thread may keep "k"'s entry now
    Guard x = r.lock("x");
    CHECK(x.key() == "x");
    bool free = false;
    std::thread h([&] { free = r.try_lock("k").has_value(); });
    h.join();
    CHECK(free);
}

TEST_CASE("with max_keys, released keys never count against the bound", "[local]") {
    KeyedLockRegistry r(with([](auto& o) { o.max_keys = 1; }));
    SharedKey shared(r, "a", [] {});
    // The helper is alive and used "a" last; the bound must still be free for another key.
    CHECK(r.try_lock("b").has_value());
    CHECK(r.stats().entries == 0);
}

TEST_CASE("memory returns to its baseline after a million distinct keys", "[local][memory]") {
    constexpr int kKeys = 1'000'000;
    std::vector<std::string> keys;
    keys.reserve(kKeys);
    for (int i = 0; i < kKeys; ++i) keys.push_back("client-" + std::to_string(i) + "-with-a-longish-suffix");
    std::vector<Guard> guards;
    guards.reserve(kKeys);
    KeyedLockRegistry r;
    { Guard warm = r.lock("warm-up"); }
    malloc_trim(0);
    const std::size_t baseline = heap_in_use();

    for (const auto& k : keys) Guard g = r.lock(k);  // one at a time
    CHECK(r.stats().entries == 0);
    // What may stay: this thread's small cache of recycled entries (16 at most), so the
    // residue is bounded, not proportional to the keys seen.
    constexpr std::size_t kSlack = 1024 * 1024;
    CHECK(heap_in_use() < baseline + kSlack);

    for (const auto& k : keys) guards.push_back(r.lock(k));  // all at once
    CHECK(r.stats().entries == kKeys);
    const std::size_t peak = heap_in_use();
    CHECK(peak > baseline + std::size_t{kKeys} * 32);  // the entries really were in memory
    guards.clear();
    CHECK(r.stats().entries == 0);
    const std::size_t after = heap_in_use();
    INFO("baseline " << baseline << " peak " << peak << " after " << after);
    CHECK(after < baseline + kSlack);
}

TEST_CASE("idle_ttl keeps idle entries warm, then frees them", "[local]") {
    KeyedLockRegistry r(with([](auto& o) { o.idle_ttl = 300ms; }));
    const auto start = Clock::now();
    { Guard g = r.lock("k"); }
    CHECK(r.stats().entries == 1);
    { Guard g = r.lock("k"); }  // reuses the warm entry
    CHECK(r.stats().entries == 1);
    CHECK(eventually([&] { return r.stats().entries == 0; }));
    CHECK(Clock::now() - start >= 300ms);
}

TEST_CASE("max_keys bounds the entries in memory with a typed error", "[local]") {
    KeyedLockRegistry r(with([](auto& o) { o.max_keys = 10; }));
    std::vector<Guard> held;
    for (int i = 0; i < 10; ++i) held.push_back(r.lock(numbered("k", i)));
    CHECK(error_of([&] { (void)r.lock("k10"); }) == errc::too_many_keys);
    CHECK(error_of([&] { (void)r.try_lock("k10"); }) == errc::too_many_keys);
    CHECK(error_of([&] { (void)r.obtain("k10"); }) == errc::too_many_keys);
    CHECK_FALSE(r.try_lock("k3").has_value());  // existing keys still work
    held.pop_back();
    CHECK(r.try_lock("k10").has_value());
    CHECK(r.stats().entries == 9);
}

TEST_CASE("fair=true hands the key to waiters strictly first come, first served", "[local]") {
    KeyedLockRegistry r(with([](auto& o) { o.fair = true; }));
    auto g = std::make_optional(r.lock("order-17"));
    std::mutex mu;
    std::vector<int> order;
    std::vector<std::thread> threads;
    std::atomic<bool> checked{false};
    for (int i = 0; i < 8; ++i) {
        threads.emplace_back([&, i] {
            Guard mine = r.lock("order-17");
            // The first one keeps the key until the check below has run (else all eight could
            // be done before it, and a free key is then correct).
            while (i == 0 && !checked.load()) std::this_thread::yield();
            std::lock_guard lk(mu);
            order.push_back(i);
        });
        REQUIRE(eventually([&] { return r.stats().waiting == static_cast<std::uint64_t>(i + 1); }));
    }
    g.reset();
    // The hand-off is direct: the key passes to the first waiter inside release(), so a
    // newcomer cannot take it even before that waiter has woken up.
    CHECK_FALSE(r.try_lock("order-17").has_value());
    checked = true;
    for (auto& t : threads) t.join();
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
    CHECK(r.stats().entries == 0);
}

TEST_CASE("a thread that dies holding a guard releases it", "[local]") {
    KeyedLockRegistry r;
    std::thread t([&] {
        try {
            r.with_lock("k", []() -> void { throw std::runtime_error("worker died"); });
        } catch (const std::runtime_error&) {
        }
    });
    t.join();
    CHECK(r.try_lock("k").has_value());
    CHECK(r.stats().entries == 0);
}

TEST_CASE("guards, handles and waiters may outlive the registry", "[local]") {
    std::optional<Guard> g;
    std::optional<keylock::KeyMutex> m;
    std::thread waiter;
    {
        KeyedLockRegistry r(with([](auto& o) { o.idle_ttl = 1h; }));
        { Guard warm = r.lock("warm"); }
        g = r.lock("k");
        m = r.obtain("m");
        waiter = std::thread([&m] {
            // Waits on the handle's key after the registry itself is gone.
            std::this_thread::sleep_for(50ms);
            m->lock();
            m->unlock();
        });
        m->lock();
    }
    CHECK(g->key() == "k");
    std::this_thread::sleep_for(100ms);
    m->unlock();
    waiter.join();
    g.reset();
    m.reset();  // the last reference: frees the registry state (ASan/LSan check)
}
