// SPDX-License-Identifier: BSL-1.0
// The configuration of the Redis backend, read from a `redis://`, `rediss://`, `unix://`,
// `redis+sentinel://`, `redis+cluster://` or `redlock://` URL, or the TLS form of the last three
// (`rediss+sentinel://`, `rediss+cluster://`, `rediss+redlock://`); the grammar, options and
// bounds are in docs/configuration.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "connection.hpp"

namespace keylock::redis {

/// A host and port of a list in a URL: a sentinel, a cluster node, a Redlock master.
struct HostPort {
    std::string host;  ///< a name or an address (IPv6 without brackets)
    std::uint16_t port = 26379;
    std::string where() const { return host_port(host, port); }
    friend bool operator==(const HostPort&, const HostPort&) = default;
};

/// A port as URLs and Redis's replies write it: decimal digits, 1 to 65535.
std::optional<std::uint16_t> parse_port(std::string_view text);

/// How the servers are laid out; each has its URL scheme.
enum class Topology {
    standalone,  ///< redis://, rediss://, unix://: one server
    sentinel,    ///< redis+sentinel://, rediss+sentinel://: the master that sentinels name, followed across failovers
    cluster,     ///< redis+cluster://, rediss+cluster://: a Redis Cluster, each key on the master of its slot
    redlock,     ///< redlock://, rediss+redlock://: independent masters; a lock is held when a majority grants it
};

struct RedisConfig {
    Topology topology = Topology::standalone;
    /// Where and how to connect. With sentinels, its host and port are the master's as the
    /// sentinels name it (empty until then), and the rest applies to the master. For a cluster
    /// or a quorum, all but the host and port (unused) applies to every node. Its TLS settings
    /// (tls, ca_file, cert_file, key_file, verify) apply to every server, the sentinels too.
    Endpoint endpoint;
    std::vector<HostPort> sentinels;  ///< redis+sentinel://: the sentinels to ask, in order
    std::string master_name;          ///< redis+sentinel://: the master's name in the sentinels
    /// redis+sentinel://: the sentinels' own credentials (the endpoint's are the master's); an
    /// empty user with a password AUTHs as `default`. The password is never printed.
    std::string sentinel_user, sentinel_password;
    /// redis+cluster://: nodes to learn the slot map from (any one will do); redlock://: the
    /// masters of the quorum, each listed once.
    std::vector<HostPort> nodes;
    /// redlock://: how long a round waits for a node's answer before counting it as failed.
    std::chrono::milliseconds node_timeout{200};
    int wait_replicas = 0;                        ///< after an acquire, WAIT for this many replicas (0: no WAIT)
    std::chrono::milliseconds wait_timeout{500};  ///< ... for at most this long; else it counts as not acquired
    std::string prefix = "keylock:";              ///< prepended to every lock key
    std::chrono::milliseconds lease{30000};       ///< lock lease; the watchdog renews every lease/3
    std::size_t max_key_bytes = 1024;             ///< the longest key accepted

    friend bool operator==(const RedisConfig&, const RedisConfig&) = default;
};

/// Parses a Redis URL. Throws keylock::Error (`invalid_url`, `unknown_option` or
/// `invalid_option`) whose message names the part at fault and never contains the password.
RedisConfig parse_redis_url(std::string_view text);

/// Checks a configuration made in code by the rules of a URL (config_rules.hpp). Throws
/// keylock::Error (`invalid_url` or `invalid_option`) with the message parse_redis_url gives for
/// the same value in the URL of `config` (to_url), which never shows the password. What
/// parse_redis_url returns passes.
void check(const RedisConfig& config);

enum class Password { redacted, included };

/// The same configuration as a URL, with options at their defaults left out and the passwords
/// (the endpoint's and sentinel_password), if any, written as "***": parse_redis_url(to_url(c))
/// equals `c` except that its passwords are "***". For logs and describe(). With Password::included,
/// parse_redis_url(to_url(c, included)) equals `c` (the tests and the fuzzer check both round trips).
std::string to_url(const RedisConfig& config, Password password = Password::redacted);

}  // namespace keylock::redis
