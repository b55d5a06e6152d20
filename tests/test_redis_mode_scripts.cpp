// SPDX-License-Identifier: BSL-1.0
// The scripts of shared, upgrade and counted holds (backends/redis/mode_scripts.hpp) and the
// exclusive acquire on their keys, run by EVAL on a real redis-server, their replies checked
// as the backend will read them.
#include <catch2/catch.hpp>

#include <poll.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backends/redis/mode_scripts.hpp"
#include "backends/redis/slots.hpp"
#include "documented_acl.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"
#include "topology.hpp"

namespace scripts = keylock::redis::scripts;
using keylock::test::call;
using keylock::test::RedisServer;
using keylock::test::Reply;
using namespace std::chrono_literals;

namespace {

const std::string lock_key = "keylock:k";
const std::string fence_key = "keylock:fence:{x}";
constexpr const char* lease = "30000";  // long enough for a loaded machine's pauses

/// EVAL of `script` with the lock key and the fencing counter as KEYS[1] and KEYS[2].
Reply eval2(const RedisServer& server, const std::string& script, const std::vector<std::string>& args,
            const std::string& key = lock_key) {
    std::vector<std::string> command{"EVAL", script, "2", key, fence_key};
    command.insert(command.end(), args.begin(), args.end());
    return call(server.port(), command);
}

/// EVAL of `script` with the lock key alone.
Reply eval1(const RedisServer& server, const std::string& script, const std::vector<std::string>& args,
            const std::string& key = lock_key) {
    std::vector<std::string> command{"EVAL", script, "1", key};
    command.insert(command.end(), args.begin(), args.end());
    return call(server.port(), command);
}

/// One shared or upgrade request; `again`: a retry of one whose answer was lost.
Reply shared(const RedisServer& server, const std::string& owner, const std::string& mode = "s",
             const std::string& ms = lease, const std::string& key = lock_key, bool again = false) {
    return eval2(server, scripts::acquire_shared, {ms, mode, owner, again ? "1" : "0"}, key);
}

Reply exclusive(const RedisServer& server, const std::string& owner, const std::string& ms = lease,
                const std::string& key = lock_key) {
    return eval2(server, scripts::acquire, {owner, ms}, key);
}

/// One permit request; `again`: a retry of one whose answer was lost.
Reply permits(const RedisServer& server, const std::string& owner, int n, int limit, const std::string& ms = lease,
              const std::string& key = lock_key, bool again = false) {
    return eval2(server, scripts::acquire_permits,
                 {ms, std::to_string(limit), owner, std::to_string(n), again ? "1" : "0"}, key);
}

Reply release(const RedisServer& server, const std::string& member, const std::string& key = lock_key) {
    return eval1(server, scripts::release_member, {member, key}, key);
}

Reply convert(const RedisServer& server, const std::string& hold, const std::string& owner, const std::string& target,
              const std::string& ms = lease) {
    return eval2(server, scripts::convert, {hold, owner, ms, target, lock_key});
}

bool granted(const Reply& r) {
    return r.type == Reply::Type::array && r.elements.size() >= 2 && r.elements[0].integer == 1;
}
bool refused(const Reply& r) {
    return r.type == Reply::Type::array && r.elements.size() == 2 && r.elements[0].integer == 0;
}
long long fence_of(const Reply& r) {
    REQUIRE(granted(r));
    return r.elements[1].integer;
}
/// The member `<mode>:<fence>:<owner>` a grant made.
std::string member(const std::string& mode, const Reply& r, const std::string& owner) {
    return mode + ":" + std::to_string(fence_of(r)) + ":" + owner;
}

bool has(const RedisServer& server, const std::string& m, const std::string& key = lock_key) {
    return call(server.port(), {"ZSCORE", key, m}).type == Reply::Type::bulk;
}

std::string type_of(const RedisServer& server, const std::string& key = lock_key) {
    return call(server.port(), {"TYPE", key}).text();
}

/// A connection SUBSCRIBEd (or SSUBSCRIBEd) to one channel, counting the messages it hears.
class Subscriber {
public:
    Subscriber(int port, const std::string& channel, bool sharded = false)
        : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)),
          pattern_(sharded ? "$8\r\nsmessage\r\n" : "$7\r\nmessage\r\n") {
        REQUIRE(fd_ >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        const std::string command = sharded ? "SSUBSCRIBE" : "SUBSCRIBE";
        std::string out = "*2\r\n$" + std::to_string(command.size()) + "\r\n" + command + "\r\n";
        out += "$" + std::to_string(channel.size()) + "\r\n" + channel + "\r\n";
        REQUIRE(::send(fd_, out.data(), out.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(out.size()));
        const std::string confirmed = sharded ? "ssubscribe" : "subscribe";
        const auto end = std::chrono::steady_clock::now() + 5s;
        while (in_.find(confirmed) == std::string::npos || in_.find(":1\r\n") == std::string::npos) {
            REQUIRE(std::chrono::steady_clock::now() < end);
            read_for(100ms);
        }
        in_.clear();
    }
    Subscriber(const Subscriber&) = delete;
    Subscriber& operator=(const Subscriber&) = delete;
    ~Subscriber() { ::close(fd_); }

    /// The messages heard so far, waiting up to `wait` for at least `expected` of them.
    int heard(int expected, std::chrono::milliseconds wait = 2s) {
        const auto end = std::chrono::steady_clock::now() + wait;
        while (count() < expected && std::chrono::steady_clock::now() < end) read_for(20ms);
        read_for(0ms);
        return count();
    }

private:
    int count() const {
        int n = 0;
        for (auto at = in_.find(pattern_); at != std::string::npos; at = in_.find(pattern_, at + 1)) ++n;
        return n;
    }
    void read_for(std::chrono::milliseconds wait) {
        pollfd p{fd_, POLLIN, 0};
        while (::poll(&p, 1, static_cast<int>(wait.count())) > 0) {
            char buf[4096];
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) return;
            in_.append(buf, static_cast<std::size_t>(n));
            wait = 0ms;
        }
    }
    int fd_;
    std::string pattern_;
    std::string in_;
};

}  // namespace

TEST_CASE("shared holders coexist, a writer waits for them, its intent keeps new readers out, the last release lets "
          "it in",
          "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key);
    const Reply a = shared(server, "a");
    const Reply b = shared(server, "b");
    REQUIRE(granted(a));
    REQUIRE(granted(b));
    CHECK(fence_of(b) > fence_of(a));
    CHECK(type_of(server) == "zset");
    CHECK(has(server, member("s", a, "a")));
    CHECK(has(server, member("s", b, "b")));
    CHECK(has(server, "~kind:lock"));

    // The writer waits for the readers' leases at most, and says so in its intent.
    const Reply w = exclusive(server, "w");
    REQUIRE(refused(w));
    CHECK(w.elements[1].integer > 20000);
    CHECK(w.elements[1].integer <= 30000);
    CHECK(has(server, "~intent:w"));
    const Reply kept_out = shared(server, "c");
    REQUIRE(refused(kept_out));
    CHECK(kept_out.elements[1].integer > 20000);  // the intent's lease
    CHECK(refused(shared(server, "d", "u")));
    CHECK_FALSE(has(server, "~intent:c"));
    CHECK(sub.heard(0, 100ms) == 0);  // nothing so far let anyone in

    // One reader leaves: heard, but the writer still waits for the other.
    CHECK(release(server, member("s", a, "a")).integer == 1);
    CHECK(sub.heard(1) == 1);
    CHECK(release(server, member("s", a, "a")).integer == 0);  // gone already: lost, no publication
    CHECK(refused(exclusive(server, "w")));

    // The last one leaves: the writer gets the key as a plain exclusive hold.
    CHECK(release(server, member("s", b, "b")).integer == 1);
    CHECK(sub.heard(2) == 2);
    const Reply got = exclusive(server, "w");
    REQUIRE(granted(got));
    CHECK(fence_of(got) > fence_of(b));
    CHECK(type_of(server) == "string");
    CHECK(call(server.port(), {"GET", lock_key}).text() == std::to_string(fence_of(got)) + ":w");
    CHECK(call(server.port(), {"PTTL", lock_key}).integer > 20000);
    const Reply after = shared(server, "c");
    REQUIRE(refused(after));
    CHECK(after.elements[1].integer > 20000);  // the exclusive hold's PTTL
}

TEST_CASE("upgrade: one upgrade holder beside readers, its upgrade waits for them, then takes the key exclusively",
          "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key);
    const Reply r1 = shared(server, "r1");
    const Reply u = shared(server, "U", "u");
    REQUIRE(granted(r1));
    REQUIRE(granted(u));
    const Reply second = shared(server, "U2", "u");  // two upgraders: refused, for the upgrade holder's lease
    REQUIRE(refused(second));
    CHECK(second.elements[1].integer > 20000);
    const Reply r2 = shared(server, "r2");
    REQUIRE(granted(r2));                                               // readers beside an upgrade holder
    CHECK(refused(convert(server, member("s", r1, "r1"), "r1", "u")));  // nor by conversion

    // The upgrade waits for both readers, and keeps new ones out meanwhile.
    const std::string hold = member("u", u, "U");
    const Reply waiting = convert(server, hold, "U", "x");
    REQUIRE(refused(waiting));
    CHECK(waiting.elements[1].integer > 20000);
    CHECK(has(server, "~intent:U"));
    CHECK(has(server, hold));  // still held while it waits
    CHECK(refused(shared(server, "r3")));
    CHECK(release(server, member("s", r1, "r1")).integer == 1);
    CHECK(refused(convert(server, hold, "U", "x")));
    CHECK(release(server, member("s", r2, "r2")).integer == 1);
    CHECK(sub.heard(2) == 2);
    const Reply up = convert(server, hold, "U", "x");
    REQUIRE(up.type == Reply::Type::array);
    REQUIRE(up.elements.size() == 3);
    CHECK(up.elements[0].integer == 1);
    CHECK(up.elements[1].integer > fence_of(r2));
    const std::string value = std::to_string(up.elements[1].integer) + ":U";
    CHECK(up.elements[2].text() == value);
    CHECK(call(server.port(), {"GET", lock_key}).text() == value);
    CHECK(refused(shared(server, "r3")));

    // Down again to shared: published, and readers come in beside it.
    const Reply down = convert(server, value, "U", "s");
    REQUIRE(down.elements.size() == 3);
    CHECK(down.elements[0].integer == 1);
    CHECK(down.elements[1].integer > up.elements[1].integer);
    const std::string as_reader = "s:" + std::to_string(down.elements[1].integer) + ":U";
    CHECK(down.elements[2].text() == as_reader);
    CHECK(sub.heard(3) == 3);
    CHECK(has(server, as_reader));
    CHECK(has(server, "~kind:lock"));
    CHECK(granted(shared(server, "r3")));
    CHECK(call(server.port(), {"PTTL", lock_key}).integer > 20000);

    // Reader to upgrade holder, and back; an upgrade holder to reader publishes.
    const Reply to_u = convert(server, as_reader, "U", "u");
    REQUIRE(to_u.elements.size() == 3);
    CHECK(to_u.elements[0].integer == 1);
    CHECK(sub.heard(3, 100ms) == 3);
    const Reply to_s = convert(server, to_u.elements[2].text(), "U", "s");
    REQUIRE(to_s.elements.size() == 3);
    CHECK(to_s.elements[0].integer == 1);
    CHECK(sub.heard(4) == 4);
    CHECK_FALSE(has(server, to_u.elements[2].text()));
    CHECK(has(server, to_s.elements[2].text()));
}

TEST_CASE("permits are never more than the limit, and come back at release", "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key);
    const Reply a = permits(server, "a", 2, 3);
    REQUIRE(granted(a));
    CHECK(has(server, "~limit:3"));
    CHECK(has(server, member("p2", a, "a")));
    const Reply b = permits(server, "b", 1, 3);
    REQUIRE(granted(b));
    const Reply c = permits(server, "c", 1, 3);
    REQUIRE(refused(c));
    CHECK(c.elements[1].integer > 20000);
    CHECK(release(server, member("p2", a, "a")).integer == 1);
    CHECK(sub.heard(1) == 1);
    CHECK(granted(permits(server, "c", 1, 3)));
    CHECK(granted(permits(server, "d", 1, 3)));
    CHECK(refused(permits(server, "e", 1, 3)));

    // Random takes and releases, each answer checked against a model of the permits held.
    const std::string key = "keylock:random";
    constexpr int limit = 5;
    std::mt19937 rng(16);
    std::vector<std::pair<std::string, int>> held;  // member, n
    int in_use = 0;
    int grants = 0;
    int refusals = 0;
    for (int i = 0; i < 300; ++i) {
        if (!held.empty() && rng() % 3 == 0) {
            const std::size_t at = rng() % held.size();
            CHECK(release(server, held[at].first, key).integer == 1);
            in_use -= held[at].second;
            held.erase(held.begin() + static_cast<std::ptrdiff_t>(at));
        } else {
            const int n = 1 + static_cast<int>(rng() % 3);
            std::string owner = "o";
            owner += std::to_string(i);
            const Reply r = permits(server, owner, n, limit, lease, key);
            CAPTURE(i, n, in_use, r.text());
            REQUIRE(r.elements.size() == 2);
            CHECK(granted(r) == (in_use + n <= limit));
            if (granted(r)) {
                held.emplace_back("p" + std::to_string(n) + ":" + std::to_string(fence_of(r)) + ":" + owner, n);
                in_use += n;
                ++grants;
            } else {
                ++refusals;
            }
        }
        const Reply seen = eval1(server, scripts::inspect_modes, {}, key);
        REQUIRE(seen.elements.size() == 5);
        CHECK(seen.elements[2].integer == in_use);
        CHECK(seen.elements[2].integer <= limit);
    }
    CHECK(grants > 50);
    CHECK(refusals > 50);
}

TEST_CASE("a lock asked as a semaphore, or with another limit or count, is an error that writes no lock state",
          "[redis][modes]") {
    RedisServer server;
    // The key as it is. (An exclusive attempt on a key that exists skips a fencing token, which
    // is no lock state: the counter is not part of it.)
    auto snapshot = [&](const std::string& key) {
        return call(server.port(), {"ZRANGE", key, "0", "-1", "WITHSCORES"}).text();
    };
    auto error_of = [](const Reply& r) { return r.is_error() ? r.str : "not an error: " + r.text(); };

    // A semaphore of limit 4 with a holder.
    REQUIRE(granted(permits(server, "a", 1, 4)));
    const std::string before = snapshot(lock_key);
    CHECK(error_of(shared(server, "b")) == "KEYLOCK_MODE the key is a semaphore (limit 4), not a lock");
    CHECK(error_of(shared(server, "b", "u")) == "KEYLOCK_MODE the key is a semaphore (limit 4), not a lock");
    CHECK(error_of(exclusive(server, "b")) == "KEYLOCK_MODE the key is a semaphore (limit 4), not a lock");
    CHECK(error_of(permits(server, "b", 1, 5)) ==
          "KEYLOCK_LIMIT the key is a semaphore of limit 4, asked with limit 5");
    CHECK_THAT(error_of(permits(server, "b", 5, 4)),
               Catch::StartsWith("KEYLOCK_PERMITS asked for 5 permits of a limit of 4"));
    CHECK_THAT(error_of(permits(server, "b", 0, 4)), Catch::StartsWith("KEYLOCK_PERMITS"));
    CHECK_THAT(error_of(permits(server, "b", 1, 0)), Catch::StartsWith("KEYLOCK_PERMITS"));
    CHECK_THAT(error_of(eval2(server, scripts::acquire_permits, {lease, "4", "b", "1.5", "0"})),
               Catch::StartsWith("KEYLOCK_PERMITS"));
    CHECK_THAT(error_of(shared(server, "b", "x")), Catch::StartsWith("ERR keylock: the mode is s or u"));
    CHECK(snapshot(lock_key) == before);

    // A lock: shared, and exclusive.
    const std::string lock = "keylock:lock";
    REQUIRE(granted(shared(server, "a", "s", lease, lock)));
    const std::string before_lock = snapshot(lock);
    CHECK(error_of(permits(server, "b", 1, 4, lease, lock)) == "KEYLOCK_MODE the key is a lock, not a semaphore");
    CHECK(snapshot(lock) == before_lock);
    const std::string plain = "keylock:plain";
    REQUIRE(granted(exclusive(server, "a", lease, plain)));
    CHECK(error_of(permits(server, "b", 1, 4, lease, plain)) == "KEYLOCK_MODE the key is a lock, not a semaphore");

    // Keys that are not keylock's: a sorted set of someone else's, a hash.
    REQUIRE(call(server.port(), {"ZADD", "keylock:z", "1", "s:1:x"}).integer == 1);
    REQUIRE(call(server.port(), {"HSET", "keylock:h", "f", "v"}).integer == 1);
    CHECK(error_of(shared(server, "b", "s", lease, "keylock:z")) == "WRONGTYPE the lock key holds a zset, not a lock");
    CHECK(error_of(exclusive(server, "b", lease, "keylock:z")) == "WRONGTYPE the lock key holds a zset, not a lock");
    CHECK(error_of(permits(server, "b", 1, 2, lease, "keylock:z")) ==
          "WRONGTYPE the lock key holds a zset, not a semaphore");
    CHECK(error_of(shared(server, "b", "s", lease, "keylock:h")) == "WRONGTYPE the lock key holds a hash, not a lock");
    CHECK(error_of(permits(server, "b", 1, 2, lease, "keylock:h")) ==
          "WRONGTYPE the lock key holds a hash, not a semaphore");
    CHECK(release(server, "s:1:x", "keylock:z").integer == 0);  // its score, 1, is long past: no holder
    CHECK(call(server.port(), {"ZRANGE", "keylock:z", "0", "-1", "WITHSCORES"}).text() == "[s:1:x, 1]");
}

TEST_CASE("expired holders are pruned: their permits come back, a writer gets in, and the key goes", "[redis][modes]") {
    RedisServer server;
    // Permits of a crashed holder come back when its lease ends.
    REQUIRE(granted(permits(server, "crashed", 3, 4, "50")));
    const Reply wait = permits(server, "b", 2, 4);
    REQUIRE(refused(wait));
    CHECK(wait.elements[1].integer <= 50);
    std::this_thread::sleep_for(120ms);
    CHECK(call(server.port(), {"EXISTS", lock_key}).integer == 0);  // the key's own expiry
    REQUIRE(granted(permits(server, "b", 2, 4)));
    REQUIRE(granted(permits(server, "c", 2, 4)));
    REQUIRE(granted(permits(server, "short", 0 + 1, 5, "50", "keylock:other")));
    REQUIRE(granted(permits(server, "long", 3, 5, lease, "keylock:other")));
    std::this_thread::sleep_for(120ms);
    CHECK(granted(permits(server, "d", 2, 5, lease, "keylock:other")));  // the expired one's permit is back
    CHECK(refused(permits(server, "e", 1, 5, lease, "keylock:other")));
    CHECK(call(server.port(), {"ZCARD", "keylock:other"}).integer == 3);  // pruned: ~limit, long, d

    // Readers whose leases end let a writer in.
    const std::string key = "keylock:readers";
    REQUIRE(granted(shared(server, "r1", "s", "50", key)));
    REQUIRE(granted(shared(server, "r2", "s", "80", key)));
    const Reply w = exclusive(server, "w", lease, key);
    REQUIRE(refused(w));
    CHECK(w.elements[1].integer <= 80);
    CHECK(w.elements[1].integer > 0);
    std::this_thread::sleep_for(150ms);
    CHECK(granted(exclusive(server, "w", lease, key)));

    // The key's expiry is its latest holder's, renewed with it; an expired holder is not renewed.
    const std::string k2 = "keylock:expiry";
    const Reply a = shared(server, "a", "s", "2000", k2);
    REQUIRE(granted(shared(server, "b", "s", "6000", k2)));
    const long long pttl = call(server.port(), {"PTTL", k2}).integer;
    CHECK(pttl > 3000);
    CHECK(pttl <= 6000);
    CHECK(eval1(server, scripts::extend_member, {member("s", a, "a"), "20000"}, k2).integer == 1);
    CHECK(call(server.port(), {"PTTL", k2}).integer > 10000);
    const Reply brief = shared(server, "c", "s", "50", k2);
    REQUIRE(granted(brief));
    std::this_thread::sleep_for(100ms);
    CHECK(eval1(server, scripts::extend_member, {member("s", brief, "c"), "8000"}, k2).integer == 0);
    CHECK(release(server, member("s", brief, "c"), k2).integer == 0);
    CHECK(eval1(server, scripts::extend_member, {"~kind:lock", "8000"}, k2).integer == 0);
    CHECK(eval1(server, scripts::extend_member, {"s:1:nobody", "8000"}, "keylock:readers").integer == 0);  // a string

    // A semaphore whose holders all ended is a free key: a lock now, its limit gone.
    REQUIRE(granted(permits(server, "gone", 1, 3, "50", "keylock:reuse")));
    REQUIRE(call(server.port(), {"PERSIST", "keylock:reuse"}).integer == 1);  // as if not yet expired
    std::this_thread::sleep_for(100ms);
    const Reply reused = shared(server, "r", "s", lease, "keylock:reuse");
    CHECK(call(server.port(), {"ZRANGE", "keylock:reuse", "0", "-1"}).text() ==
          "[" + member("s", reused, "r") + ", ~kind:lock]");

    // A lone reader's key goes with its lease.
    REQUIRE(granted(shared(server, "lone", "s", "50", "keylock:lone")));
    std::this_thread::sleep_for(120ms);
    CHECK(call(server.port(), {"EXISTS", "keylock:lone"}).integer == 0);
}

TEST_CASE("a retried attempt whose answer was lost gets its hold back, renewed", "[redis][modes]") {
    RedisServer server;
    const Reply first = shared(server, "a", "s", "3000");
    const Reply again = shared(server, "a", "s", lease, lock_key, true);
    REQUIRE(granted(again));
    CHECK(fence_of(again) == fence_of(first));
    CHECK(call(server.port(), {"ZCARD", lock_key}).integer == 2);  // ~kind:lock and one holder
    CHECK(call(server.port(), {"PTTL", lock_key}).integer > 20000);

    // Even past a writer's intent: the hold was granted before it.
    REQUIRE(refused(exclusive(server, "w")));
    CHECK(fence_of(shared(server, "a", "s", lease, lock_key, true)) == fence_of(first));
    CHECK(refused(shared(server, "b")));

    // Permits: the same owner and count.
    const std::string sem = "keylock:sem";
    const Reply p = permits(server, "p", 2, 2, "3000", sem);
    CHECK(fence_of(permits(server, "p", 2, 2, lease, sem, true)) == fence_of(p));
    CHECK(call(server.port(), {"PTTL", sem}).integer > 20000);

    // Conversions: a retry finds the converted hold; a hold that is gone is lost.
    const std::string up = "keylock:up";
    const Reply u = shared(server, "U", "u", lease, up);
    auto convert_on = [&](const std::string& hold, const std::string& target) {
        return eval2(server, scripts::convert, {hold, "U", lease, target, up}, up);
    };
    const Reply x = convert_on(member("u", u, "U"), "x");
    REQUIRE(x.elements.size() == 3);
    CHECK(convert_on(member("u", u, "U"), "x").text() == x.text());
    const Reply s = convert_on(x.elements[2].text(), "s");
    REQUIRE(s.elements.size() == 3);
    CHECK(convert_on(x.elements[2].text(), "s").text() == s.text());
    CHECK(convert_on(member("u", u, "U"), "x").text() == "[-1]");  // neither the hold nor an exclusive one
    CHECK(eval2(server, scripts::convert, {"s:1:gone", "gone", lease, "u", up}, up).text() == "[-1]");
    CHECK(eval2(server, scripts::convert, {"1:gone", "gone", lease, "s", up}, up).text() == "[-1]");
}

TEST_CASE("fencing tokens strictly increase across modes and conversions", "[redis][modes]") {
    RedisServer server;
    std::vector<long long> fences;
    const Reply x = exclusive(server, "x1");
    fences.push_back(fence_of(x));
    REQUIRE(call(server.port(), {"DEL", lock_key}).integer == 1);
    const Reply s = shared(server, "s1");
    fences.push_back(fence_of(s));
    const Reply u = shared(server, "u1", "u");
    fences.push_back(fence_of(u));
    REQUIRE(release(server, member("s", s, "s1")).integer == 1);
    const Reply ux = convert(server, member("u", u, "u1"), "u1", "x");
    fences.push_back(fence_of(ux));
    const Reply xu = convert(server, ux.elements[2].text(), "u1", "u");
    fences.push_back(fence_of(xu));
    const Reply us = convert(server, xu.elements[2].text(), "u1", "s");
    fences.push_back(fence_of(us));
    const Reply su = convert(server, us.elements[2].text(), "u1", "u");
    fences.push_back(fence_of(su));
    const Reply xs = convert(server, su.elements[2].text(), "u1", "x");
    fences.push_back(fence_of(xs));
    const Reply sx = convert(server, xs.elements[2].text(), "u1", "s");
    fences.push_back(fence_of(sx));
    const Reply back = convert(server, sx.elements[2].text(), "u1", "x");  // s → x, the sole holder
    fences.push_back(fence_of(back));
    fences.push_back(fence_of(permits(server, "p", 1, 2, lease, "keylock:sem")));
    fences.push_back(fence_of(shared(server, "s2", "s", lease, "keylock:other")));
    fences.push_back(fence_of(exclusive(server, "x2", lease, "keylock:third")));
    CAPTURE(fences);
    for (std::size_t i = 1; i < fences.size(); ++i) CHECK(fences[i] > fences[i - 1]);
}

TEST_CASE("acquire on absent and string keys answers as before", "[redis][modes]") {
    RedisServer server;
    const Reply a = exclusive(server, "a", "5000");
    REQUIRE(a.elements.size() == 2);
    CHECK(a.elements[0].integer == 1);
    const std::string value = std::to_string(a.elements[1].integer) + ":a";
    CHECK(call(server.port(), {"GET", lock_key}).text() == value);
    CHECK(call(server.port(), {"PTTL", lock_key}).integer > 1000);
    CHECK(exclusive(server, "a", lease).text() == a.text());  // a retry, renewed
    CHECK(call(server.port(), {"PTTL", lock_key}).integer > 20000);
    const Reply b = exclusive(server, "b");
    REQUIRE(refused(b));
    CHECK(b.elements[1].integer > 20000);
    CHECK(call(server.port(), {"GET", lock_key}).text() == value);
    REQUIRE(call(server.port(), {"SET", "keylock:forever", "1:someone"}).text() == "OK");
    CHECK(exclusive(server, "b", lease, "keylock:forever").text() == "[0, -1]");
    REQUIRE(call(server.port(), {"RPUSH", "keylock:list", "x"}).integer == 1);
    CHECK(exclusive(server, "b", lease, "keylock:list").text() == "-WRONGTYPE the lock key holds a list, not a lock");
    CHECK(call(server.port(), {"KEYS", "keylock:*"}).elements.size() == 4);  // no intent, no sorted set made

    // A lock's sorted set with no live holder (nor intent) is a free key.
    REQUIRE(granted(shared(server, "r", "s", "50", "keylock:was-shared")));
    REQUIRE(call(server.port(), {"PERSIST", "keylock:was-shared"}).integer == 1);  // as if not yet expired
    std::this_thread::sleep_for(100ms);
    const Reply w = exclusive(server, "w", lease, "keylock:was-shared");
    REQUIRE(granted(w));
    CHECK(call(server.port(), {"GET", "keylock:was-shared"}).text() == std::to_string(fence_of(w)) + ":w");
}

TEST_CASE("Redlock's acquire (values of the owner token alone) waits for shared holders too", "[redis][modes]") {
    RedisServer server;
    const std::string r = member("s", shared(server, "r"), "r");
    const Reply w = eval2(server, scripts::acquire_plain, {"w", lease});
    REQUIRE(refused(w));
    CHECK(w.elements[1].integer > 20000);
    CHECK(has(server, "~intent:w"));
    CHECK(refused(shared(server, "c")));
    CHECK(release(server, r).integer == 1);
    const Reply got = eval2(server, scripts::acquire_plain, {"w", lease});
    REQUIRE(granted(got));
    CHECK(call(server.port(), {"GET", lock_key}).text() == "w");
    CHECK(eval2(server, scripts::acquire_plain, {"w", lease}).elements.at(0).integer == 1);  // a retry
}

TEST_CASE("two shared holders that would wait for each other to write are told KEYLOCK_DEADLOCK", "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key);
    const std::string a = member("s", shared(server, "a"), "a");
    const std::string b = member("s", shared(server, "b"), "b");
    REQUIRE(refused(convert(server, a, "a", "x")));
    const Reply second = convert(server, b, "b", "x");
    REQUIRE(second.is_error());
    CHECK_THAT(second.str, Catch::StartsWith("KEYLOCK_DEADLOCK"));
    CHECK_FALSE(has(server, "~intent:b"));

    // b gives its hold up (its release takes a's way free): a's next attempt converts.
    CHECK(release(server, b).integer == 1);
    const Reply up = convert(server, a, "a", "x");
    REQUIRE(granted(up));

    // An upgrade holder that finds a reader waiting to write wakes it, to be told.
    const std::string k = "keylock:k2";
    auto convert_on = [&](const std::string& hold, const std::string& owner) {
        return eval2(server, scripts::convert, {hold, owner, lease, "x", lock_key}, k);
    };
    const std::string r = member("s", shared(server, "r", "s", lease, k), "r");
    const std::string u = member("u", shared(server, "U", "u", lease, k), "U");
    const int heard = sub.heard(1);  // b's release
    REQUIRE(refused(convert_on(r, "r")));
    CHECK(sub.heard(heard, 100ms) == heard);
    REQUIRE(refused(convert_on(u, "U")));
    CHECK(sub.heard(heard + 1) == heard + 1);
    CHECK_THAT(convert_on(r, "r").str, Catch::StartsWith("KEYLOCK_DEADLOCK"));
}

TEST_CASE("drop_intent lets the readers a writer kept out in, a released hold takes its conversion's intent along",
          "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key);
    const std::string r = member("s", shared(server, "r"), "r");
    REQUIRE(refused(exclusive(server, "w")));
    REQUIRE(refused(shared(server, "c")));
    CHECK(eval1(server, scripts::drop_intent, {"w", lock_key}).integer == 1);
    CHECK(sub.heard(1) == 1);
    CHECK_FALSE(has(server, "~intent:w"));
    CHECK(eval1(server, scripts::drop_intent, {"w", lock_key}).integer == 0);
    CHECK(sub.heard(1, 100ms) == 1);
    CHECK(granted(shared(server, "c")));

    // An intent alone keeps the key; dropping it deletes the key.
    const std::string k = "keylock:alone";
    const std::string only = member("s", shared(server, "r", "s", lease, k), "r");
    REQUIRE(refused(exclusive(server, "w", lease, k)));
    CHECK(release(server, only, k).integer == 1);
    CHECK(call(server.port(), {"ZRANGE", k, "0", "-1"}).text() == "[~intent:w, ~kind:lock]");
    CHECK(call(server.port(), {"PTTL", k}).integer > 20000);
    CHECK(eval1(server, scripts::drop_intent, {"w", k}, k).integer == 1);
    CHECK(call(server.port(), {"EXISTS", k}).integer == 0);

    // An upgrade holder that waited to write, then gave its hold up: its intent goes with it.
    const Reply u = shared(server, "U", "u");
    const std::string hold = member("u", u, "U");
    REQUIRE(refused(convert(server, hold, "U", "x")));
    CHECK(has(server, "~intent:U"));
    CHECK(release(server, hold).integer == 1);
    CHECK_FALSE(has(server, "~intent:U"));
    CHECK(granted(shared(server, "d")));
    (void)r;
}

TEST_CASE("inspect_modes shows the mode, the holders with their leases, the permits in use and the intents",
          "[redis][modes]") {
    RedisServer server;
    auto inspect = [&](const std::string& key) { return eval1(server, scripts::inspect_modes, {}, key); };
    CHECK(inspect("keylock:none").text() == "[none, 0, 0, [], []]");

    const Reply x = exclusive(server, "a", lease, "keylock:x");
    const Reply ix = inspect("keylock:x");
    REQUIRE(ix.elements.size() == 5);
    CHECK(ix.elements[0].text() == "exclusive");
    CHECK(ix.elements[2].integer == 1);
    REQUIRE(ix.elements[3].elements.size() == 2);
    CHECK(ix.elements[3].elements[0].text() == std::to_string(fence_of(x)) + ":a");
    CHECK(ix.elements[3].elements[1].integer > 20000);

    const Reply s = shared(server, "a");
    const Reply u = shared(server, "b", "u", "5000");
    REQUIRE(refused(exclusive(server, "w")));
    const Reply is = inspect(lock_key);
    REQUIRE(is.elements.size() == 5);
    CHECK(is.elements[0].text() == "shared");
    CHECK(is.elements[1].integer == 0);
    CHECK(is.elements[2].integer == 2);
    REQUIRE(is.elements[3].elements.size() == 4);
    CHECK(is.elements[3].elements[0].text() == member("u", u, "b"));  // by expiry
    CHECK(is.elements[3].elements[1].integer > 1000);
    CHECK(is.elements[3].elements[1].integer <= 5000);
    CHECK(is.elements[3].elements[2].text() == member("s", s, "a"));
    REQUIRE(is.elements[4].elements.size() == 2);
    CHECK(is.elements[4].elements[0].text() == "w");
    CHECK(is.elements[4].elements[1].integer > 20000);

    const Reply p = permits(server, "a", 3, 8, lease, "keylock:sem");
    REQUIRE(granted(permits(server, "b", 2, 8, lease, "keylock:sem")));
    const Reply ip = inspect("keylock:sem");
    REQUIRE(ip.elements.size() == 5);
    CHECK(ip.elements[0].text() == "semaphore");
    CHECK(ip.elements[1].integer == 8);
    CHECK(ip.elements[2].integer == 5);
    REQUIRE(ip.elements[3].elements.size() == 4);
    const auto& listed = ip.elements[3].elements;
    CHECK((listed[0].text() == member("p3", p, "a") || listed[2].text() == member("p3", p, "a")));
    CHECK(listed[1].integer > 20000);
    CHECK(listed[3].integer > 20000);
    CHECK(ip.elements[4].elements.empty());

    REQUIRE(call(server.port(), {"HSET", "keylock:h", "f", "v"}).integer == 1);
    CHECK(inspect("keylock:h").text() == "[hash, 0, 0, [], []]");
    REQUIRE(call(server.port(), {"ZADD", "keylock:z", "1", "a"}).integer == 1);
    CHECK(inspect("keylock:z").text() == "[zset, 0, 0, [], []]");
}

TEST_CASE("the sharded variants publish with SPUBLISH", "[redis][modes]") {
    RedisServer server;
    Subscriber sub(server.port(), lock_key, true);
    const std::string r = member("s", eval2(server, scripts::acquire_shared_sharded, {lease, "s", "r", "0"}), "r");
    REQUIRE(granted(eval2(server, scripts::acquire_permits_sharded, {lease, "2", "p", "1", "0"}, "keylock:sem")));
    REQUIRE(refused(eval2(server, scripts::acquire_sharded, {"w", lease})));
    CHECK(eval1(server, scripts::drop_intent_sharded, {"w", lock_key}).integer == 1);
    CHECK(sub.heard(1) == 1);
    const Reply u = eval2(server, scripts::convert_sharded, {r, "r", lease, "u", lock_key});
    REQUIRE(granted(u));
    const Reply s = eval2(server, scripts::convert_sharded, {u.elements[2].text(), "r", lease, "s", lock_key});
    REQUIRE(granted(s));
    CHECK(sub.heard(2) == 2);
    CHECK(eval1(server, scripts::release_member_sharded, {s.elements[2].text(), lock_key}).integer == 1);
    CHECK(sub.heard(3) == 3);
    CHECK(call(server.port(), {"EXISTS", lock_key}).integer == 0);
}

TEST_CASE("on Redis Cluster, the sharded scripts run on a lock key and its slot's counter, and SPUBLISH",
          "[redis][modes][cluster]") {
    keylock::test::ClusterDeployment d(1, 0);
    RedisServer& node = d.node(0);
    const std::string key = "keylock:k";
    std::string counter = "keylock:fence:{";
    counter.append(keylock::redis::slot_tag(keylock::redis::key_slot(key))).append("}");
    REQUIRE(d.key_slot(counter) == d.key_slot(key));
    Subscriber sub(node.port(), key, true);
    auto run = [&](const std::string& script, const std::vector<std::string>& args) {
        std::vector<std::string> command{"EVAL", script, "2", key, counter};
        command.insert(command.end(), args.begin(), args.end());
        return call(node.port(), command);
    };
    const Reply r = run(scripts::acquire_shared_sharded, {lease, "s", "r", "0"});
    REQUIRE(granted(r));
    REQUIRE(refused(run(scripts::acquire_sharded, {"w", lease})));
    const Reply u = run(scripts::convert_sharded, {member("s", r, "r"), "r", lease, "u", key});
    REQUIRE(granted(u));
    const Reply x = run(scripts::convert_sharded, {u.elements[2].text(), "r", lease, "x", key});  // intent or not
    REQUIRE(granted(x));
    const Reply s = run(scripts::convert_sharded, {x.elements[2].text(), "r", lease, "s", key});
    REQUIRE(granted(s));
    CHECK(sub.heard(1) == 1);
    CHECK(call(node.port(), {"EVAL", scripts::release_member_sharded, "1", key, s.elements[2].text(), key}).integer ==
          1);
    CHECK(sub.heard(2) == 2);
    CHECK(call(node.port(), {"EXISTS", key}).integer == 0);
    const Reply p = run(scripts::acquire_permits_sharded, {lease, "1", "p", "1", "0"});
    REQUIRE(granted(p));
    CHECK(fence_of(p) > fence_of(s));
    // A counter of another slot is refused by the cluster, before the script runs.
    const Reply other = call(
        node.port(), {"EVAL", scripts::acquire_shared_sharded, "2", key, "keylock:fence:{x}", lease, "s", "o", "0"});
    CHECK(other.is_error());
}

TEST_CASE("a Redis user with the documented minimum ACL runs every mode script, one without ZADD is refused "
          "before anything is written",
          "[redis][modes][acl]") {
    RedisServer server;
    REQUIRE(call(server.port(), keylock::test::documented_acl()).text() == "OK");
    std::vector<std::string> without_zadd{"ACL",        "SETUSER",    "no-zadd", "on",   ">pw",
                                          "~keylock:*", "&keylock:*", "+@all",   "-zadd"};
    REQUIRE(call(server.port(), without_zadd).text() == "OK");

    auto as = [&](const std::string& user, const std::string& script, int keys, const std::vector<std::string>& args,
                  const std::string& key = lock_key) {
        std::vector<std::vector<std::string>> commands{{"AUTH", user, "pw"},
                                                       {"EVAL", script, std::to_string(keys), key}};
        if (keys == 2) commands.back().push_back(fence_key);
        commands.back().insert(commands.back().end(), args.begin(), args.end());
        const auto replies = keylock::test::call_all(server.port(), commands);
        REQUIRE(replies.at(0).text() == "OK");
        return replies.at(1);
    };
    const std::string app = "keylock-app";
    const Reply r = as(app, scripts::acquire_shared, 2, {lease, "s", "r", "0"});
    REQUIRE(granted(r));
    REQUIRE(refused(as(app, scripts::acquire, 2, {"w", lease})));
    CHECK(as(app, scripts::drop_intent, 1, {"w", lock_key}).integer == 1);
    CHECK(as(app, scripts::extend_member, 1, {member("s", r, "r"), lease}).integer == 1);
    const Reply u = as(app, scripts::convert, 2, {member("s", r, "r"), "r", lease, "u", lock_key});
    REQUIRE(granted(u));
    const Reply x = as(app, scripts::convert, 2, {u.elements[2].text(), "r", lease, "x", lock_key});
    REQUIRE(granted(x));
    const Reply s = as(app, scripts::convert, 2, {x.elements[2].text(), "r", lease, "s", lock_key});
    REQUIRE(granted(s));
    CHECK(as(app, scripts::inspect_modes, 1, {}).elements.at(2).integer == 1);
    CHECK(as(app, scripts::release_member, 1, {s.elements[2].text(), lock_key}).integer == 1);
    const Reply p = as(app, scripts::acquire_permits, 2, {lease, "2", "p", "1", "0"}, "keylock:sem");
    REQUIRE(granted(p));
    CHECK(as(app, scripts::release_member, 1, {member("p1", p, "p"), "keylock:sem"}, "keylock:sem").integer == 1);
    CHECK(call(server.port(), {"KEYS", "keylock:*"}).text() == "[" + fence_key + "]");

    // Without ZADD: refused at once, naming it, with nothing written (not even a fencing token).
    const std::string counter = call(server.port(), {"GET", fence_key}).text();
    const Reply no = as("no-zadd", scripts::acquire_shared, 2, {lease, "s", "n", "0"});
    REQUIRE(no.is_error());
    CHECK_THAT(no.str, Catch::Contains("NOPERM keylock: this user may not run ZADD on key keylock:k"));
    CHECK(call(server.port(), {"GET", fence_key}).text() == counter);
    CHECK(call(server.port(), {"EXISTS", lock_key}).integer == 0);
    REQUIRE(granted(shared(server, "r")));
    const Reply wait = as("no-zadd", scripts::acquire, 2, {"w", lease});
    REQUIRE(wait.is_error());
    CHECK_THAT(wait.str, Catch::Contains("may not run ZADD"));
    CHECK_FALSE(has(server, "~intent:w"));
}

TEST_CASE("one call grants many requests in order as far as they fit, and stops at the first that does not",
          "[redis][modes][batch]") {
    RedisServer server;
    auto fences = [](const Reply& r, std::size_t granted) {
        std::vector<long long> out;
        REQUIRE(r.type == Reply::Type::array);
        REQUIRE(r.elements.size() >= granted + 1);
        for (std::size_t i = 1; i <= granted; ++i) out.push_back(r.elements[i].integer);
        return out;
    };
    // Permits, limit 5: 2 + 2 fit, the next 2 does not, and the 1 behind it is not let past it.
    const Reply p = eval2(server, scripts::acquire_permits,
                          {lease, "5", "a", "2", "0", "b", "2", "0", "c", "2", "0", "d", "1", "0"});
    REQUIRE(p.elements.size() == 4);  // {2, fence a, fence b, ms}
    CHECK(p.elements[0].integer == 2);
    const auto pf = fences(p, 2);
    CHECK(pf[0] < pf[1]);
    CHECK(p.elements[3].integer > 0);
    CHECK(p.elements[3].integer <= 30000);
    CHECK(has(server, "p2:" + std::to_string(pf[0]) + ":a"));
    CHECK(has(server, "p2:" + std::to_string(pf[1]) + ":b"));
    CHECK(call(server.port(), {"ZCARD", lock_key}).integer == 3);  // ~limit:5, a, b: c and d not
    // c asks again with d behind it: still 1 permit free, still no overtaking.
    CHECK(eval2(server, scripts::acquire_permits, {lease, "5", "c", "2", "0", "d", "1", "0"}).elements.at(0).integer ==
          0);
    // a retry finds its earlier grant (renewed, not counted twice), then d gets the last permit.
    const Reply again = eval2(server, scripts::acquire_permits, {lease, "5", "b", "2", "1", "d", "1", "0"});
    REQUIRE(again.elements.size() == 3);  // all granted: {2, fence b, fence d}
    CHECK(again.elements[1].integer == pf[1]);
    CHECK(again.elements[2].integer > pf[1]);
    CHECK(refused(permits(server, "e", 1, 5)));

    // Shared: every reader of the call at once on a free key; behind a writer's intent, none.
    const std::string key = "keylock:readers";
    const Reply s = eval2(server, scripts::acquire_shared, {lease, "s", "r1", "0", "r2", "0", "r3", "0"}, key);
    REQUIRE(s.elements.size() == 4);
    CHECK(s.elements[0].integer == 3);
    CHECK(call(server.port(), {"ZCARD", key}).integer == 4);
    REQUIRE(refused(exclusive(server, "w", lease, key)));  // records its intent
    const Reply blocked = eval2(server, scripts::acquire_shared, {lease, "s", "r4", "0", "r5", "0"}, key);
    REQUIRE(blocked.elements.size() == 2);  // {0, ms}
    CHECK(blocked.elements[0].integer == 0);
    CHECK_FALSE(has(server, "s:" + std::to_string(blocked.elements[1].integer) + ":r4", key));
    CHECK(call(server.port(), {"ZCARD", key}).integer == 5);  // ~kind:lock, 3 readers, the intent

    // Upgrade: the first of the call becomes the upgrade holder, the second waits for it.
    const Reply u = eval2(server, scripts::acquire_shared, {lease, "u", "u1", "0", "u2", "0"}, "keylock:up");
    REQUIRE(u.elements.size() == 3);
    CHECK(u.elements[0].integer == 1);
    CHECK(u.elements[2].integer > 0);
}
