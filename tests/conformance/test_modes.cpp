// SPDX-License-Identifier: BSL-1.0
// Conformance, part 3: modes and many keys. Shared and upgrade ownership (Boost.Thread's model),
// conversions, the order that keeps writers from starving, fencing tokens across modes, keyed
// semaphores (permits), and lock_all. docs/semantics.md, "Modes".
// Every backend of backends.hpp runs each promise; see there for how to add one.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/use_future.hpp>

#include <keylock/keylock.hpp>

#include "backends.hpp"
#include "tests/eventually.hpp"

using namespace keylock;
using namespace keylock::conformance;
using namespace std::chrono_literals;
using keylock::test::eventually;

namespace {

/// Runs `fn` on a thread; the future says when it is done.
template <class Fn>
std::future<void> in_thread(Fn fn) {
    return std::async(std::launch::async, std::move(fn));
}

}  // namespace

// ---- Shared and upgrade ------------------------------------------------------------------

CONFORMANCE_PROMISE("shared holders coexist, and an exclusive request waits for every one of them", has_modes) {
    Context c(backend);
    auto r = c.registry();
    Guard a = r.lock_shared("k");
    auto b = r.try_lock_shared("k");
    REQUIRE(b);
    CHECK(a.mode() == LockMode::shared);
    CHECK(b->mode() == LockMode::shared);
    CHECK_FALSE(r.try_lock("k"));
    CHECK_FALSE(r.try_lock_for("k", 50ms));
    a.release();
    CHECK_FALSE(r.try_lock("k"));  // b still reads
    b->release();
    auto w = r.try_lock_for("k", 5s);
    REQUIRE(w);
    CHECK_FALSE(r.try_lock_shared("k"));  // no reader beside a writer
    CHECK_FALSE(r.try_lock_upgrade("k"));
}

CONFORMANCE_PROMISE("a writer that waits keeps new readers out, so readers cannot starve it", has_modes) {
    Context c(backend);
    auto r = c.registry();
    std::optional<Guard> reader = r.lock_shared("k");
    std::atomic<bool> writing{false};
    auto writer = in_thread([&] {
        Guard g = r.lock("k");
        writing = true;
    });
    // The writer queues behind the reader; from then on a new reader must wait behind it.
    REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
    CHECK_FALSE(r.try_lock_shared("k"));
    CHECK_FALSE(r.try_lock_shared_for("k", 50ms));
    CHECK_FALSE(writing);
    reader.reset();
    writer.get();
    CHECK(writing);
    CHECK(r.try_lock_shared("k"));
}

CONFORMANCE_PROMISE("upgrade ownership: one holder beside readers, made exclusive without letting go", has_modes) {
    Context c(backend);
    auto r = c.registry();
    Guard u = r.lock_upgrade("k");
    CHECK(u.mode() == LockMode::upgrade);
    auto s = r.try_lock_shared("k");
    REQUIRE(s);                            // readers beside the upgrade holder
    CHECK_FALSE(r.try_lock_upgrade("k"));  // but only one upgrade holder
    CHECK_FALSE(u.try_upgrade_for(50ms));  // the reader is still there
    CHECK(u.mode() == LockMode::upgrade);  // and a failed upgrade keeps upgrade ownership
    CHECK_FALSE(r.try_lock_upgrade("k"));
    std::atomic<bool> upgraded{false};
    auto up = in_thread([&] {
        u.upgrade();
        upgraded = true;
    });
    REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
    CHECK_FALSE(r.try_lock_shared("k"));  // the upgrade waits: new readers queue behind it
    CHECK_FALSE(upgraded);
    s->release();
    up.get();
    CHECK(upgraded);
    CHECK(u.mode() == LockMode::exclusive);
    CHECK_FALSE(r.try_lock_shared("k"));
    CHECK_FALSE(r.try_lock("k"));
    u.release();
    CHECK(r.try_lock("k"));
}

CONFORMANCE_PROMISE("would-be writers that read first with lock_upgrade never deadlock nor lose an update", has_modes) {
    Context c(backend);
    auto r = c.registry();
    constexpr int kThreads = 4, kRounds = 100;
    long counter = 0;  // guarded by the key
    std::atomic<int> readers{0}, writers{0}, violations{0};
    std::vector<std::future<void>> pool;
    for (int t = 0; t < kThreads; ++t) {
        pool.push_back(in_thread([&] {
            for (int i = 0; i < kRounds; ++i) {
                Guard g = r.lock_upgrade("counter");
                const long seen = counter;
                g.upgrade();
                if (writers.fetch_add(1) != 0 || readers.load() != 0) ++violations;
                counter = seen + 1;
                writers.fetch_sub(1);
            }
        }));
        pool.push_back(in_thread([&] {
            for (int i = 0; i < kRounds; ++i) {
                Guard g = r.lock_shared("counter");
                readers.fetch_add(1);
                if (writers.load() != 0) ++violations;
                readers.fetch_sub(1);
            }
        }));
    }
    for (auto& f : pool) REQUIRE(f.wait_for(60s) == std::future_status::ready);
    CHECK(violations == 0);
    CHECK(counter == kThreads * kRounds);
}

CONFORMANCE_PROMISE("downgrades never wait, and let the readers that wait in", has_modes) {
    Context c(backend);
    auto r = c.registry();
    Guard g = r.lock("k");
    auto reader = in_thread([&] { Guard s = r.lock_shared("k"); });
    REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
    g.downgrade(LockMode::upgrade);
    CHECK(g.mode() == LockMode::upgrade);
    REQUIRE(reader.wait_for(10s) == std::future_status::ready);  // in beside the upgrade holder
    CHECK_FALSE(r.try_lock_upgrade("k"));
    g.downgrade(LockMode::shared);
    CHECK(g.mode() == LockMode::shared);
    CHECK(r.try_lock_upgrade("k"));
    CHECK(error_of([&] { g.downgrade(LockMode::shared); }) == errc::invalid_argument);
    CHECK(error_of([&] { g.upgrade(); }) == errc::invalid_argument);  // shared: only the try forms
    g.release();
    CHECK(error_of([&] { g.upgrade(); }) == errc::not_held);
}

CONFORMANCE_PROMISE("a shared holder alone may become exclusive or the upgrade holder, never beside another",
                    has_modes) {
    Context c(backend);
    auto r = c.registry();
    Guard a = r.lock_shared("k");
    Guard b = r.lock_shared("k");
    CHECK_FALSE(a.try_upgrade());
    CHECK(a.try_upgrade_to_upgradable_until(std::chrono::steady_clock::now()));
    CHECK(a.mode() == LockMode::upgrade);
    CHECK_FALSE(b.try_upgrade_to_upgradable_until(std::chrono::steady_clock::now() + 30ms));
    CHECK(b.mode() == LockMode::shared);
    a.release();
    CHECK(b.try_upgrade());
    CHECK(b.mode() == LockMode::exclusive);
    CHECK_FALSE(r.try_lock_shared("k"));
}

CONFORMANCE_PROMISE("fencing tokens strictly increase across modes and conversions", has_modes) {
    Context c(backend);
    auto r = c.registry();
    std::uint64_t last = 0;
    auto next = [&](std::uint64_t token) {
        CHECK(token > last);
        last = token;
    };
    {
        Guard a = r.lock_shared("k");
        next(a.fencing_token());
        Guard b = r.lock_shared("k");
        next(b.fencing_token());
    }
    {
        Guard g = r.lock("k");
        next(g.fencing_token());
        g.downgrade(LockMode::upgrade);
        next(g.fencing_token());
        g.upgrade();
        next(g.fencing_token());
    }
    {
        Guard u = r.lock_upgrade("k");
        next(u.fencing_token());
    }
    next(r.lock("k").fencing_token());
}

CONFORMANCE_PROMISE("a shared wait ends at its deadline, its stop token or its cancellation, leaving nothing",
                    has_modes) {
    Context c(backend);
    auto r = c.registry();
    {
        Guard w = r.lock("k");
        const auto t0 = std::chrono::steady_clock::now();
        CHECK_FALSE(r.try_lock_shared_for("k", 100ms));
        CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
        std::stop_source stop;
        errc stopped{};  // checked here, not in the thread: Catch2's assertions are one thread's
        auto waiter = in_thread([&] { stopped = error_of([&] { r.lock_shared("k", stop.get_token()); }); });
        REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        stop.request_stop();
        waiter.get();
        CHECK(stopped == errc::cancelled);
        auto fut = r.async_acquire_permits("other", 1, 1, boost::asio::use_future);
        CHECK(fut.get().owns_lock());
    }
    CHECK(r.stats().waiting == 0);
    auto g = r.try_lock("k");  // nothing left behind
    CHECK(g);
}

CONFORMANCE_PROMISE("async_lock_shared and async_lock_upgrade complete with guards of their mode", has_modes) {
    Context c(backend);
    auto r = c.registry();
    auto w = r.lock("k");
    auto s1 = r.async_lock_shared("k", boost::asio::use_future);
    auto s2 = r.async_lock_shared("k", boost::asio::use_future);
    auto u = r.async_lock_upgrade("k", boost::asio::use_future);
    CHECK(s1.wait_for(50ms) == std::future_status::timeout);
    w.release();
    Guard a = s1.get(), b = s2.get(), d = u.get();
    CHECK(a.mode() == LockMode::shared);
    CHECK(b.mode() == LockMode::shared);
    CHECK(d.mode() == LockMode::upgrade);
    CHECK_FALSE(d.try_upgrade());  // a and b read
    a.release();
    b.release();
    d.upgrade();
    CHECK(d.mode() == LockMode::exclusive);
}

// ---- Permits ---------------------------------------------------------------------------

CONFORMANCE_PROMISE("permits: never more than the limit held, across threads", has_modes) {
    Context c(backend);
    auto r = c.registry();
    constexpr std::uint32_t kLimit = 5;
    std::atomic<int> in_use{0}, most{0}, violations{0};
    std::vector<std::future<void>> pool;
    for (int t = 0; t < 6; ++t) {
        pool.push_back(in_thread([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t));
            for (int i = 0; i < 150; ++i) {
                const auto n = static_cast<std::uint32_t>(1 + rng() % 3);
                Guard g = r.acquire_permits("jobs", n, kLimit);
                if (g.permits() != n) ++violations;
                const int now = in_use.fetch_add(static_cast<int>(n)) + static_cast<int>(n);
                if (now > static_cast<int>(kLimit)) ++violations;
                int m = most.load();
                while (now > m && !most.compare_exchange_weak(m, now)) {
                }
                std::this_thread::yield();
                in_use.fetch_sub(static_cast<int>(n));
            }
        }));
    }
    for (auto& f : pool) REQUIRE(f.wait_for(60s) == std::future_status::ready);
    CHECK(violations == 0);
    CHECK(most > 1);  // holders did overlap: the check above was not vacuous
}

CONFORMANCE_PROMISE("permits: a large request waits first in line, not starved by small ones", has_modes) {
    Context c(backend);
    auto r = c.registry();
    Guard one = r.acquire_permits("jobs", 1, 3);
    auto big = in_thread([&] { Guard g = r.acquire_permits("jobs", 3, 3); });
    REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
    CHECK_FALSE(r.try_acquire_permits("jobs", 1, 3));  // 2 are free, but the big one is first
    one.release();
    REQUIRE(big.wait_for(10s) == std::future_status::ready);
    CHECK(r.try_acquire_permits("jobs", 3, 3));
}

CONFORMANCE_PROMISE("permits and locks on one key, or two limits, fail with mode_conflict, not a mix", has_modes) {
    Context c(backend);
    auto r = c.registry();
    {
        Guard p = r.acquire_permits("k", 1, 4);
        CHECK(error_of([&] { (void)r.acquire_permits("k", 1, 5); }) == errc::mode_conflict);
        CHECK(error_of([&] { (void)r.try_lock("k"); }) == errc::mode_conflict);
        CHECK(error_of([&] { (void)r.lock_shared("k"); }) == errc::mode_conflict);
        CHECK(error_of([&] { (void)r.try_lock_upgrade("k"); }) == errc::mode_conflict);
        CHECK(r.try_acquire_permits("k", 3, 4));  // the same limit joins
    }
    {
        Guard l = r.lock_shared("k");
        CHECK(error_of([&] { (void)r.acquire_permits("k", 1, 4); }) == errc::mode_conflict);
    }
    // Unused again: the key may be either.
    CHECK(r.try_acquire_permits("k", 2, 2));
    CHECK(r.try_lock("k"));
    CHECK(error_of([&] { (void)r.acquire_permits("k", 0, 4); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)r.acquire_permits("k", 5, 4); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)r.acquire_permits("k", 1, 0); }) == errc::invalid_argument);
}

// ---- Who holds a key ---------------------------------------------------------------------

CONFORMANCE_PROMISE("inspect shows the mode, the holders, the upgrader and the permits in use", has_modes) {
    Context c(backend);
    auto r = c.registry();
    auto observer = c.registry();
    {
        const LockInfo free = observer.inspect("k");
        CHECK_FALSE(free.held);
        CHECK(free.holders == 0);
    }
    {
        Guard a = r.lock_shared("k");
        Guard b = r.lock_shared("k");
        const LockInfo two = observer.inspect("k");
        CHECK(two.held);
        CHECK(two.mode == LockMode::shared);
        CHECK(two.holders == 2);
        CHECK_FALSE(two.upgrader);
        CHECK(two.permits == 0);
        CHECK(two.limit == 0);
    }
    {
        Guard u = r.lock_upgrade("k");
        const LockInfo alone = observer.inspect("k");
        CHECK(alone.mode == LockMode::upgrade);
        CHECK(alone.holders == 1);
        CHECK(alone.upgrader);
        Guard reader = r.lock_shared("k");
        const LockInfo both = observer.inspect("k");
        CHECK(both.held);
        CHECK(both.mode == LockMode::shared);
        CHECK(both.holders == 2);
        CHECK(both.upgrader);
        reader.release();
        u.upgrade();
        const LockInfo upgraded = observer.inspect("k");
        CHECK(upgraded.mode == LockMode::exclusive);
        CHECK(upgraded.holders == 1);
        CHECK_FALSE(upgraded.upgrader);
    }
    {
        Guard one = r.acquire_permits("jobs", 1, 5);
        Guard two = r.acquire_permits("jobs", 2, 5);
        const LockInfo three = observer.inspect("jobs");
        CHECK(three.held);
        CHECK(three.mode == LockMode::permits);
        CHECK(three.holders == 2);
        CHECK(three.permits == 3);
        CHECK(three.limit == 5);
        one.release();  // released now (a destructor only queues it on a server backend)
        two.release();
    }
    {
        Guard w = r.lock("k");
        const LockInfo excl = observer.inspect("k");
        CHECK(excl.held);
        CHECK(excl.mode == LockMode::exclusive);
        CHECK(excl.holders == 1);
        CHECK_FALSE(excl.upgrader);
        CHECK(excl.permits == 0);
        w.release();
    }
    CHECK_FALSE(observer.inspect("k").held);
    CHECK_FALSE(observer.inspect("jobs").held);
}

CONFORMANCE_PROMISE("shared, upgrade and permit requests answer not_supported where the backend lacks them",
                    lacks_modes) {
    Context c(backend);
    auto r = c.registry();
    CHECK(error_of([&] { (void)r.lock_shared("k"); }) == errc::not_supported);
    CHECK(error_of([&] { (void)r.try_lock_upgrade("k"); }) == errc::not_supported);
    CHECK(error_of([&] { (void)r.acquire_permits("k", 1, 2); }) == errc::not_supported);
    try {
        (void)r.lock_upgrade("k");
        FAIL("lock_upgrade did not throw");
    } catch (const Error& e) {
        CHECK_THAT(e.what(), Catch::Contains("lock_upgrade 'k'"));  // the operation, named
    }
    Guard g = r.lock("k");
    CHECK(error_of([&] { g.downgrade(); }) == errc::not_supported);
    CHECK(g.mode() == LockMode::exclusive);
    CHECK(g.owns_lock());
}

// ---- Many keys -------------------------------------------------------------------------

CONFORMANCE_PROMISE("lock_all takes every key or none, and rejects an empty or repeated list", every_backend) {
    Context c(backend);
    auto r = c.registry();
    {
        MultiGuard all = r.lock_all({"b", "a", "c"});
        CHECK(all.size() == 3);
        CHECK(all.guards()[0].key() == "a");  // in the one global order
        CHECK(all.fencing_token("b") > 0);
        CHECK(all.fencing_token("zz") == 0);
        for (const char* k : {"a", "b", "c"}) CHECK_FALSE(r.try_lock(k));
        all.release();  // returns once every key is released
        CHECK_FALSE(all.owns_lock());
    }
    for (const char* k : {"a", "b", "c"}) CHECK(r.try_lock(k));
    {
        Guard b = r.lock("b");
        const std::vector<std::string> keys{"c", "a", "b"};
        CHECK_FALSE(r.try_lock_all_for(keys, 100ms));
        // a (taken before b) was given back by its guard's destructor, whose release a remote
        // backend sends without waiting for the answer: free at once or very soon.
        CHECK(r.try_lock_for("a", 5s));
        CHECK(r.try_lock_for("c", 5s));
    }
    CHECK(error_of([&] { (void)r.lock_all(std::vector<std::string>{}); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)r.lock_all({"a", "b", "a"}); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)r.lock_all({"a", ""}); }) == errc::invalid_key);
    { MultiGuard m = r.lock_all({"x"}); }
    CHECK(r.try_lock_for("x", 5s));  // the destructor released it
}

CONFORMANCE_PROMISE("lock_all in random key orders from many threads: no deadlock, exact counts", every_backend) {
    Context c(backend);
    auto r = c.registry();
    const std::vector<std::string> accounts{"acct-1", "acct-2", "acct-3", "acct-4"};
    std::vector<long> balance(accounts.size(), 1000);  // each guarded by its key
    std::atomic<int> violations{0};
    std::vector<std::atomic<int>> holders(accounts.size());
    std::vector<std::future<void>> pool;
    for (int t = 0; t < 4; ++t) {
        pool.push_back(in_thread([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t) + 7);
            for (int i = 0; i < 40; ++i) {
                std::size_t from = rng() % accounts.size(), to = rng() % accounts.size();
                if (from == to) to = (to + 1) % accounts.size();
                MultiGuard g = r.lock_all(std::vector<std::string>{accounts[to], accounts[from]});
                for (std::size_t k : {from, to}) {
                    if (holders[k].fetch_add(1) != 0) ++violations;
                }
                balance[from] -= 10;
                balance[to] += 10;
                for (std::size_t k : {from, to}) holders[k].fetch_sub(1);
            }
        }));
    }
    for (auto& f : pool) REQUIRE(f.wait_for(120s) == std::future_status::ready);
    CHECK(violations == 0);
    long total = 0;
    for (long b : balance) total += b;
    CHECK(total == 4000);
}
