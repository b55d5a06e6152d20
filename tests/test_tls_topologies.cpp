// SPDX-License-Identifier: BSL-1.0
// TLS on every topology, against real servers on loopback that share one throwaway CA (made once
// per test binary, shared_certificates()): rediss+sentinel:// (a TLS master and replica, TLS
// sentinels that want a password of their own), rediss+cluster:// (tls-cluster, one seed node
// listed: the others are learnt from CLUSTER SLOTS and reached over TLS too) and
// rediss+redlock:// (three TLS masters). Each deployment is started once per TEST_CASE (no
// SECTIONs, which would start it again for each), counts exactly under its locks, and refuses a
// CA that did not sign its servers with the TLS error, quickly.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>
#include <keylock/redis.hpp>

#include "eventually.hpp"
#include "load.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"
#include "topology.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::error_of;
using keylock::test::RedisServer;
using keylock::test::shared_certificates;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

RedisServer::Tls shared_tls() {
    RedisServer::Tls tls;
    tls.certificates = shared_certificates();
    return tls;
}

std::string ca_file() { return shared_certificates() + "/tls/ca.crt"; }
std::string other_ca_file() { return shared_certificates() + "/tls/other-ca.crt"; }

/// Threads of two registries on `url` each add 1 to a plain (unsynchronized) counter per key, a
/// number of times, under the key's lock; the counters must come out exact, and each key's fencing
/// tokens increase. `keys` spread the work (over a cluster's masters).
void exact_count(const std::string& url, const std::vector<std::string>& keys) {
    constexpr int threads = 4;
    constexpr int rounds = 15;
    std::vector<long> counters(keys.size(), 0);
    std::vector<std::uint64_t> last_token(keys.size(), 0);
    std::vector<KeyedLockRegistry> registries = {KeyedLockRegistry::from_url(url), KeyedLockRegistry::from_url(url)};
    std::atomic<int> out_of_order{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            KeyedLockRegistry& r = registries[static_cast<std::size_t>(t % 2)];
            for (int i = 0; i < rounds; ++i) {
                for (std::size_t k = 0; k < keys.size(); ++k) {
                    Guard g = r.lock(keys[k]);
                    if (g.fencing_token() <= last_token[k]) ++out_of_order;
                    last_token[k] = g.fencing_token();
                    const long seen = counters[k];
                    std::this_thread::yield();  // widen the window a missing exclusion would fall into
                    counters[k] = seen + 1;
                }
            }
        });
    }
    for (auto& w : workers) w.join();
    for (std::size_t k = 0; k < keys.size(); ++k) {
        INFO("key " << keys[k]);
        CHECK(counters[k] == threads * rounds);
    }
    CHECK(out_of_order == 0);
}

/// A registry on `url` trusting a CA that did not sign the servers: lock() fails once
/// connect_timeout (2 s here) has passed, as for any server it cannot reach (measured: 2.0 s),
/// with the TLS error, not a hang and not a bare "no connection ... within connect_timeout".
void refused_for_its_ca(const std::string& url) {
    auto r = KeyedLockRegistry::from_url(url);
    const auto start = Clock::now();
    const auto [code, message] = error_of([&] { (void)r.lock("k"); });
    INFO(message);
    CHECK(code == errc::unavailable);
    CHECK_THAT(message, Catch::Contains("TLS handshake with 127.0.0.1:") &&
                            Catch::Contains("certificate verify failed") && !Catch::Contains("within connect_timeout"));
    CHECK(Clock::now() - start < 5s);
}

}  // namespace

TEST_CASE("rediss+sentinel: TLS to the sentinels and the master, the sentinels with a password of their own",
          "[topology][sentinel][tls]") {
    const std::string sentinel_password = "Sentinel-pw-7Qx";
    keylock::test::SentinelDeployment d(1, 2, shared_tls(), sentinel_password);
    const std::string quick = "connect_timeout=2s&lease=5s&ca_file=" + ca_file();
    const std::string u = d.tls_url(quick + "&sentinel_password=" + sentinel_password);

    {  // exact counts; describe() hides the sentinels' password
        auto r = KeyedLockRegistry::from_url(u);
        CHECK_THAT(r.describe(), Catch::StartsWith("rediss+sentinel://127.0.0.1:") &&
                                     Catch::Contains("sentinel_password=***") && !Catch::Contains(sentinel_password));
        exact_count(u, {"counted"});
        Guard g = r.lock("held");
        CHECK(d.master().command("EXISTS keylock:held") == ":1");  // the master the sentinels name

        keylock::RedisOptions o;  // the same in code
        o.sentinels = {{"127.0.0.1", static_cast<std::uint16_t>(d.sentinel(1).tls_port())}};
        o.master_name = "mymaster";
        o.tls = true;
        o.ca_file = ca_file();
        o.sentinel_password = sentinel_password;
        auto in_code = keylock::redis_registry(o);
        CHECK_FALSE(in_code.try_lock("held").has_value());
        CHECK(in_code.try_lock("other").has_value());
        CHECK_THAT(in_code.describe(), !Catch::Contains(sentinel_password));
    }
    {  // an ACL user of the sentinels: sentinel_user and sentinel_password
        for (std::size_t i = 0; i < 2; ++i) {
            REQUIRE(keylock::test::cli(d.sentinel(i).port(), "-a " + sentinel_password +
                                                                 " --no-auth-warning ACL SETUSER watcher on "
                                                                 "'>Watcher-pw-5Tb' +@all") == "OK\n");
        }
        auto r =
            KeyedLockRegistry::from_url(d.tls_url(quick + "&sentinel_user=watcher&sentinel_password=Watcher-pw-5Tb"));
        CHECK(r.try_lock("as-watcher").has_value());
        CHECK_THAT(r.describe(), Catch::Contains("sentinel_user=watcher&sentinel_password=***"));
        auto wrong =
            KeyedLockRegistry::from_url(d.tls_url(quick + "&sentinel_user=nobody&sentinel_password=Watcher-pw-5Tb"));
        const auto [code, message] = error_of([&] { (void)wrong.lock("k"); });
        CHECK(code == errc::auth_failed);
        CHECK_THAT(message, Catch::Contains("refused AUTH (WRONGPASS") && !Catch::Contains("Watcher-pw-5Tb") &&
                                !Catch::Contains("nobody"));
    }
    {  // a failover: +switch-master heard over TLS from an authenticated sentinel, the new master reached over TLS
        auto r = KeyedLockRegistry::from_url(u);
        { Guard before = r.lock("before"); }
        const int old_master = d.master_port();
        REQUIRE(old_master == d.master().tls_port());  // the sentinels name TLS ports
        REQUIRE(d.ask_failover() == "OK\n");
        REQUIRE(keylock::test::eventually(
            [&] {
                const int now = d.master_port();
                return now != 0 && now != old_master;
            },
            30s));
        RedisServer* promoted = d.server_on(d.master_port());
        REQUIRE(promoted != nullptr);
        // Once the old master follows the new one (a lock taken on it before would be lost: see
        // failure-modes.md, a failover that keeps the old master alive).
        REQUIRE(keylock::test::eventually(
            [&] { return keylock::test::cli(d.master().port(), "ROLE").rfind("slave", 0) == 0; }, 30s));
        const auto start = Clock::now();
        std::optional<Guard> g;
        while (!g && Clock::now() - start < 20s) {
            try {
                g = r.lock("after");  // the registry moves to the new master
            } catch (const keylock::Error& e) {
                CHECK(e.code() == errc::unavailable);  // during the switch
            }
        }
        REQUIRE(g.has_value());
        CHECK(keylock::test::eventually([&] { return promoted->command("EXISTS keylock:after") == ":1"; }, 5s));
    }
    {  // a wrong or missing sentinel password is auth_failed, naming each sentinel, showing no secret
        for (const std::string& wrong : {d.tls_url(quick + "&sentinel_password=Wrong-pw-3Zk"), d.tls_url(quick)}) {
            INFO(wrong);
            auto r = KeyedLockRegistry::from_url(wrong);
            const auto start = Clock::now();
            const auto [code, message] = error_of([&] { (void)r.lock("k"); });
            INFO(message);
            CHECK(code == errc::auth_failed);
            CHECK_THAT(message, Catch::Contains("sentinel 127.0.0.1:" + std::to_string(d.sentinel(0).tls_port())) &&
                                    Catch::Contains("sentinel 127.0.0.1:" + std::to_string(d.sentinel(1).tls_port())));
            CHECK_THAT(message, !Catch::Contains("Wrong-pw-3Zk") && !Catch::Contains(sentinel_password));
            CHECK(Clock::now() - start < 5s);
        }
    }
    {  // a CA that did not sign the sentinels is refused with the TLS error
        std::string wrong = u;
        wrong.replace(wrong.find(ca_file()), ca_file().size(), other_ca_file());
        refused_for_its_ca(wrong);
    }
}

TEST_CASE("rediss+cluster: every node over TLS, those learnt from CLUSTER SLOTS too", "[topology][cluster][tls]") {
    keylock::test::ClusterDeployment d(3, 0, {}, 2000ms, shared_tls());
    // One seed: the other masters are learnt from CLUSTER SLOTS, and named by their TLS ports.
    const std::string seed = "rediss+cluster://127.0.0.1:" + std::to_string(d.node(0).tls_port());
    const std::string quick = "connect_timeout=2s&lease=5s&ca_file=";

    {  // exact counts on keys of every master
        std::vector<std::string> keys;
        for (int i = 0; i < 9; ++i) keys.push_back("counted-" + std::to_string(i));
        std::set<int> masters;
        for (const auto& k : keys) masters.insert(d.node_port_for_key("keylock:" + k));
        REQUIRE(masters.size() == 3);
        exact_count(seed + "?" + quick + ca_file(), keys);
        CHECK(d.tls_url().starts_with("rediss+cluster://"));
        for (int port : masters) CHECK(keylock::test::ClusterDeployment::count_keys_on(port, "keylock:fence:*") > 0);
    }
    {  // a slot moved: its master's MOVED names a TLS port, followed over TLS
        auto r = KeyedLockRegistry::from_url(seed + "?" + quick + ca_file());
        { Guard warm = r.lock("warm"); }  // the slot map is known from now on
        const std::string key = "moved-key";
        const int slot = d.key_slot("keylock:" + key);
        const int from = d.port_for_slot(slot);
        int to = 0;
        for (int port : d.master_ports()) {
            if (port != from) to = port;
        }
        // No key in it yet: nothing for MIGRATE (which the harness sends to plain ports) to carry.
        REQUIRE(keylock::test::call(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}).integer == 0);
        d.migrate_slot(slot, from, to);
        Guard g = r.lock(key);
        CHECK(keylock::test::ClusterDeployment::count_keys_on(to, "keylock:" + key) == 1);
        CHECK(keylock::test::ClusterDeployment::count_keys_on(from, "keylock:" + key) == 0);
    }
    {  // a CA that did not sign the nodes is refused with the TLS error
        refused_for_its_ca(seed + "?" + quick + other_ca_file());
    }
}

TEST_CASE("rediss+redlock: every node of the quorum over TLS", "[topology][redlock][tls]") {
    keylock::test::RedlockDeployment d(3, {}, shared_tls());
    const std::string quick = "connect_timeout=2s&lease=5s&ca_file=";

    {  // exact counts; every node holds the lock
        exact_count(d.tls_url(quick + ca_file()), {"counted"});
        auto r = KeyedLockRegistry::from_url(d.tls_url(quick + ca_file()));
        Guard g = r.lock("held");
        // A majority's answers grant it; the third node's may come a moment later.
        CHECK(keylock::test::eventually([&] { return d.holding("keylock:held") == 3; }));
        CHECK(r.describe().starts_with("rediss+redlock://"));
    }
    {  // a CA that did not sign the nodes is refused with the TLS error
        refused_for_its_ca(d.tls_url(quick + other_ca_file()));
    }
    {  // nodes named by host name: each certificate is checked for its name
        std::string u = "rediss+redlock://";
        for (std::size_t i = 0; i < d.size(); ++i) {
            u += (i > 0 ? ",localhost:" : "localhost:") + std::to_string(d.server(i).tls_port());
        }
        exact_count(u + "?" + quick + ca_file(), {"by-name"});
    }
}

TEST_CASE("rediss+redlock: a node whose certificate is for another host name is refused", "[topology][redlock][tls]") {
    // Signed by the trusted CA, for "wrong.example" only: the chain is good, the name is not.
    RedisServer::Tls tls = shared_tls();
    tls.server_cert = RedisServer::Tls::ServerCert::wrong_name;
    keylock::test::RedlockDeployment d(1, {}, tls);
    for (const std::string host : {"127.0.0.1", "localhost"}) {
        const std::string u = "rediss+redlock://" + host + ":" + std::to_string(d.server(0).tls_port()) +
                              "?connect_timeout=2s&lease=5s&ca_file=" + ca_file();
        auto r = KeyedLockRegistry::from_url(u);
        const auto [code, message] = error_of([&] { (void)r.lock("k"); });
        INFO(message);
        CHECK(code == errc::unavailable);
        CHECK_THAT(message,
                   Catch::Contains("TLS handshake with " + host + ":") && Catch::Contains("certificate verify failed"));
        // With verify=false (tests only), the same node is used.
        auto unverified = KeyedLockRegistry::from_url(u + "&verify=false");
        CHECK(unverified.try_lock("k").has_value());
    }
}
