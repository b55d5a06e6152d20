// SPDX-License-Identifier: BSL-1.0
// keylock::redis_registry: a Redis registry configured in code (RedisOptions), by the rules of a URL.
#include <keylock/redis.hpp>

#include <string>
#include <vector>

#include <keylock/error.hpp>

#include "redis_backend.hpp"
#include "redis_config.hpp"

namespace keylock {

namespace {

std::vector<redis::HostPort> host_ports(const std::vector<std::pair<std::string, std::uint16_t>>& list) {
    std::vector<redis::HostPort> out;
    for (const auto& [host, port] : list) out.push_back({host, port});
    return out;
}

/// The configuration `o` describes, checked. What a URL cannot express, or would report in its
/// own terms (a path, a host part), is checked first, in the terms of the struct; the rest by
/// redis::check(), as for a URL.
redis::RedisConfig to_config(const RedisOptions& o) {
    auto bad = [](const std::string& why) {
        throw Error(make_error_code(errc::invalid_option), "keylock: RedisOptions: " + why);
    };
    if (o.tls && !o.unix_socket.empty()) bad("tls is for TCP connections, not for unix_socket");
    const bool sentinel = !o.sentinels.empty();
    const bool cluster = !o.cluster_nodes.empty();
    const bool redlock = !o.redlock_nodes.empty();
    const bool listed = sentinel || cluster || redlock;
    if (int(sentinel) + int(cluster) + int(redlock) > 1)
        bad("give at most one of sentinels, cluster_nodes and redlock_nodes");
    if (listed && !o.unix_socket.empty()) {
        bad(std::string(sentinel  ? "sentinels"
                        : cluster ? "cluster nodes"
                                  : "Redlock nodes") +
            " are reached over TCP (with tls, over TLS): no unix_socket");
    }
    if (!sentinel && !o.master_name.empty()) bad("master_name is for sentinels; set sentinels too");
    if (!o.unix_socket.empty() && o.unix_socket.front() != '/') bad("unix_socket must be an absolute path");
    if (!listed && o.unix_socket.empty() && o.host.empty()) bad("host is empty; set host (and port), or unix_socket");
    if (!listed && o.unix_socket.empty() && o.port == 0) bad("port is 0; expected 1 to 65535");
    if (o.db < 0) bad("db is " + std::to_string(o.db) + "; expected 0 or more");
    if (cluster && o.db != 0) bad("db must be 0 with cluster_nodes: Redis Cluster has database 0 only");
    for (const auto& [host, port] : sentinel ? o.sentinels : cluster ? o.cluster_nodes : o.redlock_nodes) {
        if (host.empty() || port == 0) {
            bad(std::string(sentinel  ? "a sentinel"
                            : cluster ? "a cluster node"
                                      : "a Redlock node") +
                " needs a host and a port from 1 to 65535");
        }
    }

    // The host and port as parse_redis_url leaves them: those of the server over TCP; none for a
    // list (with sentinels, the master's once they name it); the defaults for a Unix socket.
    const bool tcp = !listed && o.unix_socket.empty();
    redis::RedisConfig c{
        .topology = sentinel  ? redis::Topology::sentinel
                    : cluster ? redis::Topology::cluster
                    : redlock ? redis::Topology::redlock
                              : redis::Topology::standalone,
        .endpoint = {.host = tcp ? o.host : std::string(),
                     .port = tcp      ? o.port
                             : listed ? std::uint16_t{0}
                                      : redis::Endpoint().port,
                     .unix_path = o.unix_socket,
                     .tls = o.tls,
                     .ca_file = o.ca_file,
                     .cert_file = o.cert_file,
                     .key_file = o.key_file,
                     .verify = o.verify,
                     .user = o.user,
                     .password = o.password,
                     .db = o.db,
                     .connect_timeout = o.connect_timeout,
                     .command_timeout = o.command_timeout,
                     .health_check = o.health_check,
                     .max_reply_bytes = o.max_reply_bytes},
        .sentinels = host_ports(o.sentinels),
        .master_name = o.master_name,
        .sentinel_user = o.sentinel_user,
        .sentinel_password = o.sentinel_password,
        .nodes = host_ports(cluster ? o.cluster_nodes : o.redlock_nodes),
        .node_timeout = o.node_timeout,
        .wait_replicas = o.wait_replicas,
        .wait_timeout = o.wait_timeout,
        .prefix = o.prefix,
        .lease = o.lease,
        .max_key_bytes = o.max_key_bytes,
    };
    redis::check(c);
    return c;
}

}  // namespace

KeyedLockRegistry redis_registry(const RedisOptions& options) {
    return KeyedLockRegistry::from_backend(redis::make_backend(to_config(options)));
}

}  // namespace keylock
