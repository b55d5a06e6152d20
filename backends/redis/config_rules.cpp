// SPDX-License-Identifier: BSL-1.0
// The rules of a Redis configuration (config_rules.hpp), and check() of one made in code.
#include "config_rules.hpp"

#include <sys/un.h>

#include <algorithm>
#include <string>
#include <vector>

#include <boost/url/encode.hpp>
#include <boost/url/ipv6_address.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>

namespace keylock::redis {

namespace rules {

namespace {

constexpr std::size_t max_hosts = 16;  // sentinels, cluster seed nodes or Redlock masters in one URL
constexpr std::size_t max_master_name_bytes = 128;
constexpr std::size_t max_prefix_bytes = 128;
// A sockaddr_un holds the path and its terminating NUL.
constexpr std::size_t max_socket_path_bytes = sizeof(sockaddr_un::sun_path) - 1;

}  // namespace

[[noreturn]] void no_host(const Messages& m) {
    const std::string& scheme = m.scheme();
    m.fail(errc::invalid_url,
           "a " + scheme + ":// URL needs a host: " + scheme + "://[user[:password]@]host[:port][/db][?options]");
}

void check_host_name(const Messages& m, const std::string& host) {
    if (!std::all_of(host.begin(), host.end(), [](char c) { return boost::urls::unreserved_chars(c) && c != '~'; })) {
        m.fail(errc::invalid_url, "bad host name " + m.quote(host) + " in a " + m.scheme() +
                                      ":// URL; expected letters, digits, '-', '.' and '_'");
    }
}

[[noreturn]] void unsupported_host(const Messages& m, std::string_view written) {
    m.fail(errc::invalid_url, "unsupported host " + m.quote(written) + " in a " + m.scheme() +
                                  ":// URL; expected a name, an IPv4 address or an [IPv6] address");
}

[[noreturn]] void bad_port(const Messages& m) {
    m.fail(errc::invalid_url, "bad port in a " + m.scheme() + ":// URL; expected a number from 1 to 65535");
}

int path_db(const Messages& m, std::optional<std::size_t> value, std::string_view path) {
    if (!value || *value > max_db) {
        m.fail(errc::invalid_url, "bad database path " + m.quote(path) + " in a " + m.scheme() +
                                      ":// URL; expected /N with N from 0 to 2147483647");
    }
    return static_cast<int>(*value);
}

void check_socket_path(const Messages& m, const std::string& path) {
    if (path.front() != '/') {
        m.fail(errc::invalid_url, "the socket path " + m.quote(path) + " of a unix:// URL is not absolute");
    }
    if (path.find('\0') != std::string::npos) {
        m.fail(errc::invalid_url, "the socket path of a unix:// URL contains a NUL byte (%00)");
    }
    if (path.size() > max_socket_path_bytes) {
        m.fail(errc::invalid_url, "the socket path of a unix:// URL has " + std::to_string(path.size()) +
                                      " bytes; a Unix socket path has at most " +
                                      std::to_string(max_socket_path_bytes));
    }
}

const char* list_grammar(Topology topology) {
    switch (topology) {
        case Topology::sentinel:
            return "redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master_name[?options]";
        case Topology::cluster: return "redis+cluster://[user[:password]@]host[:port][,host[:port]...][?options]";
        default: return "redlock://[user[:password]@]host[:port][,host[:port]...][?options]";
    }
}

const char* listed(Topology topology) {
    return topology == Topology::sentinel  ? "sentinel"
           : topology == Topology::cluster ? "cluster node"
                                           : "Redlock node";
}

[[noreturn]] void no_hosts(const Messages& m, Topology topology) {
    m.fail(errc::invalid_url,
           "a " + m.scheme() + ":// URL needs at least one " + listed(topology) + ": " + list_grammar(topology));
}

void check_room(const Messages& m, std::span<const HostPort> before) {
    if (before.size() == max_hosts) {
        m.fail(errc::invalid_url, "more than " + std::to_string(max_hosts) + " hosts in a " + m.scheme() + ":// URL");
    }
}

void check_listed_once(const Messages& m, Topology topology, std::span<const HostPort> before, const HostPort& entry,
                       std::string_view text) {
    if (topology == Topology::redlock && std::find(before.begin(), before.end(), entry) != before.end()) {
        m.fail(errc::invalid_url, "Redlock node " + m.quote(text) +
                                      " is listed twice in a redlock:// URL; each "
                                      "master counts once toward the majority");
    }
}

void check_master_name(const Messages& m, const std::string& name) {
    if (name.empty()) {
        m.fail(errc::invalid_url, std::string("a redis+sentinel:// URL needs the master's name as its path: ") +
                                      list_grammar(Topology::sentinel));
    }
    const bool printable = std::all_of(name.begin(), name.end(), [](unsigned char c) { return c > ' ' && c < 0x7f; });
    if (name.size() > max_master_name_bytes || !printable || name.find('/') != std::string::npos) {
        m.fail(errc::invalid_url, "bad master name " + m.quote(name) +
                                      " in a redis+sentinel:// URL; expected 1 to 128 printable characters without "
                                      "spaces or '/'");
    }
}

void check_prefix(const Messages& m, const std::string& prefix) {
    // Braces would make the prefix a Redis Cluster hash tag, and the fencing counter keys use a
    // hash tag of their own.
    if (prefix.empty() || prefix.size() > max_prefix_bytes || prefix.find_first_of("{}") != std::string::npos) {
        m.bad_value("prefix", prefix, "1 to 128 bytes without '{' or '}'");
    }
}

[[noreturn]] void db_in_cluster(const Messages& m) {
    m.fail(errc::invalid_option, "option 'db' is not for redis+cluster:// URLs: Redis Cluster has database 0 only");
}

[[noreturn]] void node_timeout_not_redlock(const Messages& m) {
    m.fail(errc::invalid_option, "option 'node_timeout' is for redlock:// URLs; this is a " + m.scheme() +
                                     ":// URL (its commands wait up to command_timeout)");
}

[[noreturn]] void sentinel_option_not_sentinel(const Messages& m, std::string_view name) {
    m.fail(errc::invalid_option, "option '" + std::string(name) +
                                     "' is for redis+sentinel:// and rediss+sentinel:// URLs; this is a " + m.scheme() +
                                     ":// URL");
}

[[noreturn]] void needs_tls(const Messages& m, std::string_view name) {
    const std::string& scheme = m.scheme();
    std::string with_tls = scheme == "redis"              ? "rediss"
                           : scheme == "redlock"          ? "rediss+redlock"
                           : scheme.starts_with("redis+") ? "rediss+" + scheme.substr(6)
                                                          : "rediss";
    m.fail(errc::invalid_option, "option '" + std::string(name) + "' needs " + with_tls + ":// " +
                                     (scheme == "unix" ? "(TLS over a Unix socket is not supported)"
                                                       : "(TLS); this is a " + scheme + ":// URL"));
}

void check_together(const Messages& m, const RedisConfig& config) {
    const Endpoint& ep = config.endpoint;
    if (config.topology == Topology::redlock) {
        if (config.wait_replicas > 0) {
            m.fail(errc::invalid_option, "option 'wait_replicas' is not for redlock:// URLs: each node is a master "
                                         "of its own, and the majority of them is what keeps a lock");
        }
        // A round must end well within the lease, or no lock could ever be valid when granted;
        // and within command_timeout, which breaks the connection to a node that does not answer.
        if (config.node_timeout * 3 > config.lease || config.node_timeout > ep.command_timeout) {
            m.fail(errc::invalid_option, "option 'node_timeout' (" + detail::format_duration(config.node_timeout) +
                                             ") must be at most a third of the lease (" +
                                             detail::format_duration(config.lease) + ") and at most command_timeout (" +
                                             detail::format_duration(ep.command_timeout) + ")");
        }
    }
    // A WAIT is a command like any other: its answer must come within command_timeout.
    if (config.wait_replicas > 0 && config.wait_timeout >= ep.command_timeout) {
        m.fail(errc::invalid_option, "option 'wait_timeout' (" + detail::format_duration(config.wait_timeout) +
                                         ") must be shorter than command_timeout (" +
                                         detail::format_duration(ep.command_timeout) + ")");
    }
    // Connection loads each file on its own: a certificate without its key fails only in the
    // handshake, with an OpenSSL message.
    if (ep.cert_file.empty() != ep.key_file.empty()) {
        m.fail(errc::invalid_option, "options 'cert_file' and 'key_file' go together (a client certificate and its "
                                     "private key)");
    }
}

std::string scheme_of(const RedisConfig& config) {
    const bool tls = config.endpoint.tls;
    switch (config.topology) {
        case Topology::sentinel: return tls ? "rediss+sentinel" : "redis+sentinel";
        case Topology::cluster: return tls ? "rediss+cluster" : "redis+cluster";
        case Topology::redlock: return tls ? "rediss+redlock" : "redlock";
        case Topology::standalone: break;
    }
    return !config.endpoint.unix_path.empty() ? "unix" : config.endpoint.tls ? "rediss" : "redis";
}

std::string url_host(const std::string& host, std::uint16_t port, std::uint16_t default_port) {
    std::string out;
    if (host.find(':') != std::string::npos) {  // IPv6
        out += '[';
        out += host;
        out += ']';
    } else {
        out += boost::urls::encode(host, boost::urls::unreserved_chars);
    }
    if (port != default_port) {
        out += ':';
        out += std::to_string(port);
    }
    return out;
}

namespace {

/// An int of a configuration as a whole number (nullopt if negative).
std::optional<std::size_t> whole(int n) {
    if (n < 0) return std::nullopt;
    return static_cast<std::size_t>(n);
}

/// The host of a configuration: a name, an IPv4 address or an IPv6 address (without brackets).
void check_host(const Messages& m, const std::string& host) {
    if (host.empty()) no_host(m);
    if (host.find(':') == std::string::npos) return check_host_name(m, host);
    if (!boost::urls::parse_ipv6_address(host)) {
        std::string written = "[";  // appended, not "[" + ...: GCC 12 warns falsely (-Wrestrict) on that
        written += host;
        written += ']';
        unsupported_host(m, written);
    }
}

}  // namespace

}  // namespace rules

void check(const RedisConfig& config) {
    using namespace rules;
    using std::chrono::milliseconds;
    const RedisConfig defaults;
    const Endpoint& ep = config.endpoint;
    const Messages m(scheme_of(config), ep.password, config.sentinel_password);
    const bool standalone = config.topology == Topology::standalone;
    const bool unix_socket = standalone && !ep.unix_path.empty();
    // What the URL of `config` (to_url) would say, in its order: where, then the options.
    if (ep.tls && unix_socket) m.fail(errc::invalid_option, "TLS over a Unix socket is not supported");
    if (unix_socket) {
        check_socket_path(m, ep.unix_path);
    } else if (standalone) {
        check_host(m, ep.host);
        if (ep.port == 0) bad_port(m);
        std::string path = "/";
        path += std::to_string(ep.db);
        path_db(m, whole(ep.db), path);
    } else {
        const bool sentinel = config.topology == Topology::sentinel;
        const std::vector<HostPort>& list = sentinel ? config.sentinels : config.nodes;
        if (list.empty()) no_hosts(m, config.topology);
        for (std::size_t i = 0; i < list.size(); ++i) {
            const std::span<const HostPort> before(list.data(), i);
            const HostPort& entry = list[i];
            check_room(m, before);
            check_host(m, entry.host);
            if (entry.port == 0) bad_port(m);
            check_listed_once(m, config.topology, before, entry,
                              url_host(entry.host, entry.port, sentinel ? default_sentinel_port : default_port));
        }
        if (sentinel) check_master_name(m, config.master_name);
    }
    if ((unix_socket || !standalone) && ep.db != 0) {  // the option db=N
        if (config.topology == Topology::cluster) db_in_cluster(m);
        within(m, "db", whole(ep.db), std::to_string(ep.db), rules::db);
    }
    check_prefix(m, config.prefix);
    auto check_duration = [&](const char* name, milliseconds value, const Bounds<milliseconds>& bounds) {
        within(m, name, std::optional(value), detail::format_duration(value), bounds);
    };
    check_duration("lease", config.lease, rules::lease);
    check_duration("connect_timeout", ep.connect_timeout, rules::timeout);
    check_duration("command_timeout", ep.command_timeout, rules::timeout);
    if (ep.health_check.count() != 0) check_duration("health_check", ep.health_check, rules::health_check);
    within(m, "max_reply_bytes", std::optional(ep.max_reply_bytes), std::to_string(ep.max_reply_bytes),
           rules::max_reply_bytes);
    within(m, "max_key_bytes", std::optional(config.max_key_bytes), std::to_string(config.max_key_bytes),
           rules::max_key_bytes);
    within(m, "wait_replicas", whole(config.wait_replicas), std::to_string(config.wait_replicas), rules::wait_replicas);
    check_duration("wait_timeout", config.wait_timeout, rules::wait_timeout);
    if (!ep.tls) {
        if (!ep.ca_file.empty()) needs_tls(m, "ca_file");
        if (!ep.cert_file.empty()) needs_tls(m, "cert_file");
        if (!ep.key_file.empty()) needs_tls(m, "key_file");
        if (!ep.verify) needs_tls(m, "verify");
    }
    if (config.topology != Topology::sentinel) {
        if (!config.sentinel_user.empty()) sentinel_option_not_sentinel(m, "sentinel_user");
        if (!config.sentinel_password.empty()) sentinel_option_not_sentinel(m, "sentinel_password");
    }
    if (config.topology == Topology::redlock) {
        check_duration("node_timeout", config.node_timeout, rules::node_timeout);
    } else if (config.node_timeout != defaults.node_timeout) {
        node_timeout_not_redlock(m);
    }
    check_together(m, config);
}

}  // namespace keylock::redis
