// SPDX-License-Identifier: BSL-1.0
// redlock:// against five independent redis-server masters on loopback (tests/topology.hpp):
// a lock is held when a majority granted it. Nodes are frozen (SIGSTOP), killed and restarted
// empty while locks are held and awaited; every hold under load goes through the
// mutual-exclusion checker.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "backends/redis/scripts.hpp"
#include "eventually.hpp"
#include "exclusion_checker.hpp"
#include "load.hpp"
#include "tcp_proxy.hpp"
#include "topology.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::check_exclusion;
using keylock::test::error_of;
using keylock::test::eventually;
using keylock::test::ExclusionChecker;
using keylock::test::Load;
using keylock::test::RedlockDeployment;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// Whether a try_lock of `key` succeeds now (false also if it throws: the nodes may still be
/// catching up); the guard goes to `out` if given.
bool try_lock_now(KeyedLockRegistry& r, const std::string& key, std::optional<Guard>* out = nullptr) {
    try {
        auto g = r.try_lock(key);
        const bool ok = g.has_value();
        if (out != nullptr) *out = std::move(g);
        return ok;
    } catch (const keylock::Error&) {
        return false;
    }
}

/// Freezes (SIGSTOP) the servers `indices` for as long as it lives.
class Frozen {
public:
    Frozen(RedlockDeployment& d, std::vector<std::size_t> indices) : d_(d), indices_(std::move(indices)) {
        for (std::size_t i : indices_) d_.server(i).pause();
    }
    Frozen(const Frozen&) = delete;
    Frozen& operator=(const Frozen&) = delete;
    ~Frozen() { thaw(); }
    void thaw() {
        for (std::size_t i : indices_) d_.server(i).resume();
        indices_.clear();
    }

private:
    RedlockDeployment& d_;
    std::vector<std::size_t> indices_;
};

}  // namespace

TEST_CASE("redlock: a lock is on every node while held, tokens rise across registries, nothing stays",
          "[topology][redlock]") {
    RedlockDeployment d;
    auto r1 = KeyedLockRegistry::from_url(d.url());
    auto r2 = KeyedLockRegistry::from_url(d.url());

    std::uint64_t last = 0;
    int not_rising = 0, taken = 0;
    for (int i = 0; i < 40; ++i) {
        KeyedLockRegistry& mine = i % 2 ? r2 : r1;
        KeyedLockRegistry& other = i % 2 ? r1 : r2;
        Guard g = mine.lock("k");
        if (g.fencing_token() <= last) ++not_rising;
        last = g.fencing_token();
        if (other.try_lock("k").has_value()) ++taken;
        if (i == 0) {
            // Every node answered, so every node has it.
            CHECK(eventually([&] { return d.holding("keylock:k") == 5; }));
            CHECK_FALSE(g.lost());
        }
        g.release();
    }
    CHECK(not_rising == 0);
    CHECK(taken == 0);
    CHECK(eventually([&] { return d.holding("keylock:k") == 0; }));

    // Several keys at once, and the destructor's release.
    {
        std::vector<Guard> held;
        for (int i = 0; i < 50; ++i) held.push_back(r1.lock("many-" + std::to_string(i)));
        for (int i = 0; i < 50; i += 7) {
            CHECK_FALSE(r2.try_lock("many-" + std::to_string(i)).has_value());
            CHECK(eventually([&] { return d.holding("keylock:many-" + std::to_string(i)) == 5; }));
        }
    }
    CHECK(eventually([&] {
        for (int i = 0; i < 50; ++i) {
            if (d.holding("keylock:many-" + std::to_string(i)) != 0) return false;
        }
        return true;
    }));
    CHECK(r2.try_lock("many-0").has_value());
}

TEST_CASE("redlock: a give-up release never overtakes its node's acquire, re-sent after NOSCRIPT",
          "[topology][redlock]") {
    // Two nodes hold the key for someone else, so the round gives up as soon as they answer. The
    // third node's answers come late (through a proxy) and the first is NOSCRIPT: its script
    // cache was flushed and only the release script loaded again. The acquire is re-sent there
    // as EVAL; a release sent when the round gave up would have run before it, and left the
    // lock on that node for the whole lease.
    RedlockDeployment d(3);
    keylock::test::TcpProxy proxy(d.server(2).port());
    const auto at = [](int port) { return "127.0.0.1:" + std::to_string(port); };
    auto r = KeyedLockRegistry::from_url("redlock://" + at(d.server(0).port()) + "," + at(d.server(1).port()) + "," +
                                         at(proxy.port()));
    r.lock("warm-up").release();  // connections up, scripts loaded
    for (std::size_t i : {0u, 1u}) {
        REQUIRE(keylock::test::call(d.server(i).port(), {"SET", "keylock:k", "someone", "PX", "30000"}).text() == "OK");
    }
    const int third = d.server(2).port();
    REQUIRE(keylock::test::call(third, {"SCRIPT", "FLUSH"}).text() == "OK");
    REQUIRE_FALSE(keylock::test::call(third, {"SCRIPT", "LOAD", keylock::redis::scripts::release}).is_error());
    proxy.delay_replies(0, 300ms);  // the third node's command connection
    CHECK_FALSE(r.try_lock("k").has_value());
    std::this_thread::sleep_for(1500ms);  // the late answers, the EVAL, and what follows it
    CHECK_FALSE(d.exists_on(2, "keylock:k"));
}

TEST_CASE("redlock: operators see a lock a majority holds, and can force its release", "[topology][redlock]") {
    RedlockDeployment d;
    auto r = KeyedLockRegistry::from_url(d.url("lease=10s"));
    auto ops = KeyedLockRegistry::from_url(d.url());
    CHECK_FALSE(ops.inspect("k").held);
    Guard g = r.lock("k");
    auto info = ops.inspect("k");
    CHECK(info.held);
    CHECK(info.fencing_token == 0);  // each node counts on its own: the value carries no token
    CHECK(info.ttl > 9s);
    CHECK(info.ttl <= 10s);
    {
        // Two nodes frozen: the other three still make a majority that sees it.
        Frozen frozen(d, {0, 1});
        CHECK(ops.inspect("k").held);
    }
    CHECK(ops.force_release("k"));
    CHECK(d.holding("keylock:k") == 0);
    CHECK_FALSE(ops.inspect("k").held);
    CHECK_FALSE(ops.force_release("k"));
    // The holder finds out at its next renewal (within a third of the lease).
    CHECK(eventually([&] { return g.lost(); }, 6s));
}

TEST_CASE("redlock: two of five nodes frozen under load: locking goes on", "[topology][redlock][faults]") {
    RedlockDeployment d;
    ExclusionChecker checker;
    Load load(Load::Url{d.url("lease=2s&connect_timeout=10s")}, checker);
    REQUIRE(eventually([&] { return load.holds() >= 100; }, 20s));
    // A lock held through the freeze, longer than its lease: the three live nodes renew it.
    auto holder = KeyedLockRegistry::from_url(d.url("lease=2s"));
    Guard long_hold = holder.lock("long");
    {
        Frozen frozen(d, {3, 4});
        const auto start = Clock::now();
        const long at = load.holds();
        const bool went_on = eventually([&] { return load.holds() >= at + 100; }, 20s);
        INFO("100 more holds with 2 of 5 nodes frozen took "
             << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count() << " ms; "
             << load.error_summary());
        CHECK(went_on);
        // A lock is still had at once by a registry that was never there before.
        auto fresh = KeyedLockRegistry::from_url(d.url("lease=2s"));
        const auto t = Clock::now();
        CHECK(fresh.try_lock("fresh").has_value());
        CHECK(Clock::now() - t < 3s);
        std::this_thread::sleep_until(start + 3500ms);
        CHECK_FALSE(long_hold.lost());
        CHECK_FALSE(fresh.try_lock("long").has_value());
    }
    const long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 20s));
    CHECK_FALSE(long_hold.lost());
    std::error_code ec;
    long_hold.release(ec);
    CHECK(ec == std::error_code{});
    load.finish();
    INFO(load.error_summary());
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);
}

TEST_CASE("redlock: three of five nodes frozen: unavailable, what was taken is given back, then it recovers",
          "[topology][redlock][faults]") {
    RedlockDeployment d;
    ExclusionChecker checker;
    Load load(Load::Url{d.url("lease=2s&connect_timeout=2s")}, checker);
    REQUIRE(eventually([&] { return load.holds() >= 100; }, 20s));
    // A long lease, so that only a release (not the lease) can take the probe's locks off the
    // live nodes; a long command_timeout, so that the connections to the frozen nodes stay
    // up and each runs its acquire, then the release queued behind it, when it thaws.
    auto probe = KeyedLockRegistry::from_url(d.url("lease=30s&connect_timeout=1s&command_timeout=20s"));
    {
        Frozen frozen(d, {0, 1, 2});
        // Only two nodes answer: not "held elsewhere" (nullopt) but unavailable.
        auto start = Clock::now();
        auto [code, message] = error_of([&] { (void)probe.try_lock("probe"); });
        INFO(message);
        CHECK(code == errc::unavailable);
        CHECK(Clock::now() - start < 3s);
        // A lock keeps trying until connect_timeout, then gives up the same way.
        start = Clock::now();
        std::tie(code, message) = error_of([&] { (void)probe.lock("probe-2"); });
        CHECK(code == errc::unavailable);
        CHECK(Clock::now() - start < 5s);
        // What the attempts took on the two live nodes was released there.
        CHECK(eventually([&] { return d.holding("keylock:probe", {3, 4}) == 0; }, 5s));
        CHECK(eventually([&] { return d.holding("keylock:probe-2", {3, 4}) == 0; }, 5s));
        std::this_thread::sleep_for(500ms);  // the load meets the same
    }
    // Once the nodes are back (and what their backlog may have taken has run out its lease),
    // locking goes on.
    const long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 20s));
    CHECK(eventually([&] { return try_lock_now(probe, "probe"); }, 10s, 50ms));
    load.finish();
    INFO(load.error_summary());
    CHECK(load.errors(errc::unavailable) > 0);
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);
}

TEST_CASE("redlock: a node killed and restarted empty under load", "[topology][redlock][faults]") {
    RedlockDeployment d;
    ExclusionChecker checker;
    Load load(Load::Url{d.url("lease=2s&connect_timeout=10s")}, checker);
    REQUIRE(eventually([&] { return load.holds() >= 100; }, 20s));
    // A lock held through it all, longer than its lease: the other four keep renewing it.
    auto holder = KeyedLockRegistry::from_url(d.url("lease=2s"));
    Guard long_hold = holder.lock("long");
    d.server(2).kill();
    long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 20s));
    std::this_thread::sleep_for(2500ms);
    d.server(2).restart();
    at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 20s));
    std::this_thread::sleep_for(1s);
    CHECK_FALSE(long_hold.lost());
    CHECK_FALSE(load.registries()[0].try_lock("long").has_value());
    std::error_code ec;
    long_hold.release(ec);
    CHECK(ec == std::error_code{});
    load.finish();
    INFO(load.error_summary());
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);
    // The restarted node takes locks again: once our connection to it is back (after the
    // reconnection back-off), a new acquisition is written there too. (A lock taken while it
    // was unreachable never lands there later: renewals only extend, never re-acquire.)
    CHECK(eventually(
        [&] {
            Guard g = load.registries()[0].lock("after");
            return d.exists_on(2, "keylock:after");
        },
        10s));
}

TEST_CASE("redlock: fencing tokens rise over 200 acquisitions by two registries, while single nodes are frozen",
          "[topology][redlock]") {
    RedlockDeployment d;
    // Each node stays frozen past command_timeout (the connection to it is given up), and a
    // short lease: the backlog a frozen node runs when it wakes may take a lock nobody holds.
    const std::string query = "lease=2s&node_timeout=100ms&command_timeout=300ms";
    auto r1 = KeyedLockRegistry::from_url(d.url(query));
    auto r2 = KeyedLockRegistry::from_url(d.url(query));
    std::uint64_t last = 0;
    int not_rising = 0;
    std::optional<Frozen> frozen;
    // 0-39 all nodes; 40-79 node 0 frozen; 80-119 node 1 frozen (node 0 back, behind); 120-159
    // node 4 frozen; 160-199 all again.
    for (int i = 0; i < 200; ++i) {
        if (i % 40 == 0) {
            frozen.reset();
            if (i == 40) frozen.emplace(d, std::vector<std::size_t>{0});
            if (i == 80) frozen.emplace(d, std::vector<std::size_t>{1});
            if (i == 120) frozen.emplace(d, std::vector<std::size_t>{4});
        }
        Guard g = (i % 2 ? r2 : r1).lock("fenced");
        if (g.fencing_token() <= last) {
            ++not_rising;
            UNSCOPED_INFO("acquisition " << i << ": token " << g.fencing_token() << " after " << last);
        }
        last = g.fencing_token();
        g.release();
        std::this_thread::sleep_for(20ms);  // each phase lasts 0.8 s or more
    }
    frozen.reset();
    CHECK(not_rising == 0);
}

TEST_CASE("redlock: a token stays the largest when the node that issued it is not in the next majority",
          "[topology][redlock]") {
    // Each node has its own counters. Node 0's counter for the key's slot is set far ahead of
    // the others' (a node seeded from a clock that runs ahead, say), and the first acquisition's
    // majority is nodes 0, 1 and 2 (3 and 4 frozen): its token is node 0's. The next majority,
    // without node 0, must still issue a larger one: the first acquisition wrote its token into
    // the counters of its majority before it counted.
    RedlockDeployment d;
    auto r = KeyedLockRegistry::from_url(d.url("lease=2s"));
    r.lock("k").release();  // makes the counters (on node 0 perhaps only after a majority answered)
    const int port0 = d.server(0).port();
    keylock::test::Reply fence_keys;
    REQUIRE(eventually([&] {
        fence_keys = keylock::test::call(port0, {"KEYS", "keylock:fence:*"});
        return fence_keys.elements.size() == 1;
    }));
    const std::string counter = fence_keys.elements[0].str;
    const std::uint64_t ahead = std::stoull(keylock::test::call(port0, {"GET", counter}).str) + 1'000'000'000ULL;
    REQUIRE(keylock::test::call(port0, {"SET", counter, std::to_string(ahead)}).str == "OK");
    std::uint64_t token = 0;
    {
        Frozen frozen(d, {3, 4});
        Guard first = r.lock("k");
        token = first.fencing_token();
        first.release();
    }
    CHECK(token > ahead);  // node 0's
    Frozen frozen(d, {0});
    Guard second = r.lock("k");
    CHECK(second.fencing_token() > token);
}

TEST_CASE("redlock: a majority frozen past the lease: the holder's guard is lost", "[topology][redlock][faults]") {
    RedlockDeployment d;
    auto r = KeyedLockRegistry::from_url(d.url("lease=2s&command_timeout=500ms"));
    Guard g = r.lock("held");
    const std::uint64_t token = g.fencing_token();
    std::this_thread::sleep_for(1s);
    CHECK_FALSE(g.lost());  // renewed by the watchdog
    {
        Frozen frozen(d, {0, 1, 2});
        const auto start = Clock::now();
        CHECK(eventually([&] { return g.lost(); }, 4s));
        CHECK(Clock::now() - start < 3s);  // by the end of its lease (2 s), give or take
        std::error_code ec;
        g.release(ec);
        INFO(ec.message());
        CHECK((ec == errc::not_owner || ec == errc::unavailable));
    }
    // Back: the key is free again (once what the frozen nodes still had has run out), with a
    // larger token.
    auto other = KeyedLockRegistry::from_url(d.url("lease=2s"));
    std::optional<Guard> next;
    CHECK(eventually([&] { return try_lock_now(other, "held", &next); }, 10s, 50ms));
    if (next) CHECK(next->fencing_token() > token);
}
