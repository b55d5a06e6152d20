// SPDX-License-Identifier: BSL-1.0
// redis+sentinel:// against a real Sentinel deployment on loopback: a master, two replicas and
// three sentinels (quorum 2), all started by the test. Failovers are real: the master is killed,
// or the sentinels are asked to fail over, while locks are held and awaited; every hold goes
// through the mutual-exclusion checker.
#include <catch2/catch.hpp>

#include <memory>
#include <optional>
#include <sstream>
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

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::check_exclusion;
using keylock::test::cli;
using keylock::test::error_of;
using keylock::test::eventually;
using keylock::test::ExclusionChecker;
using keylock::test::field;
using keylock::test::Load;
using keylock::test::RedisServer;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// A master, two replicas and three sentinels watching it as "mymaster" (quorum 2). The
/// constructor returns once the sentinels know the replicas and each other.
class Deployment {
public:
    Deployment() {
        // Replicas sync at once (not after the default 5 s of diskless-sync delay).
        master_ = std::make_unique<RedisServer>(std::vector<std::string>{"--repl-diskless-sync-delay", "0"});
        for (int i = 0; i < 2; ++i) {
            replicas_.push_back(std::make_unique<RedisServer>(
                std::vector<std::string>{"--replicaof", "127.0.0.1", std::to_string(master_->port())}));
        }
        for (int i = 0; i < 3; ++i) {
            RedisServer::Sentinel s;
            s.master_port = master_->port();
            sentinels_.push_back(std::make_unique<RedisServer>(s));
        }
        const bool ready = eventually(
            [&] {
                const std::string replication = cli(master_->port(), "INFO replication");
                if (replication.find("slave1:") == std::string::npos) return false;
                for (const char* replica : {"slave0:", "slave1:"}) {
                    const auto at = replication.find(replica);
                    if (replication.find("state=online", at) != replication.find("state=", at)) return false;
                }
                for (auto& s : sentinels_) {
                    const std::string m = cli(s->port(), "SENTINEL MASTER mymaster");
                    if (field(m, "num-slaves") != "2" || field(m, "num-other-sentinels") != "2") return false;
                }
                return true;
            },
            30s);
        if (!ready) {
            throw std::runtime_error("the replicas did not sync, or the sentinels did not find them and each other, "
                                     "in 30 s");
        }
    }

    /// redis+sentinel://127.0.0.1:S1,…/mymaster?query
    std::string url(const std::string& query = "") const {
        std::string u = "redis+sentinel://";
        for (std::size_t i = 0; i < sentinels_.size(); ++i) {
            u += (i ? ",127.0.0.1:" : "127.0.0.1:") + std::to_string(sentinels_[i]->port());
        }
        return u + "/mymaster" + (query.empty() ? "" : "?" + query);
    }

    /// The port the sentinels name as the master's now.
    int master_port() const {
        const std::string m = cli(sentinels_[0]->port(), "SENTINEL get-master-addr-by-name mymaster");
        std::istringstream in(m);
        std::string host, port;
        in >> host >> port;
        return port.empty() ? 0 : std::stoi(port);
    }

    RedisServer& master() { return *master_; }
    RedisServer& sentinel(std::size_t i) { return *sentinels_[i]; }
    /// The server on `port` (master or replica).
    RedisServer* server_on(int port) {
        if (master_->port() == port) return master_.get();
        for (auto& r : replicas_) {
            if (r->port() == port) return r.get();
        }
        return nullptr;
    }

    /// Waits until the sentinels name a master other than the one on `old_port`, and it says
    /// it is a master.
    bool failed_over_from(int old_port, std::chrono::seconds limit = 30s) {
        return eventually(
            [&] {
                const int now = master_port();
                RedisServer* s = server_on(now);
                return now != 0 && now != old_port && s != nullptr && cli(now, "ROLE").rfind("master", 0) == 0;
            },
            limit);
    }

private:
    std::unique_ptr<RedisServer> master_;
    std::vector<std::unique_ptr<RedisServer>> replicas_;
    std::vector<std::unique_ptr<RedisServer>> sentinels_;
};

}  // namespace

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
