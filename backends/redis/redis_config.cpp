// SPDX-License-Identifier: BSL-1.0
#include "redis_config.hpp"

#include <sys/un.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <set>

#include <boost/url/encode.hpp>
#include <boost/url/encoding_opts.hpp>
#include <boost/url/grammar/lut_chars.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <boost/url/url_view.hpp>

#include <keylock/error.hpp>

#include "src/config.hpp"

namespace keylock::redis {

namespace {

using detail::shown;

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr const char* known_options =
    "prefix, lease, connect_timeout, command_timeout, max_key_bytes, db, wait_replicas, wait_timeout, ca_file, "
    "cert_file, key_file, verify, node_timeout";
constexpr std::size_t max_hosts = 16;  // sentinels, cluster seed nodes or Redlock masters in one URL
constexpr std::size_t max_master_name_bytes = 128;
constexpr std::size_t max_wait_replicas = 64;
constexpr std::uint16_t default_sentinel_port = 26379;
constexpr std::uint16_t default_port = 6379;
constexpr std::size_t max_prefix_bytes = 128;
constexpr std::size_t max_max_key_bytes = 65536;
constexpr std::size_t max_db = std::numeric_limits<std::int32_t>::max();  // SELECT takes a 32-bit index
// A sockaddr_un holds the path and its terminating NUL.
constexpr std::size_t max_socket_path_bytes = sizeof(sockaddr_un::sun_path) - 1;

/// Percent-encodes every byte but RFC 3986's unreserved characters (and, for paths, '/' and
/// ':'), with Boost.URL.
std::string encode(std::string_view text) { return boost::urls::encode(text, boost::urls::unreserved_chars); }
std::string encode_path(std::string_view text) {
    static constexpr auto path_chars = boost::urls::unreserved_chars + boost::urls::grammar::lut_chars("/:");
    return boost::urls::encode(text, path_chars);
}

/// Writes the error messages about one URL, which never show its password. They are built from
/// the parsed parts, never from the raw URL, and a part is shown only if it does not contain the
/// password. An '@' after the host is the sign of a user or password with an unencoded '/', '?',
/// '#' or '@': Boost.URL then reads pieces of the password as host, port, path, query or
/// fragment, so in that case no part is shown at all.
class Messages {
public:
    Messages(std::string scheme, const boost::urls::url_view& url, std::string password)
        : scheme_(std::move(scheme)), password_(std::move(password)) {
        auto has_at = [](std::string_view part) { return part.find('@') != std::string_view::npos; };
        misplaced_at_ = has_at(url.encoded_path()) || has_at(url.encoded_query()) || has_at(url.encoded_fragment());
    }

    const std::string& scheme() const noexcept { return scheme_; }

    /// "'value'" (shortened, escaped), or "(not shown)" when it might hold the password.
    std::string quote(std::string_view value) const {
        if (misplaced_at_ || (!password_.empty() && value.find(password_) != std::string_view::npos)) {
            return "(not shown)";
        }
        std::string out = "'";  // appended, not "'" + ...: GCC 12 warns falsely (-Wrestrict) on that
        out += shown(value);
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
    bool misplaced_at_ = false;
};

milliseconds duration(const Messages& m, std::string_view name, std::string_view value, milliseconds min,
                      milliseconds max, const char* expected) {
    const auto d = detail::parse_duration(value);
    if (!d || *d < min || *d > max) m.bad_value(name, value, expected);
    return *d;
}

/// host[:port][/db] of redis:// and rediss://.
void parse_tcp_location(const boost::urls::url_view& url, const Messages& m, Endpoint& ep) {
    const std::string& scheme = m.scheme();
    if (url.encoded_host().empty()) {
        m.fail(errc::invalid_url,
               "a " + scheme + ":// URL needs a host: " + scheme + "://[user[:password]@]host[:port][/db][?options]");
    }
    switch (url.host_type()) {
        case boost::urls::host_type::ipv4:
        case boost::urls::host_type::ipv6:
            ep.host = url.host_address();  // IPv6 without its brackets, as Endpoint wants it
            break;
        case boost::urls::host_type::name:
            ep.host = url.host_name();
            if (!std::all_of(ep.host.begin(), ep.host.end(),
                             [](char c) { return boost::urls::unreserved_chars(c) && c != '~'; })) {
                m.fail(errc::invalid_url, "bad host name " + m.quote(ep.host) + " in a " + scheme +
                                              ":// URL; expected letters, digits, '-', '.' and '_'");
            }
            break;
        default:
            m.fail(errc::invalid_url, "unsupported host " + m.quote(url.encoded_host()) + " in a " + scheme +
                                          ":// URL; expected a name, an IPv4 address or an [IPv6] address");
    }
    const std::string_view path = url.encoded_path();
    // Boost.URL 1.81 accepts a path without its leading '/' after the authority: "host:63x9" is
    // port 63 and path "x9", "user:pw" (with "@host" forgotten) is host "user", an empty port and
    // path "pw". Not shown, then: it may be a password.
    if (!path.empty() && path.front() != '/') {
        m.fail(errc::invalid_url, "malformed " + scheme + ":// URL after the host; expected [:port][/db][?options]");
    }
    if (url.has_port()) {
        // Not shown either: with "@host" forgotten, a numeric password is the port.
        const auto port = parse_port(url.port());
        if (!port) {
            m.fail(errc::invalid_url, "bad port in a " + scheme + ":// URL; expected a number from 1 to 65535");
        }
        ep.port = *port;
    }
    if (path.empty() || path == "/") return;
    const auto db = detail::parse_size(path.substr(1));
    if (!db || *db > max_db) {
        m.fail(errc::invalid_url, "bad database path " + m.quote(path) + " in a " + scheme +
                                      ":// URL; expected /N with N from 0 to 2147483647");
    }
    ep.db = static_cast<int>(*db);
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
    if (ep.unix_path.front() != '/') {
        m.fail(errc::invalid_url, "the socket path " + m.quote(ep.unix_path) + " of a unix:// URL is not absolute");
    }
    if (ep.unix_path.find('\0') != std::string::npos) {
        m.fail(errc::invalid_url, "the socket path of a unix:// URL contains a NUL byte (%00)");
    }
    if (ep.unix_path.size() > max_socket_path_bytes) {
        m.fail(errc::invalid_url, "the socket path of a unix:// URL has " + std::to_string(ep.unix_path.size()) +
                                      " bytes; a Unix socket path has at most " +
                                      std::to_string(max_socket_path_bytes));
    }
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
            // Braces would make the prefix a Redis Cluster hash tag, and the fencing counter keys
            // use a hash tag of their own.
            if (value.empty() || value.size() > max_prefix_bytes || value.find_first_of("{}") != std::string::npos) {
                m.bad_value(name, value, "1 to 128 bytes without '{' or '}'");
            }
            config.prefix = value;
        } else if (name == "lease") {
            config.lease = duration(m, name, value, 1s, 24h, "a duration from 1s to 24h");
        } else if (name == "connect_timeout") {
            ep.connect_timeout = duration(m, name, value, 10ms, 10min, "a duration from 10ms to 10m");
        } else if (name == "command_timeout") {
            ep.command_timeout = duration(m, name, value, 10ms, 10min, "a duration from 10ms to 10m");
        } else if (name == "max_key_bytes") {
            const auto n = detail::parse_size(value);
            if (!n || *n == 0 || *n > max_max_key_bytes) m.bad_value(name, value, "a whole number from 1 to 65536");
            config.max_key_bytes = *n;
        } else if (name == "wait_replicas") {
            const auto n = detail::parse_size(value);
            if (!n || *n > max_wait_replicas) m.bad_value(name, value, "a whole number from 0 to 64");
            config.wait_replicas = static_cast<int>(*n);
        } else if (name == "wait_timeout") {
            config.wait_timeout = duration(m, name, value, 1ms, 1min, "a duration from 1ms to 1m");
        } else if (name == "node_timeout") {
            if (config.topology != Topology::redlock) {
                m.fail(errc::invalid_option, "option 'node_timeout' is for redlock:// URLs; this is a " + scheme +
                                                 ":// URL (its commands wait up to command_timeout)");
            }
            config.node_timeout = duration(m, name, value, 1ms, 10s, "a duration from 1ms to 10s");
        } else if (name == "db") {
            if (config.topology == Topology::cluster) {
                m.fail(errc::invalid_option, "option 'db' is not for redis+cluster:// URLs: Redis Cluster has "
                                             "database 0 only");
            }
            if (scheme != "unix" && scheme != "redis+sentinel" && scheme != "redlock") {
                std::string what = "option 'db' is for unix:// URLs; a " + scheme;
                what += ":// URL has the database in its path (";
                what += scheme;
                what += "://host:6379/2)";
                m.fail(errc::invalid_option, what);
            }
            const auto db = detail::parse_size(value);
            if (!db || *db > max_db) m.bad_value(name, value, "a whole number from 0 to 2147483647");
            ep.db = static_cast<int>(*db);
        } else if (name == "ca_file" || name == "cert_file" || name == "key_file" || name == "verify") {
            if (!ep.tls) {
                m.fail(errc::invalid_option,
                       "option '" + name + "' needs rediss:// " +
                           (scheme == "unix"             ? "(TLS over a Unix socket is not supported)"
                            : scheme == "redis"          ? "(TLS); this is a redis:// URL"
                            : scheme == "redis+sentinel" ? "(TLS through sentinels is not supported)"
                                                         : "(TLS is not supported with " + scheme + ":// yet)"));
            }
            if (name == "verify") {
                const auto b = detail::parse_bool(value);
                if (!b) m.bad_value(name, value, "true or false");
                ep.verify = *b;
            } else {
                if (value.empty()) m.bad_value(name, value, "the path of a PEM file");
                std::string& file = name == "ca_file" ? ep.ca_file : name == "cert_file" ? ep.cert_file : ep.key_file;
                file = value;
            }
        } else {
            const bool credentials = name == "user" || name == "username" || name == "password";
            m.fail(errc::unknown_option,
                   "unknown option " + m.quote(name) + " for a Redis URL (known: " + known_options + ")" +
                       (credentials ? "; a user and password go before the host: redis://user:password@host" : ""));
        }
    }
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

/// The grammar of a URL with a list of hosts, for messages.
const char* list_grammar(Topology topology) {
    switch (topology) {
        case Topology::sentinel:
            return "redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master_name[?options]";
        case Topology::cluster: return "redis+cluster://[user[:password]@]host[:port][,host[:port]...][?options]";
        default: return "redlock://[user[:password]@]host[:port][,host[:port]...][?options]";
    }
}

/// The master's name, from the path of a redis+sentinel:// URL.
void parse_master_name(const boost::urls::url_view& url, const Messages& m, RedisConfig& config) {
    const std::string_view path = url.encoded_path();
    const char* grammar = list_grammar(Topology::sentinel);
    if (path.empty() || path == "/") {
        m.fail(errc::invalid_url,
               std::string("a redis+sentinel:// URL needs the master's name as its path: ") + grammar);
    }
    if (path.front() != '/') {  // see parse_tcp_location: not shown, it may be a password
        m.fail(errc::invalid_url, std::string("malformed redis+sentinel:// URL after the hosts; expected ") + grammar);
    }
    config.master_name = url.path().substr(1);
    const std::string& name = config.master_name;
    const bool printable = std::all_of(name.begin(), name.end(), [](unsigned char c) { return c > ' ' && c < 0x7f; });
    if (name.empty() || name.size() > max_master_name_bytes || !printable || name.find('/') != std::string::npos) {
        m.fail(errc::invalid_url, "bad master name " + m.quote(name) +
                                      " in a redis+sentinel:// URL; expected 1 to 128 printable characters without "
                                      "spaces or '/'");
    }
}

/// The URLs with a list of hosts: redis+sentinel:// (then a master's name as the path),
/// redis+cluster:// and redlock:// (no path). Boost.URL takes one host: the list is cut out of
/// the authority, each entry parsed on its own, and the rest parsed as a URL with one
/// placeholder host.
RedisConfig parse_list_url(std::string_view text, const std::string& scheme, Topology topology) {
    const char* grammar = list_grammar(topology);
    const char* what = topology == Topology::sentinel  ? "sentinel"
                       : topology == Topology::cluster ? "cluster node"
                                                       : "Redlock node";
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
    if (url.has_userinfo()) {
        ep.user = url.user();
        if (url.has_password()) ep.password = url.password();
    }
    const Messages m(scheme, url, ep.password);
    if (url.has_fragment()) m.fail(errc::invalid_url, "a " + scheme + ":// URL takes no fragment ('#...')");
    if (hosts.empty()) {
        m.fail(errc::invalid_url, "a " + scheme + ":// URL needs at least one " + what + ": " + grammar);
    }
    std::vector<HostPort>& list = topology == Topology::sentinel ? config.sentinels : config.nodes;
    std::size_t from = 0;
    for (;;) {
        const std::size_t comma = std::min(hosts.find(',', from), hosts.size());
        const std::string_view one = hosts.substr(from, comma - from);
        if (one.empty())
            m.fail(errc::invalid_url, "an empty " + std::string(what) + " address in a " + scheme + ":// URL (',,')");
        if (list.size() == max_hosts) {
            m.fail(errc::invalid_url, "more than " + std::to_string(max_hosts) + " hosts in a " + scheme + ":// URL");
        }
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
        // A master listed twice would count twice toward the majority.
        if (topology == Topology::redlock && std::find(list.begin(), list.end(), entry) != list.end()) {
            m.fail(errc::invalid_url, "Redlock node " + m.quote(one) +
                                          " is listed twice in a redlock:// URL; each "
                                          "master counts once toward the majority");
        }
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
    if (scheme == "redis+sentinel") return parse_list_url(text, scheme, Topology::sentinel);
    if (scheme == "redis+cluster") return parse_list_url(text, scheme, Topology::cluster);
    if (scheme == "redlock") return parse_list_url(text, scheme, Topology::redlock);
    if (scheme != "redis" && scheme != "rediss" && scheme != "unix") {
        throw Error(errc::invalid_url,
                    "keylock: not a Redis URL: scheme '" + shown(scheme) +
                        "' (expected redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// or redlock://)");
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
    const Messages m(scheme, url, ep.password);
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
    std::string url = sentinel                               ? "redis+sentinel://"
                      : config.topology == Topology::cluster ? "redis+cluster://"
                      : config.topology == Topology::redlock ? "redlock://"
                      : unix_socket                          ? "unix://"
                      : ep.tls                               ? "rediss://"
                                                             : "redis://";
    if (!ep.user.empty() || !ep.password.empty()) {
        url += encode(ep.user);
        if (!ep.password.empty()) {
            url += ':';
            url += password == Password::redacted ? std::string("***") : encode(ep.password);
        }
        url += '@';
    }
    auto add_host = [&](const std::string& host, std::uint16_t port, std::uint16_t default_port) {
        if (host.find(':') != std::string::npos) {  // IPv6
            url += '[';
            url += host;
            url += ']';
        } else {
            url += encode(host);
        }
        if (port != default_port) {
            url += ':';
            url += std::to_string(port);
        }
    };
    if (sentinel) {
        for (std::size_t i = 0; i < config.sentinels.size(); ++i) {
            if (i > 0) url += ',';
            add_host(config.sentinels[i].host, config.sentinels[i].port, default_sentinel_port);
        }
        url += '/';
        url += encode(config.master_name);
    } else if (listed) {
        for (std::size_t i = 0; i < config.nodes.size(); ++i) {
            if (i > 0) url += ',';
            add_host(config.nodes[i].host, config.nodes[i].port, default_port);
        }
    } else if (unix_socket) {
        url += encode_path(ep.unix_path);
    } else {
        add_host(ep.host, ep.port, defaults.endpoint.port);
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
    if (config.max_key_bytes != defaults.max_key_bytes) add("max_key_bytes", std::to_string(config.max_key_bytes));
    if (config.wait_replicas != defaults.wait_replicas) add("wait_replicas", std::to_string(config.wait_replicas));
    if (config.wait_timeout != defaults.wait_timeout) add("wait_timeout", detail::format_duration(config.wait_timeout));
    if (!ep.ca_file.empty()) add("ca_file", ep.ca_file);
    if (!ep.cert_file.empty()) add("cert_file", ep.cert_file);
    if (!ep.key_file.empty()) add("key_file", ep.key_file);
    if (ep.verify != defaults.endpoint.verify) add("verify", ep.verify ? "true" : "false");
    if (config.node_timeout != defaults.node_timeout) add("node_timeout", detail::format_duration(config.node_timeout));
    return url;
}

}  // namespace keylock::redis
