// SPDX-License-Identifier: BSL-1.0
// redis+sentinel:// against a real Sentinel deployment on loopback: a master, two replicas and
// three sentinels (quorum 2), all started by the test. Failovers are real: the master is killed,
// or the sentinels are asked to fail over, while locks are held and awaited; every hold goes
// through the mutual-exclusion checker.
#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>
#include <keylock/redis.hpp>

#include "eventually.hpp"
#include "exclusion_checker.hpp"
#include "load.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"
#include "topology.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::check_exclusion;
using keylock::test::cli;
using keylock::test::error_of;
using keylock::test::eventually;
using keylock::test::ExclusionChecker;
using keylock::test::Load;
using keylock::test::RedisServer;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using Deployment = keylock::test::SentinelDeployment;

TEST_CASE("sentinel: the master is found through the sentinels, past one that is down", "[topology][sentinel]") {
    Deployment d;
    int dead = 0;
    {
        RedisServer gone;
        dead = gone.port();
    }
    // The first sentinel listed is down: the next one answers.
    const std::string u = "redis+sentinel://127.0.0.1:" + std::to_string(dead) + "," + d.url().substr(17);
    auto r = KeyedLockRegistry::from_url(u);
    CHECK(r.describe() == u);
    std::uint64_t last = 0;
    for (int i = 0; i < 3; ++i) {
        Guard g = r.lock("k");
        CHECK(g.fencing_token() > last);
        last = g.fencing_token();
    }
    // The lock is on the master the sentinels name.
    Guard g = r.lock("held");
    CHECK(d.master().command("EXISTS keylock:held") == ":1");

    // The same in code.
    keylock::RedisOptions options;
    options.sentinels = {{"127.0.0.1", static_cast<std::uint16_t>(dead)},
                         {"127.0.0.1", static_cast<std::uint16_t>(d.sentinel(1).port())}};
    options.master_name = "mymaster";
    auto in_code = keylock::redis_registry(options);
    CHECK_FALSE(in_code.try_lock("held").has_value());
    CHECK(in_code.try_lock("other").has_value());
}

TEST_CASE("sentinel: an unknown master or no sentinel is unavailable, naming each sentinel's reason",
          "[topology][sentinel]") {
    Deployment d;
    SECTION("a master name the sentinels do not know") {
        std::string u = d.url("connect_timeout=1s");
        u.replace(u.find("/mymaster"), 9, "/nobody");
        auto r = KeyedLockRegistry::from_url(u);
        const auto start = Clock::now();
        const auto [code, message] = error_of([&] { (void)r.lock("k"); });
        CHECK(code == errc::unavailable);
        CHECK_THAT(message, Catch::Contains("no sentinel gave the address of master 'nobody'"));
        CHECK_THAT(message, Catch::Contains("does not know master 'nobody'"));
        CHECK(Clock::now() - start < 5s);
    }
    SECTION("no sentinel listening") {
        int dead = 0;
        {
            RedisServer gone;
            dead = gone.port();
        }
        auto r = KeyedLockRegistry::from_url("redis+sentinel://127.0.0.1:" + std::to_string(dead) +
                                             "/mymaster?connect_timeout=500ms");
        const auto [code, message] = error_of([&] { (void)r.try_lock("k"); });
        CHECK(code == errc::unavailable);
        CHECK_THAT(message, Catch::Contains("Connection refused"));
    }
}

TEST_CASE("sentinel: wait_replicas refuses an acquisition the replicas do not confirm, and releases it",
          "[topology][sentinel]") {
    SECTION("a master without replicas (redis://)") {
        RedisServer alone;
        auto r = KeyedLockRegistry::from_url(keylock::test::url(alone, "wait_replicas=1&wait_timeout=200ms"));
        const auto start = Clock::now();
        const auto [code, message] = error_of([&] { (void)r.lock("k"); });
        CHECK(code == errc::unavailable);
        CHECK_THAT(message, Catch::Contains("0 of 1 replicas acknowledged it within wait_timeout"));
        CHECK(Clock::now() - start < 3s);
        CHECK(eventually([&] { return alone.command("EXISTS keylock:k") == ":0"; }));  // released
    }
    SECTION("behind sentinels, with both replicas frozen") {
        Deployment d;
        auto r = KeyedLockRegistry::from_url(d.url("wait_replicas=1&wait_timeout=200ms"));
        {
            Guard g = r.lock("k");  // replicated: fine
            CHECK(g.fencing_token() > 0);
        }
        const int port = d.master_port();
        // Freeze the replicas (not the master): WAIT gets no acknowledgement.
        std::vector<int> frozen;
        const std::string info = cli(port, "INFO replication");
        for (int i = 0; i < 2; ++i) {
            const std::string key = "slave" + std::to_string(i) + ":ip=127.0.0.1,port=";
            const auto at = info.find(key);
            REQUIRE(at != std::string::npos);
            frozen.push_back(std::stoi(info.substr(at + key.size())));
        }
        for (int p : frozen) d.server_on(p)->pause();
        const auto [code, message] = error_of([&] { (void)r.lock("k"); });
        for (int p : frozen) d.server_on(p)->resume();
        CHECK(code == errc::unavailable);
        CHECK_THAT(message, Catch::Contains("replicas acknowledged it within wait_timeout"));
        // The release is sent before the error is reported, not waited for.
        CHECK(eventually([&] { return d.server_on(port)->command("EXISTS keylock:k") == ":0"; }));
        CHECK(eventually([&] { return r.try_lock("k").has_value(); }));
    }
}

TEST_CASE("sentinel: the master killed while locks are held and awaited, with wait_replicas",
          "[topology][sentinel][faults]") {
    Deployment d;
    const int old_port = d.master_port();
    ExclusionChecker checker;
    // lease 5 s: renewals every 1.7 s; the failover (1 s to notice, then the election) fits.
    Load load(Load::Url{d.url("lease=5s&wait_replicas=1&wait_timeout=300ms&connect_timeout=15s")}, checker);
    REQUIRE(eventually([&] { return load.holds() >= 100; }, 20s));
    d.master().kill();
    REQUIRE(d.failed_over_from(old_port));
    const long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 30s));
    load.finish();
    // No two holds that were kept overlap, and tokens rose: WAIT made every acquisition reach
    // the replica the sentinels promote (the one with the most data).
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);
}

TEST_CASE("sentinel: a failover the sentinels are asked for moves every registry to the new master",
          "[topology][sentinel][faults]") {
    Deployment d;
    const int old_port = d.master_port();
    ExclusionChecker checker;
    // Every replica must confirm: while the sentinels promote one, the old master still takes
    // writes, which the other replica (still following it) would confirm and then lose.
    Load load(Load::Url{d.url("lease=5s&wait_replicas=2&wait_timeout=300ms&connect_timeout=15s")}, checker);
    REQUIRE(eventually([&] { return load.holds() >= 100; }, 20s));
    // The old master stays up and becomes a replica: READONLY or +switch-master moves us on.
    CHECK(cli(d.sentinel(0).port(), "SENTINEL FAILOVER mymaster").rfind("OK", 0) == 0);
    REQUIRE(d.failed_over_from(old_port));
    const long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + 100; }, 30s));
    load.finish();
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);
    // The locks are on the new master now.
    auto r = KeyedLockRegistry::from_url(d.url());
    Guard g = r.lock("after");
    CHECK(d.server_on(d.master_port())->command("EXISTS keylock:after") == ":1");
}
