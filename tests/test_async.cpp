// SPDX-License-Identifier: BSL-1.0
// async_lock with Asio completion tokens: callbacks, futures, coroutines, cancellation, scale.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <keylock/keylock.hpp>

namespace asio = boost::asio;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using namespace std::chrono_literals;

TEST_CASE("async_lock completes with a guard through a callback", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    auto held = std::make_optional(r.lock("k"));
    std::vector<int> events;
    r.async_lock("k", asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                     CHECK_FALSE(ec);
                     CHECK(g.owns_lock());
                     CHECK(g.key() == "k");
                     events.push_back(2);
                 }));
    io.poll();
    CHECK(events.empty());  // still waiting
    CHECK(r.stats().waiting == 1);
    events.push_back(1);
    held.reset();
    io.run();  // the work guard kept run() from returning early; the handler ran here
    CHECK(events == std::vector<int>{1, 2});
    CHECK(r.stats().entries == 0);
}

TEST_CASE("async_lock never completes inside the initiating call", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    bool done = false;
    r.async_lock("free", asio::bind_executor(io, [&](boost::system::error_code, Guard) { done = true; }));
    CHECK_FALSE(done);
    io.run();
    CHECK(done);
}

TEST_CASE("async_lock works with use_future", "[async]") {
    KeyedLockRegistry r;
    std::future<Guard> f = r.async_lock("k", asio::use_future);
    Guard g = f.get();
    CHECK(g.owns_lock());
    std::future<Guard> bad = r.async_lock("", asio::use_future);
    try {
        (void)bad.get();
        FAIL("expected an error");
    } catch (const boost::system::system_error& e) {
        CHECK(e.code() == keylock::errc::invalid_key);
    }
}

TEST_CASE("async_lock works with use_awaitable and serialises coroutines", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    int inside = 0;
    int max_inside = 0;
    int total = 0;
    std::vector<std::uint64_t> tokens;
    auto worker = [&]() -> asio::awaitable<void> {
        for (int i = 0; i < 20; ++i) {
            Guard g = co_await r.async_lock("shared", asio::use_awaitable);
            tokens.push_back(g.fencing_token());
            ++inside;
            max_inside = std::max(max_inside, inside);
            asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
            co_await t.async_wait(asio::use_awaitable);  // suspend while holding
            ++total;
            --inside;
        }
    };
    for (int c = 0; c < 8; ++c) asio::co_spawn(io, worker(), asio::detached);
    io.run();
    CHECK(total == 160);
    CHECK(max_inside == 1);
    for (std::size_t i = 1; i < tokens.size(); ++i) CHECK(tokens[i] > tokens[i - 1]);
    CHECK(r.stats().entries == 0);
}

TEST_CASE("per-operation cancellation ends a wait and leaves nothing behind", "[async]") {
    KeyedLockRegistry r;
    asio::io_context io;
    auto held = std::make_optional(r.lock("k"));
    asio::cancellation_signal signal;
    boost::system::error_code result;
    bool owned = true;
    r.async_lock("k", asio::bind_cancellation_slot(signal.slot(),
                                                   asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                                                       result = ec;
                                                       owned = g.owns_lock();
                                                   })));
    io.poll();
    CHECK(r.stats().waiting == 1);
    asio::post(io, [&] { signal.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(result == asio::error::operation_aborted);
    CHECK_FALSE(owned);
    CHECK(r.stats().waiting == 0);
    CHECK(r.stats().cancellations == 1);
    held.reset();
    CHECK(r.stats().entries == 0);

    // A timeout written with awaitable operators: the losing wait is cancelled.
    using namespace asio::experimental::awaitable_operators;
    auto g2 = std::make_optional(r.lock("k"));
    asio::io_context io2;
    bool timed_out = false;
    asio::co_spawn(
        io2,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer timer(co_await asio::this_coro::executor, 20ms);
            auto outcome = co_await (r.async_lock("k", asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
            timed_out = outcome.index() == 1;
        },
        asio::detached);
    io2.run();
    CHECK(timed_out);
    CHECK(r.stats().waiting == 0);
    g2.reset();
    CHECK(r.stats().entries == 0);
}

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
