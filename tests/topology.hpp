// SPDX-License-Identifier: BSL-1.0
// Redis deployments of several servers for the topology tests, on loopback, from Debian's
// redis-server: a Redis Cluster (ClusterDeployment), independent masters for Redlock
// (RedlockDeployment), and a master with replicas behind sentinels (SentinelDeployment). Each
// server is a RedisServer (redis_server.hpp): it dies with the test process and leaves nothing
// behind.
//
// A ClusterDeployment is real Redis Cluster: nodes with `--cluster-enabled yes`, joined by
// `redis-cli --cluster create` (3 masters or more) or by CLUSTER MEET / ADDSLOTSRANGE /
// REPLICATE (fewer, which redis-cli refuses), and changed as operators change it: slots
// migrated step by step as `redis-cli --cluster reshard` does, failovers by CLUSTER FAILOVER on
// a replica, masters killed and promoted replicas waited for. Every step that changes the
// cluster returns once every running node says cluster_state:ok and all of them agree on every
// node's role and slots; a cluster that does not settle within its limit throws, with every
// node's view in the message.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "eventually.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"

namespace keylock::test {

/// One line of CLUSTER NODES: a node as one node of the cluster sees it.
struct ClusterNode {
    std::string id;
    int port = 0;
    std::string flags;  ///< as listed, "myself," removed (e.g. "master", "slave", "master,fail")
    bool myself = false;
    std::string master_id;                   ///< the master's id for a replica, "-" for a master
    std::string link;                        ///< "connected" or "disconnected"
    std::vector<std::pair<int, int>> slots;  ///< ranges owned, first to last (migration entries left out)
    bool open_slots = false;                 ///< it lists a slot migrating or importing ("[…]")

    bool has_flag(const std::string& flag) const {
        return ("," + flags + ",").find("," + flag + ",") != std::string::npos;
    }
    bool master() const { return has_flag("master"); }
    /// Flagged as failing (fail or fail?), or not fully known (handshake, noaddr).
    bool failing() const {
        return has_flag("fail") || has_flag("fail?") || has_flag("handshake") || has_flag("noaddr");
    }
    bool owns(int slot) const {
        return std::ranges::any_of(slots, [slot](auto range) { return range.first <= slot && slot <= range.second; });
    }
    /// What every node must agree on: id, port, role, master, link, slots.
    std::string canonical() const {
        std::string s = id + " " + std::to_string(port) + " " + flags + " " + master_id + " " + link;
        for (auto [first, last] : slots) {
            // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) about `" " + std::string`.
            s += ' ';
            s += std::to_string(first);
            s += '-';
            s += std::to_string(last);
        }
        return s;
    }
};

/// Parses the text of CLUSTER NODES.
inline std::vector<ClusterNode> parse_cluster_nodes(const std::string& text) {
    std::vector<ClusterNode> nodes;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream in(line);
        std::vector<std::string> f;
        for (std::string w; in >> w;) f.push_back(w);
        if (f.size() < 8) continue;
        ClusterNode n;
        n.id = f[0];
        const auto colon = f[1].rfind(':', f[1].find('@'));
        n.port = colon == std::string::npos ? 0 : std::atoi(f[1].c_str() + colon + 1);
        n.flags = f[2];
        if (n.flags.rfind("myself,", 0) == 0) {
            n.myself = true;
            n.flags.erase(0, 7);
        }
        n.master_id = f[3];
        n.link = f[7];
        for (std::size_t i = 8; i < f.size(); ++i) {
            if (f[i].front() == '[') {
                n.open_slots = true;
                continue;
            }
            const auto dash = f[i].find('-');
            const int first = std::atoi(f[i].c_str());
            n.slots.emplace_back(first, dash == std::string::npos ? first : std::atoi(f[i].c_str() + dash + 1));
        }
        nodes.push_back(std::move(n));
    }
    return nodes;
}

/// A Redis Cluster on loopback: `masters` masters with `replicas_per_master` replicas each.
/// `scheme://127.0.0.1:P1,…,127.0.0.1:Pn<path>[?query]`: a URL listing servers on loopback.
/// With `tls`, the servers' TLS ports.
inline std::string loopback_url(const std::string& scheme, const std::vector<std::unique_ptr<RedisServer>>& servers,
                                const std::string& path, const std::string& query, bool tls = false) {
    std::string u = scheme + "://";
    for (std::size_t i = 0; i < servers.size(); ++i) {
        if (i > 0) u += ',';
        u += "127.0.0.1:";
        u += std::to_string(tls ? servers[i]->tls_port() : servers[i]->port());
    }
    u += path;
    if (!query.empty()) u += '?';
    return u + query;
}

class ClusterDeployment {
public:
    /// The steps of migrate_slot(), each reported to its callback once done.
    enum class MigrationStep {
        marked,      ///< the target says IMPORTING, the source MIGRATING; no key moved yet
        half_moved,  ///< about half of the slot's keys (at least one, if it has any; keylock's fencing counter first)
                     ///< are on the target
        all_moved,   ///< every key is on the target; the source still owns the slot (it answers ASK)
        assigned,    ///< every master says the target owns the slot (the source answers MOVED)
    };

    /// Starts masters * (1 + replicas_per_master) nodes (each with `extra` as more redis-server
    /// arguments), joins them and returns once the cluster is ok and every replica in sync. With
    /// `tls`, every node also has a TLS port and the cluster bus is TLS (`tls-cluster yes`); the
    /// harness keeps using the plain ports, to which Redis names the nodes' plain ports.
    explicit ClusterDeployment(int masters = 3, int replicas_per_master = 1, std::vector<std::string> extra = {},
                               std::chrono::milliseconds node_timeout = std::chrono::milliseconds(2000),
                               const std::optional<RedisServer::Tls>& tls = std::nullopt) {
        if (masters < 1 || replicas_per_master < 0) throw std::invalid_argument("ClusterDeployment: bad sizes");
        // Replicas sync at once (not after the default 5 s of diskless-sync delay).
        std::vector<std::string> args = {"--repl-diskless-sync-delay", "0"};
        args.insert(args.end(), extra.begin(), extra.end());
        RedisServer::Cluster cluster;
        cluster.node_timeout = node_timeout;
        const int n = masters * (1 + replicas_per_master);
        for (int i = 0; i < n; ++i) {
            nodes_.push_back(tls ? std::make_unique<RedisServer>(cluster, *tls, args)
                                 : std::make_unique<RedisServer>(cluster, args));
        }

        if (masters >= 3) {
            std::string command = "redis-cli --cluster create";
            for (const auto& node : nodes_) command += " 127.0.0.1:" + std::to_string(node->port());
            command += " --cluster-replicas " + std::to_string(replicas_per_master) + " --cluster-yes";
            const auto [status, output] = run(command);
            if (status != 0 || output.find("All 16384 slots covered") == std::string::npos) {
                throw std::runtime_error("`" + command + "` failed (exit " + std::to_string(status) + "):\n" + output);
            }
        } else {
            create_by_hand(masters, replicas_per_master);
        }
        wait_stable(std::chrono::seconds(30));
    }
    ClusterDeployment(const ClusterDeployment&) = delete;
    ClusterDeployment& operator=(const ClusterDeployment&) = delete;
    ClusterDeployment(ClusterDeployment&&) = delete;
    ClusterDeployment& operator=(ClusterDeployment&&) = delete;
    ~ClusterDeployment() = default;

    /// redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…[?query], every node a seed.
    std::string url(const std::string& query = "") const { return loopback_url("redis+cluster", nodes_, "", query); }
    /// rediss+cluster://127.0.0.1:T1,…[?query], the nodes' TLS ports (TLS deployments only).
    std::string tls_url(const std::string& query = "") const {
        return loopback_url("rediss+cluster", nodes_, "", query, true);
    }

    std::size_t size() const noexcept { return nodes_.size(); }
    RedisServer& node(std::size_t i) { return *nodes_.at(i); }
    /// Every node's port, in the order started.
    std::vector<int> ports() const {
        std::vector<int> p;
        for (const auto& n : nodes_) p.push_back(n->port());
        return p;
    }
    /// The server on `port`, or nullptr.
    RedisServer* server_on(int port) const {
        for (const auto& n : nodes_) {
            if (n->port() == port) return n.get();
        }
        return nullptr;
    }
    /// The port of a node that runs (for questions any node answers).
    int any_port() const {
        for (const auto& n : nodes_) {
            if (n->running()) return n->port();
        }
        throw std::runtime_error("ClusterDeployment: no node is running");
    }

    /// CLUSTER NODES as the node on `port` (default: any running one) sees it.
    std::vector<ClusterNode> view(int port = 0) const {
        return parse_cluster_nodes(checked(port != 0 ? port : any_port(), {"CLUSTER", "NODES"}).str);
    }
    static std::string node_id(int port) { return checked(port, {"CLUSTER", "MYID"}).str; }

    /// The masters that own slots now, in the order of their first slot.
    std::vector<int> master_ports() const {
        std::vector<ClusterNode> masters;
        for (auto& n : view()) {
            if (n.master() && !n.failing() && !n.slots.empty()) masters.push_back(n);
        }
        std::sort(masters.begin(), masters.end(),
                  [](const ClusterNode& a, const ClusterNode& b) { return a.slots.front() < b.slots.front(); });
        std::vector<int> ports;
        for (auto& n : masters) ports.push_back(n.port);
        return ports;
    }
    /// The replicas of the master on `master_port` that are not failing.
    std::vector<int> replica_ports(int master_port) const {
        const std::string id = node_id(master_port);
        std::vector<int> ports;
        for (auto& n : view()) {
            if (n.master_id == id && !n.failing()) ports.push_back(n.port);
        }
        return ports;
    }

    /// CLUSTER KEYSLOT `key`.
    int key_slot(const std::string& key) const {
        return static_cast<int>(checked(any_port(), {"CLUSTER", "KEYSLOT", key}).integer);
    }
    /// CLUSTER KEYSLOT of each key, in one round trip.
    std::vector<int> key_slots(const std::vector<std::string>& keys) const {
        std::vector<std::vector<std::string>> commands;
        for (const auto& k : keys) commands.push_back({"CLUSTER", "KEYSLOT", k});
        std::vector<int> slots;
        for (const Reply& r : call_all(any_port(), commands)) {
            if (r.is_error()) throw std::runtime_error("CLUSTER KEYSLOT: -" + r.str);
            slots.push_back(static_cast<int>(r.integer));
        }
        return slots;
    }
    /// The port of the master owning each slot now (0 for a slot nobody owns), by slot.
    std::vector<int> slot_map() const {
        std::vector<int> owners(16384, 0);
        for (auto& n : view()) {
            if (!n.master() || n.failing()) continue;
            for (auto [first, last] : n.slots) {
                for (int s = first; s <= last && s < 16384; ++s) owners[static_cast<std::size_t>(s)] = n.port;
            }
        }
        return owners;
    }
    /// The port of the master that owns `slot` now (0 if none does).
    int port_for_slot(int slot) const {
        for (auto& n : view()) {
            if (n.master() && !n.failing() && n.owns(slot)) return n.port;
        }
        return 0;
    }
    /// The master that owns the slot of `redis_key` (a lock key: "keylock:<key>").
    int node_port_for_key(const std::string& redis_key) const { return port_for_slot(key_slot(redis_key)); }

    /// Moves `slot` from the master on `from_port` to the one on `to_port` as `redis-cli
    /// --cluster reshard` does: SETSLOT IMPORTING on the target, MIGRATING on the source, the
    /// keys in batches (CLUSTER GETKEYSINSLOT, MIGRATE … KEYS), then SETSLOT NODE on the target,
    /// the source and every other master. `after_step` is called after each step (e.g. to run
    /// load for a while with the slot half-migrated, when clients get ASK). Returns once the
    /// cluster agrees.
    void migrate_slot(int slot, int from_port, int to_port, const std::function<void(MigrationStep)>& after_step = {}) {
        const std::string from_id = node_id(from_port);
        const std::string to_id = node_id(to_port);
        const std::string s = std::to_string(slot);
        expect_ok(to_port, {"CLUSTER", "SETSLOT", s, "IMPORTING", from_id});
        expect_ok(from_port, {"CLUSTER", "SETSLOT", s, "MIGRATING", to_id});
        if (after_step) after_step(MigrationStep::marked);

        // About half of the keys, keylock's fencing counter of the slot first: a lock script then
        // finds both of its keys gone from the source (ASK) as soon as the lock key is free, where
        // a counter left behind would split them (TRYAGAIN) for as long as the slot stays half-moved.
        const long long count = checked(from_port, {"CLUSTER", "COUNTKEYSINSLOT", s}).integer;
        const Reply in_slot = checked(from_port, {"CLUSTER", "GETKEYSINSLOT", s, std::to_string(count)});
        std::vector<std::string> half;
        for (const auto& k : in_slot.elements) {
            if (k.str.find("fence:{") != std::string::npos) half.insert(half.begin(), k.str);
            else half.push_back(k.str);
        }
        half.resize(std::min<std::size_t>(half.size(), count > 0 ? std::max<long long>(1, count / 2) : 0));
        migrate(from_port, to_port, half);
        if (after_step) after_step(MigrationStep::half_moved);

        move_keys(slot, from_port, to_port, -1);
        if (after_step) after_step(MigrationStep::all_moved);

        // The target first (it then owns the slot and bumps its epoch), then the source (which
        // stops answering ASK and answers MOVED), then the others; replicas learn by gossip.
        expect_ok(to_port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
        expect_ok(from_port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
        for (int port : master_ports()) {
            if (port != from_port && port != to_port) expect_ok(port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
        }
        if (after_step) after_step(MigrationStep::assigned);
        wait_stable();
    }

    /// A graceful failover: CLUSTER FAILOVER on a replica of the master on `master_port`, which
    /// becomes a replica of it. Returns the new master's port once the cluster agrees.
    int failover(int master_port) {
        const std::vector<int> replicas = replica_ports(master_port);
        if (replicas.empty()) throw std::runtime_error("failover: the master has no replica");
        const int promoted = replicas.front();
        const std::string id = node_id(promoted);
        bool done = false;
        // A manual failover that does not complete in time (the master must pause its clients and
        // the replica catch up, within 5 s) is abandoned by Redis: ask again, up to three times.
        for (int attempt = 0; attempt < 3 && !done; ++attempt) {
            expect_ok(promoted, {"CLUSTER", "FAILOVER"});
            done = eventually(
                [&] {
                    try {
                        return std::ranges::all_of(view(master_port), [&](const ClusterNode& n) {
                            return n.port != master_port || n.master_id == id;
                        });
                    } catch (const std::exception&) {
                        return false;
                    }
                },
                std::chrono::seconds(10), std::chrono::milliseconds(50));
        }
        if (!done) throw std::runtime_error("failover: the old master did not become a replica\n" + describe());
        wait_stable();
        return promoted;
    }

    /// Kills the master on `port` (SIGKILL) and waits until one of its replicas is promoted and
    /// the running nodes agree; returns the new master's port.
    int kill_master(int port) {
        const std::vector<int> replicas = replica_ports(port);
        if (replicas.empty()) throw std::runtime_error("kill_master: the master has no replica");
        server_on(port)->kill();
        int promoted = 0;
        const bool done = eventually(
            [&] {
                try {
                    for (int r : replicas) {
                        if (checked(r, {"ROLE"}).elements.at(0).str == "master") {
                            promoted = r;
                            return true;
                        }
                    }
                } catch (const std::exception&) {
                }
                return false;
            },
            std::chrono::seconds(30), std::chrono::milliseconds(50));
        if (!done) throw std::runtime_error("kill_master: no replica was promoted in 30 s\n" + describe());
        wait_stable();
        return promoted;
    }

    /// Starts a killed or stopped node again on its ports with its nodes.conf (its data is gone)
    /// and waits until the cluster agrees with it in it (a master that was failed over comes back
    /// as a replica of its successor).
    void restart_node(int port) {
        server_on(port)->restart();
        wait_stable();
    }

    /// How many keys match `pattern` (SCAN MATCH) over all masters.
    long count_keys(const std::string& pattern) const {
        long total = 0;
        for (int port : master_ports()) total += count_keys_on(port, pattern);
        return total;
    }
    /// How many keys match `pattern` on the node on `port`.
    static long count_keys_on(int port, const std::string& pattern) {
        long total = 0;
        std::string cursor = "0";
        do {
            const Reply r = checked(port, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
            cursor = r.elements.at(0).str;
            total += static_cast<long>(r.elements.at(1).elements.size());
        } while (cursor != "0");
        return total;
    }

    /// Waits until every running node says cluster_state:ok, no slot is migrating, every running
    /// node's CLUSTER NODES says the same about every node (roles, masters, slots, links), none
    /// of the running nodes is seen failing, and every running replica is in sync with its
    /// master; throws with what was still wrong and every view if that takes longer than `limit`.
    void wait_stable(std::chrono::milliseconds limit = std::chrono::seconds(30)) const {
        std::string why;
        if (!eventually([&] { return stable(why); }, limit, std::chrono::milliseconds(50))) {
            throw std::runtime_error("the cluster did not settle in " + std::to_string(limit.count()) + " ms: " + why +
                                     "\n" + describe());
        }
    }
    /// Whether the cluster is settled now (see wait_stable()); if not, `why` says what is wrong.
    bool stable(std::string& why) const {
        try {
            std::set<int> live;
            for (const auto& n : nodes_) {
                if (n->running()) live.insert(n->port());
            }
            std::string first_view;
            int first_port = 0;
            for (int port : live) {
                const std::string state = info_field(checked(port, {"CLUSTER", "INFO"}).str, "cluster_state");
                if (state != "ok") {
                    why = "node " + std::to_string(port) + " says cluster_state:" + state;
                    return false;
                }
                std::vector<std::string> lines;
                for (const ClusterNode& n : view(port)) {
                    if (n.myself && n.open_slots) {
                        why = "node " + std::to_string(port) + " has a slot migrating or importing";
                        return false;
                    }
                    if (live.contains(n.port) && (n.failing() || n.link != "connected")) {
                        why = "node " + std::to_string(port) + " sees node " + std::to_string(n.port) + " as " +
                              n.flags + ", " + n.link;
                        return false;
                    }
                    lines.push_back(n.canonical());
                }
                std::sort(lines.begin(), lines.end());
                std::string v;
                for (auto& l : lines) v += l + "\n";
                if (first_port == 0) {
                    first_port = port;
                    first_view = v;
                } else if (v != first_view) {
                    why = "nodes " + std::to_string(first_port) + " and " + std::to_string(port) + " disagree";
                    return false;
                }
                const std::string replication = checked(port, {"INFO", "replication"}).str;
                if (info_field(replication, "role") == "slave" &&
                    info_field(replication, "master_link_status") != "up") {
                    why = "replica " + std::to_string(port) + " is not in sync with its master";
                    return false;
                }
            }
            return true;
        } catch (const std::exception& e) {
            why = e.what();
            return false;
        }
    }

    /// Every running node's CLUSTER NODES (for failure messages).
    std::string describe() const {
        std::string out;
        for (const auto& n : nodes_) {
            out += "node " + std::to_string(n->port()) + (n->running() ? "" : " (not running)") + ":\n";
            if (!n->running()) continue;
            try {
                out += call(n->port(), {"CLUSTER", "NODES"}).str;
            } catch (const std::exception& e) {
                out += std::string(e.what()) + "\n";
            }
        }
        return out;
    }

private:
    /// `args` to the node on `port`; throws if it answers with an error or does not answer.
    static Reply checked(int port, const std::vector<std::string>& args) {
        Reply r = call(port, args);
        if (r.is_error()) throw std::runtime_error(command_text(port, args) + ": -" + r.str);
        return r;
    }
    static void expect_ok(int port, const std::vector<std::string>& args) {
        const Reply r = checked(port, args);
        if (r.str != "OK") throw std::runtime_error(command_text(port, args) + ": " + r.text());
    }
    static std::string command_text(int port, const std::vector<std::string>& args) {
        std::string s = "node " + std::to_string(port) + ":";
        for (const auto& a : args) s += " " + a;
        return s;
    }

    /// MIGRATEs up to `limit` keys of `slot` (all if negative), 100 at a time.
    static void move_keys(int slot, int from_port, int to_port, long long limit) {
        long long moved = 0;
        while (limit < 0 || moved < limit) {
            const long long batch = limit < 0 ? 100 : std::min<long long>(100, limit - moved);
            const Reply keys =
                checked(from_port, {"CLUSTER", "GETKEYSINSLOT", std::to_string(slot), std::to_string(batch)});
            if (keys.elements.empty()) return;
            std::vector<std::string> names;
            for (const auto& k : keys.elements) names.push_back(k.str);
            migrate(from_port, to_port, names);
            moved += static_cast<long long>(keys.elements.size());
        }
    }

    /// MIGRATE `keys` (none: nothing) from the node on `from_port` to the one on `to_port`.
    static void migrate(int from_port, int to_port, const std::vector<std::string>& keys) {
        if (keys.empty()) return;
        std::vector<std::string> args = {"MIGRATE", "127.0.0.1", std::to_string(to_port), "", "0", "5000", "KEYS"};
        args.insert(args.end(), keys.begin(), keys.end());
        const Reply r = checked(from_port, args);  // OK, or NOKEY if they expired meanwhile
        if (r.str != "OK" && r.str != "NOKEY") throw std::runtime_error("MIGRATE: " + r.text());
    }

    /// For fewer than 3 masters (redis-cli --cluster create wants 3): MEET, slots split evenly
    /// among the masters (nodes 0 … masters - 1), then each replica told whom to follow.
    void create_by_hand(int masters, int replicas_per_master) {
        const int first = nodes_[0]->port();
        for (std::size_t i = 1; i < nodes_.size(); ++i) {
            expect_ok(first, {"CLUSTER", "MEET", "127.0.0.1", std::to_string(nodes_[i]->port()),
                              std::to_string(nodes_[i]->cluster_port())});
        }
        for (int m = 0; m < masters; ++m) {
            const int lo = 16384 * m / masters;
            const int hi = 16384 * (m + 1) / masters - 1;
            expect_ok(nodes_[static_cast<std::size_t>(m)]->port(),
                      {"CLUSTER", "ADDSLOTSRANGE", std::to_string(lo), std::to_string(hi)});
        }
        for (int m = 0; m < masters; ++m) {
            const std::string id = node_id(nodes_[static_cast<std::size_t>(m)]->port());
            for (int r = 0; r < replicas_per_master; ++r) {
                const auto index = static_cast<std::size_t>(masters) +
                                   static_cast<std::size_t>(m) * static_cast<std::size_t>(replicas_per_master) +
                                   static_cast<std::size_t>(r);
                const int port = nodes_[index]->port();
                // It must have heard of its master (by gossip) before it can follow it.
                const bool following = eventually(
                    [&] {
                        return call(port, {"CLUSTER", "REPLICATE", id}).str == "OK";
                    },
                    std::chrono::seconds(20), std::chrono::milliseconds(50));
                if (!following) throw std::runtime_error("CLUSTER REPLICATE failed on node " + std::to_string(port));
            }
        }
    }

    std::vector<std::unique_ptr<RedisServer>> nodes_;
};

/// `n` independent Redis masters, for redlock:// (each a RedisServer: pause, resume, kill,
/// restart).
class RedlockDeployment {
public:
    /// With `tls`, each server also listens with TLS.
    explicit RedlockDeployment(int n = 5, const std::vector<std::string>& extra = {},
                               const std::optional<RedisServer::Tls>& tls = std::nullopt) {
        for (int i = 0; i < n; ++i) {
            servers_.push_back(tls ? std::make_unique<RedisServer>(*tls, extra) : std::make_unique<RedisServer>(extra));
        }
    }

    /// redlock://127.0.0.1:P1,…,127.0.0.1:Pn[?query]
    std::string url(const std::string& query = "") const { return loopback_url("redlock", servers_, "", query); }
    /// rediss+redlock://127.0.0.1:T1,…[?query], the servers' TLS ports (TLS deployments only).
    std::string tls_url(const std::string& query = "") const {
        return loopback_url("rediss+redlock", servers_, "", query, true);
    }
    std::size_t size() const noexcept { return servers_.size(); }
    RedisServer& server(std::size_t i) { return *servers_.at(i); }

    /// Whether server i has `redis_key` (e.g. "keylock:k"); throws if it does not answer.
    bool exists_on(std::size_t i, const std::string& redis_key) const {
        const Reply r = call(servers_.at(i)->port(), {"EXISTS", redis_key});
        if (r.is_error()) throw std::runtime_error("EXISTS: -" + r.str);
        return r.integer == 1;
    }
    /// On how many of the servers `indices` (default: all) `redis_key` exists.
    int holding(const std::string& redis_key, std::vector<std::size_t> indices = {}) const {
        if (indices.empty()) {
            for (std::size_t i = 0; i < servers_.size(); ++i) indices.push_back(i);
        }
        int n = 0;
        for (std::size_t i : indices) n += exists_on(i, redis_key);
        return n;
    }
    /// How many keys match `pattern` on server i.
    long count_keys_on(std::size_t i, const std::string& pattern) const {
        return ClusterDeployment::count_keys_on(servers_.at(i)->port(), pattern);
    }

private:
    std::vector<std::unique_ptr<RedisServer>> servers_;
};

/// Redis behind Sentinel, for redis+sentinel://: a master, `replicas` replicas of it and
/// `sentinels` sentinels watching it as "mymaster" (quorum: a majority of the sentinels). The
/// constructor returns once the replicas are in sync and every sentinel knows the replicas and
/// the other sentinels.
///
/// With `tls`, every server and sentinel also listens with TLS, the replicas replicate and the
/// sentinels watch over TLS, and the sentinels name the servers' TLS ports; with
/// `sentinel_password`, the sentinels want it from their clients (`requirepass`).
class SentinelDeployment {
public:
    explicit SentinelDeployment(int replicas = 2, int sentinels = 3,
                                const std::optional<RedisServer::Tls>& tls = std::nullopt,
                                std::string sentinel_password = {})
        : sentinel_password_(std::move(sentinel_password)) {
        if (replicas < 0 || sentinels < 1) throw std::invalid_argument("SentinelDeployment: bad sizes");
        auto server = [&](std::vector<std::string> args) {
            return tls ? std::make_unique<RedisServer>(*tls, std::move(args))
                       : std::make_unique<RedisServer>(std::move(args));
        };
        // Replicas sync at once (not after the default 5 s of diskless-sync delay).
        master_ = server({"--repl-diskless-sync-delay", "0"});
        const int master_port = tls ? master_->tls_port() : master_->port();
        for (int i = 0; i < replicas; ++i) {
            replicas_.push_back(server({"--replicaof", "127.0.0.1", std::to_string(master_port)}));
        }
        std::vector<std::string> sentinel_args;
        if (!sentinel_password_.empty()) sentinel_args = {"--requirepass", sentinel_password_};
        for (int i = 0; i < sentinels; ++i) {
            RedisServer::Sentinel s;
            s.master_port = master_port;
            s.quorum = sentinels / 2 + 1;
            sentinels_.push_back(tls ? std::make_unique<RedisServer>(s, *tls, sentinel_args)
                                     : std::make_unique<RedisServer>(s, sentinel_args));
        }
        const bool ready = eventually(
            [&] {
                const std::string replication = cli(master_->port(), "INFO replication");
                for (int i = 0; i < replicas; ++i) {
                    const auto at = replication.find("slave" + std::to_string(i) + ":");
                    if (at == std::string::npos) return false;
                    if (replication.find("state=online", at) != replication.find("state=", at)) return false;
                }
                for (auto& s : sentinels_) {
                    const std::string m = cli(s->port(), auth() + "SENTINEL MASTER mymaster");
                    if (field(m, "num-slaves") != std::to_string(replicas) ||
                        field(m, "num-other-sentinels") != std::to_string(sentinels - 1)) {
                        return false;
                    }
                }
                return true;
            },
            std::chrono::seconds(30));
        if (!ready) {
            throw std::runtime_error("the replicas did not sync, or the sentinels did not find them and each other, "
                                     "in 30 s");
        }
    }
    SentinelDeployment(const SentinelDeployment&) = delete;
    SentinelDeployment& operator=(const SentinelDeployment&) = delete;
    SentinelDeployment(SentinelDeployment&&) = delete;
    SentinelDeployment& operator=(SentinelDeployment&&) = delete;
    ~SentinelDeployment() = default;

    /// redis+sentinel://127.0.0.1:S1,…/mymaster[?query]
    std::string url(const std::string& query = "") const {
        return loopback_url("redis+sentinel", sentinels_, "/mymaster", query);
    }
    /// rediss+sentinel://127.0.0.1:T1,…/mymaster[?query], the sentinels' TLS ports (TLS deployments only).
    std::string tls_url(const std::string& query = "") const {
        return loopback_url("rediss+sentinel", sentinels_, "/mymaster", query, true);
    }

    /// The port the sentinels name as the master's now.
    int master_port() const {
        const std::string m = cli(sentinels_[0]->port(), auth() + "SENTINEL get-master-addr-by-name mymaster");
        std::istringstream in(m);
        std::string host, port;
        in >> host >> port;
        return port.empty() ? 0 : std::stoi(port);
    }

    RedisServer& master() { return *master_; }
    RedisServer& sentinel(std::size_t i) { return *sentinels_.at(i); }
    /// The server on `port`, plain or TLS (master or replica), or nullptr.
    RedisServer* server_on(int port) {
        auto on = [port](const RedisServer& s) { return s.port() == port || (s.tls() && s.tls_port() == port); };
        if (on(*master_)) return master_.get();
        for (auto& r : replicas_) {
            if (on(*r)) return r.get();
        }
        return nullptr;
    }
    /// Asks the first sentinel to fail over (SENTINEL FAILOVER) and returns its answer.
    std::string ask_failover() const { return cli(sentinels_[0]->port(), auth() + "SENTINEL FAILOVER mymaster"); }

    /// Waits until the sentinels name a master other than the one on `old_port`, and it says
    /// it is a master. (Plain deployments: with TLS, the sentinels name TLS ports.)
    bool failed_over_from(int old_port, std::chrono::seconds limit = std::chrono::seconds(30)) {
        return eventually(
            [&] {
                const int now = master_port();
                RedisServer* s = server_on(now);
                return now != 0 && now != old_port && s != nullptr && cli(now, "ROLE").rfind("master", 0) == 0;
            },
            limit);
    }

private:
    /// redis-cli's arguments to give the sentinels their password, if they want one.
    std::string auth() const {
        return sentinel_password_.empty() ? std::string() : "-a " + sentinel_password_ + " --no-auth-warning ";
    }

    std::string sentinel_password_;
    std::unique_ptr<RedisServer> master_;
    std::vector<std::unique_ptr<RedisServer>> replicas_;
    std::vector<std::unique_ptr<RedisServer>> sentinels_;
};

}  // namespace keylock::test
