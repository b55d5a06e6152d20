// SPDX-License-Identifier: BSL-1.0
// The Redis backend's own behaviour through the public API, against a real redis-server: its key
// layout, leases and the watchdog, lost locks, fencing tokens across restarts, release
// notifications, reconnection, Unix sockets and TLS, operator tools, and failures as typed
// errors. The promises every backend keeps (exclusion across threads, registries and processes,
// deadlines, cancellation, wake-up on release, stale guards, bad keys) are the conformance
// suite's (tests/conformance/), which runs them against redis:// and the other topologies.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/keylock.hpp>

#include "backends/redis/lease.hpp"
#include "eventually.hpp"
#include "fork.hpp"
#include "redis_server.hpp"

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::RedisServer;
using keylock::test::url;
using keylock::test::eventually;
using keylock::test::spawn;
using keylock::test::wait_exit;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

template <class F>
errc error_of(F&& f) {
    try {
        f();
    } catch (const keylock::Error& e) {
        return static_cast<errc>(e.code().value());
    }
    return errc{};
}

template <class F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}


}  // namespace

TEST_CASE("a redis registry locks and releases with rising fencing tokens", "[redis]") {
    RedisServer server;
    auto a = KeyedLockRegistry::from_url(url(server));
    auto b = KeyedLockRegistry::from_url(url(server));
    CHECK_THAT(a.describe(), Catch::StartsWith("redis://127.0.0.1:"));
    std::uint64_t first = 0;
    {
        Guard g = a.lock("order-42");
        CHECK(g.owns_lock());
        CHECK(g.key() == "order-42");
        CHECK_FALSE(g.lost());
        first = g.fencing_token();
        CHECK(first > 0);
        CHECK_FALSE(b.try_lock("order-42").has_value());  // another registry: like another process
        CHECK(b.try_lock("order-43").has_value());        // other keys are free
        CHECK(server.command("EXISTS keylock:order-42") == ":1");
    }
    // Released, not left to expire: a guard's destructor sends the release without waiting
    // for the answer, so it takes effect within a round trip.
    CHECK(eventually([&] { return server.command("EXISTS keylock:order-42") == ":0"; }));
    auto g = b.try_lock("order-42");
    REQUIRE(g.has_value());
    CHECK(g->fencing_token() > first);
    g.reset();
    CHECK(a.stats().acquisitions == 1);
    CHECK(eventually([&] { return a.stats().entries == 0 && b.stats().entries == 0; }));
    // release() waits for the answer: afterwards the lock is gone.
    Guard again = a.lock("order-42");
    again.release();
    CHECK(server.command("EXISTS keylock:order-42") == ":0");
    CHECK(a.stats().entries == 0);
}

TEST_CASE("a crashed holder's lock frees itself when its lease ends", "[redis]") {
    RedisServer server;
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = spawn([&] {
        auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
        Guard g = r.lock("crash");
        (void)::write(ready[1], "x", 1);
        ::kill(::getpid(), SIGKILL);  // dies holding the lock: no release, no watchdog
        return 0;
    });
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    const auto start = Clock::now();
    CHECK(wait_exit(child) == 128 + SIGKILL);
    auto r = KeyedLockRegistry::from_url(url(server));
    CHECK_FALSE(r.try_lock("crash").has_value());
    Guard g = r.lock("crash");  // waits for the lease, not forever
    const auto waited = Clock::now() - start;
    CHECK(waited < 10s);
    ::close(ready[0]);
    ::close(ready[1]);
}

TEST_CASE("the watchdog keeps a lock for three times its lease", "[redis]") {
    RedisServer server;
    auto a = KeyedLockRegistry::from_url(url(server, "lease=1s"));
    auto b = KeyedLockRegistry::from_url(url(server));
    Guard g = a.lock("long-job");
    const auto end = Clock::now() + 3200ms;
    bool excluded = true;
    while (Clock::now() < end) {
        excluded = excluded && !b.try_lock("long-job").has_value();
        std::this_thread::sleep_for(100ms);
    }
    CHECK(excluded);
    CHECK_FALSE(g.lost());
    std::error_code ec;
    g.release(ec);
    CHECK_FALSE(ec);
}

TEST_CASE("a holder paused past its lease loses the lock and its release deletes nothing", "[redis]") {
    RedisServer server;
    int pipes[2][2];
    REQUIRE(::pipe(pipes[0]) == 0);  // child -> parent: "holding"
    REQUIRE(::pipe(pipes[1]) == 0);  // parent -> child: "you were paused; check"
    const pid_t child = spawn([&] {
        auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
        Guard g = r.lock("paused");
        const std::uint64_t token = g.fencing_token();
        (void)::write(pipes[0][1], &token, sizeof token);
        char c = 0;
        if (::read(pipes[1][0], &c, 1) != 1) return 3;
        if (!g.lost()) return 4;  // resumed: the guard knows at once
        std::error_code ec;
        g.release(ec);
        return ec == errc::not_owner ? 0 : 5;
    });
    std::uint64_t child_token = 0;
    REQUIRE(::read(pipes[0][0], &child_token, sizeof child_token) == sizeof child_token);
    ::kill(child, SIGSTOP);
    std::this_thread::sleep_for(1500ms);  // past the lease: the watchdog could not renew it
    auto r = KeyedLockRegistry::from_url(url(server));
    auto g = r.try_lock_for("paused", 5s);
    REQUIRE(g.has_value());
    CHECK(g->fencing_token() > child_token);
    ::kill(child, SIGCONT);
    (void)::write(pipes[1][1], "x", 1);
    CHECK(wait_exit(child) == 0);
    // The resumed holder's release deleted nothing: the lock is still ours.
    auto other = KeyedLockRegistry::from_url(url(server));
    CHECK_FALSE(other.try_lock("paused").has_value());
    CHECK_FALSE(g->lost());
    for (auto& p : pipes) {
        ::close(p[0]);
        ::close(p[1]);
    }
}

TEST_CASE("a redis restart mid-hold: the guard reports its loss and locking goes on", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "command_timeout=2s"));
    std::uint64_t before = 0;
    {
        Guard g = r.lock("survivor");
        before = g.fencing_token();
        server.restart();  // empty: no keys, no scripts
        std::error_code ec;
        g.release(ec);  // the lock is gone with the server's data
        CHECK((ec == errc::not_owner || ec == errc::unavailable));
    }
    Guard g = r.lock("survivor");  // reconnects, reloads the scripts
    CHECK(g.fencing_token() > before);
}

TEST_CASE("redis bad input and unreachable servers are typed errors", "[redis]") {
    SECTION("a wrong password never shows in the error") {
        RedisServer server({"--requirepass", "right-pw"});
        auto r = KeyedLockRegistry::from_url("redis://:Wr0ng-Secret@127.0.0.1:" + std::to_string(server.port()));
        CHECK(error_of([&] { (void)r.lock("k"); }) == errc::auth_failed);
        CHECK_THAT(message_of([&] { (void)r.lock("k"); }), !Catch::Contains("Wr0ng-Secret"));
        CHECK_THAT(r.describe(), !Catch::Contains("Wr0ng-Secret"));
        auto ok = KeyedLockRegistry::from_url("redis://:right-pw@127.0.0.1:" + std::to_string(server.port()));
        CHECK(ok.try_lock("k").has_value());
    }
    SECTION("nobody listening: unavailable within connect_timeout") {
        int port = 0;
        {
            RedisServer gone;
            port = gone.port();
        }
        auto r = KeyedLockRegistry::from_url(url(port, "connect_timeout=300ms"));
        const auto start = Clock::now();
        CHECK(error_of([&] { (void)r.lock("k"); }) == errc::unavailable);
        CHECK(Clock::now() - start < 3s);
        // Not "held by someone else" (nullopt): the lock could not be asked for at all.
        CHECK(error_of([&] { (void)r.try_lock("k"); }) == errc::unavailable);
        CHECK(error_of([&] { (void)r.try_lock_for("k", 100ms); }) == errc::unavailable);
    }
}

TEST_CASE("ten thousand redis keys held at once, then nothing left but the counters", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server));
    std::vector<Guard> held;
    held.reserve(10000);
    for (int i = 0; i < 10000; ++i) held.push_back(r.lock("many-" + std::to_string(i)));
    CHECK(r.stats().entries == 10000);
    const auto dbsize = [&] { return std::stoll(server.command("DBSIZE").substr(1)); };
    CHECK(dbsize() >= 10000);
    held.clear();
    CHECK(eventually([&] { return r.stats().entries == 0; }));
    // Only the fencing counters remain: at most one per hash slot.
    CHECK(dbsize() <= 16384);
    CHECK(server.command("EXISTS keylock:many-1") == ":0");
}

TEST_CASE("ten thousand async redis waiters on one io_context", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server));
    auto other = KeyedLockRegistry::from_url(url(server));
    boost::asio::io_context io;
    Guard held = other.lock("hot");  // held by "another process" while they all queue
    constexpr int kWaiters = 10000;
    int granted = 0;
    std::uint64_t last = 0;
    bool rising = true;
    for (int i = 0; i < kWaiters; ++i) {
        r.async_lock("hot", boost::asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
                         if (ec || !g.owns_lock()) return;
                         ++granted;
                         rising = rising && g.fencing_token() > last;
                         last = g.fencing_token();
                     }));  // each guard is released as its handler returns
    }
    // No thread is blocked while they wait.
    CHECK(eventually([&] { return r.stats().waiting == kWaiters; }));
    held.release();
    io.run();
    CHECK(granted == kWaiters);
    CHECK(rising);
    CHECK(eventually([&] { return r.stats().entries == 0; }));
}

TEST_CASE("redis registries over a Unix socket and over TLS", "[redis][tls]") {
    SECTION("unix://") {
        RedisServer server;
        auto r = KeyedLockRegistry::from_url("unix://" + server.unix_socket());
        auto tcp = KeyedLockRegistry::from_url(url(server));
        Guard g = r.lock("via-socket");
        CHECK_FALSE(tcp.try_lock("via-socket").has_value());  // one server, whichever way
    }
    SECTION("rediss:// with the server's CA, and refused with another CA") {
        RedisServer server(RedisServer::Tls{});
        const std::string base = "rediss://127.0.0.1:" + std::to_string(server.tls_port()) + "/?ca_file=";
        auto r = KeyedLockRegistry::from_url(base + server.ca_file());
        auto plain = KeyedLockRegistry::from_url(url(server));
        Guard g = r.lock("via-tls");
        CHECK(g.fencing_token() > 0);
        CHECK_FALSE(plain.try_lock("via-tls").has_value());
        auto wrong = KeyedLockRegistry::from_url(base + server.other_ca_file() + "&connect_timeout=2s");
        CHECK(error_of([&] { (void)wrong.lock("other"); }) == errc::unavailable);
    }
}

TEST_CASE("a lock found taken by someone else is lost and on_lost says so", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
    std::mutex mu;
    int calls = 0;
    std::string lost_key;
    std::uint64_t lost_token = 0;
    r.on_lost([&](std::string_view key, std::uint64_t token) {
        std::lock_guard lk(mu);
        ++calls;
        lost_key.assign(key);
        lost_token = token;
    });
    Guard g = r.lock("taken");
    CHECK_FALSE(g.lost());
    server.command("SET keylock:taken someone-else");  // e.g. an operator's doing
    CHECK(eventually([&] { return g.lost(); }));       // the watchdog's next renewal finds out
    CHECK(eventually([&] {
        std::lock_guard lk(mu);
        return calls == 1;
    }));
    {
        std::lock_guard lk(mu);
        CHECK(lost_key == "taken");
        CHECK(lost_token == g.fencing_token());
    }
    std::error_code ec;
    g.release(ec);
    CHECK(ec == errc::not_owner);
    CHECK(server.command("GET keylock:taken") == "$12");  // still the other owner's value
    std::lock_guard lk(mu);
    CHECK(calls == 1);
}

TEST_CASE("an async holder's work is cancelled through the guard's slot when its lease is lost", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
    boost::asio::io_context io;
    Guard held;
    boost::asio::steady_timer lost_work(io), kept_work(io);
    std::optional<boost::system::error_code> lost_result, kept_result;
    Guard kept;
    auto start = Clock::now();
    r.async_lock(
        "doomed", boost::asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
            REQUIRE_FALSE(ec);
            held = std::move(g);
            // Work that would take a minute, bound to the guard's slot.
            lost_work.expires_after(20s);
            lost_work.async_wait(boost::asio::bind_cancellation_slot(
                held.cancellation_slot(io.get_executor()), [&](boost::system::error_code e) { lost_result = e; }));
            // Someone takes the key from us (e.g. an operator's forced release and another owner).
            server.command("SET keylock:doomed someone-else");
        }));
    r.async_lock(
        "kept", boost::asio::bind_executor(io, [&](boost::system::error_code ec, Guard g) {
            REQUIRE_FALSE(ec);
            kept = std::move(g);
            // A guard whose lease the watchdog renews: its slot stays quiet past several renewals.
            kept_work.expires_after(2s);
            kept_work.async_wait(boost::asio::bind_cancellation_slot(
                kept.cancellation_slot(io.get_executor()), [&](boost::system::error_code e) { kept_result = e; }));
        }));
    io.run();
    REQUIRE(lost_result.has_value());
    CHECK(*lost_result == boost::asio::error::operation_aborted);
    CHECK(held.lost());
    REQUIRE(kept_result.has_value());
    CHECK_FALSE(*kept_result);  // ran its full 2 s
    CHECK_FALSE(kept.lost());
    CHECK(Clock::now() - start < 15s);
    std::error_code ec;
    held.release(ec);
    CHECK(ec == errc::not_owner);
    kept.release(ec);
    CHECK_FALSE(ec);
}

TEST_CASE("a guard asked for its slot after the loss is cancelled at once, a released one never", "[redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
    boost::asio::io_context io;
    Guard g = r.lock("gone");
    server.command("DEL keylock:gone");
    REQUIRE(eventually([&] { return g.lost(); }));
    bool cancelled = false;
    boost::asio::steady_timer work(io);
    work.expires_after(60s);
    work.async_wait(boost::asio::bind_cancellation_slot(
        g.cancellation_slot(io.get_executor()),
        [&](boost::system::error_code e) { cancelled = e == boost::asio::error::operation_aborted; }));
    io.run_for(10s);
    CHECK(cancelled);

    // Released before any loss: a later loss of the key (someone else's lock now) is not ours.
    Guard released = r.lock("later");
    boost::asio::io_context io2;
    boost::asio::steady_timer quiet(io2);
    std::optional<boost::system::error_code> result;
    quiet.expires_after(1500ms);
    quiet.async_wait(boost::asio::bind_cancellation_slot(released.cancellation_slot(io2.get_executor()),
                                                         [&](boost::system::error_code e) { result = e; }));
    released.release();
    server.command("SET keylock:later someone-else");
    io2.run();
    REQUIRE(result.has_value());
    CHECK_FALSE(*result);
}

TEST_CASE("reconnection backs off while the server turns every connection away", "[redis]") {
    // A listener that accepts each connection and closes it at once, counting them.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 64) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    std::atomic<int> accepted{0};
    std::atomic<bool> stop{false};
    std::thread acceptor([&] {
        while (!stop.load()) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            const int c = ::accept(fd, nullptr, nullptr);
            if (c < 0) continue;
            accepted.fetch_add(1);
            ::close(c);
        }
    });
    auto r = KeyedLockRegistry::from_url(url(ntohs(addr.sin_port), "connect_timeout=3s"));
    const auto start = Clock::now();
    CHECK(error_of([&] { (void)r.lock("k"); }) == errc::unavailable);
    const auto took = Clock::now() - start;
    stop = true;
    acceptor.join();
    ::close(fd);
    CHECK(took >= 2900ms);  // kept trying for connect_timeout...
    CHECK(took < 6s);
    // ...with a new connection after 0, 50, 100, 200, … ms, at most 1 s apart: about 9 in 3 s,
    // where the waiter's retry every ~50 ms would otherwise have made about 60.
    CHECK(accepted.load() >= 5);
    CHECK(accepted.load() <= 15);
}

TEST_CASE("a waiter whose notifications were cut off still gets the lock soon after its release", "[redis]") {
    RedisServer server;
    auto a = KeyedLockRegistry::from_url(url(server));  // lease 30 s
    auto b = KeyedLockRegistry::from_url(url(server));
    std::optional<Guard> held = a.lock("k");
    std::atomic<bool> got{false};
    std::thread waiter([&] {
        Guard g = b.lock("k");
        got = true;
    });
    REQUIRE(eventually([&] { return server.command("PUBSUB CHANNELS keylock:k") == "*1"; }));
    REQUIRE(server.command("CLIENT KILL TYPE pubsub") == ":1");  // the waiter's subscriber connection
    held.reset();                                                // its release notification goes nowhere
    const auto start = Clock::now();
    CHECK(eventually([&] { return got.load(); }, 5s));  // not 30 s later, at the end of the lease
    CHECK(Clock::now() - start < 5s);
    waiter.join();
}

TEST_CASE("operators see who holds a key and can force its release", "[redis]") {
    RedisServer server;
    auto holder = KeyedLockRegistry::from_url(url(server, "lease=10s"));
    auto waiting = KeyedLockRegistry::from_url(url(server));
    auto op = KeyedLockRegistry::from_url(url(server));
    CHECK_FALSE(op.inspect("k").held);
    Guard g = holder.lock("k");
    const keylock::LockInfo info = op.inspect("k");
    CHECK(info.held);
    CHECK(info.fencing_token == g.fencing_token());
    CHECK(info.ttl > 8s);
    CHECK(info.ttl <= 10s);
    // The value is `<fencing token>:<32 hex digits of owner token>`.
    CHECK(server.command("STRLEN keylock:k") == ":" + std::to_string(std::to_string(g.fencing_token()).size() + 33));

    std::atomic<bool> got{false};
    std::thread waiter([&] {
        Guard w = waiting.lock("k");
        got = true;
    });
    REQUIRE(eventually([&] { return server.command("PUBSUB CHANNELS keylock:k") == "*1"; }));
    CHECK(op.force_release("k"));
    CHECK(eventually([&] { return got.load(); }, 3s));  // woken by the forced release, not the 10 s lease
    waiter.join();
    CHECK(eventually([&] { return g.lost(); }));  // the watchdog's next renewal finds it gone
    std::error_code ec;
    g.release(ec);
    CHECK(ec == errc::not_owner);
    CHECK(eventually([&] { return !op.inspect("k").held; }));  // the waiter's guard released it
    CHECK_FALSE(op.force_release("k"));

    server.command("SET keylock:foreign not-ours");  // a value keylock did not write
    const keylock::LockInfo foreign = op.inspect("foreign");
    CHECK(foreign.held);
    CHECK(foreign.fencing_token == 0);
    CHECK(foreign.ttl == -1ms);
    CHECK(error_of([&] { (void)op.inspect(""); }) == errc::invalid_key);
    CHECK(error_of([&] { (void)op.force_release(""); }) == errc::invalid_key);
}

TEST_CASE("contended keys across registries: no waiter sleeps through a release", "[redis]") {
    // A release notification may arrive while the waiter's own attempt is still on the wire and
    // about to say "held": the waiter must try again, not sleep for the rest of a 30 s lease.
    RedisServer server;
    constexpr int registries = 3, threads = 6, rounds = 200;
    std::vector<KeyedLockRegistry> regs;
    for (int i = 0; i < registries; ++i) regs.push_back(KeyedLockRegistry::from_url(url(server)));  // lease 30 s
    std::atomic<int> stalled{0}, done{0};
    std::vector<std::thread> pool;
    for (int i = 0; i < registries * threads; ++i) {
        pool.emplace_back([&, i] {
            KeyedLockRegistry& r = regs[static_cast<std::size_t>(i % registries)];
            for (int n = 0; n < rounds; ++n) {
                auto g = r.try_lock_for(n % 2 == 0 ? "even" : "odd", 5s);  // a stall would be ~30 s
                if (!g) {
                    stalled.fetch_add(1);
                    return;
                }
                done.fetch_add(1);
            }
        });
    }
    for (auto& t : pool) t.join();
    CHECK(stalled.load() == 0);
    CHECK(done.load() == registries * threads * rounds);
}

TEST_CASE("a registry destroyed right after its guards still releases their locks", "[redis]") {
    RedisServer server;
    {
        auto r = KeyedLockRegistry::from_url(url(server));
        std::vector<Guard> guards;
        for (int i = 0; i < 100; ++i) guards.push_back(r.lock(std::string("k").append(std::to_string(i))));
        guards.clear();  // releases queued, not yet answered
    }                    // the registry goes: it waits for them
    for (int i = 0; i < 100; i += 11) {
        CHECK(server.command(std::string("EXISTS keylock:k").append(std::to_string(i))) == ":0");
    }
    CHECK(server.command("EXISTS keylock:k99") == ":0");
}

TEST_CASE("hand-overs under a short lease never make a live guard look lost", "[redis]") {
    // A renewal that meets NOSCRIPT is sent again as EVAL, behind whatever was sent meanwhile:
    // its answer can then come after its hold was handed over and a new hold took its place
    // at the same address. It must not count for the new one. SCRIPT FLUSH makes it happen.
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));  // renewals every 333 ms
    std::atomic<bool> stop{false};
    std::atomic<long> holds{0}, lost{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 8; ++t) {
        pool.emplace_back([&] {
            while (!stop.load()) {
                Guard g = r.lock("hot");
                holds.fetch_add(1);
                std::this_thread::sleep_for(200us);
                if (g.lost()) lost.fetch_add(1);
            }
        });
    }
    for (int i = 0; i < 100; ++i) {
        server.command("SCRIPT FLUSH");
        std::this_thread::sleep_for(25ms);
    }
    stop = true;
    for (auto& t : pool) t.join();
    CHECK(holds.load() > 100);
    CHECK(lost.load() == 0);
}

// KeyMutex inside the standard lock types, whose destructors are noexcept: before unlock() was
// noexcept, each of these ended the program with std::terminate.
TEST_CASE("std::unique_lock on a redis handle survives a lost lease and a dead server", "[redis][lost]") {
    SECTION("default lease: the key taken by someone else between renewals, found at unlock") {
        RedisServer server;
        auto r = KeyedLockRegistry::from_url(url(server));  // lease 30s: the watchdog renews at 10s
        auto other = KeyedLockRegistry::from_url(url(server));
        auto m = r.obtain("taken");
        std::optional<Guard> theirs;
        {
            std::unique_lock lk(m);
            CHECK(other.force_release("taken"));
            theirs = other.try_lock("taken");
            REQUIRE(theirs.has_value());
        }  // unlock: the release finds the lock someone else's (not_owner), and says so in stats
        CHECK(r.stats().lost == 1);
        CHECK_FALSE(theirs->lost());
        CHECK_FALSE(r.try_lock("taken").has_value());  // their lock was left alone
        theirs.reset();
        std::unique_lock again(m);  // the handle works on
        CHECK(again.owns_lock());
    }
    SECTION("short lease: the loss found by the watchdog while held, then unlock") {
        RedisServer server;
        auto r = KeyedLockRegistry::from_url(url(server, "lease=1s"));
        std::atomic<int> told{0};
        r.on_lost([&](std::string_view key, std::uint64_t) {
            if (key == "gone") ++told;
        });
        auto m = r.obtain("gone");
        {
            std::unique_lock lk(m);
            CHECK_FALSE(m.lost());
            server.command("DEL keylock:gone");  // e.g. evicted, or an operator's DEL
            REQUIRE(eventually([&] { return m.lost(); }, 5s));
        }
        CHECK(told == 1);
        CHECK(r.stats().lost == 1);  // counted once, not again by the release
        CHECK_FALSE(m.lost());       // holds nothing now
    }
    SECTION("the server killed while held, at the default lease and a short one") {
        for (const std::string lease : {"", "lease=1s&"}) {
            RedisServer server;
            const std::string query = lease + "connect_timeout=300ms&command_timeout=200ms";
            auto r = KeyedLockRegistry::from_url(url(server, query));
            auto a = r.obtain("a");
            auto b = r.obtain("b");
            const auto start = Clock::now();
            {
                std::scoped_lock both(a, b);
                server.kill();
            }  // both releases fail (unavailable): no throw, the leases end them on the server
            {
                std::unique_lock lk(a, std::defer_lock);
                CHECK_THROWS_AS(lk.lock(), keylock::Error);  // unavailable, reported where it can be
                CHECK_FALSE(lk.owns_lock());
            }
            CHECK(Clock::now() - start < 10s);  // bounded by the timeouts, not by the lease
        }
    }
}

TEST_CASE("leases are judged on a clock that counts a suspend, never behind the steady clock", "[redis][lease]") {
    using keylock::detail::BootClock;
    static_assert(std::chrono::is_clock_v<BootClock>);
    static_assert(BootClock::is_steady);
    // CLOCK_BOOTTIME is CLOCK_MONOTONIC (the steady clock) plus the time spent suspended.
    const auto earlier = Clock::now();
    const auto b0 = BootClock::now();
    const auto s0 = Clock::now();
    CHECK(b0.time_since_epoch() >= earlier.time_since_epoch());
    auto previous = b0;
    for (int i = 0; i < 100'000; ++i) {
        const auto t = BootClock::now();
        REQUIRE(t >= previous);
        previous = t;
    }
    std::this_thread::sleep_for(50ms);
    const auto s1 = Clock::now();
    const auto b1 = BootClock::now();
    CHECK(b1 - b0 >= s1 - s0);  // read around the steady clock's interval, so at least as long
    CHECK(b1 - b0 >= 50ms);
}

TEST_CASE("a standalone hold counts on its lease minus the clock drift", "[redis][lease]") {
    using keylock::redis::lease::clock_drift;
    using keylock::redis::lease::validity;
    // The margin of every topology (Redlock's figure): 1% of the lease and 2 ms.
    static_assert(clock_drift(30s) == 302ms && validity(30s) == 29'698ms);
    static_assert(clock_drift(1s) == 12ms && validity(1s) == 988ms);
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server, "lease=2s"));
    const auto before = Clock::now();
    Guard g = r.lock("drift");
    const auto after = Clock::now();
    // From now on no renewal is answered (the watchdog's first round is lease/3 after the
    // registry began): the hold lives on the lease its acquire began.
    CHECK(server.command("CLIENT PAUSE 3000 WRITE") == "+OK");
    INFO("the acquire took " << std::chrono::duration_cast<std::chrono::microseconds>(after - before).count() << " us");
    std::this_thread::sleep_until(before + validity(2s) / 2);
    CHECK_FALSE(g.lost());
    // Lost at the end of its validity, `lease - drift` after the acquire was sent: before the
    // lease itself (before + 2 s) could have ended on the server.
    std::this_thread::sleep_until(after + validity(2s) + 1ms);
    CHECK(g.lost());
    std::error_code ec;
    g.release(ec);  // waits out the pause
    CHECK(ec == errc::not_owner);
}
