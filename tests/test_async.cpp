// SPDX-License-Identifier: BSL-1.0
// async_lock on the local backend, which grants a free key within the initiating call and hands
// a released key to its async waiters directly, in order: a cancellation after the grant, ten
// thousand waiters served in order, a granted completion left in a destroyed io_context, async and
// blocking waiters in one queue, a local guard's cancellation slot.
// What async_lock promises on every backend (callbacks, use_future, use_awaitable, cancellation)
// is the conformance suite's (tests/conformance/test_waiting.cpp).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/keylock.hpp>

namespace asio = boost::asio;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using namespace std::chrono_literals;

TEST_CASE("a cancellation after the grant delivers the lock", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    asio::cancellation_signal signal;
    bool owned = false;
    r.async_lock("k", asio::bind_cancellation_slot(signal.slot(), asio::bind_executor(io, [&](auto ec, Guard g) {
                                                       CHECK_FALSE(ec);
                                                       owned = g.owns_lock();
                                                   })));
    signal.emit(asio::cancellation_type::terminal);  // granted already: nothing to cancel
    io.run();
    CHECK(owned);
    CHECK(r.stats().entries == 0);
}

TEST_CASE("10,000 async waiters on one io_context, served in order", "[async][scale]") {
    KeyedLockRegistry r;
    asio::io_context io;
    constexpr int kWaiters = 10'000;
    auto held = std::make_optional(r.lock("hot"));
    std::vector<int> order;
    order.reserve(kWaiters);
    for (int i = 0; i < kWaiters; ++i) {
        r.async_lock("hot", asio::bind_executor(io, [&order, i](boost::system::error_code ec, Guard g) {
                         REQUIRE_FALSE(ec);
                         REQUIRE(g.owns_lock());
                         order.push_back(i);
                     }));
    }
    CHECK(r.stats().waiting == kWaiters);
    held.reset();
    io.run();  // one thread serves them all
    REQUIRE(order.size() == kWaiters);
    for (int i = 0; i < kWaiters; ++i) REQUIRE(order[i] == i);
    CHECK(r.stats().entries == 0);
    CHECK(r.stats().waiting == 0);
}

TEST_CASE("an io_context destroyed with a granted lock pending releases it", "[async]") {
    KeyedLockRegistry r;
    {
        asio::io_context io;
        r.async_lock("k", asio::bind_executor(io, [](boost::system::error_code, Guard) { FAIL("not run"); }));
        CHECK(r.stats().entries == 1);
    }  // never run: the guard inside the queued handler is destroyed
    CHECK(r.stats().entries == 0);
    CHECK(r.try_lock("k").has_value());
}

TEST_CASE("async and sync waiters share one queue", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    std::atomic<int> done{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 200; ++i) Guard g = r.lock("mixed");
            ++done;
        });
    }
    int async_done = 0;
    std::function<void()> again;
    again = [&] {
        r.async_lock("mixed", asio::bind_executor(io, [&](boost::system::error_code ec, Guard) {
                         REQUIRE_FALSE(ec);
                         if (++async_done < 200) again();
                     }));
    };
    again();
    io.run();
    for (auto& t : threads) t.join();
    CHECK(async_done == 200);
    CHECK(done == 4);
    CHECK(r.stats().entries == 0);
}

TEST_CASE("a local guard's cancellation slot is never emitted: its lock cannot be lost", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    Guard g = r.lock("k");
    asio::cancellation_slot slot = g.cancellation_slot(io.get_executor());
    CHECK(slot.is_connected());
    CHECK(slot == g.cancellation_slot(io.get_executor()));  // the same slot every time
    std::optional<boost::system::error_code> result;
    asio::steady_timer work(io, 50ms);
    work.async_wait(asio::bind_cancellation_slot(slot, [&](boost::system::error_code ec) { result = ec; }));
    Guard moved = std::move(g);  // the slot stays the moved-to guard's
    io.run();
    REQUIRE(result.has_value());
    CHECK_FALSE(*result);
    CHECK_FALSE(moved.lost());
}

TEST_CASE("a cancellation emitted after the registry is gone is harmless", "[async]") {
    // Cancelled after every registry copy is gone, then the last lock goes: only the queued
    // completion is left of the registry. Emitting again before it runs must not reach a backend
    // that is gone (ASan: heap-use-after-free before the operation kept its backend).
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        std::optional<Guard> held;
        {
            KeyedLockRegistry r;
            held = r.lock("k");
            r.async_lock("k", asio::bind_cancellation_slot(
                                  signal.slot(), asio::bind_executor(io, [&](auto ec, Guard) { result = ec; })));
            CHECK(r.stats().waiting == 1);
        }
        signal.emit(asio::cancellation_type::terminal);  // ends the wait: its completion is queued
        held.reset();                                    // the last lock
        signal.emit(asio::cancellation_type::terminal);  // again, before the completion has run
        io.run();
        REQUIRE(result.has_value());
        CHECK(*result == asio::error::operation_aborted);
    }
    // Completed at once (a bad key: never queued in the backend), the registry gone, then cancelled.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        {
            KeyedLockRegistry r;
            r.async_lock("", asio::bind_cancellation_slot(
                                 signal.slot(), asio::bind_executor(io, [&](auto ec, Guard) { result = ec; })));
        }
        signal.emit(asio::cancellation_type::terminal);
        io.run();
        REQUIRE(result.has_value());
        CHECK(*result == keylock::errc::invalid_key);
    }
    // A pending wait keeps the registry's state for a cancellation that comes after the registry.
    {
        asio::io_context io;
        asio::cancellation_signal signal;
        std::optional<boost::system::error_code> result;
        std::optional<Guard> held;
        {
            KeyedLockRegistry r;
            held = r.lock("k");
            r.async_lock("k", asio::bind_cancellation_slot(
                                  signal.slot(), asio::bind_executor(io, [&](auto ec, Guard) { result = ec; })));
        }
        held.reset();  // the wait is granted; its completion is queued with the guard
        signal.emit(asio::cancellation_type::terminal);
        io.run();
        REQUIRE(result.has_value());
        CHECK_FALSE(*result);
    }
}

TEST_CASE("a bad key's completion is not cancelled through a backend that never saw it", "[async]") {
    // The operation was never queued in the backend: a cancellation emitted before its handler
    // runs must not hand the backend a record it never made.
    KeyedLockRegistry r;
    asio::io_context io;
    asio::cancellation_signal signal;
    std::optional<boost::system::error_code> result;
    r.async_lock(
        std::string(2000, 'x'),
        asio::bind_cancellation_slot(signal.slot(), asio::bind_executor(io, [&](auto ec, Guard) { result = ec; })));
    signal.emit(asio::cancellation_type::terminal);
    io.run();
    REQUIRE(result.has_value());
    CHECK(*result == keylock::errc::key_too_long);
    CHECK(r.stats().cancellations == 0);
}
