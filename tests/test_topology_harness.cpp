// SPDX-License-Identifier: BSL-1.0
// The deployments of the topology tests (tests/topology.hpp) checked on their own, with plain
// commands and no keylock backend: a Redis Cluster is created and agrees with redis-cli's own
// check, a slot migrated step by step answers ASK while half-moved and MOVED once moved, a
// graceful failover and a killed master are followed, a killed node restarted rejoins as a
// replica, one master alone is a cluster, and the independent masters of Redlock pause, resume,
// die and restart empty. If these fail, the backend tests built on them mean nothing.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "eventually.hpp"
#include "redis_cli.hpp"
#include "topology.hpp"

using keylock::test::call;
using keylock::test::call_all;
using keylock::test::ClusterDeployment;
using keylock::test::eventually;
using keylock::test::info_field;
using keylock::test::RedlockDeployment;
using keylock::test::run;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Step = ClusterDeployment::MigrationStep;

namespace {

std::string role(int port) { return call(port, {"ROLE"}).elements.at(0).str; }

/// redis-cli's own verdict on the cluster.
void check_with_redis_cli(int port) {
    const auto [status, output] = run("redis-cli --cluster check 127.0.0.1:" + std::to_string(port));
    INFO(output);
    CHECK(status == 0);
    CHECK_THAT(output, Catch::Contains("[OK] All nodes agree about slots configuration."));
    CHECK_THAT(output, Catch::Contains("[OK] All 16384 slots covered."));
}

}  // namespace

TEST_CASE("harness: a cluster is created, and a slot migrated step by step answers ASK, then MOVED",
          "[topology][harness]") {
    const auto start = Clock::now();
    ClusterDeployment d;
    CHECK(Clock::now() - start < 15s);  // about 3 s here
    REQUIRE(d.size() == 6);
    const std::vector<int> masters = d.master_ports();
    REQUIRE(masters.size() == 3);
    for (int m : masters) {
        CHECK(role(m) == "master");
        REQUIRE(d.replica_ports(m).size() == 1);
        CHECK(role(d.replica_ports(m).front()) == "slave");
    }
    check_with_redis_cli(d.any_port());
    CHECK(d.url("lease=5s").rfind("redis+cluster://127.0.0.1:", 0) == 0);
    CHECK_THAT(d.url("lease=5s"), Catch::EndsWith("?lease=5s"));

    // Every slot has an owner, the one CLUSTER SLOTS names.
    const std::vector<int> owners = d.slot_map();
    CHECK(std::count(owners.begin(), owners.end(), 0) == 0);

    // Two keys of one slot on its owner.
    const std::string key = "keylock:moving";
    const std::string other = "{keylock:moving}other";
    const std::string absent = "{keylock:moving}absent";
    const int slot = d.key_slot(key);
    CHECK(d.key_slots({key, other, absent}) == std::vector<int>{slot, slot, slot});
    const int from = d.node_port_for_key(key);
    CHECK(from == owners[static_cast<std::size_t>(slot)]);
    const int to = from == masters[0] ? masters[1] : masters[0];
    REQUIRE(call(from, {"SET", key, "1", "PX", "60000"}).str == "OK");
    REQUIRE(call(from, {"SET", other, "2"}).str == "OK");
    CHECK(call(to, {"GET", key}).str == "MOVED " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(from));
    CHECK(d.count_keys("*") == 2);

    const std::string ask = "ASK " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(to);
    const std::string moved = "MOVED " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(to);
    std::vector<Step> steps;
    d.migrate_slot(slot, from, to, [&](Step step) {
        steps.push_back(step);
        switch (step) {
            case Step::marked:
                // Keys still on the source are served there; one it does not have is asked for
                // on the target.
                CHECK(call(from, {"GET", key}).str == "1");
                CHECK(call(from, {"GET", absent}).str == ask);
                break;
            case Step::half_moved: {
                CHECK(call(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}).integer == 1);
                const std::string gone = call(from, {"EXISTS", key}).integer == 1 ? other : key;
                const std::string kept = gone == key ? other : key;
                CHECK(call(from, {"GET", gone}).str == ask);
                // The target serves it after ASKING only.
                CHECK(call(to, {"GET", gone}).str ==
                      "MOVED " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(from));
                const auto asked = call_all(to, {{"ASKING"}, {"GET", gone}});
                CHECK(asked[1].str == (gone == key ? "1" : "2"));
                // A script over both keys can run on neither node while they are split.
                const std::string both = "return redis.call('EXISTS', KEYS[1], KEYS[2])";
                CHECK(call(from, {"EVAL", both, "2", key, other}).str.rfind("TRYAGAIN", 0) == 0);
                CHECK(call_all(to, {{"ASKING"}, {"EVAL", both, "2", key, other}})[1].str.rfind("TRYAGAIN", 0) == 0);
                CHECK(call(from, {"GET", kept}).is_error() == false);
                // The TTL of a lock key goes with it.
                const int on = gone == key ? to : from;
                const auto ttl = call_all(on, {{"ASKING"}, {"PTTL", key}})[1].integer;
                CHECK(ttl > 50000);
                CHECK(ttl <= 60000);
                break;
            }
            case Step::all_moved:
                CHECK(call(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}).integer == 0);
                CHECK(call(from, {"GET", key}).str == ask);
                CHECK(call_all(to, {{"ASKING"}, {"GET", key}})[1].str == "1");
                break;
            case Step::assigned:
                CHECK(call(from, {"GET", key}).str == moved);
                CHECK(call(to, {"GET", key}).str == "1");
                break;
        }
    });
    CHECK(steps == std::vector<Step>{Step::marked, Step::half_moved, Step::all_moved, Step::assigned});
    // Every node agrees, also the replicas (by gossip).
    CHECK(d.port_for_slot(slot) == to);
    for (int port : d.ports()) {
        if (port != to) CHECK(call(port, {"GET", other}).str == moved);
    }
    CHECK(call(to, {"GET", other}).str == "2");
    CHECK(d.count_keys("*") == 2);
    CHECK(d.count_keys("keylock:*") == 1);
    CHECK(ClusterDeployment::count_keys_on(from, "*") == 0);
    check_with_redis_cli(d.any_port());
}

TEST_CASE("harness: a graceful failover, a killed master and its restart are followed", "[topology][harness]") {
    ClusterDeployment d;
    const std::string key = "keylock:failover";
    const int owner = d.node_port_for_key(key);
    REQUIRE(call(owner, {"SET", key, "v"}).str == "OK");
    REQUIRE(call(owner, {"WAIT", "1", "1000"}).integer == 1);

    auto start = Clock::now();
    const int promoted = d.failover(owner);
    CHECK(Clock::now() - start < 10s);  // about 1 s
    CHECK(promoted != owner);
    CHECK(role(promoted) == "master");
    CHECK(role(owner) == "slave");
    CHECK(d.node_port_for_key(key) == promoted);
    CHECK(call(promoted, {"GET", key}).str == "v");
    CHECK(d.replica_ports(promoted) == std::vector<int>{owner});
    CHECK(d.master_ports().size() == 3);

    // Now kill the new master: its replica (the first master) takes over again.
    start = Clock::now();
    const int back = d.kill_master(promoted);
    CHECK(Clock::now() - start < 15s);  // about 4 s: the node timeout (2 s), then the election
    CHECK(back == owner);
    CHECK(role(owner) == "master");
    CHECK(call(owner, {"GET", key}).str == "v");
    CHECK(d.master_ports().size() == 3);
    CHECK(d.replica_ports(owner).empty());
    CHECK_FALSE(d.server_on(promoted)->running());
    std::string why;
    CHECK(d.stable(why));

    // Restarted, the dead node comes back as its successor's replica, empty, then synced.
    start = Clock::now();
    d.restart_node(promoted);
    CHECK(Clock::now() - start < 10s);  // well under 1 s
    CHECK(role(promoted) == "slave");
    CHECK(d.replica_ports(owner) == std::vector<int>{promoted});
    CHECK(eventually([&] { return call(promoted, {"DBSIZE"}).integer == 1; }));
    check_with_redis_cli(owner);
}

TEST_CASE("harness: one master alone is a cluster, with or without a replica", "[topology][harness]") {
    SECTION("no replica") {
        ClusterDeployment d(1, 0);
        REQUIRE(d.size() == 1);
        const int port = d.node(0).port();
        CHECK(d.master_ports() == std::vector<int>{port});
        const std::string info = call(port, {"CLUSTER", "INFO"}).str;
        CHECK(info_field(info, "cluster_state") == "ok");
        CHECK(info_field(info, "cluster_slots_assigned") == "16384");
        for (const char* key : {"a", "b", "keylock:c", "{x}y"}) CHECK(call(port, {"SET", key, "1"}).str == "OK");
        CHECK(d.count_keys("*") == 4);
        check_with_redis_cli(port);
    }
    SECTION("one replica") {
        ClusterDeployment d(1, 1);
        REQUIRE(d.size() == 2);
        const int port = d.master_ports().at(0);
        CHECK(d.replica_ports(port).size() == 1);
        CHECK(call(port, {"SET", "k", "1"}).str == "OK");
        CHECK(call(port, {"WAIT", "1", "2000"}).integer == 1);
    }
    SECTION("two masters") {
        ClusterDeployment d(2, 0);
        CHECK(d.master_ports().size() == 2);
        check_with_redis_cli(d.any_port());
    }
}

TEST_CASE("harness: redlock's independent masters pause, resume, die and restart empty", "[topology][harness]") {
    const auto start = Clock::now();
    RedlockDeployment d;
    CHECK(Clock::now() - start < 5s);  // about 50 ms
    REQUIRE(d.size() == 5);
    const std::string u = d.url("lease=2s");
    CHECK(u.rfind("redlock://127.0.0.1:", 0) == 0);
    CHECK_THAT(u, Catch::EndsWith("?lease=2s"));
    for (std::size_t i = 0; i < 5; ++i) {
        CHECK_THAT(u, Catch::Contains("127.0.0.1:" + std::to_string(d.server(i).port())));
        CHECK(call(d.server(i).port(), {"INFO", "replication"}).str.find("role:master") != std::string::npos);
        CHECK(call(d.server(i).port(), {"SET", "keylock:k", "1"}).str == "OK");
    }
    CHECK(d.holding("keylock:k") == 5);
    CHECK(d.holding("keylock:k", {0, 1}) == 2);

    d.server(0).pause();
    CHECK_THROWS(call(d.server(0).port(), {"PING"}, 300ms));
    d.server(0).resume();
    CHECK(call(d.server(0).port(), {"PING"}).str == "PONG");

    d.server(1).kill();
    CHECK_THROWS(call(d.server(1).port(), {"PING"}));
    d.server(1).restart();
    CHECK_FALSE(d.exists_on(1, "keylock:k"));
    CHECK(d.holding("keylock:k") == 4);
    CHECK(d.count_keys_on(2, "keylock:*") == 1);
}
