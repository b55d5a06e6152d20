// SPDX-License-Identifier: BSL-1.0
// Redis URLs read (parse_redis_url) and written (to_url); the rules they follow are in
// config_rules.hpp.
#include "redis_config.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <optional>
#include <set>

#include <boost/url/encode.hpp>
#include <boost/url/encoding_opts.hpp>
#include <boost/url/grammar/lut_chars.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <boost/url/url_view.hpp>

#include <keylock/error.hpp>

#include "config_rules.hpp"
#include "src/config.hpp"

namespace keylock::redis {

using namespace rules;

namespace {

using detail::shown;
using std::chrono::milliseconds;

constexpr const char* known_options =
    "prefix, lease, connect_timeout, command_timeout, max_key_bytes, db, wait_replicas, wait_timeout, ca_file, "
    "cert_file, key_file, verify, node_timeout, sentinel_user, sentinel_password, health_check, max_reply_bytes";

/// Percent-encodes every byte but RFC 3986's unreserved characters (and, for paths, '/' and
/// ':'), with Boost.URL.
std::string encode(std::string_view text) { return boost::urls::encode(text, boost::urls::unreserved_chars); }
std::string encode_path(std::string_view text) {
    static constexpr auto path_chars = boost::urls::unreserved_chars + boost::urls::grammar::lut_chars("/:");
    return boost::urls::encode(text, path_chars);
}

/// The value of option `name` as written (percent-decoded), or empty: the sentinels' password,
/// which messages must hide before the options are read.
std::string option_value(const boost::urls::url_view& url, std::string_view name) {
    // An empty query before a fragment ("…/?#") sends Boost.URL 1.81's params iterator past the
    // end (found by fuzz_url): an empty query has no options to read anyway.
    if (url.encoded_query().empty()) return {};
    for (const auto& param : url.params(boost::urls::encoding_opts(false, false, false))) {
        if (param.key == name) return param.value;
    }
    return {};
}

milliseconds duration(const Messages& m, std::string_view name, std::string_view value,
                      const Bounds<milliseconds>& bounds) {
    return within(m, name, detail::parse_duration(value), value, bounds);
}

/// health_check: 0 (off) or within its bounds.
milliseconds health_check(const Messages& m, std::string_view value) {
    const auto d = detail::parse_duration(value);
    if (d && d->count() == 0) return *d;
    return within(m, "health_check", d, value, rules::health_check);
}

/// host[:port][/db] of redis:// and rediss://.
void parse_tcp_location(const boost::urls::url_view& url, const Messages& m, Endpoint& ep) {
    if (url.encoded_host().empty()) no_host(m);
    switch (url.host_type()) {
        case boost::urls::host_type::ipv4:
        case boost::urls::host_type::ipv6:
            ep.host = url.host_address();  // IPv6 without its brackets, as Endpoint wants it
            break;
        case boost::urls::host_type::name:
            ep.host = url.host_name();
            check_host_name(m, ep.host);
            break;
        default: unsupported_host(m, url.encoded_host());
    }
    const std::string_view path = url.encoded_path();
    // Boost.URL 1.81 accepts a path without its leading '/' after the authority: "host:63x9" is
    // port 63 and path "x9", "user:pw" (with "@host" forgotten) is host "user", an empty port and
    // path "pw". Not shown, then: it may be a password.
    if (!path.empty() && path.front() != '/') {
        m.fail(errc::invalid_url,
               "malformed " + m.scheme() + ":// URL after the host; expected [:port][/db][?options]");
    }
    if (url.has_port()) {
        const auto port = parse_port(url.port());
        if (!port) bad_port(m);
        ep.port = *port;
    }
    if (path.empty() || path == "/") return;
    ep.db = path_db(m, detail::parse_size(path.substr(1)), path);
}

/// The socket path of unix://.
void parse_unix_location(const boost::urls::url_view& url, const Messages& m, Endpoint& ep) {
    if (!url.encoded_host().empty() || url.has_port()) {
        // The host only: with "@/path" forgotten, the port is a numeric password.
        const std::string found = url.encoded_host().empty() ? "" : " (found host " + m.quote(url.encoded_host()) + ")";
        m.fail(errc::invalid_url, "a unix:// URL takes no host or port" + found +
                                      "; write unix:///path/to/redis.sock, with three slashes");
    }
    ep.unix_path = url.path();
    if (ep.unix_path.empty()) {
        m.fail(errc::invalid_url, "a unix:// URL needs a socket path: unix://[user[:password]@]/path/to/redis.sock");
    }
    check_socket_path(m, ep.unix_path);
}

void parse_options(const boost::urls::url_view& url, const Messages& m, RedisConfig& config) {
    Endpoint& ep = config.endpoint;
    const std::string& scheme = m.scheme();
    std::set<std::string> seen;
    // '+' stays a plus: the values are names and paths, not HTML form data.
    for (const auto& param : url.params(boost::urls::encoding_opts(false, false, false))) {
        const std::string& name = param.key;
        const std::string& value = param.value;
        if (name.empty() && !param.has_value) continue;  // from "?" alone, "&&" or a trailing '&'
        if (!seen.insert(name).second) m.fail(errc::invalid_option, "option " + m.quote(name) + " is given twice");

        if (name == "prefix") {
            check_prefix(m, value);
            config.prefix = value;
        } else if (name == "lease") {
            config.lease = duration(m, name, value, rules::lease);
        } else if (name == "connect_timeout") {
            ep.connect_timeout = duration(m, name, value, rules::timeout);
        } else if (name == "command_timeout") {
            ep.command_timeout = duration(m, name, value, rules::timeout);
        } else if (name == "health_check") {
            ep.health_check = health_check(m, value);
        } else if (name == "max_reply_bytes") {
            const auto bytes = detail::parse_size(value);
            ep.max_reply_bytes = within(m, name, bytes ? std::optional<std::uint64_t>(*bytes) : std::nullopt, value,
                                        rules::max_reply_bytes);
        } else if (name == "max_key_bytes") {
            config.max_key_bytes = within(m, name, detail::parse_size(value), value, rules::max_key_bytes);
        } else if (name == "wait_replicas") {
            config.wait_replicas =
                static_cast<int>(within(m, name, detail::parse_size(value), value, rules::wait_replicas));
        } else if (name == "wait_timeout") {
            config.wait_timeout = duration(m, name, value, rules::wait_timeout);
        } else if (name == "node_timeout") {
            if (config.topology != Topology::redlock) node_timeout_not_redlock(m);
            config.node_timeout = duration(m, name, value, rules::node_timeout);
        } else if (name == "db") {
            if (config.topology == Topology::cluster) db_in_cluster(m);
            if (config.topology == Topology::standalone && scheme != "unix") {
                std::string what = "option 'db' is for unix:// URLs; a " + scheme;
                what += ":// URL has the database in its path (";
                what += scheme;
                what += "://host:6379/2)";
                m.fail(errc::invalid_option, what);
            }
            ep.db = static_cast<int>(within(m, name, detail::parse_size(value), value, rules::db));
        } else if (name == "ca_file" || name == "cert_file" || name == "key_file" || name == "verify") {
            if (!ep.tls) needs_tls(m, name);
            if (name == "verify") {
                const auto b = detail::parse_bool(value);
                if (!b) m.bad_value(name, value, "true or false");
                ep.verify = *b;
            } else {
                if (value.empty()) m.bad_value(name, value, "the path of a PEM file");
                std::string& file = name == "ca_file" ? ep.ca_file : name == "cert_file" ? ep.cert_file : ep.key_file;
                file = value;
            }
        } else if (name == "sentinel_user" || name == "sentinel_password") {
            if (config.topology != Topology::sentinel) sentinel_option_not_sentinel(m, name);
            (name == "sentinel_user" ? config.sentinel_user : config.sentinel_password) = value;
        } else {
            const bool credentials = name == "user" || name == "username" || name == "password";
            m.fail(errc::unknown_option,
                   "unknown option " + m.quote(name) + " for a Redis URL (known: " + known_options + ")" +
                       (credentials ? "; a user and password go before the host: redis://user:password@host" : ""));
        }
    }
    check_together(m, config);
}

/// The master's name, from the path of a redis+sentinel:// URL.
void parse_master_name(const boost::urls::url_view& url, const Messages& m, RedisConfig& config) {
    const std::string_view path = url.encoded_path();
    if (!path.empty() && path.front() != '/') {  // see parse_tcp_location: not shown, it may be a password
        m.fail(errc::invalid_url,
               "malformed " + m.scheme() + ":// URL after the hosts; expected " + list_grammar(Topology::sentinel));
    }
    config.master_name = path.empty() ? std::string() : url.path().substr(1);
    check_master_name(m, config.master_name);
}

/// The URLs with a list of hosts: redis+sentinel:// (then a master's name as the path),
/// redis+cluster:// and redlock:// (no path), and their TLS forms rediss+sentinel://,
/// rediss+cluster:// and rediss+redlock://. Boost.URL takes one host: the list is cut out of
/// the authority, each entry parsed on its own, and the rest parsed as a URL with one
/// placeholder host.
RedisConfig parse_list_url(std::string_view text, const std::string& scheme, Topology topology) {
    const char* grammar = list_grammar(topology);
    const char* what = listed(topology);
    const std::size_t start = text.find("://");
    if (start == std::string_view::npos) {
        throw Error(errc::invalid_url, "keylock: malformed " + scheme + ":// URL; expected " + grammar);
    }
    const std::size_t authority = start + 3;
    const std::size_t end = std::min(text.find_first_of("/?#", authority), text.size());
    const std::size_t at = text.substr(authority, end - authority).rfind('@');
    const std::size_t hosts_begin = at == std::string_view::npos ? authority : authority + at + 1;
    const std::string_view hosts = text.substr(hosts_begin, end - hosts_begin);
    const std::string rest = std::string(text.substr(0, hosts_begin)) + "hosts.invalid" + std::string(text.substr(end));
    const auto parsed = boost::urls::parse_uri(rest);
    if (!parsed) {
        throw Error(errc::invalid_url, "keylock: malformed " + scheme + ":// URL (" + parsed.error().message() +
                                           "); expected " + grammar +
                                           ", with '@', ':', '/', '?', '#', '%' and spaces percent-encoded in a user "
                                           "or password");
    }
    const boost::urls::url_view& url = *parsed;
    RedisConfig config;
    config.topology = topology;
    Endpoint& ep = config.endpoint;
    ep.host.clear();
    ep.port = 0;
    ep.tls = scheme.starts_with("rediss+");
    if (url.has_userinfo()) {
        ep.user = url.user();
        if (url.has_password()) ep.password = url.password();
    }
    const Messages m(scheme, url, ep.password, option_value(url, "sentinel_password"));
    if (url.has_fragment()) m.fail(errc::invalid_url, "a " + scheme + ":// URL takes no fragment ('#...')");
    if (hosts.empty()) no_hosts(m, topology);
    std::vector<HostPort>& list = topology == Topology::sentinel ? config.sentinels : config.nodes;
    std::size_t from = 0;
    for (;;) {
        const std::size_t comma = std::min(hosts.find(',', from), hosts.size());
        const std::string_view one = hosts.substr(from, comma - from);
        if (one.empty())
            m.fail(errc::invalid_url, "an empty " + std::string(what) + " address in a " + scheme + ":// URL (',,')");
        check_room(m, list);
        const std::string host_url = "redis://" + std::string(one);  // outlives its url_view
        const auto host = boost::urls::parse_uri(host_url);
        if (!host || host->has_userinfo() || !host->encoded_path().empty()) {
            m.fail(errc::invalid_url, "bad " + std::string(what) + " address " + m.quote(one) + " in a " + scheme +
                                          ":// URL; expected host[:port]");
        }
        Endpoint where;
        where.port = topology == Topology::sentinel ? default_sentinel_port : default_port;
        parse_tcp_location(*host, m, where);
        HostPort entry{where.host, where.port};
        check_listed_once(m, topology, list, entry, one);
        list.push_back(std::move(entry));
        if (comma == hosts.size()) break;
        from = comma + 1;
    }
    if (topology == Topology::sentinel) {
        parse_master_name(url, m, config);
    } else {
        const std::string_view path = url.encoded_path();
        if (!path.empty() && path != "/") {
            const char* why = topology == Topology::cluster ? " (Redis Cluster has database 0 only)"
                                                            : " (the database is option db=N)";
            m.fail(errc::invalid_url,
                   "a " + scheme + ":// URL takes no path" + std::string(why) + "; expected " + grammar);
        }
    }
    parse_options(url, m, config);
    return config;
}

}  // namespace

std::optional<std::uint16_t> parse_port(std::string_view text) {
    const auto port = detail::parse_size(text);
    if (!port || *port == 0 || *port > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(*port);
}

RedisConfig parse_redis_url(std::string_view text) {
    const std::string scheme = detail::url_scheme(text);
    if (scheme == "redis+sentinel" || scheme == "rediss+sentinel") {
        return parse_list_url(text, scheme, Topology::sentinel);
    }
    if (scheme == "redis+cluster" || scheme == "rediss+cluster") return parse_list_url(text, scheme, Topology::cluster);
    if (scheme == "redlock" || scheme == "rediss+redlock") return parse_list_url(text, scheme, Topology::redlock);
    if (scheme != "redis" && scheme != "rediss" && scheme != "unix") {
        throw Error(errc::invalid_url, "keylock: not a Redis URL: scheme '" + shown(scheme) +
                                           "' (expected redis://, rediss://, unix://, redis+sentinel://, "
                                           "redis+cluster://, redlock://, or with TLS rediss+sentinel://, "
                                           "rediss+cluster://, rediss+redlock://)");
    }
    const auto parsed = boost::urls::parse_uri(text);
    if (!parsed) {
        // Boost.URL does not say where; the likeliest cause is a password with a reserved
        // character. The message shows no part of the URL: we cannot tell which part is the password.
        const std::string grammar = scheme == "unix" ? "unix://[user[:password]@]/path/to/redis.sock[?options]"
                                                     : scheme + "://[user[:password]@]host[:port][/db][?options]";
        throw Error(errc::invalid_url, "keylock: malformed " + scheme + ":// URL (" + parsed.error().message() +
                                           "); expected " + grammar +
                                           ", with '@', ':', '/', '?', '#', '%' and "
                                           "spaces percent-encoded in a user or password");
    }
    const boost::urls::url_view& url = *parsed;

    RedisConfig config;
    Endpoint& ep = config.endpoint;
    ep.tls = scheme == "rediss";
    if (url.has_userinfo()) {
        ep.user = url.user();
        if (url.has_password()) ep.password = url.password();
    }
    const Messages m(scheme, url, ep.password, option_value(url, "sentinel_password"));
    if (url.has_fragment()) m.fail(errc::invalid_url, "a " + scheme + ":// URL takes no fragment ('#...')");
    if (scheme == "unix") {
        parse_unix_location(url, m, ep);
    } else {
        parse_tcp_location(url, m, ep);
    }
    parse_options(url, m, config);
    return config;
}

std::string to_url(const RedisConfig& config, Password password) {
    const RedisConfig defaults;
    const Endpoint& ep = config.endpoint;
    const bool unix_socket = !ep.unix_path.empty();

    const bool sentinel = config.topology == Topology::sentinel;
    const bool listed = sentinel || config.topology == Topology::cluster || config.topology == Topology::redlock;
    std::string url = scheme_of(config) + "://";
    if (!ep.user.empty() || !ep.password.empty()) {
        url += encode(ep.user);
        if (!ep.password.empty()) {
            url += ':';
            url += password == Password::redacted ? std::string("***") : encode(ep.password);
        }
        url += '@';
    }
    if (sentinel) {
        for (std::size_t i = 0; i < config.sentinels.size(); ++i) {
            if (i > 0) url += ',';
            url += url_host(config.sentinels[i].host, config.sentinels[i].port, default_sentinel_port);
        }
        url += '/';
        url += encode(config.master_name);
    } else if (listed) {
        for (std::size_t i = 0; i < config.nodes.size(); ++i) {
            if (i > 0) url += ',';
            url += url_host(config.nodes[i].host, config.nodes[i].port, default_port);
        }
    } else if (unix_socket) {
        url += encode_path(ep.unix_path);
    } else {
        url += url_host(ep.host, ep.port, defaults.endpoint.port);
        if (ep.db != 0) {
            url += '/';
            url += std::to_string(ep.db);
        }
    }

    char separator = '?';
    auto add = [&](const char* name, const std::string& value) {
        url += separator;
        url += name;
        url += '=';
        url += encode_path(value);  // '@' too is encoded: an '@' after the host looks like a misplaced password
        separator = '&';
    };
    if ((unix_socket || listed) && ep.db != 0) add("db", std::to_string(ep.db));
    if (config.prefix != defaults.prefix) add("prefix", config.prefix);
    if (config.lease != defaults.lease) add("lease", detail::format_duration(config.lease));
    if (ep.connect_timeout != defaults.endpoint.connect_timeout) {
        add("connect_timeout", detail::format_duration(ep.connect_timeout));
    }
    if (ep.command_timeout != defaults.endpoint.command_timeout) {
        add("command_timeout", detail::format_duration(ep.command_timeout));
    }
    if (ep.health_check != defaults.endpoint.health_check)
        add("health_check", detail::format_duration(ep.health_check));
    if (ep.max_reply_bytes != defaults.endpoint.max_reply_bytes) {
        add("max_reply_bytes", std::to_string(ep.max_reply_bytes));
    }
    if (config.max_key_bytes != defaults.max_key_bytes) add("max_key_bytes", std::to_string(config.max_key_bytes));
    if (config.wait_replicas != defaults.wait_replicas) add("wait_replicas", std::to_string(config.wait_replicas));
    if (config.wait_timeout != defaults.wait_timeout) add("wait_timeout", detail::format_duration(config.wait_timeout));
    if (!ep.ca_file.empty()) add("ca_file", ep.ca_file);
    if (!ep.cert_file.empty()) add("cert_file", ep.cert_file);
    if (!ep.key_file.empty()) add("key_file", ep.key_file);
    if (ep.verify != defaults.endpoint.verify) add("verify", ep.verify ? "true" : "false");
    if (config.node_timeout != defaults.node_timeout) add("node_timeout", detail::format_duration(config.node_timeout));
    if (!config.sentinel_user.empty()) add("sentinel_user", config.sentinel_user);
    if (!config.sentinel_password.empty()) {
        if (password == Password::redacted) {
            add("sentinel_password", "");
            url += "***";  // as the password before the host: not percent-encoded
        } else {
            add("sentinel_password", config.sentinel_password);
        }
    }
    return url;
}

}  // namespace keylock::redis
