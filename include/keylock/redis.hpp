// SPDX-License-Identifier: BSL-1.0
// keylock/redis.hpp — the Redis backend configured in code rather than by URL. Link
// keylock::redis. (`KeyedLockRegistry::from_url("redis://…")` needs only the link, not this
// header.)
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <keylock/export.hpp>
#include <keylock/registry.hpp>

namespace keylock {

/// The options of a Redis registry: the same as those of a `redis://`, `rediss://`, `unix://`,
/// `redis+sentinel://`, `redis+cluster://` or `redlock://` URL (with `tls`: `rediss+sentinel://`,
/// `rediss+cluster://`, `rediss+redlock://`), with the same defaults and bounds
/// (docs/configuration.md lists them). At most one of `sentinels`, `cluster_nodes` and
/// `redlock_nodes` may be given.
struct RedisOptions {
    std::string host = "127.0.0.1";  ///< TCP host name or address
    std::uint16_t port = 6379;       ///< TCP port
    std::string unix_socket;         ///< a Unix socket path, instead of host and port
    bool tls = false;                ///< TLS to every server, sentinels and nodes too (as `rediss://`; TCP only)
    std::string ca_file;             ///< TLS: the CA certificates (PEM) to verify the server with; empty = the system's
    std::string cert_file;           ///< TLS: a client certificate (PEM); empty = none
    std::string key_file;            ///< TLS: the client certificate's private key (PEM)
    bool verify = true;              ///< TLS: verify the server's certificate and host name
    std::string user;                ///< ACL user (AUTHs as it even without a password); empty: password-only AUTH
    std::string password;            ///< never shown by describe() or in messages
    int db = 0;                      ///< database number (SELECT), 0 by default
    std::chrono::milliseconds connect_timeout{5000};  ///< 10ms to 10m
    std::chrono::milliseconds command_timeout{5000};  ///< 10ms to 10m
    /// A connection that has heard nothing from its server for this long (no command in flight)
    /// sends a PING, whose answer must come within command_timeout, else the connection is
    /// dropped and made again (waiters then look again at once). 0 (off) or 10ms to 10m.
    std::chrono::milliseconds health_check{5000};
    /// The longest reply accepted from a server, in bytes (1024 to 4294967296): a longer one, or
    /// one announcing more (a bulk string's length, an array's elements), closes the connection
    /// as a protocol error.
    std::uint64_t max_reply_bytes = std::uint64_t{64} << 20;
    std::string prefix = "keylock:";         ///< prepended to every lock key, 1 to 128 bytes
    std::chrono::milliseconds lease{30000};  ///< 1s to 24h; renewed every lease/3 while held
    std::size_t max_key_bytes = 1024;        ///< the longest key accepted
    /// Sentinel: the sentinels' addresses (host, port), asked in turn for `master_name`'s
    /// address; `host`, `port` and `unix_socket` are then not used. Empty: no Sentinel.
    std::vector<std::pair<std::string, std::uint16_t>> sentinels;
    std::string master_name;  ///< Sentinel: the master's name in the sentinels
    /// Sentinel: the sentinels' own ACL user (`user` is the master's); empty: password-only
    /// AUTH, or none.
    std::string sentinel_user;
    /// Sentinel: the sentinels' own password (`password` is the master's); both this and
    /// `sentinel_user` empty: the sentinels are reached without AUTH. Never shown.
    std::string sentinel_password;
    /// Redis Cluster: nodes (host, port) to learn the slot map from, any one of which will do;
    /// `host`, `port`, `unix_socket` and `db` are then not used. Empty: no Cluster.
    std::vector<std::pair<std::string, std::uint16_t>> cluster_nodes;
    /// Redlock: the independent masters of a quorum, each listed once; a lock is held while a
    /// majority of them grant it. `host`, `port` and `unix_socket` are then not used.
    std::vector<std::pair<std::string, std::uint16_t>> redlock_nodes;
    std::chrono::milliseconds node_timeout{200};  ///< Redlock: how long a round waits for a node (1ms to 10s)
    int wait_replicas = 0;                        ///< 0 to 64: WAIT for this many replicas after each write
    std::chrono::milliseconds wait_timeout{500};  ///< 1ms to 1m, shorter than command_timeout
};

/// A registry on the Redis server `options` describe. Throws keylock::Error as from_url() does
/// for the same values (`invalid_option`, naming the option), never showing the password.
KEYLOCK_API KeyedLockRegistry redis_registry(const RedisOptions& options);

}  // namespace keylock
