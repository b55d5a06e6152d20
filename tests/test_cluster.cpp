// SPDX-License-Identifier: BSL-1.0
// redis+cluster:// against a real Redis Cluster on loopback (tests/topology.hpp): 3 masters with
// one replica each, started by the test. Keys land on every master; slots are migrated, masters
// failed over and killed while locks are held and awaited, every hold going through the
// mutual-exclusion checker; the server's own error counters (INFO errorstats) show that the
// client was really redirected (ASK, MOVED).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "eventually.hpp"
#include "exclusion_checker.hpp"
#include "load.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"
#include "topology.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::call;
using keylock::test::check_exclusion;
using keylock::test::ClusterDeployment;
using keylock::test::error_of;
using keylock::test::eventually;
using keylock::test::ExclusionChecker;
using keylock::test::info_field;
using keylock::test::Load;
using keylock::test::RedisServer;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Step = ClusterDeployment::MigrationStep;

namespace {

std::string lock_key(const std::string& key) { return "keylock:" + key; }

/// How many error replies starting with `prefix` (e.g. "ASK", "MOVED", "TRYAGAIN") the node on
/// `port` has sent since it started (INFO errorstats).
long errorstat(int port, const std::string& prefix) {
    const std::string value = info_field(call(port, {"INFO", "errorstats"}).str, "errorstat_" + prefix);
    return value.rfind("count=", 0) == 0 ? std::stol(value.substr(6)) : 0;
}

/// The index of the first of the load's keys whose lock lives on the master on `port`, or -1.
int load_key_on(const ClusterDeployment& d, const Load& load, int port) {
    std::vector<std::string> keys;
    for (int i = 0; i < load.keys(); ++i) keys.push_back(lock_key(load.key(i)));
    const std::vector<int> slots = d.key_slots(keys);
    const std::vector<int> owners = d.slot_map();
    for (int i = 0; i < load.keys(); ++i) {
        if (owners[static_cast<std::size_t>(slots[static_cast<std::size_t>(i)])] == port) return i;
    }
    return -1;
}

/// A key `prefix`N whose lock lives on the master on `port`.
std::string key_on(const ClusterDeployment& d, int port, const std::string& prefix) {
    std::vector<std::string> keys;
    for (int i = 0; i < 500; ++i) keys.push_back(lock_key(prefix + std::to_string(i)));
    const std::vector<int> slots = d.key_slots(keys);
    const std::vector<int> owners = d.slot_map();
    for (int i = 0; i < 500; ++i) {
        if (owners[static_cast<std::size_t>(slots[static_cast<std::size_t>(i)])] == port) {
            return prefix + std::to_string(i);
        }
    }
    throw std::runtime_error("no key " + prefix + "N of 500 lives on port " + std::to_string(port));
}

/// How a lock went from one registry to a waiter in another.
struct Handoff {
    bool acquired = false;              ///< the waiter got the lock (within 20 s)
    bool before_release = false;        ///< … while the holder still held it (a violation)
    std::chrono::milliseconds delay{};  ///< from the holder's release to the waiter's lock
    long shard_channels = 0;            ///< shard channels on the masters while the waiter waited
    std::string error;                  ///< what the waiter threw, if anything
};

/// `holder` locks `key`; `waiter` waits for it on another thread; the holder releases after
/// 500 ms (the waiter is asleep by then).
Handoff handoff(const ClusterDeployment& d, KeyedLockRegistry& holder, KeyedLockRegistry& waiter,
                const std::string& key) {
    Handoff h;
    Guard g = holder.lock(key);
    std::atomic<std::int64_t> got{0};
    std::string error;  // written by the waiter, read after join()
    std::thread t([&] {
        try {
            if (auto w = waiter.try_lock_for(key, 20s)) got = ExclusionChecker::now_ns();
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    std::this_thread::sleep_for(500ms);
    for (int port : d.master_ports()) {
        h.shard_channels += static_cast<long>(call(port, {"PUBSUB", "SHARDCHANNELS"}).elements.size());
    }
    const std::int64_t released = ExclusionChecker::now_ns();
    g.release();
    t.join();
    h.error = error;
    h.acquired = got.load() != 0;
    h.before_release = h.acquired && got.load() < released;
    h.delay = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::nanoseconds(got.load() - released));
    return h;
}

void check_prompt_handoff(const ClusterDeployment& d, KeyedLockRegistry& holder, KeyedLockRegistry& waiter,
                          const std::string& key) {
    const Handoff h = handoff(d, holder, waiter, key);
    INFO("key " << key << " on port " << d.node_port_for_key(lock_key(key)) << ": waiter error '" << h.error
                << "', hand-off after " << h.delay.count() << " ms");
    CHECK(h.error.empty());
    REQUIRE(h.acquired);
    CHECK_FALSE(h.before_release);
    // Woken by the release notification: the lease is 30 s, and no polling is that fast.
    CHECK(h.delay < 1s);
    // The waiter listened on a sharded channel (SSUBSCRIBE).
    CHECK(h.shard_channels > 0);
}

}  // namespace

TEST_CASE("cluster: locks on 2000 keys over every master, tokens rising per key, nothing left behind",
          "[topology][cluster]") {
    ClusterDeployment d;
    const std::vector<int> masters = d.master_ports();
    REQUIRE(masters.size() == 3);
    // A seed that is down, listed first: the next one answers.
    int dead = 0;
    {
        RedisServer gone;
        dead = gone.port();
    }
    std::string with_dead_seed = d.url();
    with_dead_seed.insert(std::string("redis+cluster://").size(), "127.0.0.1:" + std::to_string(dead) + ",");
    auto r1 = KeyedLockRegistry::from_url(d.url());
    auto r2 = KeyedLockRegistry::from_url(with_dead_seed);

    std::vector<std::string> keys;
    std::vector<std::string> lock_keys;
    for (int i = 0; i < 2000; ++i) {
        keys.push_back("key-" + std::to_string(i));
        lock_keys.push_back(lock_key(keys.back()));
    }
    const std::vector<int> slots = d.key_slots(lock_keys);
    const std::vector<int> owners = d.slot_map();
    std::map<int, int> per_master;
    for (int slot : slots) ++per_master[owners[static_cast<std::size_t>(slot)]];
    for (int m : masters) CHECK(per_master[m] > 500);

    int not_acquired = 0, not_rising = 0, not_excluded = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        Guard g1 = r1.lock(keys[i]);
        const std::uint64_t t1 = g1.fencing_token();
        if (i % 20 == 0 && r2.try_lock(keys[i]).has_value()) ++not_excluded;
        g1.release();
        auto g2 = r2.try_lock(keys[i]);
        if (!g2) {
            ++not_acquired;
            continue;
        }
        if (g2->fencing_token() <= t1) ++not_rising;
        g2->release();
    }
    CHECK(not_acquired == 0);  // a try_lock right after the release finds the key free
    CHECK(not_rising == 0);    // each key's second token is larger than its first
    CHECK(not_excluded == 0);  // no try_lock got a key the other registry held

    {
        // 300 locks held at once: on every master, each on the master of its slot.
        std::vector<Guard> held;
        for (int i = 0; i < 300; ++i) held.push_back(r1.lock("held-" + std::to_string(i)));
        CHECK(d.count_keys("keylock:held-*") == 300);
        for (int m : masters) CHECK(ClusterDeployment::count_keys_on(m, "keylock:held-*") > 0);
        std::vector<std::string> held_keys;
        for (int i = 0; i < 300; ++i) held_keys.push_back(lock_key("held-" + std::to_string(i)));
        const std::vector<int> held_slots = d.key_slots(held_keys);
        int misplaced = 0, taken = 0;
        for (std::size_t i = 0; i < held_keys.size(); ++i) {
            const int owner = owners[static_cast<std::size_t>(held_slots[i])];
            if (call(owner, {"EXISTS", held_keys[i]}).integer != 1) ++misplaced;
            if (i % 10 == 0 && r2.try_lock("held-" + std::to_string(i)).has_value()) ++taken;
        }
        CHECK(misplaced == 0);
        CHECK(taken == 0);
    }  // released by the guards' destructors
    CHECK(eventually([&] { return d.count_keys("keylock:*") == d.count_keys("keylock:fence:{*}"); }));
    // What stays are the fencing counters, one per slot used, next to the lock keys.
    const long counters = d.count_keys("keylock:fence:{*}");
    CHECK(counters > 0);
    CHECK(counters <= 16384);
    CHECK(d.count_keys("*") == counters);
}

TEST_CASE("cluster: operators see and force locks on every master", "[topology][cluster]") {
    ClusterDeployment d;
    auto r = KeyedLockRegistry::from_url(d.url("lease=10s"));
    auto ops = KeyedLockRegistry::from_url(d.url());
    for (int port : d.master_ports()) {
        const std::string key = key_on(d, port, "ops-" + std::to_string(port) + "-");
        INFO("key " << key << " on the master on port " << port);
        CHECK_FALSE(ops.inspect(key).held);
        Guard g = r.lock(key);
        const auto info = ops.inspect(key);
        CHECK(info.held);
        CHECK(info.fencing_token == g.fencing_token());
        CHECK(info.ttl > 9s);
        CHECK(ops.force_release(key));
        CHECK(call(port, {"EXISTS", lock_key(key)}).integer == 0);
        CHECK_FALSE(ops.force_release(key));
        CHECK(eventually([&] { return g.lost(); }, 6s));  // found at its next renewal
    }
}

TEST_CASE("cluster: lock_all takes each run of keys of one slot in one script, the slots in order",
          "[topology][cluster][lock_all]") {
    ClusterDeployment d;
    auto r = KeyedLockRegistry::from_url(d.url());
    const std::vector<int> slots = d.key_slots({lock_key("{p}a"), lock_key("{q}a")});
    REQUIRE(slots[0] != slots[1]);
    const std::vector<int> owners = d.slot_map();
    const int p_port = owners[static_cast<std::size_t>(slots[0])], q_port = owners[static_cast<std::size_t>(slots[1])];
    r.lock_all({"{p}w1", "{p}w2"}).release();  // the script loaded where "{p}" lives
    r.lock_all({"{q}w1", "{q}w2"}).release();
    auto scripts_run = [](int port) {
        long n = 0;
        for (const char* command : {"cmdstat_evalsha", "cmdstat_eval"}) {
            const std::string stat = info_field(call(port, {"INFO", "commandstats"}).str, command);
            if (stat.rfind("calls=", 0) == 0) n += std::stol(stat.substr(6));
        }
        return n;
    };
    for (int port : d.master_ports()) REQUIRE(call(port, {"CONFIG", "RESETSTAT"}).str == "OK");
    keylock::MultiGuard all = r.lock_all({"{q}d", "{p}b", "{q}c", "{p}a", "{p}e"});
    long total = 0;
    for (int port : d.master_ports()) total += scripts_run(port);
    CHECK(total == 2);  // "{p}a", "{p}b", "{p}e", then "{q}c", "{q}d": two runs, two scripts
    auto owner = [&](const std::string& key, int port) {
        const std::string value = call(port, {"GET", lock_key(key)}).str;
        CHECK(value.rfind(std::to_string(all.fencing_token(key)) + ":", 0) == 0);
        return value.substr(value.find(':') + 1);
    };
    CHECK(owner("{p}a", p_port) == owner("{p}e", p_port));
    CHECK(owner("{q}c", q_port) == owner("{q}d", q_port));
    CHECK(owner("{p}a", p_port) != owner("{q}c", q_port));
    CHECK(all.fencing_token("{p}a") < all.fencing_token("{p}b"));  // one counter per slot
    CHECK(all.fencing_token("{p}b") < all.fencing_token("{p}e"));
    CHECK(all.fencing_token("{q}c") < all.fencing_token("{q}d"));
    all.release();
    CHECK(call(p_port, {"EXISTS", lock_key("{p}a"), lock_key("{p}b"), lock_key("{p}e")}).integer == 0);
    CHECK(call(q_port, {"EXISTS", lock_key("{q}c"), lock_key("{q}d")}).integer == 0);
}

TEST_CASE("cluster: one master without replicas is a cluster too", "[topology][cluster]") {
    ClusterDeployment d(1, 0);
    const int port = d.node(0).port();
    auto r1 = KeyedLockRegistry::from_url(d.url());
    auto r2 = KeyedLockRegistry::from_url(d.url("lease=5s"));
    std::uint64_t last = 0;
    for (int i = 0; i < 10; ++i) {
        Guard g = (i % 2 ? r2 : r1).lock("k");
        CHECK(g.fencing_token() > last);
        last = g.fencing_token();
    }
    {
        Guard g = r1.lock("held");
        CHECK(call(port, {"EXISTS", "keylock:held"}).integer == 1);
        CHECK_FALSE(r2.try_lock("held").has_value());
    }
    CHECK(eventually([&] { return d.count_keys("keylock:*") == d.count_keys("keylock:fence:{*}"); }));
    CHECK(r2.try_lock("held").has_value());
}

TEST_CASE("cluster: a slot migrated under load: ASK while half-moved, MOVED after, the locks follow",
          "[topology][cluster][faults]") {
    ClusterDeployment d;
    const std::vector<int> masters = d.master_ports();
    ExclusionChecker checker;
    Load load(Load::Url{d.url("lease=5s&connect_timeout=10s")}, checker, 3, 4, 12, "slot-");
    const std::string moving = lock_key(load.key(0));
    const int slot = d.key_slot(moving);
    const int from = d.node_port_for_key(moving);
    const int to = from == masters[0] ? masters[1] : masters[0];
    REQUIRE(eventually([&] { return load.holds_of(0) >= 20 && load.holds() >= 200; }, 20s));

    const long ask_before = errorstat(from, "ASK");
    const long moved_before = errorstat(from, "MOVED");
    long asked = 0;
    long during = 0;
    d.migrate_slot(slot, from, to, [&](Step step) {
        if (step != Step::half_moved) return;
        // Our own probe: a key of the slot that is nowhere is asked for on the target.
        CHECK(call(from, {"GET", "{" + moving + "}probe"}).str ==
              "ASK " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(to));
        const long holds = load.holds_of(0);
        std::this_thread::sleep_for(1s);
        during = load.holds_of(0) - holds;
        asked = errorstat(from, "ASK") - ask_before - 1;
    });
    const long moved = errorstat(from, "MOVED") - moved_before;
    const long tryagain = errorstat(from, "TRYAGAIN") + errorstat(to, "TRYAGAIN");
    INFO("while half-moved: " << asked << " ASK to the load, " << during << " holds of the key; after: " << moved
                              << " MOVED; TRYAGAIN: " << tryagain << "; " << load.error_summary());
    // The load's requests for the key were redirected while the slot was half-moved.
    CHECK(asked > 0);
    CHECK(d.port_for_slot(slot) == to);

    // The key is locked on its new master, and the other keys never stopped.
    const long at = load.holds_of(0);
    const long total = load.holds();
    CHECK(eventually([&] { return load.holds_of(0) >= at + 50; }, 20s));
    CHECK(eventually([&] { return load.holds() >= total + 200; }, 20s));
    CHECK(errorstat(from, "MOVED") - moved_before > 0);  // a stale slot map was corrected by MOVED
    load.finish();
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);

    // The lock key lives on the new owner; the old one redirects.
    {
        Guard g = load.registries()[0].lock(load.key(0));
        CHECK(call(to, {"EXISTS", moving}).integer == 1);
        CHECK(call(from, {"EXISTS", moving}).str.rfind("MOVED", 0) == 0);
    }
    // Waiters of these registries are still woken by releases on the new owner.
    check_prompt_handoff(d, load.registries()[0], load.registries()[1], load.key(0));
}

TEST_CASE("cluster: a master failed over gracefully under load, with wait_replicas", "[topology][cluster][faults]") {
    ClusterDeployment d;
    ExclusionChecker checker;
    Load load(Load::Url{d.url("lease=5s&wait_replicas=1&wait_timeout=300ms&connect_timeout=15s")}, checker, 3, 4, 12,
              "failover-");
    const int old_master = d.master_ports().front();
    const int k = load_key_on(d, load, old_master);
    REQUIRE(k >= 0);
    REQUIRE(eventually([&] { return load.holds_of(k) >= 20 && load.holds() >= 200; }, 20s));

    const int promoted = d.failover(old_master);
    const long at = load.holds_of(k);
    const long total = load.holds();
    INFO(load.error_summary());
    CHECK(eventually([&] { return load.holds_of(k) >= at + 50; }, 30s));
    CHECK(eventually([&] { return load.holds() >= total + 200; }, 30s));
    load.finish();
    // With the one replica confirming every acquisition, the promoted replica had every lock
    // and counter: no two kept holds overlap, no token was issued twice.
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);

    // The locks of its slots are on the new master now.
    Guard g = load.registries()[0].lock(load.key(k));
    CHECK(call(promoted, {"EXISTS", lock_key(load.key(k))}).integer == 1);
}

TEST_CASE("cluster: a master killed under load, with wait_replicas, then restarted as a replica",
          "[topology][cluster][faults]") {
    ClusterDeployment d;
    ExclusionChecker checker;
    // lease 5 s: renewals every 1.7 s; noticing the death (node timeout 2 s) and the election fit.
    Load load(Load::Url{d.url("lease=5s&wait_replicas=1&wait_timeout=300ms&connect_timeout=15s")}, checker, 3, 4, 12,
              "kill-");
    const std::vector<int> masters = d.master_ports();
    const int victim = masters.front();
    const int k = load_key_on(d, load, victim);              // a key on the master killed
    const int other = load_key_on(d, load, masters.back());  // and one on a master that lives
    REQUIRE(k >= 0);
    REQUIRE(other >= 0);
    REQUIRE(eventually([&] { return load.holds_of(k) >= 20 && load.holds() >= 200; }, 20s));

    const int promoted = d.kill_master(victim);
    INFO(load.error_summary());
    // Keys of the other masters go on.
    const long at_other = load.holds_of(other);
    CHECK(eventually([&] { return load.holds_of(other) >= at_other + 50; }, 20s));
    // The promoted replica has no replica of its own, so wait_replicas=1 refuses its locks
    // (unavailable) until the old master comes back, as its replica.
    d.restart_node(victim);
    const long at = load.holds_of(k);
    CHECK(eventually([&] { return load.holds_of(k) >= at + 50; }, 30s));
    load.finish();
    // The replica had confirmed every acquisition before the master died: no two kept holds
    // overlap, no token was issued twice.
    check_exclusion(checker);
    CHECK(load.errors_other_than({errc::unavailable, errc::not_owner}) == 0);

    Guard g = load.registries()[0].lock(load.key(k));
    CHECK(call(promoted, {"EXISTS", lock_key(load.key(k))}).integer == 1);
}

TEST_CASE("cluster: a waiter is woken by the release on every master, not by the lease", "[topology][cluster]") {
    ClusterDeployment d;
    auto a = KeyedLockRegistry::from_url(d.url("lease=30s"));
    auto b = KeyedLockRegistry::from_url(d.url("lease=30s"));
    for (int port : d.master_ports()) {
        const std::string key = key_on(d, port, "wake-" + std::to_string(port) + "-");
        check_prompt_handoff(d, a, b, key);
        check_prompt_handoff(d, b, a, key);  // and back the other way
    }
}

TEST_CASE("cluster: bad seeds are typed errors in time, not hangs", "[topology][cluster]") {
    SECTION("no seed reachable: unavailable within connect_timeout") {
        int dead1 = 0, dead2 = 0;
        {
            RedisServer gone1, gone2;
            dead1 = gone1.port();
            dead2 = gone2.port();
        }
        const std::string u = "redis+cluster://127.0.0.1:" + std::to_string(dead1) +
                              ",127.0.0.1:" + std::to_string(dead2) + "?connect_timeout=500ms";
        auto start = Clock::now();
        auto [code, message] = error_of([&] { (void)KeyedLockRegistry::from_url(u).lock("k"); });
        INFO(message);
        CHECK(code == errc::unavailable);
        CHECK(Clock::now() - start < 3s);
        // A try_lock does not say "held elsewhere" (nullopt) when it could not ask.
        start = Clock::now();
        std::tie(code, message) = error_of([&] { (void)KeyedLockRegistry::from_url(u).try_lock("k"); });
        CHECK(code == errc::unavailable);
        CHECK(Clock::now() - start < 3s);
    }
    SECTION("a seed that is a standalone Redis: a typed error that says so") {
        RedisServer standalone;
        const std::string u = "redis+cluster://127.0.0.1:" + std::to_string(standalone.port()) + "?connect_timeout=1s";
        const auto start = Clock::now();
        const auto [code, message] = error_of([&] { (void)KeyedLockRegistry::from_url(u).lock("k"); });
        INFO("code " << static_cast<int>(code) << ": " << message);
        CHECK((code == errc::backend_error || code == errc::protocol_error));
        CHECK_THAT(message, Catch::Contains("cluster", Catch::CaseSensitive::No));
        CHECK(Clock::now() - start < 5s);
        // Nothing was locked on it.
        CHECK(standalone.command("DBSIZE") == ":0");
    }
}
