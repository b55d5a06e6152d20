// SPDX-License-Identifier: BSL-1.0
// asio_coroutine — keylock in C++20 coroutines on a Boost.Asio io_context.
//
// `registry.async_lock(key, token)` waits for a key without blocking a thread and works with
// any Asio completion token. Here:
//   1. several coroutines increment one counter under one key, with a co_await'ed timer
//      inside the critical section (so without the lock they would interleave and lose
//      updates); the count must be exact and no two may be inside at once;
//   2. a wait that gives up after a timeout: `async_lock(...) || timer` (awaitable operators);
//   3. a wait cancelled through a cancellation_signal, which completes with operation_aborted.
// Exits with 1 if a check fails.
#include <keylock/keylock.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <variant>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using namespace std::chrono_literals;

constexpr int workers = 5;
constexpr int increments = 20;

int counter = 0;        // shared state, protected by the key "counter"
int inside = 0;         // coroutines inside the critical section right now
int max_inside = 0;

// [snippet coroutine]
asio::awaitable<void> increment(keylock::KeyedLockRegistry& registry) {
    asio::steady_timer work(co_await asio::this_coro::executor);
    for (int i = 0; i < increments; ++i) {
        keylock::Guard guard = co_await registry.async_lock("counter", asio::use_awaitable);
        max_inside = std::max(max_inside, ++inside);
        const int seen = counter;
        work.expires_after(1ms);             // e.g. an async database write
        co_await work.async_wait(asio::use_awaitable);
        counter = seen + 1;                  // a lost update if another coroutine ran meanwhile
        --inside;
    }                                        // each guard released at the end of its iteration
}
// [/snippet coroutine]

asio::awaitable<void> give_up_after_timeout(keylock::KeyedLockRegistry& registry) {
    keylock::Guard held = co_await registry.async_lock("busy", asio::use_awaitable);  // held...
    asio::steady_timer timeout(co_await asio::this_coro::executor, 20ms);
    // ...so the timer wins, and the lock wait is cancelled and leaves nothing behind.
    std::variant<keylock::Guard, std::monostate> result =
        co_await (registry.async_lock("busy", asio::use_awaitable) ||
                  timeout.async_wait(asio::use_awaitable));
    CHECK(result.index() == 1);
    std::puts("timeout: gave up waiting for \"busy\" after 20 ms");
}

asio::awaitable<void> cancel_with_signal(keylock::KeyedLockRegistry& registry) {
    auto ex = co_await asio::this_coro::executor;
    keylock::Guard held = co_await registry.async_lock("busy", asio::use_awaitable);
    asio::cancellation_signal cancel;
    // Cancel the wait below in 10 ms, from this executor (as Asio asks).
    asio::steady_timer later(ex, 10ms);
    later.async_wait([&](boost::system::error_code) { cancel.emit(asio::cancellation_type::terminal); });

    auto [ec, guard] = co_await registry.async_lock(
        "busy", asio::bind_cancellation_slot(cancel.slot(), asio::as_tuple(asio::use_awaitable)));
    CHECK(ec == asio::error::operation_aborted && !guard);
    std::printf("cancelled: async_lock(\"busy\") completed with '%s'\n", ec.message().c_str());
}

int main() {
    auto registry = keylock::KeyedLockRegistry::from_url("local://");
    asio::io_context ctx;
    auto rethrow = [](const std::exception_ptr& e) { if (e) std::rethrow_exception(e); };

    for (int w = 0; w < workers; ++w) co_spawn(ctx, increment(registry), rethrow);
    ctx.run();
    CHECK(counter == workers * increments);
    CHECK(max_inside == 1);
    std::printf("counter: %d coroutines x %d increments = %d, never two inside at once\n",
                workers, increments, counter);

    ctx.restart();
    co_spawn(ctx, give_up_after_timeout(registry), rethrow);
    ctx.run();
    ctx.restart();
    co_spawn(ctx, cancel_with_signal(registry), rethrow);
    ctx.run();

    const keylock::Stats stats = registry.stats();
    CHECK(stats.cancellations == 2);                 // both abandoned waits were counted...
    CHECK(stats.waiting == 0 && stats.entries == 0); // ...and left nothing behind
    std::puts("asio_coroutine: all checks passed");
}
