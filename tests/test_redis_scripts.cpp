// SPDX-License-Identifier: BSL-1.0
// The Redis backend's scripts against real servers as deployments set them up: ACL users (the
// minimum docs/configuration.md documents, and users lacking one right), keys of another type
// where a lock was, and every key and channel under the prefix.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "documented_acl.hpp"
#include "eventually.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::call;
using keylock::test::documented_acl;
using keylock::test::eventually;
using keylock::test::RedisServer;
using keylock::test::url;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// Creates the user `keylock-app` (password `pw`) from `acl` and returns a URL that logs in as it.
std::string acl_user(const RedisServer& server, const std::vector<std::string>& acl, const std::string& query = "") {
    const auto reply = call(server.port(), acl);
    REQUIRE(reply.text() == "OK");
    return "redis://keylock-app:pw@127.0.0.1:" + std::to_string(server.port()) + (query.empty() ? "" : "/?" + query);
}

template <class F>
std::pair<errc, std::string> failure_of(F&& f) {
    try {
        f();
    } catch (const keylock::Error& e) {
        return {static_cast<errc>(e.code().value()), e.what()};
    }
    return {errc{}, {}};
}

bool exists(const RedisServer& server, const std::string& key) {
    return call(server.port(), {"EXISTS", key}).integer == 1;
}

long long keys_matching(const RedisServer& server, const std::string& pattern) {
    return static_cast<long long>(call(server.port(), {"KEYS", pattern}).elements.size());
}

}  // namespace

TEST_CASE("a Redis user with the documented minimum ACL locks, waits, hands over and releases", "[redis][acl]") {
    RedisServer server;
    const std::string as_user = acl_user(server, documented_acl());
    auto a = KeyedLockRegistry::from_url(as_user);  // lease 30 s: only a notification wakes a waiter soon
    auto b = KeyedLockRegistry::from_url(as_user);

    // Across registries: b waits, and a's release (published on the channel) wakes it.
    std::optional<Guard> held = a.lock("k");
    std::optional<Guard> got;
    std::thread waiter([&] { got = b.try_lock_for("k", 10s); });
    REQUIRE(eventually(
        [&] {
            return call(server.port(), {"PUBSUB", "NUMSUB", "keylock:k"}).elements.at(1).integer == 1;
        },
        5s));
    const auto start = Clock::now();
    held->release();
    waiter.join();
    REQUIRE(got.has_value());
    CHECK(Clock::now() - start < 2s);

    // Within b: a hand-over to a waiter of the same registry.
    std::optional<Guard> next;
    std::thread second([&] { next = b.try_lock_for("k", 10s); });
    REQUIRE(eventually([&] { return b.stats().waiting == 1; }, 5s));
    got->release();
    second.join();
    REQUIRE(next.has_value());
    CHECK(next->fencing_token() > 0);
    const auto info = a.inspect("k");
    CHECK(info.held);
    CHECK(info.fencing_token == next->fencing_token());
    next->release();
    CHECK_FALSE(exists(server, "keylock:k"));

    // An operator's forced release, as this user.
    std::optional<Guard> stuck = a.lock("stuck");
    CHECK(b.force_release("stuck"));
    stuck.reset();
    CHECK(eventually([&] { return a.stats().lost == 1; }, 5s));  // found at its release
    CHECK(b.stats().lost == 0);

    // Everything keylock made is under the prefix.
    CHECK(keys_matching(server, "*") == keys_matching(server, "keylock:*"));
    CHECK(keys_matching(server, "keylock:fence:{*}") >= 1);
}

TEST_CASE("a Redis user without the channels fails at its first acquire, naming the channel, and takes nothing",
          "[redis][acl]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(acl_user(server, documented_acl({"&keylock:*"})));
    const auto [code, what] = failure_of([&] { r.lock("k"); });
    CHECK(code == errc::auth_failed);
    CHECK_THAT(what, Catch::Contains("may not run PUBLISH on channel keylock:k"));
    CHECK_FALSE(exists(server, "keylock:k"));
    CHECK(keys_matching(server, "*") == 0);  // not even a fencing counter
}

TEST_CASE("a Redis user refused SET fails at its first acquire with auth_failed and takes no lock", "[redis][acl]") {
    // The acquire checks only the channel itself (one acl_check_cmd per lock): a refused SET is
    // Redis's own NOPERM; the fencing counter its INCR made is deleted again.
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(acl_user(server, documented_acl({"+set"})));
    const auto [code, what] = failure_of([&] { r.lock("k"); });
    CHECK(code == errc::auth_failed);
    CHECK_THAT(what, Catch::Contains("minimum ACL"));  // Redis 7.0 names neither the command nor NOPERM
    CHECK_FALSE(exists(server, "keylock:k"));
    CHECK(keys_matching(server, "*") == 0);  // not even a counter left at 1
}

TEST_CASE("a Redis user without the counters' keys fails at its first acquire, naming the key, and takes nothing",
          "[redis][acl]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(acl_user(server, documented_acl({"~keylock:*"}, {"~keylock:k*"})));
    const auto [code, what] = failure_of([&] { r.lock("k"); });
    CHECK(code == errc::auth_failed);
    CHECK_THAT(what, Catch::Contains("NOPERM"));  // Redis checks a script's declared keys itself, first
    CHECK_THAT(what, Catch::Contains("its fencing counter keylock:fence:{"));
    CHECK(keys_matching(server, "*") == 0);
}

TEST_CASE("a Redis user that may not subscribe fails its waits at once, naming the channel", "[redis][acl]") {
    RedisServer server;
    auto holder = KeyedLockRegistry::from_url(url(server));
    Guard held = holder.lock("k");
    auto r = KeyedLockRegistry::from_url(acl_user(server, documented_acl({"+subscribe"})));
    const auto start = Clock::now();
    const auto [code, what] = failure_of([&] { (void)r.try_lock_for("k", 10s); });
    CHECK(code == errc::auth_failed);
    CHECK_THAT(what, Catch::Contains("may not subscribe to channel keylock:k"));
    CHECK(Clock::now() - start < 5s);           // not at the deadline
    CHECK(r.try_lock("free-key").has_value());  // what needs no wait still works
}

TEST_CASE("a refused SUBSCRIBE is not counted: once allowed, a waiter is woken and its channel unsubscribed after it",
          "[redis][acl]") {
    // The backend counts the parties (a key's KeyLock, its modal requests) subscribed to each
    // channel and sends UNSUBSCRIBE when the last is done. A party whose SUBSCRIBE failed is not
    // subscribed and never unsubscribes: it must not stay counted, or the channel would stay
    // subscribed for good after the next party's wait.
    const bool shared = GENERATE(false, true);
    INFO((shared ? "shared waiters" : "exclusive waiters"));
    RedisServer server;
    auto holder = KeyedLockRegistry::from_url(url(server));
    std::optional<Guard> held = holder.lock("k");
    auto r = KeyedLockRegistry::from_url(acl_user(server, documented_acl({"+subscribe"})));
    auto wait_for = [&](std::chrono::milliseconds d) {
        return shared ? r.try_lock_shared_for("k", d) : r.try_lock_for("k", d);
    };
    CHECK(failure_of([&] { (void)wait_for(10s); }).first == errc::auth_failed);
    auto subscribers = [&] { return call(server.port(), {"PUBSUB", "NUMSUB", "keylock:k"}).elements.at(1).integer; };
    CHECK(subscribers() == 0);

    REQUIRE(call(server.port(), {"ACL", "SETUSER", "keylock-app", "+subscribe"}).text() == "OK");
    std::optional<Guard> got;
    std::thread waiter([&] { got = wait_for(20s); });
    REQUIRE(eventually([&] { return subscribers() == 1; }, 5s));
    const auto start = Clock::now();
    held.reset();
    waiter.join();
    REQUIRE(got.has_value());
    CHECK(Clock::now() - start < 2s);  // the release's notification, not the lease (30 s)
    got.reset();
    CHECK(eventually([&] { return subscribers() == 0; }, 5s));  // no party is left on the channel
}

TEST_CASE("a lock key replaced by another type: its holder's release says not_owner, and leaves it", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard g = r.lock("k");
    REQUIRE(call(server.port(), {"DEL", "keylock:k"}).integer == 1);
    REQUIRE(call(server.port(), {"HSET", "keylock:k", "field", "value"}).integer == 1);
    const auto [code, what] = failure_of([&] { g.release(); });
    CHECK(code == errc::not_owner);
    CHECK(call(server.port(), {"TYPE", "keylock:k"}).text() == "hash");  // someone else's data, untouched

    // A renewal finds it too: the hold is lost, not an error.
    auto short_lease = KeyedLockRegistry::from_url(url(server, "lease=1s"));
    Guard h = short_lease.lock("renewed");
    REQUIRE(call(server.port(), {"DEL", "keylock:renewed"}).integer == 1);
    REQUIRE(call(server.port(), {"RPUSH", "keylock:renewed", "x"}).integer == 1);
    CHECK(eventually([&] { return h.lost(); }, 3s));
    CHECK(short_lease.stats().lost == 1);

    // Waiting for it would never end: an acquire says what it found.
    const auto [wait_code, wait_what] = failure_of([&] { (void)r.try_lock_for("k", 5s); });
    CHECK(wait_code == errc::backend_error);
    CHECK_THAT(wait_what, Catch::Contains("WRONGTYPE"));
}

TEST_CASE("keys of the form fence:{...} are refused on Redis: they would be its fencing counters", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server));
    r.lock("k").release();  // a counter exists now
    for (const std::string key : {"fence:{abc}", "fence:{}"}) {
        CAPTURE(key);
        CHECK(failure_of([&] { (void)r.try_lock(key); }).first == errc::invalid_key);
        CHECK(failure_of([&] { (void)r.inspect(key); }).first == errc::invalid_key);
        CHECK(failure_of([&] { (void)r.force_release(key); }).first == errc::invalid_key);
    }
    CHECK(r.try_lock("fence:{abc").has_value());  // not of that form
    CHECK(r.try_lock("fence").has_value());
}
