// SPDX-License-Identifier: BSL-1.0
// Conformance, part 1: who holds a key. Mutual exclusion (threads, registries, processes), only
// the owner releases, idle keys are freed, fencing tokens rise, bad keys are typed errors.
// Every backend of backends.hpp runs each promise; see there for how to add one.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <future>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <keylock/keylock.hpp>

#include "backends.hpp"
#include "tests/eventually.hpp"
#include "tests/fork.hpp"
#include "tests/sanitized.hpp"
#include "tests/thread_checks.hpp"

namespace asio = boost::asio;
using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::conformance::Context;
using keylock::conformance::error_of;
using keylock::conformance::every_backend;
using keylock::conformance::shared_across_processes;
using keylock::test::eventually;
using keylock::test::spawn;
using keylock::test::wait_exit;
using namespace std::chrono_literals;

namespace {

constexpr int kScale = keylock::test::unless_sanitized(2, 1);

/// prefix + i, built by appending (GCC 12 warns falsely about `"k" + std::to_string(i)`).
std::string numbered(const char* prefix, int i) {
    std::string s(prefix);
    s += std::to_string(i);
    return s;
}

/// One key's state, written only under its lock: `value` by a non-atomic read-modify-write
/// that a second holder would break, `inside` counting the holders right now.
struct Slot {
    long value = 0;
    std::atomic<int> inside{0};
    std::atomic<int> overlaps{0};

    void critical_section(int i) {
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        const long seen = value;
        if (i % 4 == 0) std::this_thread::sleep_for(50us);  // widen the window now and then
        value = seen + 1;
        inside.fetch_sub(1);
    }
};

/// Whether the tokens rise strictly, in the order given.
bool strictly_rising(const std::vector<std::uint64_t>& tokens) {
    for (std::size_t i = 1; i < tokens.size(); ++i) {
        if (tokens[i] <= tokens[i - 1]) return false;
    }
    return true;
}

/// Every registry's waiters are gone and its entries freed (releases may still be on the wire).
void check_idle(std::vector<KeyedLockRegistry>& registries) {
    for (auto& r : registries) {
        CHECK(eventually([&] { return r.stats().entries == 0; }));
        CHECK(r.stats().waiting == 0);
    }
}

}  // namespace

CONFORMANCE_PROMISE("one holder per key across threads and registries", every_backend) {
    Context c(backend);
    constexpr int kRegistries = 3, kThreads = 6, kKeys = 3;
    const int rounds = 75 * kScale;
    std::vector<KeyedLockRegistry> registries;
    for (int i = 0; i < kRegistries; ++i) registries.push_back(c.registry());
    std::vector<Slot> slots(kKeys);
    std::vector<std::thread> threads;
    ThreadChecks checks;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            KeyedLockRegistry& r = registries[static_cast<std::size_t>(t % kRegistries)];
            for (int i = 0; i < rounds; ++i) {
                const int k = (t + i) % kKeys;
                Slot& slot = slots[static_cast<std::size_t>(k)];
                const std::string key = numbered("mutex-", k);
                // Every way of taking a lock must exclude every other.
                switch (i % 5) {
                    case 0: {
                        Guard g = r.lock(key);
                        slot.critical_section(i);
                        break;
                    }
                    case 1: {
                        auto g = r.try_lock_for(key, 30s);
                        THREAD_CHECK(checks, g.has_value());
                        if (g) slot.critical_section(i);
                        break;
                    }
                    case 2: r.with_lock(key, [&] { slot.critical_section(i); }); break;
                    case 3: {
                        auto m = r.obtain(key);
                        std::lock_guard lock(m);
                        slot.critical_section(i);
                        break;
                    }
                    default: {
                        Guard g = r.async_lock(key, asio::use_future).get();
                        slot.critical_section(i);
                        break;
                    }
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    checks.report();
    long total = 0;
    for (int k = 0; k < kKeys; ++k) {
        const Slot& slot = slots[static_cast<std::size_t>(k)];
        long expected = 0;  // the (thread, round) pairs that chose key k
        for (int t = 0; t < kThreads; ++t) {
            for (int i = 0; i < rounds; ++i) expected += (t + i) % kKeys == k ? 1 : 0;
        }
        INFO("key mutex-" << k);
        CHECK(slot.overlaps.load() == 0);
        CHECK(slot.value == expected);
        total += slot.value;
    }
    CHECK(total == static_cast<long>(kThreads) * rounds);
    check_idle(registries);
}

namespace {

/// What the processes of the cross-process promise share: an anonymous shared mapping.
struct ProcessShared {
    static constexpr int kKeys = 2;
    static constexpr std::size_t kMaxHolds = 4096;
    long value[kKeys] = {};
    std::atomic<int> inside[kKeys] = {};
    std::atomic<int> overlaps{0};
    std::size_t holds[kKeys] = {};                ///< written under the key's lock
    std::uint64_t tokens[kKeys][kMaxHolds] = {};  ///< in the order the locks were granted
    int process[kKeys][kMaxHolds] = {};           ///< who held it
};

/// Where `tokens` first fails to rise, with the processes that held the two locks, or "".
std::string first_fall(const std::vector<std::uint64_t>& tokens, const int* process) {
    for (std::size_t i = 1; i < tokens.size(); ++i) {
        if (tokens[i] <= tokens[i - 1]) {
            return "hold " + std::to_string(i) + " (process " + std::to_string(process[i]) + ") got token " +
                   std::to_string(tokens[i]) + " after " + std::to_string(tokens[i - 1]) + " (process " +
                   std::to_string(process[i - 1]) + ")";
        }
    }
    return {};
}


}  // namespace

CONFORMANCE_PROMISE("one holder per key across forked processes", shared_across_processes) {
    Context c(backend);
    void* mapping = ::mmap(nullptr, sizeof(ProcessShared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mapping != MAP_FAILED);
    auto* shared = new (mapping) ProcessShared{};
    constexpr int kProcesses = 4;
    const int rounds = 100 * kScale;
    std::vector<pid_t> children;
    for (int p = 0; p < kProcesses; ++p) {
        // Each child makes its own registry: nothing of the parent's keylock state crosses the fork.
        children.push_back(spawn([&, p] {
            auto r = KeyedLockRegistry::from_url(c.url());
            for (int i = 0; i < rounds; ++i) {
                const int k = (p + i) % ProcessShared::kKeys;
                Guard g = r.lock(numbered("process-", k));
                if (shared->inside[k].fetch_add(1) != 0) shared->overlaps.fetch_add(1);
                const long seen = shared->value[k];
                if (i % 4 == 0) std::this_thread::sleep_for(100us);
                shared->value[k] = seen + 1;
                const std::size_t n = shared->holds[k]++;
                if (n < ProcessShared::kMaxHolds) {
                    shared->tokens[k][n] = g.fencing_token();
                    shared->process[k][n] = p;
                }
                shared->inside[k].fetch_sub(1);
            }
            return 0;
        }));
    }
    for (pid_t child : children) CHECK(wait_exit(child) == 0);
    CHECK(shared->overlaps.load() == 0);
    CHECK(shared->value[0] + shared->value[1] == static_cast<long>(kProcesses) * rounds);
    for (int k = 0; k < ProcessShared::kKeys; ++k) {
        REQUIRE(shared->holds[k] <= ProcessShared::kMaxHolds);
        CHECK(static_cast<long>(shared->holds[k]) == shared->value[k]);
        const std::vector<std::uint64_t> tokens(shared->tokens[k], shared->tokens[k] + shared->holds[k]);
        INFO("key process-" << k << ": " << first_fall(tokens, shared->process[k]));
        CHECK(strictly_rising(tokens));  // across processes, in the order the locks were granted
    }
    shared->~ProcessShared();
    ::munmap(mapping, sizeof(ProcessShared));
}

CONFORMANCE_PROMISE("only the owner releases and a guard releases once", every_backend) {
    Context c(backend);
    auto a = c.registry();
    auto b = c.registry();
    auto observer = c.registry();

    // A moved-from guard holds nothing; the guard it moved to releases once.
    Guard g = a.lock("owned");
    Guard moved = std::move(g);
    CHECK_FALSE(g.owns_lock());  // NOLINT(bugprone-use-after-move): what a moved-from guard holds is the point
    CHECK(g.key().empty());
    CHECK(error_of([&] { g.release(); }) == errc::not_held);
    CHECK(moved.owns_lock());
    CHECK(moved.key() == "owned");
    CHECK_FALSE(observer.try_lock("owned").has_value());  // releasing the moved-from guard freed nothing
    moved.release();
    CHECK_FALSE(moved.owns_lock());
    CHECK(error_of([&] { moved.release(); }) == errc::not_held);
    std::error_code ec;
    moved.release(ec);
    CHECK(ec == errc::not_held);

    // Someone else holds it now: the spent guards, destroyed or assigned over, free nothing of theirs.
    auto next = b.try_lock_for("owned", 10s);
    REQUIRE(next.has_value());
    { Guard dropped = std::move(moved); }
    g = Guard();
    CHECK_FALSE(observer.try_lock("owned").has_value());
    CHECK(next->owns_lock());
    next.reset();

    // Assigning over a guard that holds a lock releases that lock.
    Guard first = a.lock("assigned-1");
    first = a.lock("assigned-2");
    CHECK(first.key() == "assigned-2");
    CHECK(eventually([&] { return observer.try_lock("assigned-1").has_value(); }));
    CHECK_FALSE(observer.try_lock("assigned-2").has_value());
    first.release();

    // A handle's unlock() never throws (the standard lock types call it from destructors); on a
    // handle that holds nothing it does nothing, and it releases exactly once.
    {
        static_assert(noexcept(std::declval<keylock::KeyMutex&>().unlock()));
        auto handle = a.obtain("handle");
        handle.unlock();
        handle.lock();
        CHECK_FALSE(observer.try_lock("handle").has_value());
        handle.unlock();
        CHECK(eventually([&] { return observer.try_lock("handle").has_value(); }));
        Guard other = observer.lock("handle");
        handle.unlock();  // nothing to release: the other holder keeps the key
        CHECK_FALSE(a.try_lock("handle").has_value());
    }

    if (backend.operator_tools) {
        // An operator frees a held lock and someone else takes it: the old guard's release
        // reports not_owner and leaves the new owner's lock alone.
        Guard stale = a.lock("stolen");
        CHECK(observer.inspect("stolen").held);
        CHECK(observer.force_release("stolen"));
        auto now = b.try_lock_for("stolen", 10s);
        REQUIRE(now.has_value());
        CHECK(now->fencing_token() > stale.fencing_token());
        stale.release(ec);
        CHECK(ec == errc::not_owner);
        CHECK_FALSE(stale.owns_lock());
        CHECK(observer.inspect("stolen").held);
        CHECK_FALSE(observer.try_lock("stolen").has_value());
        now->release();  // ours, so no error
        CHECK_FALSE(observer.inspect("stolen").held);
    } else {
        // No operator can take a lock from its owner here, though anyone may see it held.
        Guard owned = a.lock("owned");
        CHECK(error_of([&] { (void)observer.force_release("owned"); }) == errc::not_supported);
        CHECK(observer.inspect("owned").held);
        owned.release();
        CHECK_FALSE(observer.inspect("owned").held);
    }
    std::vector<KeyedLockRegistry> all{a, b, observer};
    check_idle(all);
}

CONFORMANCE_PROMISE("idle keys are freed once no guard or handle or waiter refers to them", every_backend) {
    Context c(backend);
    std::vector<KeyedLockRegistry> registries{c.registry(), c.registry()};
    KeyedLockRegistry& a = registries[0];
    KeyedLockRegistry& b = registries[1];
    constexpr int kKeys = 20;
    {
        std::vector<Guard> held;
        for (int i = 0; i < kKeys; ++i) held.push_back(a.lock(numbered("idle-", i)));
        CHECK(a.stats().entries >= kKeys);
        auto handle = b.obtain("idle-handle");
        handle.lock();
        // Waits that end without the lock: a try, a timeout, a stop.
        CHECK_FALSE(b.try_lock("idle-0").has_value());
        CHECK_FALSE(b.try_lock_for("idle-1", 50ms).has_value());
        std::stop_source stop;
        stop.request_stop();
        CHECK_FALSE(b.try_lock_for("idle-2", 10s, stop.get_token()).has_value());
        // A wait that ends with the lock once the holder lets go.
        std::future<Guard> later = b.async_lock("idle-3", asio::use_future);
        auto pin = b.obtain("idle-4");  // pinned, never locked
        held.clear();
        CHECK(later.get().owns_lock());
        handle.unlock();
    }
    check_idle(registries);
    // Nothing is left held (on a server: released locks were deleted, not left to expire).
    for (const char* key : {"idle-0", "idle-3", "idle-19", "idle-handle"}) {
        INFO(key);
        CHECK(eventually([&] { return !a.inspect(key).held; }));
    }
}

CONFORMANCE_PROMISE("fencing tokens strictly increase per key", every_backend) {
    Context c(backend);
    std::vector<KeyedLockRegistry> registries{c.registry(), c.registry(), c.registry()};

    // One holder after another, through different registries, the key freed in between.
    std::vector<std::uint64_t> in_turn;
    for (int i = 0; i < 12; ++i) {
        Guard g = registries[static_cast<std::size_t>(i) % registries.size()].lock("fence-turns");
        const std::uint64_t token = g.fencing_token();
        CHECK(token > 0);
        g.release();
        CHECK(g.fencing_token() == token);  // still readable after the release
        in_turn.push_back(token);
        if (i % 4 == 3) check_idle(registries);
    }
    CHECK(strictly_rising(in_turn));

    // Threads of every registry at once, each way of locking, two keys: the tokens of a key,
    // recorded under its lock, rise in the order the locks were granted.
    constexpr int kThreads = 6, kKeys = 2;
    const int rounds = 24 * kScale;
    std::vector<std::uint64_t> tokens[kKeys];  // each appended to under its key's lock
    std::vector<std::thread> threads;
    ThreadChecks checks;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            KeyedLockRegistry& r = registries[static_cast<std::size_t>(t) % registries.size()];
            for (int i = 0; i < rounds; ++i) {
                const int k = (t + i) % kKeys;
                const std::string key = numbered("fence-", k);
                auto& seen = tokens[k];
                switch (i % 4) {
                    case 0: {
                        Guard g = r.lock(key);
                        seen.push_back(g.fencing_token());
                        break;
                    }
                    case 1: r.with_lock(key, [&](Guard& g) { seen.push_back(g.fencing_token()); }); break;
                    case 2: {
                        auto m = r.obtain(key);
                        std::lock_guard lock(m);
                        seen.push_back(m.fencing_token());
                        break;
                    }
                    default: {
                        auto g = r.try_lock_for(key, 30s);
                        THREAD_CHECK(checks, g.has_value());
                        if (g) seen.push_back(g->fencing_token());
                        break;
                    }
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    checks.report();
    for (int k = 0; k < kKeys; ++k) {
        INFO("key fence-" << k);
        CHECK(tokens[k].size() == static_cast<std::size_t>(kThreads * rounds / kKeys));
        CHECK(strictly_rising(tokens[k]));
    }
    // And after all that, a new holder's token is larger still.
    Guard last = registries[0].lock("fence-0");
    CHECK(last.fencing_token() > tokens[0].back());
}

CONFORMANCE_PROMISE("bad keys are typed errors and binary keys are keys like any other", every_backend) {
    {
        Context c(backend, "max_key_bytes=16");
        auto r = c.registry();
        const std::string longest(16, 'k');
        const std::string too_long(17, 'k');
        struct Bad {
            std::string key;
            errc expected;
        };
        // Every way of asking for a key checks it.
        for (const Bad& bad : {Bad{"", errc::invalid_key}, Bad{too_long, errc::key_too_long}}) {
            const std::string& key = bad.key;
            const errc expected = bad.expected;
            INFO("a key of " << key.size() << " bytes");
            std::stop_source stop;
            CHECK(error_of([&] { (void)r.lock(key); }) == expected);
            CHECK(error_of([&] { (void)r.lock(key, stop.get_token()); }) == expected);
            CHECK(error_of([&] { (void)r.try_lock(key); }) == expected);
            CHECK(error_of([&] { (void)r.try_lock_for(key, 10ms); }) == expected);
            CHECK(error_of([&] { (void)r.try_lock_until(key, std::chrono::steady_clock::now() + 10ms); }) == expected);
            CHECK(error_of([&] { (void)r.obtain(key); }) == expected);
            CHECK(error_of([&] { r.with_lock(key, [] {}); }) == expected);
            CHECK(error_of([&] {
                      (void)r.get_or_create(
                          key, [] { return std::optional<int>(); }, [] { return 1; });
                  }) == expected);
            try {
                (void)r.async_lock(key, asio::use_future).get();
                FAIL_CHECK("async_lock took a bad key");
            } catch (const boost::system::system_error& e) {
                CHECK(e.code() == expected);
            }
            asio::io_context io;
            boost::system::error_code async_error;
            r.async_lock(key, asio::bind_executor(io, [&](boost::system::error_code e, Guard) { async_error = e; }));
            io.run();
            CHECK(async_error == expected);
            CHECK(error_of([&] { (void)r.inspect(key); }) == expected);
            if (backend.operator_tools) CHECK(error_of([&] { (void)r.force_release(key); }) == expected);
        }
        // A refused key leaves nothing behind.
        CHECK(eventually([&] { return r.stats().entries == 0; }));
        CHECK(r.stats().waiting == 0);
        Guard g = r.lock(longest);
        CHECK(g.key() == longest);
        CHECK_FALSE(c.registry().try_lock(longest).has_value());
    }
    {
        Context c(backend);  // the default bound: 1024 bytes
        auto r = c.registry();
        CHECK(error_of([&] { (void)r.lock(std::string(1025, 'x')); }) == errc::key_too_long);
        Guard g = r.lock(std::string(1024, 'x'));
        CHECK_FALSE(c.registry().try_lock(std::string(1024, 'x')).has_value());
    }

    // NUL, CR LF, bytes that are not UTF-8, protocol text, globs, hash tags: each key is its own,
    // and none is cut short or read as anything but bytes.
    Context c(backend);
    auto r = c.registry();
    auto other = c.registry();
    using namespace std::string_literals;
    const std::vector<std::string> keys = {
        "a\0b"s,                  // a NUL inside
        "a\0c"s,                  // the same up to the NUL
        "a"s,                     // the part before the NUL
        "\0"s,                    // a NUL alone
        "\r\n"s,                  // CR LF alone
        "k\r\nDEL k"s,            // a protocol's line break, and what follows it
        "k"s,                     // the part before it
        "\xff\xfe\x80"s,          // not UTF-8
        "\xff"s,                  // a prefix of it
        "a\0b\r\n\xff"s,          // all of them
        "*1\r\n$4\r\nPING\r\n"s,  // a command of the Redis protocol
        "k*?[a]"s,                // a glob pattern
        "{k}"s,                   // a Redis Cluster hash tag
        "a{k}b"s,                 // a hash tag inside
        "k}{"s,                   // braces that are no hash tag
    };
    std::vector<Guard> held;
    for (const auto& key : keys) {
        INFO("key #" << held.size());
        auto g = r.try_lock(key);  // none of them is another's lock
        REQUIRE(g.has_value());
        CHECK(g->key() == key);
        held.push_back(std::move(*g));
    }
    for (const auto& key : keys) {
        CHECK_FALSE(other.try_lock(key).has_value());
        CHECK(other.inspect(key).held);
    }
    held.erase(held.begin());  // "a\0b" goes; its neighbours stay held
    CHECK(eventually([&] { return other.try_lock("a\0b"s).has_value(); }));
    CHECK_FALSE(other.try_lock("a\0c"s).has_value());
    CHECK_FALSE(other.try_lock("a"s).has_value());
    held.clear();
    std::vector<KeyedLockRegistry> all{r, other};
    check_idle(all);
}
