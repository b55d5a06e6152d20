// SPDX-License-Identifier: BSL-1.0
// The rules of a Redis configuration, and the messages that say what breaks them: the bounds of
// each option and what may go with what. parse_redis_url applies them as it reads a URL (to the
// values as written), check() to a configuration made in code (redis_config.hpp).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <boost/url/url_view.hpp>

#include <keylock/error.hpp>

#include "redis_config.hpp"
#include "src/config.hpp"

namespace keylock::redis::rules {

constexpr std::uint16_t default_port = 6379;
constexpr std::uint16_t default_sentinel_port = 26379;
constexpr std::size_t max_db = std::numeric_limits<std::int32_t>::max();  // SELECT takes a 32-bit index

/// The bounds of an option's value, and the words of a message for them.
template <class T>
struct Bounds {
    T min, max;
    const char* expected;
};
using DurationBounds = Bounds<std::chrono::milliseconds>;
constexpr DurationBounds lease{std::chrono::seconds(1), std::chrono::hours(24), "a duration from 1s to 24h"};
constexpr DurationBounds timeout{std::chrono::milliseconds(10), std::chrono::minutes(10),
                                 "a duration from 10ms to 10m"};  // connect_timeout, command_timeout
constexpr DurationBounds wait_timeout{std::chrono::milliseconds(1), std::chrono::minutes(1),
                                      "a duration from 1ms to 1m"};
constexpr DurationBounds node_timeout{std::chrono::milliseconds(1), std::chrono::seconds(10),
                                      "a duration from 1ms to 10s"};
constexpr DurationBounds health_check{std::chrono::milliseconds(10), std::chrono::minutes(10),
                                      "0 (off) or a duration from 10ms to 10m"};
constexpr Bounds<std::uint64_t> max_reply_bytes{1024, std::uint64_t{4} << 30,
                                                "a whole number of bytes from 1024 to 4294967296"};
constexpr Bounds<std::size_t> max_key_bytes{1, 65536, "a whole number from 1 to 65536"};
constexpr Bounds<std::size_t> wait_replicas{0, 64, "a whole number from 0 to 64"};
constexpr Bounds<std::size_t> db{0, max_db, "a whole number from 0 to 2147483647"};

/// Writes the error messages about one URL, or about a configuration made in code in the terms of
/// its URL (to_url), which never show its password. They are built from the parsed parts, never
/// from the raw URL, and a part is shown only if it does not contain the password. An '@' after
/// the host is the sign of a user or password with an unencoded '/', '?', '#' or '@': Boost.URL
/// then reads pieces of the password as host, port, path, query or fragment, so in that case no
/// part is shown at all.
class Messages {
public:
    /// `sentinel_password`: a second secret (the sentinels'), hidden as the password is.
    Messages(std::string scheme, const boost::urls::url_view& url, std::string password,
             std::string sentinel_password = {})
        : Messages(std::move(scheme), std::move(password), std::move(sentinel_password)) {
        auto has_at = [](std::string_view part) { return part.find('@') != std::string_view::npos; };
        misplaced_at_ = has_at(url.encoded_path()) || has_at(url.encoded_query()) || has_at(url.encoded_fragment());
    }
    Messages(std::string scheme, std::string password, std::string sentinel_password = {})
        : scheme_(std::move(scheme)),
          password_(std::move(password)),
          sentinel_password_(std::move(sentinel_password)) {}

    const std::string& scheme() const noexcept { return scheme_; }

    /// "'value'" (shortened, escaped), or "(not shown)" when it might hold the password.
    std::string quote(std::string_view value) const {
        auto holds = [value](const std::string& secret) {
            return !secret.empty() && value.find(secret) != std::string_view::npos;
        };
        if (misplaced_at_ || holds(password_) || holds(sentinel_password_)) {
            return "(not shown)";
        }
        std::string out = "'";  // appended, not "'" + ...: GCC 12 warns falsely (-Wrestrict) on that
        out += detail::shown(value);
        out += '\'';
        return out;
    }

    [[noreturn]] void fail(errc code, const std::string& what) const {
        std::string message = "keylock: " + what;
        if (misplaced_at_) {
            message += " (the URL has an '@' after its host: if a user or password contains '@', '/', '?' or '#', "
                       "percent-encode it as %40, %2F, %3F or %23)";
        }
        throw Error(code, message);
    }

    [[noreturn]] void bad_value(std::string_view name, std::string_view value, const char* expected) const {
        fail(errc::invalid_option,
             "option '" + std::string(name) + "' has value " + quote(value) + "; expected " + expected);
    }

private:
    std::string scheme_;
    std::string password_;
    std::string sentinel_password_;
    bool misplaced_at_ = false;
};

/// `value` if it is within `bounds`; else throws, naming option `name` and showing `text`, the
/// value as written (nullopt: not a value of the option's type at all).
template <class T>
T within(const Messages& m, std::string_view name, std::optional<T> value, std::string_view text,
         const Bounds<T>& bounds) {
    if (!value || *value < bounds.min || *value > bounds.max) m.bad_value(name, text, bounds.expected);
    return *value;
}

// Where to connect.
[[noreturn]] void no_host(const Messages& m);
/// A host name (not an address): letters, digits, '-', '.' and '_'.
void check_host_name(const Messages& m, const std::string& host);
/// `written`: the host as the URL writes it.
[[noreturn]] void unsupported_host(const Messages& m, std::string_view written);
/// Not shown: with "@host" forgotten, a numeric password is the port.
[[noreturn]] void bad_port(const Messages& m);
/// The database of a redis:// or rediss:// URL, from its path (`path`: "/2"; `value`: the
/// number read from it, if it is one).
int path_db(const Messages& m, std::optional<std::size_t> value, std::string_view path);
void check_socket_path(const Messages& m, const std::string& path);

// The URLs with a list of hosts.
/// The grammar of a URL with a list of hosts, for messages.
const char* list_grammar(Topology topology);
/// What a URL with a list of hosts lists, for messages: "sentinel", "cluster node", "Redlock node".
const char* listed(Topology topology);
[[noreturn]] void no_hosts(const Messages& m, Topology topology);
/// Before one more host of a list: there is room for it.
void check_room(const Messages& m, std::span<const HostPort> before);
/// `entry`, written `text`, is not among the hosts `before` it: a master listed twice would count
/// twice toward the majority.
void check_listed_once(const Messages& m, Topology topology, std::span<const HostPort> before, const HostPort& entry,
                       std::string_view text);
void check_master_name(const Messages& m, const std::string& name);

// The options.
void check_prefix(const Messages& m, const std::string& prefix);
[[noreturn]] void db_in_cluster(const Messages& m);
[[noreturn]] void node_timeout_not_redlock(const Messages& m);
/// Option `name` (sentinel_user, sentinel_password) without sentinels.
[[noreturn]] void sentinel_option_not_sentinel(const Messages& m, std::string_view name);
/// Option `name` (ca_file, cert_file, key_file, verify) without TLS.
[[noreturn]] void needs_tls(const Messages& m, std::string_view name);
/// The rules between options, once all are known.
void check_together(const Messages& m, const RedisConfig& config);

// How to_url writes a configuration, which check() quotes.
/// The scheme of the URL that describes `config`.
std::string scheme_of(const RedisConfig& config);
/// host[:port] as a URL writes it: an IPv6 address in brackets, no port if it is `default_port`.
std::string url_host(const std::string& host, std::uint16_t port, std::uint16_t default_port);

}  // namespace keylock::redis::rules
