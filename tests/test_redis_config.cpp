// SPDX-License-Identifier: BSL-1.0
// Redis URLs: every accepted form and default, every error class, and no password in any
// message or in to_url().
#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <keylock/error.hpp>
#include <keylock/redis.hpp>

#include "backends/redis/redis_config.hpp"
#include "redis_server.hpp"

using keylock::errc;
using keylock::redis::parse_redis_url;
using keylock::redis::RedisConfig;
using keylock::redis::to_url;
using namespace std::chrono_literals;

namespace {

constexpr const char* password = "S3cr3t-pw";

/// Every field, as a tuple Catch2 can print when a comparison fails.
auto fields(const RedisConfig& c) {
    const auto& e = c.endpoint;
    std::string sentinels, nodes;
    for (const auto& s : c.sentinels) sentinels += s.host + ":" + std::to_string(s.port) + ",";
    for (const auto& n : c.nodes) nodes += n.host + ":" + std::to_string(n.port) + ",";
    return std::make_tuple(static_cast<int>(c.topology), e.host, e.port, e.unix_path, e.tls, e.ca_file, e.cert_file,
                           e.key_file, e.verify, e.user, e.password, e.db, e.connect_timeout.count(),
                           e.command_timeout.count(), e.health_check.count(), e.max_reply_bytes, c.prefix,
                           c.lease.count(), c.max_key_bytes, sentinels, c.master_name, nodes, c.node_timeout.count(),
                           c.wait_replicas, c.wait_timeout.count(), c.sentinel_user, c.sentinel_password);
}

/// Runs parse_redis_url(url), expecting keylock::Error with `code` whose message starts with
/// "keylock: ", contains `part` and contains none of `secrets` (by default, the test password).
void expect_error(const std::string& url, errc code, const std::string& part,
                  std::initializer_list<const char*> secrets = {password}) {
    INFO("URL: " << url);
    try {
        parse_redis_url(url);
        FAIL("no error thrown; expected " << keylock::make_error_code(code).message());
    } catch (const keylock::Error& e) {
        const std::string message = e.what();
        INFO("message: " << message);
        CHECK(e.code() == code);
        CHECK(message.rfind("keylock: ", 0) == 0);
        CHECK(message.find(part) != std::string::npos);
        for (const char* secret : secrets) CHECK(message.find(secret) == std::string::npos);
    }
}

/// parse(to_url(c)) is c but for the password, which comes back as "***" (never the real one).
void check_round_trip(const RedisConfig& c) {
    const std::string url = to_url(c);
    INFO("to_url: " << url);
    CHECK(url.find(password) == std::string::npos);
    RedisConfig expected = c;
    if (!expected.endpoint.password.empty()) expected.endpoint.password = "***";
    if (!expected.sentinel_password.empty()) expected.sentinel_password = "***";
    CHECK(fields(parse_redis_url(url)) == fields(expected));
}

}  // namespace

TEST_CASE("a bare redis URL takes every default", "[redis][config]") {
    const RedisConfig c = parse_redis_url("redis://localhost");
    CHECK(fields(c) == fields([] {
              RedisConfig d;
              d.endpoint.host = "localhost";
              return d;
          }()));
    CHECK(c.endpoint.port == 6379);
    CHECK(c.endpoint.db == 0);
    CHECK_FALSE(c.endpoint.tls);
    CHECK(c.endpoint.verify);
    CHECK(c.endpoint.user.empty());
    CHECK(c.endpoint.password.empty());
    CHECK(c.endpoint.connect_timeout == 5s);
    CHECK(c.endpoint.command_timeout == 5s);
    CHECK(c.prefix == "keylock:");
    CHECK(c.lease == 30s);
    CHECK(c.max_key_bytes == 1024);
    CHECK(to_url(c) == "redis://localhost");
    CHECK(fields(parse_redis_url("redis://localhost/")) == fields(c));
    CHECK(fields(parse_redis_url("redis://localhost:6379/0")) == fields(c));
    CHECK(fields(parse_redis_url("REDIS://localhost")) == fields(c));
    // An empty query, "&&" and a trailing '&' are no options.
    CHECK(fields(parse_redis_url("redis://localhost?")) == fields(c));
    CHECK(parse_redis_url("redis://localhost?&lease=2s&&").lease == 2s);
}

TEST_CASE("redis URLs set the user and password and host and port and db and every option", "[redis][config]") {
    const RedisConfig c =
        parse_redis_url("redis://alice:S3cr3t-pw@cache.example.com:6380/3?prefix=app:&lease=10s&connect_timeout=250ms"
                        "&command_timeout=2m&max_key_bytes=256");
    CHECK(c.endpoint.user == "alice");
    CHECK(c.endpoint.password == password);
    CHECK(c.endpoint.host == "cache.example.com");
    CHECK(c.endpoint.port == 6380);
    CHECK(c.endpoint.db == 3);
    CHECK(c.endpoint.unix_path.empty());
    CHECK_FALSE(c.endpoint.tls);
    CHECK(c.prefix == "app:");
    CHECK(c.lease == 10s);
    CHECK(c.endpoint.connect_timeout == 250ms);
    CHECK(c.endpoint.command_timeout == 2min);
    CHECK(c.max_key_bytes == 256);
    CHECK(to_url(c) == "redis://alice:***@cache.example.com:6380/3?prefix=app:&lease=10s&connect_timeout=250ms"
                       "&command_timeout=2m&max_key_bytes=256");
    check_round_trip(c);

    CHECK(parse_redis_url("redis://127.0.0.1").endpoint.host == "127.0.0.1");
    CHECK(parse_redis_url("redis://h/2147483647").endpoint.db == 2147483647);
    CHECK(parse_redis_url("redis://h:1").endpoint.port == 1);
    CHECK(parse_redis_url("redis://h:65535").endpoint.port == 65535);
}

TEST_CASE("IPv6 hosts are written in brackets and kept without them", "[redis][config]") {
    const RedisConfig c = parse_redis_url("redis://[::1]:6380/1");
    CHECK(c.endpoint.host == "::1");
    CHECK(c.endpoint.port == 6380);
    CHECK(c.endpoint.db == 1);
    CHECK(c.endpoint.where() == "[::1]:6380");
    CHECK(to_url(c) == "redis://[::1]:6380/1");
    CHECK(parse_redis_url("rediss://[2001:db8::7]").endpoint.host == "2001:db8::7");
    check_round_trip(c);
}

TEST_CASE("a user or password alone is allowed", "[redis][config]") {
    RedisConfig c = parse_redis_url("redis://:S3cr3t-pw@h");
    CHECK(c.endpoint.user.empty());
    CHECK(c.endpoint.password == password);
    CHECK(to_url(c) == "redis://:***@h");
    check_round_trip(c);

    c = parse_redis_url("redis://bob@h");
    CHECK(c.endpoint.user == "bob");
    CHECK(c.endpoint.password.empty());
    CHECK(to_url(c) == "redis://bob@h");
    check_round_trip(c);

    c = parse_redis_url("redis://@h");
    CHECK(c.endpoint.user.empty());
    CHECK(c.endpoint.password.empty());
}

TEST_CASE("user and password and paths and values are percent-decoded", "[redis][config]") {
    const RedisConfig c = parse_redis_url("redis://us%3Aer%40x:p%40ss%2Fw%3Ard%25%23%3F@h?prefix=a%26b%3Dc+d%20");
    CHECK(c.endpoint.user == "us:er@x");
    CHECK(c.endpoint.password == "p@ss/w:rd%#?");
    CHECK(c.prefix == "a&b=c+d ");  // '+' is a plus, not a space
    check_round_trip(c);
    CHECK(parse_redis_url("unix:///run/my%20redis/r.sock").endpoint.unix_path == "/run/my redis/r.sock");
    CHECK(parse_redis_url("rediss://h?ca_file=/etc/ssl/c%2B%2B.pem").endpoint.ca_file == "/etc/ssl/c++.pem");
}

TEST_CASE("rediss URLs turn TLS on and take the TLS options", "[redis][config]") {
    RedisConfig c = parse_redis_url("rediss://h");
    CHECK(c.endpoint.tls);
    CHECK(c.endpoint.verify);
    CHECK(c.endpoint.port == 6379);
    CHECK(to_url(c) == "rediss://h");
    CHECK(parse_redis_url("RediSS://h").endpoint.tls);

    c = parse_redis_url("rediss://u:S3cr3t-pw@h:6390/4?ca_file=/etc/ca.pem&cert_file=/etc/c.pem&key_file=/etc/k.pem"
                        "&verify=false");
    CHECK(c.endpoint.tls);
    CHECK(c.endpoint.ca_file == "/etc/ca.pem");
    CHECK(c.endpoint.cert_file == "/etc/c.pem");
    CHECK(c.endpoint.key_file == "/etc/k.pem");
    CHECK_FALSE(c.endpoint.verify);
    CHECK(c.endpoint.db == 4);
    CHECK(to_url(c) == "rediss://u:***@h:6390/4?ca_file=/etc/ca.pem&cert_file=/etc/c.pem&key_file=/etc/k.pem"
                       "&verify=false");
    check_round_trip(c);
    CHECK(parse_redis_url("rediss://h?verify=on").endpoint.verify);
}

TEST_CASE("unix URLs name an absolute socket path and take db as an option", "[redis][config]") {
    RedisConfig c = parse_redis_url("unix:///run/redis/redis.sock");
    CHECK(c.endpoint.unix_path == "/run/redis/redis.sock");
    CHECK(c.endpoint.host.empty());
    CHECK(c.endpoint.db == 0);
    CHECK_FALSE(c.endpoint.tls);
    CHECK(c.endpoint.where() == "/run/redis/redis.sock");
    CHECK(to_url(c) == "unix:///run/redis/redis.sock");

    c = parse_redis_url("UNIX://worker:S3cr3t-pw@/tmp/r.sock?db=2&lease=1m&prefix=jobs%40eu:");
    CHECK(c.endpoint.unix_path == "/tmp/r.sock");
    CHECK(c.endpoint.user == "worker");
    CHECK(c.endpoint.password == password);
    CHECK(c.endpoint.db == 2);
    CHECK(c.lease == 1min);
    CHECK(c.prefix == "jobs@eu:");
    CHECK(to_url(c) == "unix://worker:***@/tmp/r.sock?db=2&prefix=jobs%40eu:&lease=1m");
    check_round_trip(c);

    CHECK(parse_redis_url("unix:/tmp/r.sock").endpoint.unix_path == "/tmp/r.sock");  // no authority at all
    CHECK(parse_redis_url("unix:///tmp/r.sock?db=2147483647").endpoint.db == 2147483647);
    CHECK(parse_redis_url("unix:///" + std::string(106, 's')).endpoint.unix_path.size() == 107);
}

TEST_CASE("option bounds are inclusive", "[redis][config]") {
    CHECK(parse_redis_url("redis://h?lease=1s").lease == 1s);
    CHECK(parse_redis_url("redis://h?lease=24h").lease == 24h);
    CHECK(parse_redis_url("redis://h?connect_timeout=10ms").endpoint.connect_timeout == 10ms);
    CHECK(parse_redis_url("redis://h?command_timeout=10m").endpoint.command_timeout == 10min);
    CHECK(parse_redis_url("redis://h?max_key_bytes=1").max_key_bytes == 1);
    CHECK(parse_redis_url("redis://h?max_key_bytes=65536").max_key_bytes == 65536);
    CHECK(parse_redis_url("redis://h?prefix=" + std::string(128, 'p')).prefix.size() == 128);

    const std::string base = "redis://u:S3cr3t-pw@h?";
    expect_error(base + "lease=999ms", errc::invalid_option, "'lease' has value '999ms'");
    expect_error(base + "lease=25h", errc::invalid_option, "'lease' has value '25h'");
    expect_error(base + "lease=0", errc::invalid_option, "lease");
    expect_error(base + "connect_timeout=9ms", errc::invalid_option, "'connect_timeout' has value '9ms'");
    expect_error(base + "command_timeout=601s", errc::invalid_option, "'command_timeout' has value '601s'");
    expect_error(base + "max_key_bytes=0", errc::invalid_option, "'max_key_bytes' has value '0'");
    expect_error(base + "max_key_bytes=65537", errc::invalid_option, "'max_key_bytes' has value '65537'");
    expect_error(base + "prefix=" + std::string(129, 'p'), errc::invalid_option, "'prefix' has value 'ppp");
}

TEST_CASE("malformed URLs and bad hosts and ports and paths are invalid_url naming the part", "[redis][config]") {
    expect_error("http://u:S3cr3t-pw@h", errc::invalid_url, "scheme 'http'");
    expect_error("localhost:6379", errc::invalid_url, "scheme 'localhost'");
    expect_error("", errc::invalid_url, "no scheme");
    expect_error("redis://u:S3cr3t-pw@h?a b", errc::invalid_url, "malformed redis://");
    expect_error("redis://u:S3cr3t-pw@h:6379/0#frag", errc::invalid_url, "fragment");
    expect_error("redis://u:S3cr3t-pw@", errc::invalid_url, "needs a host");
    expect_error("redis://:6379", errc::invalid_url, "needs a host");
    expect_error("rediss:///0", errc::invalid_url, "rediss:// URL needs a host");
    expect_error("redis://u:S3cr3t-pw@ho%24t", errc::invalid_url, "bad host name 'ho$t'");
    expect_error("redis://u:S3cr3t-pw@[v1.x]", errc::invalid_url, "unsupported host '[v1.x]'");
    expect_error("redis://u:S3cr3t-pw@h:", errc::invalid_url, "bad port in a redis:// URL");
    expect_error("redis://u:S3cr3t-pw@h:0", errc::invalid_url, "bad port");
    expect_error("redis://u:S3cr3t-pw@h:65536", errc::invalid_url, "bad port");
    expect_error("redis://u:S3cr3t-pw@h:99999999999999999999999", errc::invalid_url, "bad port");
    expect_error("redis://u:S3cr3t-pw@h:63x9", errc::invalid_url, "malformed redis:// URL after the host");
    // "@host" forgotten: the password is read as the port, and is not shown.
    expect_error("redis://default:S3cr3t-pw", errc::invalid_url, "after the host");
    expect_error("redis://default:987654321", errc::invalid_url, "bad port", {"987654321"});
    expect_error("unix://default:987654321", errc::invalid_url, "(found host 'default')", {"987654321"});
    expect_error("redis://u:S3cr3t-pw@h/db1", errc::invalid_url, "bad database path '/db1'");
    expect_error("redis://u:S3cr3t-pw@h/-1", errc::invalid_url, "bad database path '/-1'");
    expect_error("redis://u:S3cr3t-pw@h/2147483648", errc::invalid_url, "bad database path '/2147483648'");
    expect_error("redis://u:S3cr3t-pw@h/0/", errc::invalid_url, "bad database path '/0/'");
    expect_error("redis://u:S3cr3t-pw@h//0", errc::invalid_url, "bad database path");
    expect_error("redis://u:S3cr3t-pw@h/%31", errc::invalid_url, "bad database path '/%31'");
    expect_error("unix://u:S3cr3t-pw@", errc::invalid_url, "needs a socket path");
    expect_error("unix://tmp/r.sock", errc::invalid_url, "takes no host or port (found host 'tmp')");
    expect_error("unix://u:S3cr3t-pw@localhost:6379/tmp/r.sock", errc::invalid_url, "no host or port");
    expect_error("unix:run/r.sock", errc::invalid_url, "socket path 'run/r.sock' of a unix:// URL is not absolute");
    expect_error("unix:///tmp/a%00b", errc::invalid_url, "NUL");
    expect_error("unix:///" + std::string(107, 's'), errc::invalid_url, "108 bytes");
    expect_error("unix://u:S3cr3t-pw@/tmp/r.sock#x", errc::invalid_url, "unix:// URL takes no fragment");
}

TEST_CASE("unknown options are unknown_option listing the known ones", "[redis][config]") {
    const std::string known =
        "(known: prefix, lease, connect_timeout, command_timeout, max_key_bytes, db, wait_replicas, wait_timeout, "
        "ca_file, cert_file, key_file, verify, node_timeout, sentinel_user, sentinel_password, health_check, "
        "max_reply_bytes)";
    expect_error("redis://u:S3cr3t-pw@h?lease=1s&leese=2s", errc::unknown_option, "unknown option 'leese'");
    expect_error("redis://u:S3cr3t-pw@h?Lease=1s", errc::unknown_option, known);  // names are case-sensitive
    expect_error("redis://h?password=S3cr3t-pw", errc::unknown_option, "go before the host");
    expect_error("unix:///tmp/r.sock?tls=1", errc::unknown_option, "'tls'");
    expect_error("redis://h?=1", errc::unknown_option, "unknown option ''");
}

TEST_CASE("bad option values are invalid_option naming the option and the value", "[redis][config]") {
    const std::string base = "redis://u:S3cr3t-pw@h?";
    expect_error(base + "lease=soon", errc::invalid_option, "option 'lease' has value 'soon'; expected a duration");
    expect_error(base + "lease", errc::invalid_option, "option 'lease' has value ''");
    expect_error(base + "connect_timeout=1.5s", errc::invalid_option, "'connect_timeout' has value '1.5s'");
    expect_error(base + "max_key_bytes=1e3", errc::invalid_option, "'max_key_bytes' has value '1e3'");
    expect_error(base + "prefix=", errc::invalid_option, "option 'prefix' has value ''");
    expect_error(base + "prefix=%7Bjobs%7D", errc::invalid_option, "option 'prefix' has value '{jobs}'");
    expect_error(base + "lease=1%0As", errc::invalid_option, "'1\\x0as'");  // shown escaped
    expect_error(base + "lease=1s&lease=2s", errc::invalid_option, "option 'lease' is given twice");
    expect_error(base + "db=2", errc::invalid_option, "a redis:// URL has the database in its path");
    expect_error("rediss://h?db=2", errc::invalid_option, "'db' is for unix://");
    expect_error("unix:///tmp/r.sock?db=x", errc::invalid_option, "option 'db' has value 'x'");
    expect_error("unix:///tmp/r.sock?db=2147483648", errc::invalid_option, "'db' has value '2147483648'");
    expect_error("rediss://u:S3cr3t-pw@h?verify=maybe", errc::invalid_option, "option 'verify' has value 'maybe'");
    expect_error("rediss://u:S3cr3t-pw@h?ca_file=", errc::invalid_option, "option 'ca_file' has value ''");
    expect_error("rediss://h?cert_file=/c.pem", errc::invalid_option, "'cert_file' and 'key_file' go together");
    expect_error("rediss://h?key_file=/k.pem", errc::invalid_option, "'cert_file' and 'key_file' go together");
    for (const char* option : {"ca_file=/ca.pem", "cert_file=/c.pem", "key_file=/k.pem", "verify=false"}) {
        const std::string name = std::string(option).substr(0, std::string(option).find('='));
        expect_error(base + option, errc::invalid_option, "option '" + name + "' needs rediss://");
        expect_error("unix://u:S3cr3t-pw@/tmp/r.sock?" + std::string(option), errc::invalid_option,
                     "option '" + name + "' needs rediss:// (TLS over a Unix socket is not supported)");
    }
}

TEST_CASE("no message shows the password", "[redis][config]") {
    // A value holding the password is not shown.
    expect_error("redis://:S3cr3t-pw@h?prefix=%7BS3cr3t-pw%7D", errc::invalid_option, "'prefix' has value (not shown)");
    expect_error("redis://:S3cr3t-pw@h?S3cr3t-pw", errc::unknown_option, "unknown option (not shown)");
    expect_error("redis://u:S3cr3t-pw@h/S3cr3t-pw", errc::invalid_url, "bad database path (not shown)");
    // The percent-encoded password is no more shown than the decoded one.
    expect_error("redis://u:S3cr3t%2Dpw@h:0", errc::invalid_url, "bad port", {password, "S3cr3t%2Dpw"});

    // A reserved character left unencoded in a password puts pieces of it anywhere in the URL:
    // with an '@' after the host, no part is shown.
    const char* hint = "percent-encode it";
    const std::initializer_list<const char*> pieces = {"S3cr3t", "Xy9zQ"};
    expect_error("redis://u:S3cr3t@Xy9zQ@h:6379/0", errc::invalid_url, hint, pieces);
    expect_error("redis://u:S3cr3t/Xy9zQ@h", errc::invalid_url, hint, pieces);
    expect_error("redis://u:123/Xy9zQ@h", errc::invalid_url, hint, pieces);
    expect_error("redis://:S3cr3t?Xy9zQ@h/1", errc::invalid_url, hint, pieces);
    expect_error("redis://u:S3cr3t#Xy9zQ@h", errc::invalid_url, "fragment", pieces);
    expect_error("redis://u:99999/Xy9zQ@h", errc::invalid_url, hint, pieces);
    expect_error("redis://h:6379?Xy9zQ@h", errc::unknown_option, "unknown option (not shown)", pieces);
    expect_error("unix://:12/Xy9zQ@/tmp/r.sock", errc::invalid_url, hint, pieces);
    expect_error("unix://u:S3cr3t/Xy9zQ@/tmp/r.sock", errc::invalid_url, "found host (not shown)", pieces);
    expect_error("redis://u:S3cr3t%Xy9zQ@h", errc::invalid_url, "malformed", pieces);
    expect_error("redis://u:S3cr3t Xy9zQ@h", errc::invalid_url, "malformed", pieces);

    // Nor does to_url.
    for (const char* url : {"redis://u:S3cr3t-pw@h", "rediss://:S3cr3t-pw@h/1?verify=0", "unix://:S3cr3t-pw@/s"}) {
        INFO(url);
        CHECK(to_url(parse_redis_url(url)).find(password) == std::string::npos);
        CHECK(to_url(parse_redis_url(url)).find(":***@") != std::string::npos);
    }
}

TEST_CASE("to_url round-trips configurations built in code", "[redis][config]") {
    RedisConfig c;
    c.endpoint.host = "redis-1.internal";
    c.endpoint.port = 7000;
    c.endpoint.db = 15;
    c.endpoint.user = "a:b@c/d";
    c.endpoint.password = password;
    c.endpoint.connect_timeout = 1500ms;
    c.endpoint.command_timeout = 1min;
    c.prefix = "tenant 7/#&=%+@:";
    c.lease = 90s;
    c.max_key_bytes = 4096;
    check_round_trip(c);

    c.endpoint.tls = true;
    c.endpoint.ca_file = "/etc/ssl/my ca.pem";
    c.endpoint.cert_file = "/etc/ssl/c.pem";
    c.endpoint.key_file = "/etc/ssl/k.pem";
    c.endpoint.verify = false;
    check_round_trip(c);

    RedisConfig u;
    u.endpoint.host.clear();
    u.endpoint.unix_path = "/var/run/redis #1/r.sock";
    u.endpoint.db = 9;
    u.endpoint.password = password;
    check_round_trip(u);

    RedisConfig v6;
    v6.endpoint.host = "fe80::1";
    check_round_trip(v6);
    CHECK(to_url(v6) == "redis://[fe80::1]");
}

TEST_CASE("check() holds a configuration made in code to the rules of its URL, in the same words", "[redis][config]") {
    using keylock::redis::Password;
    using keylock::redis::Topology;
    // The error `f` throws, as (code, message); (errc{}, "") if none.
    auto outcome = [](const std::function<void()>& f) {
        try {
            f();
        } catch (const keylock::Error& e) {
            return std::make_pair(static_cast<errc>(e.code().value()), std::string(e.what()));
        }
        return std::make_pair(errc{}, std::string());
    };
    RedisConfig tcp;
    tcp.endpoint.host = "h";
    tcp.endpoint.password = password;
    RedisConfig unix_socket = tcp;
    unix_socket.endpoint.host.clear();
    unix_socket.endpoint.unix_path = "/tmp/r.sock";
    auto listing = [&](Topology topology) {
        RedisConfig c = tcp;
        c.topology = topology;
        c.endpoint.host.clear();
        c.endpoint.port = 0;
        (topology == Topology::sentinel ? c.sentinels : c.nodes) = {{"h1", 7000}, {"h2", 7001}};
        if (topology == Topology::sentinel) c.master_name = "m";
        return c;
    };
    struct Row {
        const char* what;
        RedisConfig base;
        std::function<void(RedisConfig&)> change;
    };
    const std::vector<Row> rows = {
        {"valid", tcp, [](RedisConfig&) {}},
        {"valid over a Unix socket", unix_socket, [](RedisConfig& c) { c.endpoint.db = 3; }},
        {"valid with sentinels", listing(Topology::sentinel), [](RedisConfig&) {}},
        {"valid in a cluster", listing(Topology::cluster), [](RedisConfig&) {}},
        {"valid Redlock", listing(Topology::redlock), [](RedisConfig& c) { c.node_timeout = 50ms; }},
        {"valid TLS", tcp,
         [](RedisConfig& c) {
             c.endpoint.tls = true;
             c.endpoint.ca_file = "/ca.pem";
             c.endpoint.verify = false;
         }},
        {"no host", tcp, [](RedisConfig& c) { c.endpoint.host.clear(); }},
        {"a bad host name", tcp, [](RedisConfig& c) { c.endpoint.host = "a b"; }},
        {"a host holding the password", tcp, [](RedisConfig& c) { c.endpoint.host = std::string(password) + "~"; }},
        {"an IPv6 host", tcp, [](RedisConfig& c) { c.endpoint.host = "::1"; }},
        {"port 0", tcp, [](RedisConfig& c) { c.endpoint.port = 0; }},
        {"a negative database", tcp, [](RedisConfig& c) { c.endpoint.db = -1; }},
        {"a socket path with NUL", unix_socket, [](RedisConfig& c) { c.endpoint.unix_path += '\0'; }},
        {"a socket path too long", unix_socket, [](RedisConfig& c) { c.endpoint.unix_path += std::string(100, 's'); }},
        {"a negative database over a Unix socket", unix_socket, [](RedisConfig& c) { c.endpoint.db = -2; }},
        {"an empty prefix", tcp, [](RedisConfig& c) { c.prefix.clear(); }},
        {"a prefix with a brace", tcp, [](RedisConfig& c) { c.prefix = "a{"; }},
        {"a lease under 1 s", tcp, [](RedisConfig& c) { c.lease = 999ms; }},
        {"a lease of 0", tcp, [](RedisConfig& c) { c.lease = 0ms; }},
        {"a lease over 24 h", tcp, [](RedisConfig& c) { c.lease = 24h + 1ms; }},
        {"a negative connect_timeout", tcp, [](RedisConfig& c) { c.endpoint.connect_timeout = -1s; }},
        {"command_timeout over 10 min", tcp, [](RedisConfig& c) { c.endpoint.command_timeout = 11min; }},
        {"max_key_bytes 0", tcp, [](RedisConfig& c) { c.max_key_bytes = 0; }},
        {"max_key_bytes past 64 KiB", tcp, [](RedisConfig& c) { c.max_key_bytes = 65537; }},
        {"a negative wait_replicas", tcp, [](RedisConfig& c) { c.wait_replicas = -1; }},
        {"wait_replicas past 64", tcp, [](RedisConfig& c) { c.wait_replicas = 65; }},
        {"wait_timeout 0", tcp, [](RedisConfig& c) { c.wait_timeout = 0ms; }},
        {"wait_timeout not under command_timeout", tcp,
         [](RedisConfig& c) {
             c.wait_replicas = 1;
             c.wait_timeout = 5s;
         }},
        {"a CA file without TLS", tcp, [](RedisConfig& c) { c.endpoint.ca_file = "/ca.pem"; }},
        {"verify off without TLS", unix_socket, [](RedisConfig& c) { c.endpoint.verify = false; }},
        {"a key file with sentinels", listing(Topology::sentinel),
         [](RedisConfig& c) { c.endpoint.key_file = "/k.pem"; }},
        {"a certificate without its key", tcp,
         [](RedisConfig& c) {
             c.endpoint.tls = true;
             c.endpoint.cert_file = "/c.pem";
         }},
        {"node_timeout without Redlock", tcp, [](RedisConfig& c) { c.node_timeout = 100ms; }},
        {"a database in a cluster", listing(Topology::cluster), [](RedisConfig& c) { c.endpoint.db = 1; }},
        {"17 cluster nodes", listing(Topology::cluster),
         [](RedisConfig& c) {
             for (int i = 0; i < 15; ++i) c.nodes.push_back({std::to_string(i) + ".n", 7000});
         }},
        {"a bad cluster node", listing(Topology::cluster), [](RedisConfig& c) { c.nodes[1].host = "a/b"; }},
        {"a cluster node on port 0", listing(Topology::cluster), [](RedisConfig& c) { c.nodes[1].port = 0; }},
        {"a sentinel listed twice", listing(Topology::sentinel),
         [](RedisConfig& c) { c.sentinels[1] = c.sentinels[0]; }},
        {"no master name", listing(Topology::sentinel), [](RedisConfig& c) { c.master_name.clear(); }},
        {"a master name with a space", listing(Topology::sentinel), [](RedisConfig& c) { c.master_name = "m m"; }},
        {"a Redlock node listed twice", listing(Topology::redlock), [](RedisConfig& c) { c.nodes[1] = c.nodes[0]; }},
        {"a Redlock node on the default port listed twice", listing(Topology::redlock),
         [](RedisConfig& c) {
             c.nodes = {{"h", 6379}, {"h", 6379}};
         }},
        {"a negative database with Redlock", listing(Topology::redlock), [](RedisConfig& c) { c.endpoint.db = -1; }},
        {"wait_replicas with Redlock", listing(Topology::redlock), [](RedisConfig& c) { c.wait_replicas = 1; }},
        {"node_timeout 0", listing(Topology::redlock), [](RedisConfig& c) { c.node_timeout = 0ms; }},
        {"node_timeout over a third of the lease", listing(Topology::redlock),
         [](RedisConfig& c) {
             c.lease = 1s;
             c.node_timeout = 400ms;
         }},
        {"two errors: the first the URL has", tcp,
         [](RedisConfig& c) {
             c.prefix.clear();
             c.lease = 0ms;
             c.endpoint.cert_file = "/c.pem";
         }},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        RedisConfig c = row.base;
        row.change(c);
        const std::string url = to_url(c, Password::included);
        INFO("as a URL: " << url);
        const auto in_code = outcome([&] { keylock::redis::check(c); });
        CHECK(in_code == outcome([&] { (void)parse_redis_url(url); }));
        CHECK(in_code.second.find(password) == std::string::npos);
    }

    // What a URL cannot write.
    RedisConfig bad = unix_socket;
    bad.endpoint.tls = true;  // to_url writes unix://, without it
    CHECK(outcome([&] { keylock::redis::check(bad); }).first == errc::invalid_option);
    bad = listing(Topology::cluster);
    bad.endpoint.tls = true;  // rediss+cluster://
    CHECK_NOTHROW(keylock::redis::check(bad));
    bad.sentinel_user = "watcher";
    CHECK(outcome([&] { keylock::redis::check(bad); }).first == errc::invalid_option);
    bad = tcp;
    bad.endpoint.host = "fe80::1%eth0";  // the URL, "redis://[fe80::1%eth0]", does not parse at all
    CHECK(outcome([&] { keylock::redis::check(bad); }) ==
          std::make_pair(errc::invalid_url, std::string("keylock: unsupported host '[fe80::1%eth0]' in a redis:// URL; "
                                                        "expected a name, an IPv4 address or an [IPv6] address")));

    // What parse_redis_url returns passes.
    for (const char* url :
         {"redis://u:pw@[::1]:7000/3?lease=1s&prefix=p&wait_replicas=2&wait_timeout=1s",
          "rediss://h?ca_file=/ca&cert_file=/c&key_file=/k&verify=false", "unix:///tmp/r.sock?db=2&max_key_bytes=65536",
          "redis+sentinel://s1,s2:1/m?db=1", "redis+cluster://n1:7000,n2",
          "redlock://a,b,c:1?node_timeout=10s&lease=30s&command_timeout=10s"}) {
        INFO(url);
        const RedisConfig c = parse_redis_url(url);
        CHECK_NOTHROW(keylock::redis::check(c));
    }
}

TEST_CASE("health_check and max_reply_bytes: defaults, bounds, round trip", "[redis][config]") {
    const RedisConfig defaults = parse_redis_url("redis://h");
    CHECK(defaults.endpoint.health_check == 5s);
    CHECK(defaults.endpoint.max_reply_bytes == 64u << 20);
    const RedisConfig c = parse_redis_url("redis://h?health_check=1500ms&max_reply_bytes=1024");
    CHECK(c.endpoint.health_check == 1500ms);
    CHECK(c.endpoint.max_reply_bytes == 1024);
    CHECK(to_url(c) == "redis://h?health_check=1500ms&max_reply_bytes=1024");
    check_round_trip(c);
    const RedisConfig off = parse_redis_url("redis://h?health_check=0&max_reply_bytes=4294967296");
    CHECK(off.endpoint.health_check == 0ms);
    CHECK(off.endpoint.max_reply_bytes == std::uint64_t{4} << 30);
    check_round_trip(off);
    CHECK(parse_redis_url("redis://h?health_check=10ms").endpoint.health_check == 10ms);
    CHECK(parse_redis_url("redis://h?health_check=10m").endpoint.health_check == 10min);
    expect_error("redis://h?health_check=9ms", errc::invalid_option,
                 "option 'health_check' has value '9ms'; expected 0 (off) or a duration from 10ms to 10m");
    expect_error("redis://h?health_check=11m", errc::invalid_option, "'health_check' has value '11m'");
    expect_error("redis://h?health_check=x", errc::invalid_option, "'health_check' has value 'x'");
    expect_error("redis://h?max_reply_bytes=1023", errc::invalid_option,
                 "option 'max_reply_bytes' has value '1023'; expected a whole number of bytes from 1024 to 4294967296");
    expect_error("redis://h?max_reply_bytes=4294967297", errc::invalid_option, "'max_reply_bytes' has value");
    expect_error("redis://h?max_reply_bytes=64MiB", errc::invalid_option, "'max_reply_bytes' has value '64MiB'");
    // Made in code: the same bounds (check()).
    RedisConfig bad = parse_redis_url("redis://h");
    bad.endpoint.health_check = 5ms;
    CHECK_THROWS_WITH(keylock::redis::check(bad), Catch::Contains("'health_check' has value '5ms'"));
    bad.endpoint.health_check = 0ms;
    CHECK_NOTHROW(keylock::redis::check(bad));
    bad.endpoint.max_reply_bytes = 100;
    CHECK_THROWS_WITH(keylock::redis::check(bad), Catch::Contains("'max_reply_bytes' has value '100'"));
}

TEST_CASE("redis+sentinel URLs list the sentinels and name the master", "[redis][config][sentinel]") {
    const RedisConfig c = parse_redis_url(
        "redis+sentinel://alice:S3cr3t-pw@s1.example.com,10.0.0.2:26380,[::1]:5000/my-master.1?db=3&lease=10s"
        "&wait_replicas=2&wait_timeout=250ms");
    CHECK(c.sentinels ==
          std::vector<keylock::redis::HostPort>{{"s1.example.com", 26379}, {"10.0.0.2", 26380}, {"::1", 5000}});
    CHECK(c.master_name == "my-master.1");
    CHECK(c.endpoint.host.empty());  // the sentinels will say
    CHECK(c.endpoint.user == "alice");
    CHECK(c.endpoint.password == password);
    CHECK(c.endpoint.db == 3);
    CHECK(c.lease == 10s);
    CHECK(c.wait_replicas == 2);
    CHECK(c.wait_timeout == 250ms);
    CHECK(to_url(c) == "redis+sentinel://alice:***@s1.example.com,10.0.0.2:26380,[::1]:5000/my-master.1?db=3"
                       "&lease=10s&wait_replicas=2&wait_timeout=250ms");
    check_round_trip(c);
    // A ',' in an unencoded password is no host separator: hosts come after the last '@'.
    const RedisConfig comma = parse_redis_url("redis+sentinel://:pw,x@h1,h2/m");
    CHECK(comma.endpoint.password == "pw,x");
    CHECK(comma.sentinels.size() == 2);
    CHECK(parse_redis_url("REDIS+SENTINEL://h/m").sentinels.front().port == 26379);
    // WAIT works against a plain redis:// master too.
    CHECK(parse_redis_url("redis://h?wait_replicas=1").wait_replicas == 1);
    CHECK(parse_redis_url("redis://h?wait_replicas=64").wait_replicas == 64);
    CHECK(parse_redis_url("redis://h?wait_timeout=1ms").wait_timeout == 1ms);
    CHECK(parse_redis_url("redis://h?wait_timeout=1m").wait_timeout == 1min);  // unused without wait_replicas

    expect_error("redis+sentinel://u:S3cr3t-pw@h1,h2", errc::invalid_url, "needs the master's name");
    expect_error("redis+sentinel://u:S3cr3t-pw@/m", errc::invalid_url, "at least one sentinel");
    expect_error("redis+sentinel://u:S3cr3t-pw@h1,,h2/m", errc::invalid_url, "empty sentinel address");
    expect_error("redis+sentinel://u:S3cr3t-pw@h1,/m", errc::invalid_url, "empty sentinel address");
    expect_error("redis+sentinel://h1:0/m", errc::invalid_url, "bad port");
    expect_error("redis+sentinel://h1:26379,h%24/m", errc::invalid_url, "bad host name 'h$'");
    expect_error("redis+sentinel://h1/m/2", errc::invalid_url, "bad master name 'm/2'");
    expect_error("redis+sentinel://h1/m%20x", errc::invalid_url, "bad master name");
    expect_error("redis+sentinel://h1/" + std::string(129, 'm'), errc::invalid_url, "bad master name");
    expect_error("redis+sentinel://u:S3cr3t-pw@h1/m#f", errc::invalid_url, "no fragment");
    expect_error("redis+sentinel://h1/m?a b", errc::invalid_url, "malformed redis+sentinel://");
    expect_error(
        "redis+sentinel://" +
            [] {
                std::string hosts = "h0";
                for (int i = 1; i < 17; ++i) hosts += ",h" + std::to_string(i);
                return hosts;
            }() +
            "/m",
        errc::invalid_url, "more than 16 hosts");
    expect_error("redis+sentinel://h1/m?ca_file=/ca.pem", errc::invalid_option,
                 "option 'ca_file' needs rediss+sentinel:// (TLS); this is a redis+sentinel:// URL");
    expect_error("redis+sentinel://h1/m?db=x", errc::invalid_option, "option 'db' has value 'x'");
    expect_error("redis://h?wait_replicas=65", errc::invalid_option, "'wait_replicas' has value '65'");
    expect_error("redis://h?wait_replicas=-1", errc::invalid_option, "'wait_replicas' has value '-1'");
    expect_error("redis://h?wait_timeout=0", errc::invalid_option, "'wait_timeout' has value '0'");
    expect_error("redis://h?wait_timeout=61s", errc::invalid_option, "'wait_timeout' has value '61s'");
    expect_error("redis://h?wait_replicas=1&wait_timeout=5s", errc::invalid_option,
                 "'wait_timeout' (5s) must be shorter than command_timeout (5s)");
    CHECK(parse_redis_url("redis://h?wait_replicas=1&wait_timeout=5s&command_timeout=6s").wait_timeout == 5s);
    CHECK(parse_redis_url("redis://h?wait_timeout=5s").wait_timeout == 5s);  // no WAIT: no conflict
}

TEST_CASE("rediss+sentinel, rediss+cluster and rediss+redlock: TLS to every server, and the sentinels' credentials",
          "[redis][config][tls]") {
    using keylock::redis::Topology;
    const RedisConfig s =
        parse_redis_url("rediss+sentinel://alice:S3cr3t-pw@s1,s2:26380/mymaster?ca_file=/ca.pem&sentinel_user=watcher"
                        "&sentinel_password=Sent-pw-2&verify=false");
    CHECK(s.topology == Topology::sentinel);
    CHECK(s.endpoint.tls);
    CHECK(s.endpoint.ca_file == "/ca.pem");
    CHECK_FALSE(s.endpoint.verify);
    CHECK(s.endpoint.user == "alice");  // the master's
    CHECK(s.sentinel_user == "watcher");
    CHECK(s.sentinel_password == "Sent-pw-2");
    CHECK(to_url(s) == "rediss+sentinel://alice:***@s1,s2:26380/mymaster?ca_file=/ca.pem&verify=false"
                       "&sentinel_user=watcher&sentinel_password=***");
    check_round_trip(s);
    CHECK(parse_redis_url(to_url(s, keylock::redis::Password::included)) == s);

    const RedisConfig c = parse_redis_url("rediss+cluster://n1:7000,n2:7001?cert_file=/c.pem&key_file=/k.pem");
    CHECK(c.topology == Topology::cluster);
    CHECK(c.endpoint.tls);
    CHECK(to_url(c) == "rediss+cluster://n1:7000,n2:7001?cert_file=/c.pem&key_file=/k.pem");
    check_round_trip(c);
    const RedisConfig r = parse_redis_url("RediSS+Redlock://h1,h2,h3?db=1");
    CHECK(r.topology == Topology::redlock);
    CHECK(r.endpoint.tls);
    CHECK(to_url(r) == "rediss+redlock://h1,h2,h3?db=1");
    check_round_trip(r);
    CHECK_FALSE(parse_redis_url("redlock://h1").endpoint.tls);

    // The sentinels' password is hidden as the master's is; the options are the sentinels' alone.
    expect_error("rediss+sentinel://h1/m?sentinel_password=S3cr3t-pw&prefix=S3cr3t-pw%7B", errc::invalid_option,
                 "option 'prefix' has value (not shown)");
    expect_error("redis+cluster://h1?sentinel_password=S3cr3t-pw", errc::invalid_option,
                 "option 'sentinel_password' is for redis+sentinel:// and rediss+sentinel:// URLs");
    expect_error("rediss://h1?sentinel_user=u", errc::invalid_option, "option 'sentinel_user' is for");
    expect_error("rediss+sentinel://h1/m?sentinel_password=Other-pw&sentinel_password=S3cr3t-pw", errc::invalid_option,
                 "option 'sentinel_password' is given twice");
    expect_error("rediss+redlock://h1?wait_replicas=1", errc::invalid_option, "not for redlock:// URLs");
}

TEST_CASE("redis+cluster and redlock URLs list their nodes", "[redis][config][cluster][redlock]") {
    using keylock::redis::Topology;
    const RedisConfig c = parse_redis_url("redis+cluster://alice:S3cr3t-pw@n1.example.com,10.0.0.2:7001,[::1]:7002/"
                                          "?lease=10s&wait_replicas=1&wait_timeout=100ms");
    CHECK(c.topology == Topology::cluster);
    CHECK(c.nodes ==
          std::vector<keylock::redis::HostPort>{{"n1.example.com", 6379}, {"10.0.0.2", 7001}, {"::1", 7002}});
    CHECK(c.endpoint.host.empty());
    CHECK(c.endpoint.user == "alice");
    CHECK(c.endpoint.password == password);
    CHECK(c.wait_replicas == 1);
    CHECK(to_url(c) == "redis+cluster://alice:***@n1.example.com,10.0.0.2:7001,[::1]:7002?lease=10s&wait_replicas=1"
                       "&wait_timeout=100ms");
    check_round_trip(c);

    const RedisConfig r = parse_redis_url("redlock://:S3cr3t-pw@h1:6379,h2:6380,h3:6381?node_timeout=50ms&db=2");
    CHECK(r.topology == Topology::redlock);
    CHECK(r.nodes.size() == 3);
    CHECK(r.node_timeout == 50ms);
    CHECK(r.endpoint.db == 2);
    CHECK(to_url(r) == "redlock://:***@h1,h2:6380,h3:6381?db=2&node_timeout=50ms");
    check_round_trip(r);
    CHECK(parse_redis_url("REDLOCK://h1").nodes.front().port == 6379);
    CHECK(parse_redis_url("redis+cluster://h1:7000").nodes.front().port == 7000);

    expect_error("redis+cluster://u:S3cr3t-pw@/", errc::invalid_url, "at least one cluster node");
    expect_error("redis+cluster://h1,,h2", errc::invalid_url, "empty cluster node address");
    expect_error("redis+cluster://h1/0", errc::invalid_url, "takes no path (Redis Cluster has database 0 only)");
    expect_error("redis+cluster://h1?db=1", errc::invalid_option, "Redis Cluster has database 0 only");
    expect_error("redis+cluster://h1?node_timeout=10ms", errc::invalid_option, "is for redlock:// URLs");
    expect_error("redis+cluster://h1?ca_file=/ca.pem", errc::invalid_option, "needs rediss+cluster:// (TLS)");
    expect_error("redlock://h1?verify=false", errc::invalid_option, "needs rediss+redlock:// (TLS)");
    expect_error("redis+cluster://h1:0", errc::invalid_url, "bad port");
    expect_error("redlock://u:S3cr3t-pw@h1,h2,h1", errc::invalid_url, "is listed twice");
    expect_error("redlock://h1:6379,h1", errc::invalid_url, "is listed twice");  // the same port, defaulted
    expect_error("redlock://h1/2", errc::invalid_url, "takes no path (the database is option db=N)");
    expect_error("redlock://h1?wait_replicas=1", errc::invalid_option, "not for redlock:// URLs");
    expect_error("redlock://h1?node_timeout=0", errc::invalid_option, "'node_timeout' has value '0'");
    expect_error("redlock://h1?node_timeout=11s", errc::invalid_option, "'node_timeout' has value '11s'");
    expect_error("redlock://h1?lease=1s&node_timeout=400ms", errc::invalid_option, "at most a third of the lease");
    expect_error("redlock://h1?command_timeout=100ms&node_timeout=200ms", errc::invalid_option,
                 "at most command_timeout");
    expect_error("redlock://u:S3cr3t-pw@h1#x", errc::invalid_url, "no fragment");
    expect_error(
        "redis+cluster://" +
            [] {
                std::string hosts = "h0";
                for (int i = 1; i < 17; ++i) hosts += ",h" + std::to_string(i);
                return hosts;
            }(),
        errc::invalid_url, "more than 16 hosts");
}

TEST_CASE("RedisOptions in code: the same options, bounds and redaction as a URL", "[redis][config]") {
    keylock::test::RedisServer server({"--requirepass", "s3cret"});
    // [snippet redis-options]
    keylock::RedisOptions options;
    options.host = "127.0.0.1";
    options.port = server.port();
    options.password = "s3cret";
    options.lease = std::chrono::seconds(10);
    auto registry = keylock::redis_registry(options);  // throws keylock::Error as from_url does
    std::string url = to_string(registry);             // "redis://:***@127.0.0.1:…?lease=10s"
    // [/snippet redis-options]
    CHECK(url == "redis://:***@127.0.0.1:" + std::to_string(server.port()) + "?lease=10s");
    CHECK(registry.try_lock("k").has_value());  // connected, authenticated

    auto error_of = [](const keylock::RedisOptions& o) {
        try {
            (void)keylock::redis_registry(o);
        } catch (const keylock::Error& e) {
            CHECK_THAT(e.what(), !Catch::Contains("s3cret"));
            return std::make_pair(static_cast<errc>(e.code().value()), std::string(e.what()));
        }
        return std::make_pair(errc{}, std::string());
    };
    keylock::RedisOptions bad = options;
    bad.lease = 500ms;
    auto [code, message] = error_of(bad);
    CHECK(code == errc::invalid_option);
    CHECK_THAT(message, Catch::Contains("lease"));
    bad = options;
    bad.prefix = "";
    CHECK(error_of(bad).first == errc::invalid_option);
    bad = options;
    bad.ca_file = "/etc/ssl/ca.pem";  // without tls
    CHECK(error_of(bad).first == errc::invalid_option);
    bad = options;
    bad.tls = true;
    bad.unix_socket = "/tmp/redis.sock";
    CHECK(error_of(bad).first == errc::invalid_option);
    bad = options;
    bad.host = "";  // a field of the struct: invalid_option, not invalid_url
    CHECK(error_of(bad).first == errc::invalid_option);
    CHECK(error_of(bad).second == "keylock: RedisOptions: host is empty; set host (and port), or unix_socket");

    keylock::RedisOptions unix_socket;
    unix_socket.unix_socket = server.unix_socket();
    unix_socket.password = "s3cret";
    auto over_unix = keylock::redis_registry(unix_socket);
    CHECK(over_unix.try_lock("u").has_value());
}
