// SPDX-License-Identifier: BSL-1.0
// Conformance, part 2: waiting. Deadlines, cancellation (stop tokens and Asio), the counters of
// stats(), the standard lock types and async_lock (callbacks, futures, coroutines), with_lock and
// get_or_create, and a prompt wake-up on release.
// Every backend of backends.hpp runs each promise; see there for how to add one.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <keylock/keylock.hpp>

#include "backends.hpp"
#include "tests/eventually.hpp"
#include "tests/thread_checks.hpp"

namespace asio = boost::asio;
using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::KeyMutex;
using keylock::conformance::Context;
using keylock::conformance::error_of;
using keylock::conformance::every_backend;
using keylock::test::eventually;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// How late a timed wait may end: scheduling, a round trip to a server, sanitizers on busy cores.
constexpr auto kLate = 3s;

/// Runs `fn` and returns how long it took.
template <class Fn>
Clock::duration timed(Fn&& fn) {
    const auto start = Clock::now();
    fn();
    return Clock::now() - start;
}

/// The steady clock now, in nanoseconds (for atomics).
std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::string numbered(const char* prefix, int i) {
    std::string s(prefix);
    s += std::to_string(i);
    return s;
}

/// Whether the tokens rise strictly, in the order given.
bool strictly_rising(const std::vector<std::uint64_t>& tokens) {
    for (std::size_t i = 1; i < tokens.size(); ++i) {
        if (tokens[i] <= tokens[i - 1]) return false;
    }
    return true;
}

}  // namespace

CONFORMANCE_PROMISE("deadlines are honoured and timed-out waits leave nothing behind", every_backend) {
    Context c(backend);
    auto holder = c.registry();
    auto r = c.registry();
    Guard held = holder.lock("deadline");
    const keylock::Stats before = r.stats();
    int timeouts = 0;

    // try_lock: one attempt, no waiting.
    CHECK(timed([&] { CHECK_FALSE(r.try_lock("deadline").has_value()); }) < 1s);
    ++timeouts;
    // Timed waits end no earlier than their deadline, and not much later.
    auto took = timed([&] { CHECK_FALSE(r.try_lock_for("deadline", 300ms).has_value()); });
    ++timeouts;
    CHECK(took >= 300ms);
    CHECK(took < 300ms + kLate);
    took = timed([&] { CHECK_FALSE(r.try_lock_until("deadline", Clock::now() + 200ms).has_value()); });
    ++timeouts;
    CHECK(took >= 200ms);
    CHECK(took < 200ms + kLate);
    took =
        timed([&] { CHECK_FALSE(r.try_lock_until("deadline", std::chrono::system_clock::now() + 200ms).has_value()); });
    ++timeouts;
    CHECK(took >= 190ms);  // converted to the steady clock
    CHECK(took < 200ms + kLate);
    // A deadline already past: one attempt.
    CHECK(timed([&] { CHECK_FALSE(r.try_lock_until("deadline", Clock::now() - 1s).has_value()); }) < 1s);
    CHECK(timed([&] { CHECK_FALSE(r.try_lock_for("deadline", 0ms).has_value()); }) < 1s);
    timeouts += 2;
    // Through a handle.
    {
        KeyMutex m = r.obtain("deadline");
        CHECK_FALSE(m.try_lock());
        took = timed([&] { CHECK_FALSE(m.try_lock_for(200ms)); });
        CHECK(took >= 200ms);
        CHECK(took < 200ms + kLate);
        timeouts += 2;
    }
    // Several timed waiters at once.
    constexpr int kWaiters = 4;
    std::vector<std::thread> waiters;
    std::vector<Clock::duration> waited(kWaiters);
    std::vector<int> acquired(kWaiters, 0);
    for (int i = 0; i < kWaiters; ++i) {
        waiters.emplace_back([&, i] {
            const auto start = Clock::now();
            acquired[static_cast<std::size_t>(i)] = r.try_lock_for("deadline", 300ms).has_value() ? 1 : 0;
            waited[static_cast<std::size_t>(i)] = Clock::now() - start;
        });
    }
    for (auto& t : waiters) t.join();
    timeouts += kWaiters;
    for (int i = 0; i < kWaiters; ++i) {
        INFO("waiter " << i);
        CHECK(acquired[static_cast<std::size_t>(i)] == 0);
        CHECK(waited[static_cast<std::size_t>(i)] >= 300ms);
        CHECK(waited[static_cast<std::size_t>(i)] < 300ms + kLate);
    }

    // Nothing is left waiting, and every one of those attempts counted as a timeout.
    const keylock::Stats after = r.stats();
    CHECK(after.waiting == 0);
    CHECK(after.timeouts - before.timeouts == static_cast<std::uint64_t>(timeouts));
    CHECK(after.acquisitions == before.acquisitions);
    // Nor any entry of theirs: only the holder's is left (in r's count when r is the holder's
    // registry too).
    CHECK(eventually([&] { return r.stats().entries == before.entries; }));

    // A waiter that gives up does not take the next waiter's wake-up with it: with the default
    // 30 s lease, a waiter that slept through the release would wait for half a minute.
    std::atomic<bool> first_got{false}, second_got{false};
    std::thread first([&] { first_got = r.try_lock_for("deadline", 500ms).has_value(); });
    CHECK(eventually([&] { return r.stats().waiting == 1; }));
    std::thread second([&] {
        Guard g = r.lock("deadline");
        second_got = true;
    });
    CHECK(eventually([&] { return r.stats().waiting == 2; }));
    first.join();
    CHECK_FALSE(first_got.load());
    CHECK_FALSE(second_got.load());
    const auto released = Clock::now();
    held.release();
    second.join();
    CHECK(second_got.load());
    CHECK(Clock::now() - released < 2s);
    CHECK(eventually([&] { return r.stats().entries == 0 && holder.stats().entries == 0; }));
    CHECK(r.stats().waiting == 0);
}

CONFORMANCE_PROMISE("stats count acquisitions and contended waits and timeouts", every_backend) {
    Context c(backend);
    auto r = c.registry();  // every call goes through r, so that its counters see them all
    const keylock::Stats before = r.stats();
    Guard held = r.lock("counted");                  // an acquisition that did not wait
    CHECK_FALSE(r.try_lock("counted").has_value());  // a timeout
    CHECK(r.try_lock("counted-other").has_value());  // another key: an acquisition, released
    std::atomic<bool> got{false};
    std::thread waiter([&] {
        Guard g = r.lock("counted");  // an acquisition that waited
        got = true;
    });
    CHECK(eventually([&] { return r.stats().waiting == 1; }));  // CHECK: the thread must be joined
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(got.load());  // it waits while the key is held
    held.release();
    waiter.join();
    CHECK(got.load());
    const keylock::Stats after = r.stats();
    CHECK(after.acquisitions - before.acquisitions == 3);
    CHECK(after.contended - before.contended == 1);
    CHECK(after.timeouts - before.timeouts == 1);
    CHECK(after.cancellations == before.cancellations);
    CHECK(after.lost == before.lost);
    CHECK(after.waiting == 0);
    CHECK(eventually([&] { return r.stats().entries == 0; }));
}

CONFORMANCE_PROMISE("cancellation ends a wait at once and leaves nothing behind", every_backend) {
    Context c(backend);
    auto holder = c.registry();
    auto r = c.registry();
    Guard held = holder.lock("cancel");
    const std::uint64_t entries = r.stats().entries;  // the holder's, when r is the holder's registry too
    const std::uint64_t cancellations = r.stats().cancellations;

    // A blocking lock() ended by its stop token throws `cancelled`, promptly.
    {
        std::stop_source stop;
        errc outcome{};
        std::thread waiter([&] { outcome = error_of([&] { (void)r.lock("cancel", stop.get_token()); }); });
        CHECK(eventually([&] { return r.stats().waiting == 1; }));
        std::this_thread::sleep_for(100ms);  // asleep, not just arrived
        const auto stopped = Clock::now();
        stop.request_stop();
        waiter.join();
        CHECK(Clock::now() - stopped < 2s);
        CHECK(outcome == errc::cancelled);
        CHECK(r.stats().waiting == 0);
    }
    // A timed wait ended by its stop token returns nullopt, long before its deadline.
    {
        std::stop_source stop;
        std::optional<bool> got;
        std::thread waiter([&] { got = r.try_lock_for("cancel", 30s, stop.get_token()).has_value(); });
        CHECK(eventually([&] { return r.stats().waiting == 1; }));
        const auto stopped = Clock::now();
        stop.request_stop();
        waiter.join();
        CHECK(Clock::now() - stopped < 2s);
        CHECK(got == std::optional<bool>(false));
        // A token stopped already: no wait at all.
        CHECK(timed([&] {
                  CHECK_FALSE(r.try_lock_until("cancel", Clock::now() + 30s, stop.get_token()).has_value());
              }) < 2s);
        CHECK(timed([&] { CHECK_FALSE(r.try_lock_for("cancel", 30s, stop.get_token()).has_value()); }) < 2s);
    }
    // An async wait ended through the handler's cancellation slot completes with operation_aborted.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        bool owned = true;
        r.async_lock("cancel", asio::bind_cancellation_slot(
                                   signal.slot(), asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                                       result = ec;
                                       owned = g.owns_lock();
                                   })));
        REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
        io.run_for(10s);  // returns once the handler has run (its work is done)
        REQUIRE(result.has_value());
        CHECK(*result == asio::error::operation_aborted);
        CHECK_FALSE(owned);
        CHECK(r.stats().waiting == 0);
    }
    // A timeout written with Asio's awaitable operators: the wait that loses the race is cancelled.
    {
        using namespace asio::experimental::awaitable_operators;
        asio::io_context io;
        std::optional<std::size_t> winner;
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
                auto outcome =
                    co_await (r.async_lock("cancel", asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
                winner = outcome.index();
            },
            asio::detached);
        io.run_for(10s);
        REQUIRE(winner.has_value());
        CHECK(*winner == 1);  // the timer's
        CHECK(r.stats().waiting == 0);
    }
    // Each of those waits counted once: two stopped while waiting, two stopped before, two by Asio.
    CHECK(r.stats().cancellations - cancellations == 6);
    // Nothing stays behind: the waiters' entries go, and the key goes to the next one who asks.
    CHECK(eventually([&] { return r.stats().entries == entries; }));
    held.release();
    auto third = c.registry();
    CHECK(third.try_lock_for("cancel", 5s).has_value());
    // A stop token that is never stopped changes nothing.
    std::stop_source never;
    CHECK(r.lock("cancel", never.get_token()).owns_lock());
    CHECK(third.try_lock_for("cancel", 5s, never.get_token()).has_value());
    CHECK(eventually([&] { return r.stats().entries == 0; }));
    CHECK(r.stats().waiting == 0);
}

CONFORMANCE_PROMISE("a cancellation emitted after the registry is gone is harmless", every_backend) {
    using keylock::conformance::Scope;
    Context c(backend);
    // A wait cancelled after every registry copy is gone; then the last lock goes, and with it
    // (but for the cancelled wait's queued completion) the last thing that kept the registry's
    // state; then the cancellation is emitted again before the completion has run.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        bool owned = true;
        // The holder: the waiter's own registry for local://, another process's for a server.
        std::optional<KeyedLockRegistry> other;
        if (backend.scope == Scope::server) other = KeyedLockRegistry::from_url(c.url());
        std::optional<Guard> held;
        {
            auto r = KeyedLockRegistry::from_url(c.url());
            held = (other ? *other : r).lock("gone");
            r.async_lock("gone", asio::bind_cancellation_slot(
                                     signal.slot(), asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                                         result = ec;
                                         owned = g.owns_lock();
                                     })));
            if (other) REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        }                                                // every copy of the waiter's registry is gone; its wait is not
        signal.emit(asio::cancellation_type::terminal);  // ends the wait; the completion is queued
        held.reset();
        // A server backend's I/O thread would end the registry's state on its own now: give it time.
        if (other) std::this_thread::sleep_for(300ms);
        signal.emit(asio::cancellation_type::terminal);  // again, before the completion has run
        io.run_for(10s);
        REQUIRE(result.has_value());
        CHECK(*result == asio::error::operation_aborted);
        CHECK_FALSE(owned);
    }
    // A wait that completed (a bad key) before the registry went, cancelled before its handler runs.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        {
            auto r = KeyedLockRegistry::from_url(c.url());
            r.async_lock("", asio::bind_cancellation_slot(
                                 signal.slot(),
                                 asio::bind_executor(io, [&](boost::system::error_code ec, Guard) { result = ec; })));
        }
        signal.emit(asio::cancellation_type::terminal);
        io.run_for(10s);
        REQUIRE(result.has_value());
        CHECK(*result == errc::invalid_key);
    }
    // A wait granted as the registry went (its holder's guard went with it): a cancellation
    // emitted before the handler runs cannot take back a grant already made (local:// grants
    // on the release itself; a server's grant may come after the cancellation, which then ends
    // the wait). The guard delivered is the last reference to the registry's state.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        std::optional<Guard> got;
        {
            auto r = KeyedLockRegistry::from_url(c.url());
            Guard held = r.lock("granted");
            r.async_lock("granted",
                         asio::bind_cancellation_slot(
                             signal.slot(), asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                                 result = ec;
                                 got = std::move(g);
                             })));
            REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        }  // `held` goes, then the registry
        signal.emit(asio::cancellation_type::terminal);
        io.run_for(10s);
        REQUIRE(result.has_value());
        REQUIRE(got.has_value());
        if (backend.scope == Scope::registry || !*result) {
            CHECK_FALSE(*result);
            CHECK(got->owns_lock());
        } else {
            CHECK(*result == asio::error::operation_aborted);
            CHECK_FALSE(got->owns_lock());
        }
        got.reset();  // the last reference: frees the registry's state (ASan/LSan check)
        if (backend.scope == Scope::server) {
            CHECK(KeyedLockRegistry::from_url(c.url()).try_lock_for("granted", 5s).has_value());
        }
    }
}

CONFORMANCE_PROMISE("guards and handles outlive the registry and keep working", every_backend) {
    Context c(backend);
    std::optional<Guard> g;
    std::optional<KeyMutex> m;
    {
        auto r = KeyedLockRegistry::from_url(c.url());
        g = r.lock("guard");
        m = r.obtain("handle");
    }  // every copy gone
    CHECK(g->key() == "guard");
    CHECK_FALSE(g->lost());
    CHECK(m->key() == "handle");
    // The handle locks, unlocks and waits as it did while the registry was there.
    m->lock();
    std::atomic<bool> second{false};
    std::thread waiter([&] {
        // The same handle, from another thread: waits for the first holder.
        CHECK(m->try_lock_for(10s));
        second = true;
        m->unlock();
    });
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(second.load());
    m->unlock();
    waiter.join();
    CHECK(second.load());
    CHECK(m->try_lock());
    m->unlock();
    std::error_code ec;
    g->release(ec);
    CHECK_FALSE(ec);
    CHECK(m->try_lock());
    g.reset();
    m.reset();  // the last reference: the locks are free and the state is freed (ASan/LSan check)
    if (backend.scope == keylock::conformance::Scope::server) {
        auto r = KeyedLockRegistry::from_url(c.url());
        CHECK(r.try_lock_for("handle", 5s).has_value());
        CHECK(r.try_lock_for("guard", 5s).has_value());
    }
}

CONFORMANCE_PROMISE("obtain gives a TimedLockable KeyMutex for the standard lock types", every_backend) {
    static_assert(requires(KeyMutex m) {
        m.lock();
        m.unlock();
        { m.try_lock() } -> std::same_as<bool>;
        { m.try_lock_for(1ms) } -> std::same_as<bool>;
        { m.try_lock_until(Clock::now()) } -> std::same_as<bool>;
    });
    Context c(backend);
    auto r = c.registry();
    auto other = c.registry();
    KeyMutex a = r.obtain("std-a");
    KeyMutex b = r.obtain("std-b");
    CHECK(a.key() == "std-a");
    std::uint64_t last = 0;
    {
        std::unique_lock lock(a);
        CHECK(lock.owns_lock());
        CHECK(a.fencing_token() > last);
        last = a.fencing_token();
        CHECK_FALSE(other.try_lock("std-a").has_value());
    }
    CHECK(other.try_lock_for("std-a", 5s).has_value());
    {
        std::lock_guard lock(a);
        CHECK(a.fencing_token() > last);
        last = a.fencing_token();
        CHECK_FALSE(other.try_lock("std-a").has_value());
    }
    {
        std::scoped_lock both(a, b);  // std::lock over two keys
        CHECK_FALSE(other.try_lock("std-a").has_value());
        CHECK_FALSE(other.try_lock("std-b").has_value());
        // Another handle of the key, of the same registry, on another thread: its tries fail.
        bool got = true;
        std::thread([&] {
            KeyMutex again = r.obtain("std-a");
            got = again.try_lock() || again.try_lock_for(20ms);
        }).join();
        CHECK_FALSE(got);
    }
    CHECK(other.try_lock_for("std-a", 5s).has_value());
    CHECK(other.try_lock_for("std-b", 5s).has_value());
    {
        std::unique_lock lock(a, std::defer_lock);
        CHECK(lock.try_lock_for(5s));
        lock.unlock();
        CHECK(lock.try_lock_until(Clock::now() + 5s));
    }
    {
        // Beside a standard mutex in one std::scoped_lock, with a token larger than the last.
        std::timed_mutex tm;
        std::scoped_lock mixed(a, tm);
        CHECK_FALSE(other.try_lock("std-a").has_value());
        CHECK(a.fencing_token() > last);
        last = a.fencing_token();
    }
    {
        // Held elsewhere: the handle's timed tries fail, and std::unique_lock says so.
        Guard elsewhere = other.lock("std-a");
        CHECK_FALSE(a.try_lock());
        const auto took = timed([&] {
            std::unique_lock lock(a, 200ms);
            CHECK_FALSE(lock.owns_lock());
        });
        CHECK(took >= 200ms);
        CHECK(took < 200ms + kLate);
        std::unique_lock lock(b, std::try_to_lock);
        CHECK(lock.owns_lock());
    }

    // std::lock's deadlock avoidance: two threads take the same two keys in opposite orders.
    constexpr int kRounds = 15;
    long together = 0;  // written only while both keys are held
    std::atomic<int> inside{0}, overlaps{0};
    auto worker = [&](KeyedLockRegistry& registry, const char* first, const char* second) {
        KeyMutex x = registry.obtain(first);
        KeyMutex y = registry.obtain(second);
        for (int i = 0; i < kRounds; ++i) {
            std::scoped_lock both(x, y);
            if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
            const long seen = together;
            std::this_thread::yield();
            together = seen + 1;
            inside.fetch_sub(1);
        }
    };
    std::thread t1([&] { worker(r, "pair-x", "pair-y"); });
    std::thread t2([&] { worker(other, "pair-y", "pair-x"); });
    t1.join();
    t2.join();
    CHECK(overlaps.load() == 0);
    CHECK(together == 2 * kRounds);

    // One handle shared by threads is a mutex like any other.
    KeyMutex shared = r.obtain("shared-handle");
    long count = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < kRounds; ++i) {
                std::lock_guard lock(shared);
                if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
                const long seen = count;
                std::this_thread::yield();
                count = seen + 1;
                inside.fetch_sub(1);
            }
        });
    }
    for (auto& t : threads) t.join();
    CHECK(overlaps.load() == 0);
    CHECK(count == 3 * kRounds);
}

CONFORMANCE_PROMISE("async_lock and with_lock and get_or_create lock and release as documented", every_backend) {
    Context c(backend);
    auto r = c.registry();
    auto other = c.registry();

    // async_lock with a callback: never inside the initiating call, on the handler's executor,
    // once the holder lets go.
    {
        asio::io_context io;
        Guard held = other.lock("async");
        std::vector<int> events;
        Guard delivered;
        r.async_lock("async", asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                         CHECK_FALSE(ec);
                         events.push_back(2);
                         delivered = std::move(g);
                     }));
        CHECK(events.empty());
        io.run_for(200ms);
        CHECK(events.empty());  // still waiting
        events.push_back(1);
        held.release();
        io.run_for(10s);  // until the handler has run
        CHECK(events == std::vector<int>{1, 2});
        CHECK(delivered.owns_lock());
        CHECK(delivered.key() == "async");
        CHECK(delivered.fencing_token() > held.fencing_token());
        CHECK_FALSE(other.try_lock("async").has_value());

        bool done = false;
        r.async_lock("async-free", asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                         CHECK_FALSE(ec);
                         CHECK(g.owns_lock());
                         done = true;
                     }));
        CHECK_FALSE(done);  // a free key too completes through the executor
        io.restart();
        io.run_for(10s);
        CHECK(done);
    }
    // async_lock with use_future.
    {
        Guard held = other.lock("future");
        std::future<Guard> f = r.async_lock("future", asio::use_future);
        CHECK(f.wait_for(200ms) == std::future_status::timeout);
        held.release();
        REQUIRE(f.wait_for(10s) == std::future_status::ready);
        Guard g = f.get();
        CHECK(g.owns_lock());
        CHECK(g.fencing_token() > held.fencing_token());
    }
    // async_lock with use_awaitable: coroutines of one thread take turns on a key, each holding
    // it across a suspension, with tokens rising in the order the locks were granted.
    {
        asio::io_context io;
        constexpr int kCoroutines = 8, kRounds = 20;
        int inside = 0, max_inside = 0, total = 0;
        std::vector<std::uint64_t> tokens;
        auto worker = [&]() -> asio::awaitable<void> {
            for (int i = 0; i < kRounds; ++i) {
                Guard g = co_await r.async_lock("awaited", asio::use_awaitable);
                tokens.push_back(g.fencing_token());
                max_inside = std::max(max_inside, ++inside);
                asio::steady_timer pause(co_await asio::this_coro::executor, 1ms);
                co_await pause.async_wait(asio::use_awaitable);  // suspended while holding
                ++total;
                --inside;
            }
        };
        for (int i = 0; i < kCoroutines; ++i) asio::co_spawn(io, worker(), asio::detached);
        io.run_for(60s);
        CHECK(total == kCoroutines * kRounds);
        CHECK(max_inside == 1);
        CHECK(strictly_rising(tokens));
    }

    // with_lock: the result passes through, the guard if asked for, and the lock is released
    // however the function ends.
    CHECK(r.with_lock("with", [] { return 42; }) == 42);
    const std::uint64_t token = r.with_lock("with", [&](Guard& g) {
        CHECK(g.key() == "with");
        CHECK_FALSE(other.try_lock("with").has_value());
        return g.fencing_token();
    });
    CHECK(token > 0);
    CHECK_THROWS_AS(r.with_lock("with", []() -> void { throw std::runtime_error("the work failed"); }),
                    std::runtime_error);
    // The guard's destructor released it: a later lock of the same registry waits for that
    // release (a distributed backend may still count the key as held until its server answers).
    CHECK(r.try_lock_for("with", 5s).has_value());
    CHECK(eventually([&] { return other.try_lock("with").has_value(); }));

    // get_or_create: many callers for few entities, through two registries: one create each.
    constexpr int kThreads = 16, kIds = 5, kRounds = 50;
    std::mutex store_mu;
    std::map<std::string, int> store;
    std::atomic<int> creates{0};
    std::vector<std::thread> threads;
    ThreadChecks checks;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            KeyedLockRegistry& registry = t % 2 == 0 ? r : other;
            for (int i = 0; i < kRounds; ++i) {
                const std::string id = numbered("entity-", (t + i) % kIds);
                auto find = [&]() -> std::optional<int> {
                    std::lock_guard lock(store_mu);
                    const auto it = store.find(id);
                    return it == store.end() ? std::nullopt : std::optional<int>(it->second);
                };
                // Half the callers store in create, the others only in the commit (after a gap):
                // either way the value is stored before the lock is released.
                const int value = t % 4 < 2 ? registry.get_or_create(id, find,
                                                                     [&] {
                                                                         creates.fetch_add(1);
                                                                         std::this_thread::sleep_for(5ms);  // the gap
                                                                         std::lock_guard lock(store_mu);
                                                                         store[id] = t;
                                                                         return t;
                                                                     })
                                            : registry.get_or_create(
                                                  id, find,
                                                  [&](Guard& g) {
                                                      THREAD_CHECK(checks, g.owns_lock() && g.key() == id);
                                                      creates.fetch_add(1);
                                                      return t;
                                                  },
                                                  [&](int& created) {
                                                      std::this_thread::sleep_for(5ms);  // the gap before a commit
                                                      std::lock_guard lock(store_mu);
                                                      store[id] = created;
                                                  });
                std::lock_guard lock(store_mu);
                THREAD_CHECK(checks, store.at(id) == value);
            }
        });
    }
    for (auto& t : threads) t.join();
    checks.report();
    CHECK(creates.load() == kIds);
    CHECK(eventually([&] { return r.stats().entries == 0 && other.stats().entries == 0; }));
}

CONFORMANCE_PROMISE("a release wakes a waiter at once under the default lease", every_backend) {
    Context c(backend);
    // The default lease (30 s for leased backends): a waiter that only the lease's end could
    // wake would wait that long.
    CHECK_THAT(c.url(), !Catch::Contains("lease"));
    auto holder = c.registry();
    auto r = c.registry();
    enum class How { release, destructor, async };
    int round = 0;
    for (How how : {How::release, How::destructor, How::async}) {
        const std::string key = numbered("wake-", round++);  // different keys: on a cluster, different masters
        INFO("round " << round);
        asio::io_context io;
        std::atomic<std::int64_t> got_ns{0};
        // Declared before the guard, so that a failed REQUIRE releases the key and then joins.
        std::jthread waiter;
        std::optional<Guard> held = holder.lock(key);
        if (how == How::async) {
            r.async_lock(key, asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                             if (!ec && g.owns_lock()) got_ns = now_ns();
                         }));
            waiter = std::jthread([&] { io.run_for(20s); });
        } else {
            waiter = std::jthread([&] {
                Guard g = r.lock(key);
                got_ns = now_ns();
            });
        }
        REQUIRE(eventually([&] { return r.stats().waiting == 1; }));
        std::this_thread::sleep_for(300ms);  // asleep by now
        CHECK(got_ns.load() == 0);
        const std::int64_t released_ns = now_ns();
        if (how == How::release) {
            held->release();
        } else {
            held.reset();
        }
        waiter.join();
        REQUIRE(got_ns.load() != 0);
        CHECK(std::chrono::nanoseconds(got_ns.load() - released_ns) < 1s);
    }
}
