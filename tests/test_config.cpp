// SPDX-License-Identifier: BSL-1.0
// URLs, options and errors: every bad input is a typed error that names the part at fault.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>

#include <keylock/keylock.hpp>

#include "backends/local/local_config.hpp"
#include "src/config.hpp"

using keylock::errc;
using keylock::KeyedLockRegistry;
using namespace std::chrono_literals;

namespace {

/// Runs `fn`, expecting keylock::Error with `code` whose message contains `part`.
template <class Fn>
void expect_error(Fn&& fn, errc code, const std::string& part) {
    try {
        fn();
        FAIL("no error thrown; expected " << keylock::make_error_code(code).message());
    } catch (const keylock::Error& e) {
        INFO("message: " << e.what());
        CHECK(e.code() == code);
        CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
}

}  // namespace

TEST_CASE("durations parse in ms, s, m and h", "[config]") {
    using keylock::detail::parse_duration;
    CHECK(parse_duration("500ms") == 500ms);
    CHECK(parse_duration("30s") == 30s);
    CHECK(parse_duration("2m") == 2min);
    CHECK(parse_duration("1h") == 1h);
    CHECK(parse_duration("0") == 0ms);
    CHECK(parse_duration("0s") == 0ms);
    for (const char* bad : {"", "s", "10", "-1s", "1.5s", "10 s", "10sec", "1d", "99999999999999999999s", "3000000h"}) {
        INFO(bad);
        CHECK_FALSE(parse_duration(bad).has_value());
    }
    for (auto d : {0ms, 1ms, 1500ms, 1000ms, 60000ms, 3600000ms, 90000ms}) {
        CHECK(parse_duration(keylock::detail::format_duration(d)) == d);
    }
}

TEST_CASE("local:// URLs set every option", "[config]") {
    auto o = keylock::local::parse_url("local://?idle_ttl=30s&max_keys=100000&max_key_bytes=64&fair=true&shards=16");
    CHECK(o.idle_ttl == 30s);
    CHECK(o.max_keys == 100000);
    CHECK(o.max_key_bytes == 64);
    CHECK(o.fair);
    CHECK(o.shards == 16);
    CHECK(keylock::local::parse_url(o.to_url()) == o);
    CHECK(keylock::LocalOptions{}.to_url() == "local://");
    static_assert(std::is_same_v<keylock::RegistryOptions, keylock::LocalOptions>, "the old name stays");
    CHECK(keylock::local_registry(o).describe() == o.to_url());
    CHECK(keylock::local::parse_url("local://") == keylock::LocalOptions{});
    CHECK(keylock::local::parse_url("LOCAL://?fair=1").fair);
    CHECK(keylock::local::parse_url("local:").shards == 128);
}

TEST_CASE("a registry describes its configuration as a URL", "[config]") {
    auto r = KeyedLockRegistry::from_url("local://?fair=yes&idle_ttl=1500ms");
    CHECK(r.describe() == "local://?idle_ttl=1500ms&fair=true");
    CHECK(KeyedLockRegistry().describe() == "local://");
}

TEST_CASE("bad URLs and options are typed errors naming the part at fault", "[config]") {
    expect_error([] { KeyedLockRegistry::from_url(""); }, errc::invalid_url, "no scheme");
    expect_error([] { KeyedLockRegistry::from_url("just-words"); }, errc::invalid_url, "no scheme");
    expect_error([] { KeyedLockRegistry::from_url("://x"); }, errc::invalid_url, "no scheme");
    expect_error([] { KeyedLockRegistry::from_url("1ocal://"); }, errc::invalid_url, "bad scheme");
    expect_error([] { KeyedLockRegistry::from_url("memcached://h"); }, errc::unknown_scheme, "memcached");
    expect_error([] { KeyedLockRegistry::from_url("local://host"); }, errc::invalid_url, "no user, host");
    expect_error([] { KeyedLockRegistry::from_url("local://u:secret@/"); }, errc::invalid_url, "no user");
    expect_error([] { KeyedLockRegistry::from_url("local:///path"); }, errc::invalid_url, "no path");
    expect_error([] { KeyedLockRegistry::from_url("local://#frag"); }, errc::invalid_url, "fragment");
    expect_error([] { KeyedLockRegistry::from_url("local://?a b"); }, errc::invalid_url, "malformed");
    expect_error([] { KeyedLockRegistry::from_url("local://?idle_tll=1s"); }, errc::unknown_option, "idle_tll");
    expect_error([] { KeyedLockRegistry::from_url("local://?idle_ttl=soon"); }, errc::invalid_option, "idle_ttl");
    expect_error([] { KeyedLockRegistry::from_url("local://?idle_ttl"); }, errc::invalid_option, "idle_ttl");
    expect_error([] { KeyedLockRegistry::from_url("local://?max_keys=-1"); }, errc::invalid_option, "max_keys");
    expect_error([] { KeyedLockRegistry::from_url("local://?max_keys=1e5"); }, errc::invalid_option, "max_keys");
    expect_error([] { KeyedLockRegistry::from_url("local://?max_key_bytes=0"); }, errc::invalid_option,
                 "max_key_bytes");
    expect_error([] { KeyedLockRegistry::from_url("local://?fair=maybe"); }, errc::invalid_option, "fair");
    expect_error([] { KeyedLockRegistry::from_url("local://?shards=3"); }, errc::invalid_option, "shards");
    expect_error([] { KeyedLockRegistry::from_url("local://?shards=131072"); }, errc::invalid_option, "shards");
    expect_error([] { KeyedLockRegistry::from_url("local://?fair=1&fair=0"); }, errc::invalid_option, "twice");
    expect_error([] { KeyedLockRegistry::from_url("local://?x\x01=1"); }, errc::invalid_url, "malformed");
    keylock::LocalOptions bad;
    bad.shards = 12;
    expect_error([&] { KeyedLockRegistry r(bad); }, errc::invalid_option, "shards");
}

TEST_CASE("messages are one sentence, without repetition", "[config]") {
    try {
        KeyedLockRegistry::from_url("memcached://h");
        FAIL("no error");
    } catch (const keylock::Error& e) {
        CHECK(std::string(e.what()) ==
              "keylock: unknown URL scheme 'memcached' (this program supports: local, sim)");  // links keylock::testing
    }
    // A Redis scheme in a program without keylock::redis says what to link, for every form.
    for (const char* scheme : {"redis", "rediss+sentinel", "redis+cluster", "redlock", "rediss+redlock"}) {
        try {
            KeyedLockRegistry::from_url(std::string(scheme) + "://h:1");
            FAIL("no error");
        } catch (const keylock::Error& e) {
            CHECK(e.code() == errc::unknown_scheme);
            CHECK_THAT(e.what(), Catch::Contains(std::string("link keylock::redis for ") + scheme + "://"));
        }
    }
    CHECK(std::string(keylock::Error(keylock::make_error_code(errc::timeout)).what()) ==
          "keylock: lock not acquired before the deadline");
}

TEST_CASE("from_env reads the variable and falls back when unset or empty", "[config]") {
    ::unsetenv("KEYLOCK_TEST_URL");
    CHECK(KeyedLockRegistry::from_env("KEYLOCK_TEST_URL").describe() == "local://");
    CHECK(KeyedLockRegistry::from_env("KEYLOCK_TEST_URL", "local://?fair=true").describe() == "local://?fair=true");
    ::setenv("KEYLOCK_TEST_URL", "", 1);
    CHECK(KeyedLockRegistry::from_env("KEYLOCK_TEST_URL").describe() == "local://");
    ::setenv("KEYLOCK_TEST_URL", "local://?max_keys=5", 1);
    CHECK(KeyedLockRegistry::from_env("KEYLOCK_TEST_URL").describe() == "local://?max_keys=5");
    ::setenv("KEYLOCK_TEST_URL", "nope://", 1);
    expect_error([] { KeyedLockRegistry::from_env("KEYLOCK_TEST_URL"); }, errc::unknown_scheme, "nope");
    ::unsetenv("KEYLOCK_TEST_URL");
}

TEST_CASE("errors integrate with std::error_code", "[config]") {
    std::error_code ec = errc::key_too_long;
    CHECK(ec.category().name() == std::string("keylock"));
    CHECK(ec.message() == "key longer than max_key_bytes");
    CHECK(ec == keylock::make_error_code(errc::key_too_long));
    CHECK(ec != errc::invalid_key);
    keylock::Error e(errc::timeout, "x");
    const std::system_error& base = e;
    CHECK(base.code() == errc::timeout);
    for (int i = 1; i <= static_cast<int>(errc::unavailable); ++i) {
        CHECK(keylock::error_category().message(i) != "unknown keylock error");
    }
}
