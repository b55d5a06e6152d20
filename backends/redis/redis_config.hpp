// The configuration of the Redis backend, read from a `redis://`, `rediss://` or `unix://` URL
// (the grammar, options and bounds are in docs/configuration.md).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "connection.hpp"

namespace keylock::redis {

struct RedisConfig {
    Endpoint endpoint;                       ///< where and how to connect
    std::string prefix = "keylock:";         ///< prepended to every lock key
    std::chrono::milliseconds lease{30000};  ///< lock lease; the watchdog renews every lease/3
    std::size_t max_key_bytes = 1024;        ///< the longest key accepted
};

/// Parses a Redis URL. Throws keylock::Error (`invalid_url`, `unknown_option` or
/// `invalid_option`) whose message names the part at fault and never contains the password.
RedisConfig parse_redis_url(std::string_view url);

enum class Password { redacted, included };

/// The same configuration as a URL, with options at their defaults left out and the password,
/// if any, written as "***": parse_redis_url(to_url(c)) equals `c` except that its password is
/// "***". For logs and describe(). With Password::included (only to validate a configuration
/// made in code by parsing it), parse_redis_url(to_url(c, included)) equals `c`.
std::string to_url(const RedisConfig& config, Password password = Password::redacted);

}  // namespace keylock::redis
