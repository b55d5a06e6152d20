// SPDX-License-Identifier: BSL-1.0
// Every kind of bad input keylock can be given, as tables: keys, URLs, option values in code, and
// servers that answer with errors or are not Redis. docs/failure-modes.md ("Bad input") has the
// same tables for users. For each row the test asserts the typed error (`keylock::errc`), words
// the message must contain, that the message is one line of printable ASCII without the
// password, and that the call returned within a bound (nothing hangs). Leaks are LeakSanitizer's
// to find: the asan+ubsan build runs this file too.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>


#include <keylock/keylock.hpp>
#include <keylock/redis.hpp>

#include "eventually.hpp"
#include "fake_server.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"
#include "sanitized.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::eventually;
using keylock::test::FakeServer;
using keylock::test::RedisServer;
using keylock::test::url;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// In every URL of these tables that has one, and never to be seen in a message.
const std::string password = "Pw-0f-the-table";

struct Outcome {
    bool threw = false;
    std::error_code code;
    std::string message;
    Clock::duration took{};
};

Outcome run(const std::function<void()>& f) {
    Outcome out;
    const auto start = Clock::now();
    try {
        f();
    } catch (const keylock::Error& e) {
        out.threw = true;
        out.code = e.code();
        out.message = e.what();
    }
    // Any other exception escapes, and Catch2 fails the test with it.
    out.took = Clock::now() - start;
    return out;
}

/// A message users can read: one line, printable ASCII (bytes of keys and URLs are escaped),
/// starting with "keylock", without the password.
void check_message(const std::string& message) {
    INFO("message: " << message);
    CHECK(message.rfind("keylock", 0) == 0);
    for (const char c : message) {
        CHECK((c >= 0x20 && c < 0x7f));
        if (c < 0x20 || c >= 0x7f) break;
    }
    CHECK(message.find(password) == std::string::npos);
}

void expect(const Outcome& out, errc code, const std::string& says, Clock::duration within = 5s) {
    INFO("expected " << keylock::make_error_code(code).message() << ", message containing '" << says << "'");
    REQUIRE(out.threw);
    CHECK(out.code == code);
    CHECK_THAT(out.message, Catch::Contains(says));
    check_message(out.message);
    CHECK(out.took < within);
}

// ---------------------------------------------------------------------------------------------
// URLs

struct BadUrl {
    const char* what;
    std::string url;
    errc code;
    std::string says;
};

const std::string pw = ":" + password + "@";

const std::vector<BadUrl> bad_urls = {
    // Any scheme
    {"empty", "", errc::invalid_url, "no scheme"},
    {"words, no scheme", "just-words", errc::invalid_url, "no scheme"},
    {"no scheme before ://", "://h", errc::invalid_url, "no scheme"},
    {"a scheme starting with a digit", "1ocal://", errc::invalid_url, "bad scheme"},
    {"host:port without a scheme", "localhost:6379", errc::unknown_scheme, "localhost"},
    {"an unknown scheme", "memcached://h", errc::unknown_scheme, "memcached"},
    {"http", "http://u" + pw + "h", errc::unknown_scheme, "http"},
    // local://
    {"local: a host", "local://host", errc::invalid_url, "no user, host"},
    {"local: a user and password", "local://u" + pw + "/", errc::invalid_url, "no user"},
    {"local: a path", "local:///path", errc::invalid_url, "no path"},
    {"local: a fragment", "local://#frag", errc::invalid_url, "fragment"},
    {"local: a space in the query", "local://?a b", errc::invalid_url, "malformed"},
    {"local: a control byte in the query", std::string("local://?x\x01=1"), errc::invalid_url, "malformed"},
    {"local: a non-UTF-8 byte in the query", std::string("local://?x\xff=1"), errc::invalid_url, "malformed"},
    {"local: an unknown option", "local://?idle_tll=1s", errc::unknown_option, "idle_tll"},
    {"local: a duration that is no duration", "local://?idle_ttl=soon", errc::invalid_option, "idle_ttl"},
    {"local: an option without a value", "local://?idle_ttl", errc::invalid_option, "idle_ttl"},
    {"local: a negative count", "local://?max_keys=-1", errc::invalid_option, "max_keys"},
    {"local: a count in exponent form", "local://?max_keys=1e5", errc::invalid_option, "max_keys"},
    {"local: max_key_bytes 0", "local://?max_key_bytes=0", errc::invalid_option, "max_key_bytes"},
    {"local: a bool that is no bool", "local://?fair=maybe", errc::invalid_option, "fair"},
    {"local: shards not a power of two", "local://?shards=3", errc::invalid_option, "shards"},
    {"local: too many shards", "local://?shards=131072", errc::invalid_option, "shards"},
    {"local: an option given twice", "local://?fair=1&fair=0", errc::invalid_option, "twice"},
    // redis://, rediss://, unix://
    {"redis: a space in the query", "redis://u" + pw + "h?a b", errc::invalid_url, "malformed redis://"},
    {"redis: a fragment", "redis://u" + pw + "h:6379/0#frag", errc::invalid_url, "fragment"},
    {"redis: no host", "redis://u" + pw, errc::invalid_url, "needs a host"},
    {"redis: a port without a host", "redis://:6379", errc::invalid_url, "needs a host"},
    {"rediss: no host", "rediss:///0", errc::invalid_url, "rediss:// URL needs a host"},
    {"redis: a bad host name", "redis://u" + pw + "ho%24t", errc::invalid_url, "bad host name 'ho$t'"},
    {"redis: an IP-future host", "redis://u" + pw + "[v1.x]", errc::invalid_url, "unsupported host"},
    {"redis: an empty port", "redis://u" + pw + "h:", errc::invalid_url, "bad port"},
    {"redis: port 0", "redis://u" + pw + "h:0", errc::invalid_url, "bad port"},
    {"redis: port 65536", "redis://u" + pw + "h:65536", errc::invalid_url, "bad port"},
    {"redis: a port of 23 digits", "redis://u" + pw + "h:99999999999999999999999", errc::invalid_url, "bad port"},
    {"redis: letters in the port", "redis://u" + pw + "h:63x9", errc::invalid_url, "after the host"},
    {"redis: '@host' forgotten (the password read as a port)", "redis://default:" + password, errc::invalid_url,
     "after the host"},
    {"redis: a database that is no number", "redis://u" + pw + "h/db1", errc::invalid_url, "bad database path '/db1'"},
    {"redis: a negative database", "redis://u" + pw + "h/-1", errc::invalid_url, "bad database path '/-1'"},
    {"redis: a database past int", "redis://u" + pw + "h/2147483648", errc::invalid_url, "bad database path"},
    {"redis: a path of two segments", "redis://u" + pw + "h/0/", errc::invalid_url, "bad database path '/0/'"},
    {"redis: a percent-encoded database", "redis://u" + pw + "h/%31", errc::invalid_url, "bad database path"},
    {"redis: the password as the database", "redis://u" + pw + "h/" + password, errc::invalid_url,
     "bad database path (not shown)"},
    {"unix: no path", "unix://u" + pw, errc::invalid_url, "needs a socket path"},
    {"unix: a host", "unix://tmp/r.sock", errc::invalid_url, "takes no host or port"},
    {"unix: a host and port", "unix://u" + pw + "localhost:6379/tmp/r.sock", errc::invalid_url, "no host or port"},
    {"unix: a relative path", "unix:run/r.sock", errc::invalid_url, "is not absolute"},
    {"unix: a NUL in the path", "unix:///tmp/a%00b", errc::invalid_url, "NUL"},
    {"unix: a path longer than sun_path", "unix:///" + std::string(107, 's'), errc::invalid_url, "108 bytes"},
    {"unix: a fragment", "unix://u" + pw + "/tmp/r.sock#x", errc::invalid_url, "takes no fragment"},
    // An empty query before a fragment: Boost.URL 1.81's params iterator runs past the end (fuzz_url).
    {"redis: an empty query, then a fragment", "redis://u" + pw + "h/?#", errc::invalid_url, "takes no fragment"},
    {"redis: the same without a host", "redis:0/h?#", errc::invalid_url, ""},
    {"sentinel: an empty query, then a fragment", "redis+sentinel://u" + pw + "h1,h2/m?#x", errc::invalid_url,
     "takes no fragment"},
    {"sentinel: no master name", "redis+sentinel://u" + pw + "h1,h2", errc::invalid_url, "needs the master's name"},
    {"sentinel: no sentinel", "redis+sentinel://u" + pw + "/m", errc::invalid_url, "at least one sentinel"},
    {"sentinel: an empty address in the list", "redis+sentinel://h1,,h2/m", errc::invalid_url, "empty sentinel"},
    {"sentinel: a bad port", "redis+sentinel://h1:0/m", errc::invalid_url, "bad port"},
    {"sentinel: a master name with '/'", "redis+sentinel://h1/m/2", errc::invalid_url, "bad master name"},
    {"sentinel: a TLS option", "redis+sentinel://h1/m?verify=false", errc::invalid_option, "needs rediss+sentinel://"},
    {"redis: wait_replicas past 64", "redis://h?wait_replicas=65", errc::invalid_option, "'wait_replicas'"},
    {"redis: wait_timeout 0", "redis://h?wait_timeout=0", errc::invalid_option, "'wait_timeout'"},
    {"redis: wait_timeout not shorter than command_timeout", "redis://h?wait_replicas=1&wait_timeout=5s",
     errc::invalid_option, "must be shorter than command_timeout"},
    {"redis: an unknown option", "redis://u" + pw + "h?lease=1s&leese=2s", errc::unknown_option, "'leese'"},
    {"redis: an option in the wrong case", "redis://h?Lease=1s", errc::unknown_option, "known: prefix, lease"},
    {"redis: the password as an option", "redis://h?password=" + password, errc::unknown_option, "go before the host"},
    {"redis: an option with no name", "redis://h?=1", errc::unknown_option, "unknown option ''"},
    {"unix: a TCP-only option", "unix:///tmp/r.sock?tls=1", errc::unknown_option, "'tls'"},
    {"redis: a duration that is no duration", "redis://u" + pw + "h?lease=soon", errc::invalid_option,
     "option 'lease' has value 'soon'"},
    {"redis: an option without a value", "redis://u" + pw + "h?lease", errc::invalid_option, "'lease' has value ''"},
    {"redis: a fractional duration", "redis://h?connect_timeout=1.5s", errc::invalid_option, "'1.5s'"},
    {"redis: a lease under 1 s", "redis://u" + pw + "h?lease=999ms", errc::invalid_option, "'999ms'"},
    {"redis: a lease over 24 h", "redis://u" + pw + "h?lease=25h", errc::invalid_option, "'25h'"},
    {"redis: connect_timeout under 10 ms", "redis://h?connect_timeout=9ms", errc::invalid_option, "'9ms'"},
    {"redis: command_timeout over 10 min", "redis://h?command_timeout=601s", errc::invalid_option, "'601s'"},
    {"redis: health_check under 10 ms (not 0)", "redis://h?health_check=9ms", errc::invalid_option, "'9ms'"},
    {"redis: max_reply_bytes under 1 KiB", "redis://h?max_reply_bytes=1023", errc::invalid_option, "'1023'"},
    {"redis: max_reply_bytes over 4 GiB", "redis://h?max_reply_bytes=4294967297", errc::invalid_option, "'4294967297'"},
    {"redis: max_key_bytes 0", "redis://h?max_key_bytes=0", errc::invalid_option, "'max_key_bytes' has value '0'"},
    {"redis: max_key_bytes past 64 KiB", "redis://h?max_key_bytes=65537", errc::invalid_option, "'65537'"},
    {"redis: an empty prefix", "redis://h?prefix=", errc::invalid_option, "'prefix' has value ''"},
    {"redis: a prefix over 128 bytes", "redis://h?prefix=" + std::string(129, 'p'), errc::invalid_option,
     "'prefix' has value 'ppp"},
    {"redis: a prefix with a hash tag", "redis://h?prefix=%7Bjobs%7D", errc::invalid_option, "'{jobs}'"},
    {"redis: a value holding the password", "redis://" + pw + "h?prefix=%7B" + password + "%7D", errc::invalid_option,
     "'prefix' has value (not shown)"},
    {"redis: a control byte in a value (shown escaped)", "redis://h?lease=1%0As", errc::invalid_option, "'1\\x0as'"},
    {"redis: a non-UTF-8 byte in a value (shown escaped)", "redis://h?lease=1%FFs", errc::invalid_option, "'1\\xffs'"},
    {"redis: an option given twice", "redis://h?lease=1s&lease=2s", errc::invalid_option, "given twice"},
    {"redis: db as an option", "redis://h?db=2", errc::invalid_option, "database in its path"},
    {"unix: db that is no number", "unix:///tmp/r.sock?db=x", errc::invalid_option, "option 'db' has value 'x'"},
    {"rediss: verify that is no bool", "rediss://h?verify=maybe", errc::invalid_option, "'verify' has value 'maybe'"},
    {"rediss: an empty ca_file", "rediss://h?ca_file=", errc::invalid_option, "'ca_file' has value ''"},
    {"rediss: cert_file without key_file", "rediss://h?cert_file=/c.pem", errc::invalid_option, "go together"},
    {"redis: a TLS option without TLS", "redis://h?ca_file=/ca.pem", errc::invalid_option, "needs rediss://"},
    {"unix: a TLS option", "unix:///tmp/r.sock?verify=false", errc::invalid_option, "not supported"},
};

// ---------------------------------------------------------------------------------------------
// Keys

/// The registries every key row runs on: each backend, with max_key_bytes = 16.
struct Backends {
    RedisServer server;
    std::vector<std::pair<std::string, KeyedLockRegistry>> all;
    Backends() {
        all.emplace_back("local", KeyedLockRegistry::from_url("local://?max_key_bytes=16"));
        all.emplace_back("redis", KeyedLockRegistry::from_url(url(server, "max_key_bytes=16")));
    }
};

/// A way of asking for a lock. Every row runs through each, so that bad input is refused by all.
struct Way {
    const char* name;
    std::function<void(KeyedLockRegistry&, const std::string&)> lock;
    /// Whether the error carries a message: async_lock completes with an error_code alone.
    bool has_message = true;

    /// What the message must contain: `says`, or nothing where there is no message.
    std::string expects(const std::string& says) const { return has_message ? says : ""; }
};

std::vector<Way> ways_to_lock() {
    return {
        {"lock", [](KeyedLockRegistry& r, const std::string& k) { (void)r.lock(k); }},
        {"try_lock", [](KeyedLockRegistry& r, const std::string& k) { (void)r.try_lock(k); }},
        {"try_lock_for", [](KeyedLockRegistry& r, const std::string& k) { (void)r.try_lock_for(k, 50ms); }},
        {"with_lock", [](KeyedLockRegistry& r, const std::string& k) { r.with_lock(k, [] {}); }},
        {"async_lock",
         [](KeyedLockRegistry& r, const std::string& k) {
             // The async form completes with the code instead of throwing: rethrow it as the
             // synchronous calls would, to check it in the same way.
             std::promise<boost::system::error_code> completed;
             auto result = completed.get_future();
             r.async_lock(k, [&](boost::system::error_code ec, Guard) { completed.set_value(ec); });
             REQUIRE(result.wait_for(10s) == std::future_status::ready);
             const std::error_code ec = result.get();
             if (ec) throw keylock::Error(ec, "keylock: async_lock: " + ec.message());
         },
         false},
    };
}

}  // namespace

TEST_CASE("bad input: every malformed URL is a typed error naming the part at fault", "[bad-input][config]") {
    for (const BadUrl& row : bad_urls) {
        INFO(row.what << ": " << row.url);
        expect(run([&] { (void)KeyedLockRegistry::from_url(row.url); }), row.code, row.says, 1s);
    }
}

TEST_CASE("bad input: option values out of range in code are invalid_option", "[bad-input][config]") {
    struct Row {
        const char* what;
        std::function<void()> make;
        std::string says;
    };
    auto local = [](auto change) {
        return [change] {
            keylock::LocalOptions o;
            change(o);
            KeyedLockRegistry r(o);
        };
    };
    auto redis = [](auto change) {
        return [change] {
            keylock::RedisOptions o;
            o.password = password;
            change(o);
            (void)keylock::redis_registry(o);
        };
    };
    const std::vector<Row> rows = {
        {"local: shards not a power of two", local([](auto& o) { o.shards = 12; }), "shards"},
        {"local: no shards", local([](auto& o) { o.shards = 0; }), "shards"},
        {"local: max_key_bytes 0", local([](auto& o) { o.max_key_bytes = 0; }), "max_key_bytes"},
        {"redis: a lease under 1 s", redis([](auto& o) { o.lease = 999ms; }), "lease"},
        {"redis: a lease over 24 h", redis([](auto& o) { o.lease = 25h; }), "lease"},
        {"redis: connect_timeout 0", redis([](auto& o) { o.connect_timeout = 0ms; }), "connect_timeout"},
        {"redis: a negative command_timeout", redis([](auto& o) { o.command_timeout = -1ms; }), "command_timeout"},
        {"redis: a negative health_check", redis([](auto& o) { o.health_check = -1ms; }), "health_check"},
        {"redis: max_reply_bytes 1023", redis([](auto& o) { o.max_reply_bytes = 1023; }), "max_reply_bytes"},
        {"redis: max_key_bytes past 64 KiB", redis([](auto& o) { o.max_key_bytes = 65537; }), "max_key_bytes"},
        {"redis: an empty prefix", redis([](auto& o) { o.prefix.clear(); }), "prefix"},
        {"redis: a negative database", redis([](auto& o) { o.db = -1; }), "db is -1"},
        {"redis: port 0", redis([](auto& o) { o.port = 0; }), "port is 0"},
        {"redis: no host", redis([](auto& o) { o.host.clear(); }), "host is empty"},
        {"redis: TLS over a Unix socket", redis([](auto& o) {
             o.tls = true;
             o.unix_socket = "/r.sock";
         }),
         "tls is for TCP"},
        {"redis: a relative socket path", redis([](auto& o) { o.unix_socket = "r.sock"; }), "absolute path"},
        {"redis: TLS files without TLS", redis([](auto& o) { o.ca_file = "/ca.pem"; }), "needs rediss://"},
        {"redis: a negative wait_replicas", redis([](auto& o) { o.wait_replicas = -1; }), "wait_replicas"},
        {"sentinel: no master_name", redis([](auto& o) {
             o.sentinels = {{"h", 26379}};
         }),
         "master's name"},
        // std::string("m"), not "m": GCC 12 warns falsely (-Wrestrict) on that assignment here.
        {"sentinel: master_name without sentinels", redis([](auto& o) { o.master_name = std::string("m"); }),
         "set sentinels"},
        {"cluster: a node without a port", redis([](auto& o) {
             o.cluster_nodes = {{"h", 0}};
         }),
         "a cluster node needs a host and a port"},
        {"cluster: a database other than 0", redis([](auto& o) {
             o.cluster_nodes = {{"h", 7000}};
             o.db = 1;
         }),
         "database 0 only"},
        {"cluster and sentinels at once", redis([](auto& o) {
             o.cluster_nodes = {{"h", 7000}};
             o.sentinels = {{"h", 26379}};
             o.master_name = "m";
         }),
         "at most one of sentinels, cluster_nodes and redlock_nodes"},
        {"redlock: a node listed twice", redis([](auto& o) {
             o.redlock_nodes = {{"h", 6379}, {"h", 6379}};
         }),
         "listed twice"},
        {"redlock: with wait_replicas", redis([](auto& o) {
             o.redlock_nodes = {{"h", 6379}};
             o.wait_replicas = 1;
         }),
         "not for redlock"},
        {"redlock: node_timeout over a third of the lease", redis([](auto& o) {
             o.redlock_nodes = {{"h", 6379}};
             o.lease = std::chrono::seconds(1);
             o.node_timeout = std::chrono::milliseconds(400);
         }),
         "at most a third of the lease"},
        {"sentinel: a sentinel without a port", redis([](auto& o) {
             o.sentinels = {{"h", 0}};
             o.master_name = "m";
         }),
         "a sentinel needs a host and a port"},
        {"sentinel: with a unix_socket", redis([](auto& o) {
             o.sentinels = {{"h", 26379}};
             o.master_name = "m";
             static const std::string socket = "/r.sock";  // not a literal: GCC 12 warns (-Wrestrict) wrongly
             o.unix_socket = socket;
         }),
         "no unix_socket"},
        {"redlock: with a sentinel password", redis([](auto& o) {
             o.redlock_nodes = {{"h", 6379}};
             o.sentinel_password = "x";
         }),
         "is for redis+sentinel://"},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        const Outcome out = run(row.make);
        REQUIRE(out.threw);
        CHECK((out.code == errc::invalid_option || out.code == errc::invalid_url));
        CHECK_THAT(out.message, Catch::Contains(row.says));
        check_message(out.message);
    }
}

TEST_CASE("bad input: empty and over-long keys are refused by every backend and every call", "[bad-input][redis]") {
    Backends backends;
    for (auto& backend : backends.all) {
        // Named references, not a structured binding: the lambdas below capture the registry,
        // and clang 14 does not let a lambda capture a structured binding (C++20 does).
        const std::string& name = backend.first;
        KeyedLockRegistry& registry = backend.second;
        for (const Way& way : ways_to_lock()) {
            INFO(name << " " << way.name);
            expect(run([&] { way.lock(registry, ""); }), errc::invalid_key, way.expects("empty"));
            // The message shows how long the key is and a printable beginning of it, not all of it.
            const std::string long_key = std::string(17, 'k') + "\xff\n" + std::string(4000, 'x');
            const Outcome out = run([&] { way.lock(registry, long_key); });
            expect(out, errc::key_too_long, way.expects("(4019 bytes)"));
            CHECK(out.message.size() < 300);
        }
        INFO(name);
        CHECK(registry.stats().entries == 0);
    }
}

TEST_CASE("bad input: binary and non-UTF-8 keys are keys like any other", "[bad-input][redis]") {
    Backends backends;
    auto other = KeyedLockRegistry::from_url(url(backends.server, "max_key_bytes=16"));
    const std::vector<std::pair<const char*, std::string>> keys = {
        {"NUL inside", std::string("a\0b", 3)},
        {"NUL alone", std::string(1, '\0')},
        {"CR LF", "a\r\nb"},
        {"RESP as a key", "*1\r\n$4\r\nPING\r\n"},
        {"0xFF", "\xff\xfe"},
        {"an overlong UTF-8 '/'", "\xc0\xaf"},
        {"a lone UTF-16 surrogate in UTF-8", "\xed\xa0\x80"},
        {"a cut UTF-8 sequence", "\xe2\x82"},
        {"exactly max_key_bytes", std::string(16, 'm')},
        {"a Redis glob", "k*?[a]"},
    };
    for (auto& backend : backends.all) {
        // Named references, not a structured binding, as above: the lambda below captures it.
        const std::string& name = backend.first;
        KeyedLockRegistry& registry = backend.second;
        for (const auto& [what, key] : keys) {
            INFO(name << ": " << what);
            Guard g = registry.lock(key);
            CHECK(g.key() == key);
            CHECK(g.fencing_token() > 0);
            // Held: the same bytes are refused, a key one byte longer is another key.
            if (name == "redis") CHECK_FALSE(other.try_lock(key).has_value());
            CHECK_FALSE(registry.try_lock(key).has_value());
            if (key.size() < 16) CHECK(registry.try_lock(key + std::string(1, '\0')).has_value());
            g.release();
            CHECK(registry.try_lock(key).has_value());
        }
        INFO(name);
        CHECK(keylock::test::eventually([&] { return registry.stats().entries == 0; }));
    }
}

TEST_CASE("bad input: servers that answer with errors, or are not Redis", "[bad-input][redis]") {
    struct Row {
        const char* what;
        errc code;
        std::string says;
        // Makes the server state and returns the URL to lock through.
        std::function<std::string(RedisServer&)> setup;
        // Whether the fault is the key's alone, so that other keys still lock.
        bool other_keys_work = false;
    };
    const std::string quick = "connect_timeout=500ms&command_timeout=500ms";
    const std::vector<Row> rows = {
        {"WRONGTYPE: the lock key holds a list", errc::backend_error, "holds a list",
         [&](RedisServer& s) {
             s.command("LPUSH keylock:k something");
             return url(s, quick);
         },
         true},
        {"NOAUTH: a password is required and none given", errc::auth_failed, "NOAUTH",
         [&](RedisServer& s) {
             s.command("CONFIG SET requirepass " + password);
             return url(s, quick);
         }},
        {"WRONGPASS: a wrong password", errc::auth_failed, "WRONGPASS",
         [&](RedisServer& s) {
             s.command("ACL SETUSER alice on >right-pw ~* +@all");
             return "redis://alice:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "/?" + quick;
         }},
        {"an ACL user that does not exist", errc::auth_failed, "WRONGPASS",
         [&](RedisServer& s) {
             return "redis://nobody:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "/?" + quick;
         }},
        {"NOPERM: an ACL user that may not run scripts", errc::auth_failed, "NOPERM",
         [&](RedisServer& s) {
             s.command("ACL SETUSER scriptless on >" + password + " ~* +@all -evalsha -eval");
             return "redis://scriptless:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "/?" + quick;
         }},
        {"NOPERM: an ACL user that may not touch keylock's keys", errc::auth_failed, "NOPERM",
         [&](RedisServer& s) {
             s.command("ACL SETUSER keyless on >" + password + " ~other:* +@all");
             return "redis://keyless:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "/?" + quick;
         }},
        {"a database the server does not have", errc::backend_error, "DB index is out of range",
         [&](RedisServer& s) { return "redis://127.0.0.1:" + std::to_string(s.port()) + "/99?" + quick; }},
        {"a cluster seed with a wrong password", errc::auth_failed, "WRONGPASS",
         [&](RedisServer& s) {
             s.command("CONFIG SET requirepass right-pw");
             return "redis+cluster://:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "?" + quick;
         }},
        {"a cluster seed that is a standalone Redis", errc::backend_error, "cluster support disabled",
         [&](RedisServer& s) { return "redis+cluster://127.0.0.1:" + std::to_string(s.port()) + "?" + quick; }},
        {"Redlock nodes with a wrong password", errc::auth_failed, "WRONGPASS",
         [&](RedisServer& s) {
             s.command("CONFIG SET requirepass right-pw");
             return "redlock://:" + password + "@127.0.0.1:" + std::to_string(s.port()) + "?" + quick +
                    "&node_timeout=100ms";
         }},
        {"a Redlock node whose lock key holds a list", errc::backend_error, "holds a list",
         [&](RedisServer& s) {
             s.command("LPUSH keylock:k something");
             return "redlock://127.0.0.1:" + std::to_string(s.port()) + "?" + quick + "&node_timeout=100ms";
         },
         true},
    };
    for (const Row& row : rows) {
        INFO(row.what);
        RedisServer server;
        auto registry = KeyedLockRegistry::from_url(row.setup(server));
        for (const Way& way : ways_to_lock()) {
            INFO(way.name);
            expect(run([&] { way.lock(registry, "k"); }), row.code, way.expects(row.says));
        }
        if (row.other_keys_work) CHECK(registry.try_lock("other").has_value());
        CHECK(keylock::test::eventually([&] { return registry.stats().entries == 0; }));
    }
    SECTION("a wrong password stays auth_failed on the next call, within the reconnection back-off too") {
        RedisServer server({"--requirepass", "right-pw"});
        std::string at = ":";  // appended, not ":" + ...: GCC 12 warns falsely (-Wrestrict) on that
        at += password;
        at += "@127.0.0.1:" + std::to_string(server.port()) + "?" + quick;
        for (const std::string& u : {"redis://" + at, "redis+cluster://" + at, "redlock://" + at}) {
            INFO(u);
            auto registry = KeyedLockRegistry::from_url(u);
            // One right after the other: the first two reconnect at once, the later ones meet the
            // refused connection kept by the back-off (50 ms, then doubling).
            for (int call = 0; call < 5; ++call) {
                INFO("call " << call);
                expect(run([&] { (void)registry.try_lock("k"); }), errc::auth_failed, "WRONGPASS");
            }
        }
    }
    SECTION("READONLY: the URL points at a replica") {
        RedisServer master;
        RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(master.port())});
        auto registry = KeyedLockRegistry::from_url(url(replica, quick));
        for (const Way& way : ways_to_lock()) {
            INFO(way.name);
            expect(run([&] { way.lock(registry, "k"); }), errc::backend_error, way.expects("READONLY"));
        }
    }
    SECTION("WRONGTYPE under a holder: its key replaced by a list") {
        RedisServer server;
        auto registry = KeyedLockRegistry::from_url(url(server, "lease=1s&" + quick));
        Guard g = registry.lock("k");
        server.command("DEL keylock:k");
        server.command("LPUSH keylock:k something");
        CHECK(keylock::test::eventually([&] { return g.lost(); }));  // the next renewal finds out
        const Outcome out = run([&] { g.release(); });
        REQUIRE(out.threw);
        INFO(out.message);
        CHECK(out.code == errc::not_owner);
        check_message(out.message);
        CHECK(server.command("TYPE keylock:k") == "+list");  // left alone
    }
    SECTION("NOSCRIPT: the script cache flushed between locks is not an error") {
        RedisServer server;
        auto registry = KeyedLockRegistry::from_url(url(server, quick));
        std::uint64_t last = 0;
        for (int i = 0; i < 5; ++i) {
            server.command("SCRIPT FLUSH");
            Guard g = registry.lock("k");
            CHECK(g.fencing_token() > last);
            last = g.fencing_token();
        }
    }
    SECTION("a server that is not Redis: an HTTP server on the port") {
        FakeServer http("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
        auto registry = KeyedLockRegistry::from_url(url(http.port(), quick));
        for (const Way& way : ways_to_lock()) {
            INFO(way.name);
            expect(run([&] { way.lock(registry, "k"); }), errc::protocol_error,
                   way.expects("does not speak the Redis protocol"));
        }
    }
    SECTION("a password the server does not expect, or echoes: refused AUTH in our words, never its own") {
        // A Redis without requirepass names the refused AUTH in its reply; a server that echoes
        // its input (the fake one echoes everything it was sent, in an error to every command)
        // would show the password and user. Every topology that AUTHs is refused the same way.
        RedisServer no_password;
        FakeServer echo(FakeServer::Echo{});
        const std::string user = "user-of-the-table";
        for (const int port : {no_password.port(), static_cast<int>(echo.port())}) {
            const std::string at = "@127.0.0.1:" + std::to_string(port);
            const std::string with_user = std::string(user).append(":").append(password);
            std::vector<std::string> urls;
            for (const auto& [scheme, userinfo, path] :
                 {std::tuple{"redis://", ":" + password, "/?"}, std::tuple{"redis://", with_user, "/?"},
                  std::tuple{"redlock://", with_user, "?node_timeout=100ms&"},
                  std::tuple{"redis+cluster://", ":" + password, "?"}}) {
                urls.push_back(std::string(scheme).append(userinfo).append(at).append(path).append(quick));
            }
            for (const std::string& u : urls) {
                INFO(u);
                auto registry = KeyedLockRegistry::from_url(u);
                for (const Way& way : ways_to_lock()) {
                    INFO(way.name);
                    const Outcome out = run([&] { way.lock(registry, "k"); });
                    expect(out, errc::auth_failed, way.expects("refused AUTH ("));
                    CHECK_THAT(out.message, !Catch::Contains(user));
                }
                const Outcome inspected = run([&] { (void)registry.inspect("k"); });
                expect(inspected, errc::auth_failed, "refused AUTH (");
                CHECK_THAT(inspected.message, !Catch::Contains(user));
            }
        }
        // A server that takes AUTH and echoes all it was sent, AUTH's password too, in SELECT's
        // error: the server's words are shown without the password and user.
        FakeServer echo_after_auth(FakeServer::Echo{true});
        auto registry = KeyedLockRegistry::from_url("redis://" + user + ":" + password + "@127.0.0.1:" +
                                                    std::to_string(echo_after_auth.port()) + "/2?" + quick);
        const Outcome out = run([&] { (void)registry.lock("k"); });
        expect(out, errc::backend_error, "refused SELECT: ERR you sent:");
        CHECK_THAT(out.message, Catch::Contains("AUTH") && Catch::Contains("***") && !Catch::Contains(user));
    }
    SECTION("a server that accepts and never answers") {
        FakeServer silent;
        auto registry = KeyedLockRegistry::from_url(url(silent.port(), quick));
        for (const Way& way : ways_to_lock()) {
            INFO(way.name);
            // Each attempt gives up when connect_timeout has passed since the first failure.
            expect(run([&] { way.lock(registry, "k"); }), errc::unavailable, way.expects("127.0.0.1:"), 3s);
        }
    }
    SECTION("nobody listening on the port") {
        int port = 0;
        {
            RedisServer gone;
            port = gone.port();
        }
        auto registry =
            KeyedLockRegistry::from_url("redis://:" + password + "@127.0.0.1:" + std::to_string(port) + "/?" + quick);
        for (const Way& way : ways_to_lock()) {
            INFO(way.name);
            expect(run([&] { way.lock(registry, "k"); }), errc::unavailable, way.expects("Connection refused"), 3s);
        }
    }
    SECTION("a host name that does not resolve") {
        auto registry = KeyedLockRegistry::from_url("redis://u:" + password + "@no-such-host.invalid/?" + quick);
        expect(run([&] { (void)registry.lock("k"); }), errc::unavailable, "no-such-host.invalid", 5s);
    }
}

TEST_CASE("a URL with a user and no password AUTHs as that user (empty password), never as default",
          "[redis][bad-input][auth]") {
    RedisServer server;
    REQUIRE(server.command("ACL SETUSER alice on nopass ~* &* +@all") == "+OK");
    REQUIRE(server.command("ACL SETUSER bob on >bob-pw-9Kq ~* &* +@all") == "+OK");
    const std::string at = "@127.0.0.1:" + std::to_string(server.port()) + "?connect_timeout=1s";

    SECTION("a user whose password is empty (nopass): every connection is that user's") {
        auto r = KeyedLockRegistry::from_url("redis://alice" + at);
        Guard g = r.lock("k");
        CHECK(r.describe() == "redis://alice" + at);
        // CLIENT LIST, but for the connection of redis-cli that asks (the default user's).
        int ours = 0;
        std::istringstream clients(keylock::test::cli(server.port(), "CLIENT LIST"));
        for (std::string line; std::getline(clients, line);) {
            if (line.find("cmd=client|list") != std::string::npos) continue;
            INFO(line);
            CHECK(line.find(" user=alice ") != std::string::npos);
            ++ours;
        }
        CHECK(ours >= 1);
    }
    SECTION("a user with a password: refused (WRONGPASS), not connected as default") {
        auto r = KeyedLockRegistry::from_url("redis://bob" + at);
        const auto start = Clock::now();
        std::string message;
        try {
            (void)r.lock("k");
            FAIL("locked as another user than bob");
        } catch (const keylock::Error& e) {
            message = e.what();
            CHECK(e.code() == errc::auth_failed);
        }
        CHECK_THAT(message, Catch::Contains("refused AUTH (WRONGPASS") && !Catch::Contains("bob"));
        CHECK(Clock::now() - start < 3s);
    }
}

namespace {

/// This process's resident size in bytes (0 if /proc says nothing).
long resident_bytes() {
    long size = 0, resident = 0;
    if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return resident * ::sysconf(_SC_PAGESIZE);
}

}  // namespace

TEST_CASE("a reply that never ends is refused at its bound, on the command connection and the subscriber",
          "[redis][bad-input]") {
    // A server (or something in its place) that answers with a bulk string, an array or a line
    // without end: hiredis would buffer all of it. keylock refuses the reply as soon as it breaks
    // max_reply_bytes or the bound on elements (backends/redis/reply_bound.hpp), closes the
    // connection (protocol_error) and goes on as after any broken connection.
    using Endless = FakeServer::Endless;
    struct Row {
        const char* what;
        std::string header;
        std::string query;
        std::string says;
    };
    const std::vector<Row> rows = {
        {"a bulk string of 1 TiB", "$1099511627776\r\n", "",
         "a bulk string of 1099511627776 bytes, more than max_reply_bytes (67108864)"},
        {"an array of 2^31 - 1 elements", "*2147483647\r\n", "", "more than 1048576 array elements in one reply"},
        {"a line without end, in an array", "*1\r\n+", "&max_reply_bytes=1048576",
         "a reply of more than max_reply_bytes (1048576 bytes)"},
    };
    const std::string quick = "connect_timeout=1s&command_timeout=1s";
    const long before = resident_bytes();
    for (const Row& row : rows) {
        INFO(row.what);
        {
            // The handshake's PING is answered so: the connection is refused at once.
            FakeServer server(Endless{row.header, ""});
            auto registry = KeyedLockRegistry::from_url(url(server.port(), quick + row.query));
            expect(run([&] { (void)registry.lock("k"); }), errc::protocol_error, row.says, 5s);
            CHECK(eventually([&] { return server.endless_ended_by_client() >= 1; }, 2s));
        }
        {
            // The acquire script's answer: the connection breaks (as a reset would), the attempt is
            // retried on a new one until connect_timeout, then fails `unavailable` saying why.
            FakeServer server(Endless{row.header, "EVAL"});
            auto registry = KeyedLockRegistry::from_url(url(server.port(), quick + row.query));
            expect(run([&] { (void)registry.lock("k"); }), errc::unavailable, row.says, 5s);
            CHECK(server.endless_begun() >= 2);
            if (!row.query.empty()) CHECK(server.endless_most_bytes() > std::size_t{1} << 20);  // read up to the bound
            CHECK(eventually([&] { return server.endless_ended_by_client() == server.endless_begun(); }, 2s));
        }
        {
            // The subscriber's: the key is held elsewhere (so says the fake acquire script), the
            // waiter subscribes, its subscriber is refused and made again; it polls meanwhile,
            // and its deadline ends the wait as usual.
            FakeServer server(Endless{row.header, "SUBSCRIBE"});
            auto registry = KeyedLockRegistry::from_url(url(server.port(), quick + row.query));
            std::optional<Guard> got;
            const Outcome out = run([&] { got = registry.try_lock_for("k", 1500ms); });
            CHECK_FALSE(out.threw);
            CHECK_FALSE(got.has_value());
            CHECK(out.took < 5s);  // its 1.5 s, and slack for a loaded machine
            CHECK(server.endless_begun() >= 1);
            CHECK(eventually([&] { return server.endless_ended_by_client() == server.endless_begun(); }, 2s));
        }
    }
    if (!keylock::test::kSanitized) {
        // Dozens of endless answers, one of them over 1 MiB long each time: none was held.
        CHECK(resident_bytes() - before < 32L << 20);
    }
}
