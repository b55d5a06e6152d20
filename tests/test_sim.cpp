// SPDX-License-Identifier: BSL-1.0
// keylock::testing::Simulation (sim://): each scripted fault does what keylock/testing.hpp says,
// with the signals a leased backend gives (lost(), on_lost, the guard's slot, not_owner). The
// promises every backend keeps are the conformance suite's, which runs on sim:// too.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <keylock/keylock.hpp>
#include <keylock/testing.hpp>

#include "eventually.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::eventually;
using keylock::testing::Simulation;
using keylock::testing::SimulationOptions;
using namespace std::chrono_literals;

namespace {

template <class F>
std::error_code error_of(F&& f) {
    try {
        f();
    } catch (const keylock::Error& e) {
        return e.code();
    }
    return {};
}

}  // namespace

TEST_CASE("sim: registries of one simulation exclude each other, sim://NAME reaches it", "[sim]") {
    Simulation sim(SimulationOptions{"sim-exclusion"});
    CHECK(sim.url() == "sim://sim-exclusion");
    auto a = sim.registry();
    auto b = KeyedLockRegistry::from_url(sim.url());
    CHECK(b.describe() == "sim://sim-exclusion");
    {
        Guard g = a.lock("k");
        CHECK(sim.held() == 1);
        CHECK_FALSE(b.try_lock("k").has_value());
        CHECK(b.try_lock("other").has_value());
    }
    CHECK(b.try_lock("k").has_value());
    // Exact counts across threads of two registries.
    int inside = 0, most = 0, total = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            auto& r = t % 2 == 0 ? a : b;
            for (int i = 0; i < 200; ++i) {
                Guard g = r.lock("counted");
                most = std::max(most, ++inside);
                ++total;
                --inside;
            }
        });
    }
    for (auto& t : threads) t.join();
    CHECK(most == 1);
    CHECK(total == 1600);
    CHECK(sim.held() == 0);
}

TEST_CASE("sim: lose() ends a holder's lease with every signal, and frees the key", "[sim]") {
    Simulation sim(SimulationOptions{"sim-lose"});
    auto holder = sim.registry();
    auto other = sim.registry();
    std::vector<std::pair<std::string, std::uint64_t>> told;
    holder.on_lost([&](std::string_view key, std::uint64_t token) { told.emplace_back(key, token); });
    Guard g = holder.lock("k");
    const std::uint64_t token = g.fencing_token();
    CHECK_FALSE(g.lost());
    CHECK_FALSE(sim.lose("nobody-holds-this"));
    CHECK(sim.lose("k"));
    CHECK(g.lost());
    REQUIRE(told.size() == 1);
    CHECK(told[0].first == "k");
    CHECK(told[0].second == token);
    auto next = other.try_lock("k");  // free for others at once
    REQUIRE(next.has_value());
    CHECK(next->fencing_token() > token);
    CHECK(error_of([&] { g.release(); }) == errc::not_owner);
    CHECK(holder.stats().lost == 1);
    CHECK(sim.lose("k"));  // the new holder's lease can be ended too
    CHECK(next->lost());
}

TEST_CASE("sim: lose() cancels async work bound to the guard's slot", "[sim]") {
    Simulation sim(SimulationOptions{"sim-slot"});
    auto registry = sim.registry();
    boost::asio::io_context io;
    Guard g = registry.lock("k");
    boost::asio::steady_timer work(io, 1h);
    std::optional<boost::system::error_code> ended;
    work.async_wait(boost::asio::bind_cancellation_slot(g.cancellation_slot(io.get_executor()),
                                                        [&](boost::system::error_code ec) { ended = ec; }));
    CHECK(sim.lose("k"));
    io.run_for(5s);
    REQUIRE(ended.has_value());
    CHECK(*ended == boost::asio::error::operation_aborted);
}

TEST_CASE("sim: fail_next() makes the next acquisitions fail or time out, then the store answers", "[sim]") {
    Simulation sim(SimulationOptions{"sim-fail"});
    auto r = sim.registry();
    sim.fail_next("k", errc::unavailable, 2);
    CHECK(error_of([&] { (void)r.lock("k"); }) == errc::unavailable);
    CHECK(error_of([&] { (void)r.try_lock("k"); }) == errc::unavailable);
    CHECK(r.try_lock("k").has_value());

    sim.fail_next("k", errc::timeout);
    CHECK_FALSE(r.try_lock_for("k", 10s).has_value());  // at once, as a wait that ran out
    CHECK(r.stats().timeouts == 1);
    sim.fail_next("k", errc::timeout);
    CHECK(error_of([&] { (void)r.lock("k"); }) == errc::timeout);

    sim.fail_next("", errc::backend_error);  // any key
    CHECK(error_of([&] { (void)r.lock("whatever"); }) == errc::backend_error);
    CHECK(r.try_lock("whatever").has_value());

    // Async waits complete with the fault.
    sim.fail_next("k", errc::auth_failed);
    auto f = r.async_lock("k", boost::asio::use_future);
    try {
        (void)f.get();
        FAIL("no error");
    } catch (const boost::system::system_error& e) {
        CHECK(e.code() == keylock::make_error_code(errc::auth_failed));
    }
}

TEST_CASE("sim: a store that is down fails acquisitions, and loses holds a lease later on the clock", "[sim]") {
    Simulation sim(SimulationOptions{"sim-down", 30s});
    auto holder = sim.registry();
    auto other = sim.registry();
    Guard kept = holder.lock("kept");
    Guard released = holder.lock("released");
    sim.set_down(true);
    CHECK(error_of([&] { (void)other.lock("free"); }) == errc::unavailable);
    CHECK(error_of([&] { (void)other.try_lock_for("free", 1s); }) == errc::unavailable);
    // A release that cannot reach the store: reported, and the key stays held for a lease.
    CHECK(error_of([&] { released.release(); }) == errc::unavailable);
    sim.advance(29s);
    CHECK_FALSE(kept.lost());  // within its lease: still ours
    sim.set_down(false);
    CHECK_FALSE(other.try_lock("released").has_value());
    CHECK(sim.now() == 29s);
    sim.set_down(true);
    sim.advance(1s);  // the release's lease is over; `kept` was renewed before the store went down again
    CHECK_FALSE(kept.lost());
    sim.advance(29s);
    CHECK(kept.lost());  // a lease without renewal
    sim.set_down(false);
    CHECK(other.try_lock("released").has_value());
    CHECK(other.try_lock("kept").has_value());
    CHECK(error_of([&] { kept.release(); }) == errc::not_owner);
}

TEST_CASE("sim: delayed grants reach callers late, and a deadline that comes first gives the grant back", "[sim]") {
    Simulation sim(SimulationOptions{"sim-delay"});
    auto r = sim.registry();
    sim.delay_grants(1s);  // long, so that the bounds below hold on a loaded machine
    const auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(r.try_lock_for("k", 50ms).has_value());
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK(waited >= 50ms);
    CHECK(waited < 800ms);
    CHECK(sim.held() == 0);  // given back
    {
        Guard g = r.lock("k");
        CHECK(std::chrono::steady_clock::now() - start >= 1s);
    }
    // An async wait cancelled during the delay ends at once, its grant given back.
    boost::asio::io_context io;
    boost::asio::cancellation_signal cancel;
    std::optional<boost::system::error_code> ended;
    r.async_lock("k", boost::asio::bind_cancellation_slot(
                          cancel.slot(),
                          boost::asio::bind_executor(io, [&](boost::system::error_code ec, Guard) { ended = ec; })));
    boost::asio::steady_timer later(io, 50ms);
    later.async_wait([&](boost::system::error_code) { cancel.emit(boost::asio::cancellation_type::terminal); });
    const auto cancelled_at = std::chrono::steady_clock::now();
    io.run_for(5s);
    REQUIRE(ended.has_value());
    CHECK(*ended == boost::asio::error::operation_aborted);
    CHECK(std::chrono::steady_clock::now() - cancelled_at < 800ms);  // not the 1 s delay
    CHECK(sim.held() == 0);
    sim.delay_grants(0ms);
    CHECK(eventually([&] { return r.try_lock("k").has_value(); }));
}

// ---- Modes: shared, upgrade and permit holds have the fault model of exclusive ones ----------

TEST_CASE("sim: lose() of a key with three readers loses all three, and a writer gets it at once", "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-lose-readers"});
    auto readers = sim.registry();
    auto writer = sim.registry();
    std::vector<std::string> told;
    readers.on_lost([&](std::string_view key, std::uint64_t) { told.emplace_back(key); });
    std::vector<Guard> held;
    for (int i = 0; i < 3; ++i) held.push_back(readers.lock_shared("k"));
    CHECK(sim.held() == 3);
    CHECK_FALSE(writer.try_lock("k").has_value());
    CHECK(sim.lose("k"));
    for (const Guard& g : held) CHECK(g.lost());
    CHECK(told == std::vector<std::string>{"k", "k", "k"});  // on_lost, once per reader
    CHECK(sim.held() == 0);
    auto w = writer.try_lock("k");  // at once: nothing of the readers is left in the store
    REQUIRE(w.has_value());
    CHECK(writer.inspect("k").fencing_token == w->fencing_token());
    CHECK(readers.stats().lost == 3);
    for (Guard& g : held) CHECK(error_of([&] { g.release(); }) == errc::not_owner);
    CHECK(readers.stats().lost == 3);  // counted once each
}

TEST_CASE("sim: lost permits come back: another registry gets them", "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-lose-permits"});
    auto a = sim.registry();
    auto b = sim.registry();
    Guard two = a.acquire_permits("jobs", 2, 3);
    Guard one = a.acquire_permits("jobs", 1, 3);
    CHECK_FALSE(b.try_acquire_permits("jobs", 1, 3).has_value());
    CHECK(sim.lose("jobs"));
    CHECK(two.lost());
    CHECK(one.lost());
    auto all = b.try_acquire_permits("jobs", 3, 3);  // every permit, at once
    REQUIRE(all.has_value());
    CHECK(all->permits() == 3);
    CHECK(error_of([&] { two.release(); }) == errc::not_owner);
    CHECK(error_of([&] { one.release(); }) == errc::not_owner);
    CHECK_FALSE(a.try_acquire_permits("jobs", 1, 3).has_value());  // the lost ones gave nothing back twice
}

TEST_CASE("sim: a conversion of a lost hold reports not_owner, also when the loss comes while it waits",
          "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-lose-upgrade"});
    auto a = sim.registry();
    auto b = sim.registry();
    {
        Guard u = a.lock_upgrade("k");
        CHECK(sim.lose("k"));
        CHECK(u.lost());
        CHECK(error_of([&] { u.upgrade(); }) == errc::not_owner);
        CHECK(error_of([&] { (void)u.try_upgrade_for(10ms); }) == errc::not_owner);
        CHECK(u.mode() == keylock::LockMode::upgrade);
        CHECK(b.try_lock("k").has_value());
        CHECK(error_of([&] { u.release(); }) == errc::not_owner);
    }
    {
        Guard w = a.lock("k");
        CHECK(sim.lose("k"));
        CHECK(error_of([&] { w.downgrade(); }) == errc::not_owner);  // downgrades too
    }
    Guard u = a.lock_upgrade("k");
    Guard reader = b.lock_shared("k");
    auto up = std::async(std::launch::async, [&] { return error_of([&] { u.upgrade(); }); });
    REQUIRE(eventually([&] { return a.stats().waiting == 1; }));  // the upgrade waits for the reader
    CHECK(sim.lose("k"));                                         // the upgrader and the reader
    REQUIRE(up.wait_for(10s) == std::future_status::ready);
    CHECK(up.get() == errc::not_owner);
    CHECK(u.lost());
    CHECK(reader.lost());
    CHECK(b.try_lock("k").has_value());  // at once: the store gave back the converting hold too
    CHECK(error_of([&] { u.release(); }) == errc::not_owner);
    CHECK(a.stats().lost == 3);  // the upgrade hold, the exclusive one, and the waiting upgrader
    CHECK(eventually([&] { return a.stats().entries == 0 && a.stats().waiting == 0; }));
}

TEST_CASE("sim: an upgrade that times out keeps the hold, and the store's entry, whole", "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-upgrade-timeout"});
    auto a = sim.registry();
    auto b = sim.registry();
    auto handle = b.obtain("k");  // a reference of its own to the store's entry of the key
    {
        Guard u = a.lock_upgrade("k");
        Guard reader = b.lock_shared("k");
        CHECK_FALSE(u.try_upgrade_for(20ms));  // the store's conversion wait, cancelled at the deadline
        CHECK(u.mode() == keylock::LockMode::upgrade);
        reader.release();
        CHECK_FALSE(b.try_lock("k").has_value());  // still the upgrader's
        u.upgrade();
        CHECK_FALSE(b.try_lock_shared("k").has_value());
    }
    CHECK(sim.held() == 0);
    // The cancelled wait took no reference of its own, so it gave none back: the handle's entry
    // is still the key's, and locking through it excludes the others.
    handle.lock();
    CHECK_FALSE(a.try_lock("k").has_value());
    handle.unlock();
    CHECK(a.try_lock("k").has_value());
}

TEST_CASE("sim: lose() racing with readers and upgrades: every upgrade ends, nothing is left behind", "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-lose-race"});
    std::atomic<bool> stop{false};
    std::atomic<int> upgraded{0}, refused{0}, unexpected{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&, r = sim.registry(), t]() mutable {
            for (int i = 0; i < 300; ++i) {
                try {
                    if (t == 0) {
                        Guard g = r.lock_shared("k");
                        std::this_thread::yield();
                        continue;
                    }
                    Guard g = r.lock_upgrade("k");
                    if (g.try_upgrade_for(2ms)) ++upgraded;
                } catch (const keylock::Error& e) {
                    ++(e.code() == errc::not_owner ? refused : unexpected);  // lost before or while upgrading
                } catch (...) {
                    ++unexpected;
                }
            }
        });
    }
    std::thread loser([&] {
        while (!stop.load()) {
            (void)sim.lose("k");
            std::this_thread::yield();
        }
    });
    for (auto& t : threads) t.join();
    stop = true;
    loser.join();
    CHECK(unexpected == 0);
    CHECK(upgraded + refused > 0);
    CHECK(sim.held() == 0);
    auto r = sim.registry();
    CHECK(eventually([&] { return r.stats().entries == 0 && r.stats().waiting == 0; }));
    CHECK(r.try_lock("k").has_value());
}

TEST_CASE("sim: fail_next, a store that is down and delayed grants apply to every mode", "[sim][modes]") {
    Simulation sim(SimulationOptions{"sim-mode-faults", 30s});
    auto r = sim.registry();
    sim.fail_next("k", errc::unavailable, 3);
    CHECK(error_of([&] { (void)r.lock_shared("k"); }) == errc::unavailable);
    CHECK(error_of([&] { (void)r.try_lock_upgrade("k"); }) == errc::unavailable);
    CHECK(error_of([&] { (void)r.acquire_permits("k", 1, 2); }) == errc::unavailable);
    sim.fail_next("k", errc::timeout);
    CHECK_FALSE(r.try_lock_shared_for("k", 10s).has_value());
    {
        Guard u = r.lock_upgrade("k");
        sim.fail_next("k", errc::timeout);  // a conversion is an acquisition too
        CHECK_FALSE(u.try_upgrade_for(10s));
        CHECK(u.mode() == keylock::LockMode::upgrade);
        u.upgrade();
        CHECK(u.mode() == keylock::LockMode::exclusive);
    }

    Guard reader = r.lock_shared("read");
    Guard permit = r.acquire_permits("jobs", 1, 2);
    sim.set_down(true);
    CHECK(error_of([&] { (void)r.lock_shared("read"); }) == errc::unavailable);
    CHECK(error_of([&] { (void)r.inspect("read"); }) == errc::unavailable);
    sim.advance(30s);
    CHECK(reader.lost());
    CHECK(permit.lost());
    sim.set_down(false);
    CHECK(r.try_lock("read").has_value());
    CHECK(r.try_acquire_permits("jobs", 2, 2).has_value());

    sim.delay_grants(1s);
    const auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(r.try_lock_shared_for("k", 50ms).has_value());  // the grant came after the deadline
    CHECK(sim.held() == 0);                                     // and was given back
    Guard late = r.acquire_permits("jobs", 1, 2);
    CHECK(std::chrono::steady_clock::now() - start >= 1s);
}

TEST_CASE("sim: bad options, unknown simulations, and registries that outlive their simulation", "[sim]") {
    CHECK(error_of([] { Simulation s(SimulationOptions{""}); }) == errc::invalid_option);
    CHECK(error_of([] { Simulation s(SimulationOptions{"a/b"}); }) == errc::invalid_option);
    CHECK(error_of([] { Simulation s(SimulationOptions{"x", 0ms}); }) == errc::invalid_option);
    CHECK(error_of([] { (void)KeyedLockRegistry::from_url("sim://nobody-made-this"); }) == errc::unavailable);
    CHECK(error_of([] { (void)KeyedLockRegistry::from_url("sim://"); }) == errc::invalid_url);
    std::optional<KeyedLockRegistry> r;
    std::optional<Guard> g;
    {
        Simulation sim(SimulationOptions{"sim-lifetime", 30s, 8});
        CHECK(error_of([] { Simulation twin(SimulationOptions{"sim-lifetime"}); }) == errc::invalid_option);
        CHECK(error_of([&] { (void)KeyedLockRegistry::from_url(sim.url() + "?max_key_bytes=9"); }) ==
              errc::invalid_option);
        CHECK(error_of([&] { (void)KeyedLockRegistry::from_url(sim.url() + "?lease=1s"); }) == errc::unknown_option);
        auto small = KeyedLockRegistry::from_url(sim.url() + "?max_key_bytes=2");
        CHECK(error_of([&] { (void)small.lock("abc"); }) == errc::key_too_long);
        r.emplace(sim.registry());
        g.emplace(r->lock("k"));
    }
    // The simulation is gone (its name is free again); its registries and guards still work.
    CHECK(error_of([] { (void)KeyedLockRegistry::from_url("sim://sim-lifetime"); }) == errc::unavailable);
    CHECK_FALSE(r->try_lock("k").has_value());
    g->release();
    CHECK(r->try_lock("k").has_value());
    Simulation again(SimulationOptions{"sim-lifetime"});
    r.reset();
    g.reset();
}
