// SPDX-License-Identifier: BSL-1.0
// A user of keylock: everything comes from the one public header. Built with
// -Wall -Wextra -Wpedantic -Werror and keylock's headers not treated as system headers, so the
// templates instantiated below (timed waits, with_lock, get_or_create, KeyMutex, async_lock)
// must compile warning-free. Exit code 0 on success.
#include <keylock/keylock.hpp>
#include <keylock/testing.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>

#include <boost/asio/use_future.hpp>

namespace {

int failures = 0;

void check(bool ok, const char* what, int line) {
    if (!ok) {
        std::fprintf(stderr, "keylock_consumer: FAILED line %d: %s\n", line, what);
        ++failures;
    }
}
#define CHECK(...) check(static_cast<bool>(__VA_ARGS__), #__VA_ARGS__, __LINE__)

}  // namespace

int main() {
    using namespace std::chrono_literals;
    // The installed <keylock/version.hpp> describes the library linked in.
    CHECK(std::string(keylock::version().string) == KEYLOCK_VERSION_STRING);
    CHECK(keylock::version().minor == KEYLOCK_VERSION_MINOR);
    try {
        {
            // keylock::testing: a simulated store whose lease the test ends.
            keylock::testing::Simulation sim;
            auto simulated = keylock::KeyedLockRegistry::from_url(sim.url());
            keylock::Guard held = simulated.lock("k");
            CHECK(sim.lose("k") && held.lost());
        }
        auto registry = keylock::KeyedLockRegistry::from_url("local://");

        std::uint64_t first = 0;
        {
            keylock::Guard guard = registry.lock("consumer-key");
            CHECK(guard.owns_lock());
            CHECK(guard.key() == "consumer-key");
            CHECK(guard.fencing_token() > 0);
            first = guard.fencing_token();
            // Held: a second attempt fails, whatever the way of waiting.
            CHECK(!registry.try_lock("consumer-key").has_value());
            CHECK(!registry.try_lock_for("consumer-key", 1ms).has_value());
            CHECK(!registry.try_lock_until("consumer-key", std::chrono::system_clock::now() + 1ms).has_value());
        }
        {
            auto again = registry.try_lock_until("consumer-key", std::chrono::steady_clock::now());
            CHECK(again.has_value());
            CHECK(again && again->fencing_token() > first);
        }

        // Templates a user instantiates.
        const int sum = registry.with_lock("a", [] { return 1; }) +
                        registry.with_lock("a", [](keylock::Guard& g) { return g ? 2 : 0; });
        CHECK(sum == 3);
        const std::string made = registry.get_or_create(
            "entity", [] { return std::optional<std::string>{}; }, [] { return "created"; });
        CHECK(made == "created");
        {
            keylock::KeyMutex m = registry.obtain("mutex-key");
            std::unique_lock<keylock::KeyMutex> lk(m, std::defer_lock);
            CHECK(lk.try_lock_for(10ms));
            CHECK(m.fencing_token() > 0);
        }
        {
            keylock::KeyMutex m1 = registry.obtain("m1");
            keylock::KeyMutex m2 = registry.obtain("m2");
            std::scoped_lock both(m1, m2);
            CHECK(m1.fencing_token() > 0 && m2.fencing_token() > 0);
        }

        // Asynchronous: a plain callback and a future.
        {
            std::promise<std::uint64_t> got;
            registry.async_lock("async-key", [&got](boost::system::error_code ec, keylock::Guard g) {
                got.set_value(ec ? 0 : g.fencing_token());
            });
            auto fut = got.get_future();
            CHECK(fut.wait_for(10s) == std::future_status::ready);
            CHECK(fut.get() > 0);
            keylock::Guard g = registry.async_lock("async-key", boost::asio::use_future).get();
            CHECK(g.fencing_token() > 0);
        }

        // Errors cross the library boundary as keylock::Error with a keylock code.
        try {
            (void)registry.lock("");
            check(false, "lock(\"\") did not throw", __LINE__);
        } catch (const keylock::Error& e) {
            CHECK(e.code() == keylock::errc::invalid_key);
            CHECK(&e.code().category() == &keylock::error_category());
        }
        try {
            (void)keylock::KeyedLockRegistry::from_url("nosuchscheme://");
            check(false, "from_url(\"nosuchscheme://\") did not throw", __LINE__);
        } catch (const std::system_error& e) {
            CHECK(e.code() == keylock::errc::unknown_scheme);
        }

#ifdef KEYLOCK_CONSUMER_REDIS
        {
            // Registered by linking keylock::redis; nothing listens on port 1.
            auto redis = keylock::KeyedLockRegistry::from_url("redis://127.0.0.1:1/?connect_timeout=100ms");
            CHECK(redis.describe().rfind("redis://127.0.0.1:1", 0) == 0);
            try {
                (void)redis.lock("k");
                check(false, "lock on a closed port did not throw", __LINE__);
            } catch (const keylock::Error& e) {
                CHECK(e.code() == keylock::errc::unavailable);
            }
        }
#endif

        const keylock::Stats stats = registry.stats();
        CHECK(stats.acquisitions >= 8);
        CHECK(registry.describe().rfind("local://", 0) == 0);
        keylock::LocalOptions options;
        options.max_keys = 10;
        CHECK(keylock::KeyedLockRegistry(options).describe() == options.to_url());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "keylock_consumer: unexpected exception: %s\n", e.what());
        return EXIT_FAILURE;
    }
    if (failures != 0) return EXIT_FAILURE;
    std::puts("keylock_consumer: OK");
    return EXIT_SUCCESS;
}
