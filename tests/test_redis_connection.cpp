// The Redis connection (backends/redis/connection.hpp) against a real redis-server: TCP and
// Unix sockets, pipelining, binary-safe arguments, AUTH and SELECT, and each way of failing
// with a typed error and a message that never contains the password.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include <keylock/error.hpp>

#include "connection.hpp"
#include "redis_server.hpp"

using keylock::errc;
using keylock::redis::Connection;
using keylock::redis::Endpoint;
using keylock::redis::Reply;
using keylock::test::RedisServer;
using namespace std::chrono_literals;

namespace {

struct Outcome {
    std::error_code ec;
    std::string message;
    bool done = false;
};

/// Runs `io` until `done()` or `limit` passes; returns whether done.
template <class Done>
bool run_until(boost::asio::io_context& io, Done done, std::chrono::milliseconds limit = 10s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    io.restart();
    while (!done()) {
        if (std::chrono::steady_clock::now() > end) return false;
        io.run_for(5ms);
        io.restart();
    }
    return true;
}

Endpoint tcp(const RedisServer& s) {
    Endpoint e;
    e.host = "127.0.0.1";
    e.port = static_cast<std::uint16_t>(s.port());
    return e;
}

std::shared_ptr<Connection> connected(boost::asio::io_context& io, Endpoint e, Outcome& out) {
    auto c = std::make_shared<Connection>(io, std::move(e));
    c->connect([&out](std::error_code ec, std::string message) {
        out = {ec, std::move(message), true};
    });
    REQUIRE(run_until(io, [&] { return out.done; }));
    return c;
}

/// Sends one command and waits for its reply.
Reply call(boost::asio::io_context& io, Connection& c, std::vector<std::string_view> argv) {
    std::optional<Reply> reply;
    std::error_code error;
    c.send(argv, [&](std::error_code ec, Reply r) {
        error = ec;
        reply = std::move(r);
    });
    REQUIRE(run_until(io, [&] { return reply.has_value(); }));
    REQUIRE_FALSE(error);
    return *reply;
}

/// A TCP listener on a free loopback port that accepts nothing (connections sit in the
/// backlog) or, with `answer`, writes it to each connection and keeps it open.
class FakeServer {
public:
    explicit FakeServer(std::string answer = {}) : answer_(std::move(answer)) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(fd_, 16) == 0);
        REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port_ = ntohs(a.sin_port);
        if (!answer_.empty()) {
            thread_ = std::thread([this] {
                const int c = ::accept(fd_, nullptr, nullptr);
                if (c < 0) return;
                (void)::send(c, answer_.data(), answer_.size(), MSG_NOSIGNAL);
                while (!stop_) std::this_thread::sleep_for(5ms);
                ::close(c);
            });
        }
    }
    ~FakeServer() {
        stop_ = true;
        ::shutdown(fd_, SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
        ::close(fd_);
    }
    std::uint16_t port() const { return port_; }

private:
    std::string answer_;
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace

TEST_CASE("a connection pipelines commands over TCP and a Unix socket, binary-safe", "[redis]") {
    RedisServer server;
    boost::asio::io_context io;
    Endpoint unix_endpoint;
    unix_endpoint.unix_path = server.unix_socket();
    for (const Endpoint& e : {tcp(server), unix_endpoint}) {
        Outcome out;
        auto c = connected(io, e, out);
        INFO(e.where() << ": " << out.message);
        REQUIRE_FALSE(out.ec);
        REQUIRE(c->connected());

        // Keys and values with CR, LF, NUL and non-UTF-8 bytes go through unchanged.
        const std::string key("k\r\n\0\xff key", 10);
        const std::string value("v\0\r\n*3\r\n", 9);
        CHECK(call(io, *c, {"SET", key, value}).str == "OK");
        const Reply got = call(io, *c, {"GET", key});
        CHECK(got.type == Reply::Type::string);
        CHECK(got.str == value);
        CHECK(call(io, *c, {"GET", "missing"}).is_nil());
        CHECK(call(io, *c, {"NOSUCHCOMMAND"}).is_error());

        // 2,000 commands in flight at once: replies come back in order.
        call(io, *c, {"DEL", "n"});
        std::vector<long long> seen;
        for (int i = 0; i < 2000; ++i) {
            c->send({"INCR", "n"}, [&](std::error_code ec, Reply r) { seen.push_back(ec ? -1 : r.integer); });
        }
        REQUIRE(run_until(io, [&] { return seen.size() == 2000; }));
        bool ordered = true;
        for (std::size_t i = 0; i < seen.size(); ++i) ordered = ordered && seen[i] == static_cast<long long>(i + 1);
        CHECK(ordered);
        const Reply arr = call(io, *c, {"MGET", "n", "missing"});
        REQUIRE(arr.type == Reply::Type::array);
        REQUIRE(arr.elements.size() == 2);
        CHECK(arr.elements[0].str == "2000");
        CHECK(arr.elements[1].is_nil());
        c->close();
    }
}

TEST_CASE("commands sent before the connection is up are sent once it is", "[redis]") {
    RedisServer server;
    boost::asio::io_context io;
    auto c = std::make_shared<Connection>(io, tcp(server));
    Outcome out;
    std::optional<Reply> reply;
    c->send({"PING"}, [&](std::error_code, Reply r) { reply = std::move(r); });
    c->connect([&](std::error_code ec, std::string m) { out = {ec, std::move(m), true}; });
    REQUIRE(run_until(io, [&] { return reply.has_value(); }));
    CHECK(out.done);
    CHECK_FALSE(out.ec);
    CHECK(reply->str == "PONG");
}

TEST_CASE("AUTH with a password or an ACL user, SELECT of a database", "[redis]") {
    RedisServer server({"--requirepass", "s3cret-pw", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"});
    boost::asio::io_context io;
    SECTION("no password: refused, typed") {
        Outcome out;
        auto c = connected(io, tcp(server), out);
        CHECK(out.ec == errc::auth_failed);
        CHECK_THAT(out.message, Catch::Contains("NOAUTH"));
    }
    SECTION("wrong password: refused, and the message does not contain it") {
        Endpoint e = tcp(server);
        e.password = "wrong-Pa55word";
        Outcome out;
        auto c = connected(io, e, out);
        CHECK(out.ec == errc::auth_failed);
        CHECK_THAT(out.message, !Catch::Contains("wrong-Pa55word"));
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        // Commands waiting for the connection fail with the same error.
        std::error_code later;
        c->send({"PING"}, [&](std::error_code ec, Reply) { later = ec; });
        REQUIRE(run_until(io, [&] { return static_cast<bool>(later); }));
        CHECK(later == errc::unavailable);
    }
    SECTION("password of the default user") {
        Endpoint e = tcp(server);
        e.password = "s3cret-pw";
        Outcome out;
        auto c = connected(io, e, out);
        CHECK_FALSE(out.ec);
        CHECK(call(io, *c, {"PING"}).str == "PONG");
    }
    SECTION("ACL user and password, and a database") {
        Endpoint e = tcp(server);
        e.user = "alice";
        e.password = "alice-pw";
        e.db = 3;
        Outcome out;
        auto c = connected(io, e, out);
        REQUIRE_FALSE(out.ec);
        CHECK(call(io, *c, {"ACL", "WHOAMI"}).str == "alice");
        CHECK(call(io, *c, {"SET", "where", "db3"}).str == "OK");
        e.db = 0;
        Outcome out0;
        auto c0 = connected(io, e, out0);
        REQUIRE_FALSE(out0.ec);
        CHECK(call(io, *c0, {"GET", "where"}).is_nil());
        CHECK(call(io, *c0, {"SELECT", "3"}).str == "OK");
        CHECK(call(io, *c0, {"GET", "where"}).str == "db3");
    }
    SECTION("wrong ACL password") {
        Endpoint e = tcp(server);
        e.user = "alice";
        e.password = "not-alices";
        Outcome out;
        auto c = connected(io, e, out);
        CHECK(out.ec == errc::auth_failed);
        CHECK_THAT(out.message, !Catch::Contains("not-alices"));
    }
}

TEST_CASE("connection failures are typed errors within connect_timeout", "[redis]") {
    boost::asio::io_context io;
    SECTION("nobody listens") {
        // The port of a server that has stopped: connection refused.
        Endpoint e;
        e.host = "127.0.0.1";
        {
            RedisServer s;
            e.port = static_cast<std::uint16_t>(s.port());
        }
        e.password = "hunter2-secret";
        Outcome out;
        auto c = connected(io, e, out);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains("127.0.0.1:" + std::to_string(e.port)));
        CHECK_THAT(out.message, !Catch::Contains("hunter2-secret"));
    }
    SECTION("a server that never answers") {
        FakeServer silent;  // accepts into its backlog, never replies
        Endpoint e;
        e.host = "127.0.0.1";
        e.port = silent.port();
        e.connect_timeout = 300ms;
        const auto start = std::chrono::steady_clock::now();
        Outcome out;
        auto c = connected(io, e, out);
        const auto took = std::chrono::steady_clock::now() - start;
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains("connect_timeout"));
        CHECK(took >= 300ms);
        CHECK(took < 2s);
    }
    SECTION("a server that is not Redis") {
        FakeServer http("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        Endpoint e;
        e.host = "127.0.0.1";
        e.port = http.port();
        Outcome out;
        auto c = connected(io, e, out);
        CHECK(out.ec == errc::protocol_error);
        CHECK_THAT(out.message, Catch::Contains("Redis protocol"));
    }
    SECTION("an unknown host name") {
        Endpoint e;
        e.host = "no-such-host.invalid";
        Outcome out;
        auto c = connected(io, e, out);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains("no-such-host.invalid"));
    }
}

TEST_CASE("a command without a reply within command_timeout breaks the connection", "[redis]") {
    RedisServer server;
    boost::asio::io_context io;
    Endpoint e = tcp(server);
    e.command_timeout = 300ms;
    Outcome out;
    auto c = connected(io, e, out);
    REQUIRE_FALSE(out.ec);
    std::optional<std::error_code> broke;
    c->on_failure([&](std::error_code ec, std::string) { broke = ec; });
    server.pause();
    std::vector<std::error_code> results;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i) c->send({"PING"}, [&](std::error_code ec, Reply) { results.push_back(ec); });
    REQUIRE(run_until(io, [&] { return results.size() == 3; }));
    const auto took = std::chrono::steady_clock::now() - start;
    server.resume();
    CHECK(took >= 300ms);
    CHECK(took < 2s);
    for (auto ec : results) CHECK(ec == errc::unavailable);
    REQUIRE(broke.has_value());
    CHECK(*broke == errc::unavailable);
    CHECK_FALSE(c->connected());
}
