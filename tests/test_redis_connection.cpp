// SPDX-License-Identifier: BSL-1.0
// The Redis connection (backends/redis/connection.hpp) against a real redis-server: TCP and
// Unix sockets, pipelining, binary-safe arguments, AUTH and SELECT, and each way of failing
// with a typed error and a message that never contains the password.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include <keylock/error.hpp>

#include "backends/redis/connection.hpp"
#include "backends/redis/reply_bound.hpp"
#include "fake_server.hpp"
#include "redis_cli.hpp"
#include "redis_server.hpp"

using keylock::errc;
using keylock::redis::Connection;
using keylock::redis::Endpoint;
using keylock::redis::Reply;
using keylock::test::FakeServer;
using keylock::test::RedisServer;
using namespace std::chrono_literals;
using namespace std::string_literals;

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
    c->connect([&out](std::error_code ec, std::string message) { out = {ec, std::move(message), true}; });
    REQUIRE(run_until(io, [&] { return out.done; }));
    return c;
}

/// Sends one command and waits for its reply.
Reply call(boost::asio::io_context& io, Connection& c, const std::vector<std::string_view>& argv) {
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
        const std::string key = "k\r\n\0\xff key"s;
        const std::string value = "v\0\r\n*3\r\n"s;
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
            c->send({"INCR", "n"}, [&](std::error_code ec, const Reply& r) { seen.push_back(ec ? -1 : r.integer); });
        }
        REQUIRE(run_until(io, [&] { return seen.size() == 2000; }));
        bool ordered = true;
        for (std::size_t i = 0; i < seen.size(); ++i) ordered = ordered && seen[i] == static_cast<long long>(i) + 1;
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
        c->send({"PING"}, [&](std::error_code ec, const Reply&) { later = ec; });
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

TEST_CASE("a server's reply to the handshake never brings the password or user into a message", "[redis]") {
    const std::string password = "Pw-4e1b-never-in-a-message";
    const std::string user = "user-9c2d-never-in-a-message";
    boost::asio::io_context io;
    const auto check = [&](const Outcome& out, const std::string& refused) {
        INFO(out.message);
        CHECK((out.ec == errc::auth_failed || out.ec == errc::backend_error));
        CHECK_THAT(out.message, Catch::Contains(refused));
        CHECK_THAT(out.message, !Catch::Contains(password) && !Catch::Contains(user));
    };
    SECTION("a Redis without requirepass refuses AUTH: our words, not its own") {
        RedisServer server;
        Endpoint e = tcp(server);
        e.password = password;
        Outcome out;
        auto c = connected(io, e, out);
        check(out, "Redis at " + e.where() + " refused AUTH (");
        CHECK(out.ec == errc::auth_failed);
        CHECK_THAT(out.message, Catch::Contains("no password set"));
        e.user = user;  // an ACL user it does not have: WRONGPASS
        Outcome with_user;
        auto c2 = connected(io, e, with_user);
        check(with_user, "refused AUTH (WRONGPASS");
    }
    SECTION("a server that echoes every command in its error: AUTH's reply is not shown") {
        FakeServer echo(FakeServer::Echo{});
        Endpoint e;
        e.host = "127.0.0.1";
        e.port = echo.port();
        e.user = user;
        e.password = password;
        Outcome out;
        auto c = connected(io, e, out);
        check(out, "Redis at " + e.where() + " refused AUTH (");
        CHECK(out.ec == errc::auth_failed);
    }
    SECTION("... and one that takes AUTH and echoes all it was sent in SELECT's error: scrubbed") {
        FakeServer echo(FakeServer::Echo{true});
        Endpoint e;
        e.host = "127.0.0.1";
        e.port = echo.port();
        e.user = user;
        e.password = password;
        e.db = 2;
        Outcome out;
        auto c = connected(io, e, out);
        check(out, "refused SELECT: ERR you sent:");
        CHECK(out.ec == errc::backend_error);
        CHECK_THAT(out.message, Catch::Contains("AUTH") && Catch::Contains("***"));  // the echo, scrubbed
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
    c->on_failure([&](std::error_code ec, const std::string&) { broke = ec; });
    server.pause();
    std::vector<std::error_code> results;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i) c->send({"PING"}, [&](std::error_code ec, const Reply&) { results.push_back(ec); });
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

// Found by fuzz/fuzz_reply.cpp: a push during the handshake stopped the reading of the replies
// behind it in the same read, until more bytes came (here: never, so connect_timeout).
TEST_CASE("a pub/sub message during the handshake does not hold up the replies behind it", "[redis][fuzz]") {
    FakeServer server("*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nnews\r\n+PONG\r\n:7\r\n");
    boost::asio::io_context io;
    Endpoint e;
    e.host = "127.0.0.1";
    e.port = server.port();
    e.connect_timeout = 3s;
    auto c = std::make_shared<Connection>(io, e);
    std::vector<std::string> pushed;
    c->on_push([&](Reply r) { pushed.push_back(r.elements.at(2).str); });
    std::optional<Reply> reply;
    c->send({"INCR", "n"}, [&](std::error_code ec, Reply r) {
        CHECK_FALSE(ec);
        reply = std::move(r);
    });
    Outcome out;
    c->connect([&](std::error_code ec, std::string m) { out = {ec, std::move(m), true}; });
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(run_until(io, [&] { return reply.has_value(); }));
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    CHECK(out.done);
    CHECK_FALSE(out.ec);
    CHECK(pushed == std::vector<std::string>{"news"});
    CHECK(reply->integer == 7);
}

// Found by fuzz/fuzz_reply.cpp: hiredis allocates an array's element pointers when it reads the
// array's length, so "*2147483647" from the server was a 16 GiB allocation.
TEST_CASE("an array of more than 2^20 elements is a protocol error, not a 16 GiB allocation", "[redis][fuzz]") {
    FakeServer server("+PONG\r\n*2147483647\r\n:1\r\n");
    boost::asio::io_context io;
    Endpoint e;
    e.host = "127.0.0.1";
    e.port = server.port();
    auto c = std::make_shared<Connection>(io, e);
    std::optional<std::pair<std::error_code, std::string>> broke;
    c->on_failure([&](std::error_code ec, std::string m) { broke.emplace(ec, std::move(m)); });
    std::optional<std::error_code> result;
    c->send({"EVALSHA", "x", "0"}, [&](std::error_code ec, const Reply&) { result = ec; });
    Outcome out;
    c->connect([&](std::error_code ec, std::string m) { out = {ec, std::move(m), true}; });
    const auto answered = [&] { return result.has_value(); };
    REQUIRE(run_until(io, answered, 3s));  // without the bound: hiredis waits for the elements
    CHECK(out.done);
    CHECK_FALSE(out.ec);
    CHECK(*result == errc::unavailable);
    REQUIRE(broke.has_value());
    CHECK(broke->first == errc::protocol_error);
    CHECK_THAT(broke->second, Catch::Contains("more than 1048576 array elements in one reply"));
    CHECK_FALSE(c->connected());
}

// TLS (RedisServer::Tls: a throwaway CA, certificates made with openssl, a TLS port next to
// the plain one).

namespace {

/// The server's TLS port, trusting the CA that signed its certificate.
Endpoint tls(const RedisServer& s, std::string host = "127.0.0.1") {
    Endpoint e;
    e.host = std::move(host);
    e.port = static_cast<std::uint16_t>(s.tls_port());
    e.tls = true;
    e.ca_file = s.ca_file();
    return e;
}

/// connect() with how long it took until the handler ran.
std::shared_ptr<Connection> timed_connect(boost::asio::io_context& io, const Endpoint& e, Outcome& out,
                                          std::chrono::steady_clock::duration& took) {
    const auto start = std::chrono::steady_clock::now();
    auto c = connected(io, e, out);
    took = std::chrono::steady_clock::now() - start;
    return c;
}

/// A value with every byte value, bigger than a TLS record (16 KiB) and than the connection's
/// read buffer, so that it crosses records and reads.
std::string big_binary_value() {
    std::string v(300 * 1024, '\0');
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<char>((i * 131 + i / 256) & 0xff);
    return v;
}

}  // namespace

TEST_CASE("TLS trusting the server's CA carries pipelined binary-safe commands", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{});
    REQUIRE(server.tls());
    REQUIRE(server.tls_port() > 0);
    REQUIRE(server.tls_port() != server.port());
    boost::asio::io_context io;

    // The certificate names both the address and "localhost" (which may resolve to ::1 first,
    // where nothing listens: the connection then tries the next address).
    for (const std::string host : {"127.0.0.1", "localhost"}) {
        const Endpoint e = tls(server, host);
        Outcome out;
        auto c = connected(io, e, out);
        INFO(e.where() << ": " << out.message);
        REQUIRE_FALSE(out.ec);
        REQUIRE(c->connected());
        CHECK(call(io, *c, {"PING"}).str == "PONG");

        const std::string key = std::string("tls\r\n\0\xff key-", 12) + host;
        const std::string value = "v\0\r\n*3\r\n"s;
        CHECK(call(io, *c, {"SET", key, value}).str == "OK");
        CHECK(call(io, *c, {"GET", key}).str == value);
        const std::string big = big_binary_value();
        CHECK(call(io, *c, {"SET", "big", big}).str == "OK");
        const Reply got = call(io, *c, {"GET", "big"});
        CHECK(got.type == Reply::Type::string);
        CHECK(got.str.size() == big.size());
        CHECK(got.str == big);

        call(io, *c, {"DEL", "n"});
        std::vector<long long> seen;
        for (int i = 0; i < 2000; ++i) {
            c->send({"INCR", "n"}, [&](std::error_code ec, const Reply& r) { seen.push_back(ec ? -1 : r.integer); });
        }
        REQUIRE(run_until(io, [&] { return seen.size() == 2000; }));
        bool ordered = true;
        for (std::size_t i = 0; i < seen.size(); ++i) ordered = ordered && seen[i] == static_cast<long long>(i) + 1;
        CHECK(ordered);
        c->close();
    }
    // One server behind both ports: what went in over TLS is there in plain RESP.
    CHECK(server.command("GET n") == "$4");

    // A restart keeps the ports and the certificates.
    const int tls_port = server.tls_port();
    server.restart();
    CHECK(server.tls_port() == tls_port);
    Outcome out;
    auto c = connected(io, tls(server), out);
    INFO(out.message);
    REQUIRE_FALSE(out.ec);
    CHECK(call(io, *c, {"PING"}).str == "PONG");
}

TEST_CASE("TLS with verify off connects whatever CA it was given", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{});
    boost::asio::io_context io;
    Endpoint e = tls(server);
    e.ca_file = server.other_ca_file();
    e.verify = false;
    Outcome out;
    auto c = connected(io, e, out);
    INFO(out.message);
    REQUIRE_FALSE(out.ec);
    CHECK(call(io, *c, {"PING"}).str == "PONG");
}

TEST_CASE("a TLS server whose certificate no trusted CA signed is refused", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{});
    boost::asio::io_context io;
    Endpoint e = tls(server);
    e.password = "never-Shown-pw";  // the handshake fails first: AUTH is never sent
    e.connect_timeout = 3s;
    SECTION("trusting an unrelated CA") { e.ca_file = server.other_ca_file(); }
    SECTION("trusting the system's CAs") { e.ca_file.clear(); }
    Outcome out;
    std::chrono::steady_clock::duration took{};
    auto c = timed_connect(io, e, out, took);
    INFO(out.message);
    CHECK(out.ec == errc::unavailable);
    CHECK_THAT(out.message, Catch::Contains("TLS handshake"));
    CHECK_THAT(out.message, Catch::Contains(e.where()));
    CHECK_THAT(out.message, !Catch::Contains("never-Shown-pw"));
    CHECK(took < e.connect_timeout);
    CHECK_FALSE(c->connected());
}

TEST_CASE("a TLS server certificate for another host name is refused when verifying", "[redis][tls]") {
    // Signed by the trusted CA, but for "wrong.example" only: the chain is good, the name is not.
    RedisServer server(RedisServer::Tls{.server_cert = RedisServer::Tls::ServerCert::wrong_name});
    boost::asio::io_context io;
    for (const std::string host : {"127.0.0.1", "localhost"}) {
        Endpoint e = tls(server, host);
        e.connect_timeout = 3s;
        Outcome out;
        std::chrono::steady_clock::duration took{};
        auto c = timed_connect(io, e, out, took);
        INFO(host << ": " << out.message);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains("TLS handshake"));
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        CHECK(took < e.connect_timeout);

        // The same endpoint without verification connects: it was the name that was refused.
        e.verify = false;
        Outcome unverified;
        auto u = connected(io, e, unverified);
        INFO(unverified.message);
        CHECK_FALSE(unverified.ec);
    }
}

TEST_CASE("TLS to a plain port and plain to a TLS port fail with typed errors within connect_timeout", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{});
    boost::asio::io_context io;
    SECTION("a TLS client on the plain port") {
        // Redis reads the ClientHello as an inline command, which has no end (its length
        // fields put a NUL byte before any newline) and answers nothing, so connect_timeout
        // ends this. (Should a ClientHello ever hold an early newline, Redis would answer with
        // an error that is no TLS record, and the handshake would fail sooner: also unavailable.)
        Endpoint e = tls(server);
        e.port = static_cast<std::uint16_t>(server.port());
        e.connect_timeout = 500ms;
        Outcome out;
        std::chrono::steady_clock::duration took{};
        auto c = timed_connect(io, e, out, took);
        INFO(out.message);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains(e.where()) && Catch::Contains("TLS handshake"));
        CHECK(took < e.connect_timeout + 500ms);
    }
    SECTION("a plain client on the TLS port") {
        // The server's TLS layer reads the first 5 bytes of our PING as a record header, finds
        // no TLS there and closes with the rest of the PING unread, which resets the connection
        // (no alert comes first): the read fails at once, before any byte could be parsed.
        Endpoint e = tcp(server);
        e.port = static_cast<std::uint16_t>(server.tls_port());
        e.connect_timeout = 500ms;
        Outcome out;
        std::chrono::steady_clock::duration took{};
        auto c = timed_connect(io, e, out, took);
        INFO(out.message);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        CHECK(took < e.connect_timeout);
    }
    // The server is none the worse.
    CHECK(server.command("PING") == "+PONG");
}

TEST_CASE("a TLS server that requires client certificates accepts only its CA's", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{.client_auth = RedisServer::Tls::ClientAuth::required});
    boost::asio::io_context io;
    Endpoint e = tls(server);
    e.connect_timeout = 3s;
    SECTION("with a client certificate signed by the server's CA") {
        e.cert_file = server.client_cert_file();
        e.key_file = server.client_key_file();
        Outcome out;
        auto c = connected(io, e, out);
        INFO(out.message);
        REQUIRE_FALSE(out.ec);
        CHECK(call(io, *c, {"PING"}).str == "PONG");
    }
    // With TLS 1.3 the client's side of the handshake ends before the server has checked the
    // client: the refusal (an alert, or the server closing) comes with the first read.
    SECTION("without a client certificate") {
        Outcome out;
        std::chrono::steady_clock::duration took{};
        auto c = timed_connect(io, e, out, took);
        INFO(out.message);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        CHECK(took < e.connect_timeout);
        CHECK_FALSE(c->connected());
    }
    SECTION("with a client certificate signed by another CA") {
        e.cert_file = server.other_client_cert_file();
        e.key_file = server.other_client_key_file();
        Outcome out;
        std::chrono::steady_clock::duration took{};
        auto c = timed_connect(io, e, out, took);
        INFO(out.message);
        CHECK(out.ec == errc::unavailable);
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        CHECK(took < e.connect_timeout);
        CHECK_FALSE(c->connected());
    }
}

TEST_CASE("AUTH over TLS with a password that no message shows", "[redis][tls]") {
    RedisServer server(RedisServer::Tls{}, {"--requirepass", "tls-s3cret-pw"});
    boost::asio::io_context io;
    SECTION("the right password") {
        Endpoint e = tls(server);
        e.password = "tls-s3cret-pw";
        Outcome out;
        auto c = connected(io, e, out);
        INFO(out.message);
        REQUIRE_FALSE(out.ec);
        CHECK(call(io, *c, {"PING"}).str == "PONG");
    }
    SECTION("a wrong password") {
        Endpoint e = tls(server);
        e.password = "wrong-tls-Pa55word";
        Outcome out;
        auto c = connected(io, e, out);
        INFO(out.message);
        CHECK(out.ec == errc::auth_failed);
        CHECK_THAT(out.message, Catch::Contains(e.where()));
        CHECK_THAT(out.message, !Catch::Contains("wrong-tls-Pa55word"));
        CHECK_THAT(out.message, !Catch::Contains("tls-s3cret-pw"));
    }
}

namespace {

/// How many PINGs the server has run (INFO commandstats).
long pings_run(const RedisServer& server) {
    const std::string info = keylock::test::call(server.port(), {"INFO", "commandstats"}).str;
    const auto at = info.find("cmdstat_ping:calls=");
    return at == std::string::npos ? 0 : std::stol(info.substr(at + 19));
}

}  // namespace

TEST_CASE("an idle connection PINGs every health_check, a subscriber too, and stays up", "[redis]") {
    // The health check must not break what it checks: a subscriber's PING is answered
    // "*2 pong ''" in RESP2 (not "+PONG"), and a PING answered is a connection alive.
    RedisServer server;
    boost::asio::io_context io;
    Endpoint e = tcp(server);
    e.health_check = 100ms;
    Outcome cmd_out, sub_out;
    auto cmd = connected(io, e, cmd_out);
    auto sub = connected(io, e, sub_out);
    REQUIRE_FALSE(cmd_out.ec);
    REQUIRE_FALSE(sub_out.ec);
    int broke = 0;
    cmd->on_failure([&](std::error_code, const std::string&) { ++broke; });
    sub->on_failure([&](std::error_code, const std::string&) { ++broke; });
    std::vector<std::string> pushed;
    sub->on_push([&](const Reply& r) { pushed.push_back(r.elements.at(2).str); });
    const Reply subscribed = call(io, *sub, {"SUBSCRIBE", "ch"});
    REQUIRE(subscribed.elements.size() == 3);
    CHECK(subscribed.elements[0].str == "subscribe");
    const long before = pings_run(server);
    run_until(
        io, [] { return false; }, 1000ms);  // idle for 1 s: ~10 PINGs on each
    const long pings = pings_run(server) - before;
    CHECK(pings >= 12);
    CHECK(pings <= 24);
    CHECK(broke == 0);
    CHECK(cmd->connected());
    CHECK(sub->connected());
    // Both still work: the subscriber hears its channel, the command connection answers.
    CHECK(server.command("PUBLISH ch news") == ":1");
    REQUIRE(run_until(
        io, [&] { return !pushed.empty(); }, 2s));
    CHECK(pushed == std::vector<std::string>{"news"});
    CHECK(call(io, *cmd, {"ECHO", "x"}).str == "x");
    // health_check 0: no PING.
    e.health_check = 0ms;
    Outcome quiet_out;
    auto quiet = connected(io, e, quiet_out);
    cmd->close();
    sub->close();
    const long quiet_before = pings_run(server);
    run_until(
        io, [] { return false; }, 500ms);
    CHECK(pings_run(server) == quiet_before);
    CHECK(quiet->connected());
}

TEST_CASE("a TCP connection has keepalive on, its first probe within 10 s", "[redis]") {
    // The second line of defence behind the health check. /proc/net/tcp shows, for a socket with
    // nothing to send, timer 2 (keepalive) and when it fires, in clock ticks; without keepalive,
    // no timer at all.
    RedisServer server;
    boost::asio::io_context io;
    Outcome out;
    auto c = connected(io, tcp(server), out);
    REQUIRE_FALSE(out.ec);
    // Our end's port, as Redis sees it.
    const std::string info = call(io, *c, {"CLIENT", "INFO"}).str;
    const auto addr = info.find("addr=127.0.0.1:");
    REQUIRE(addr != std::string::npos);
    const int port = std::stoi(info.substr(addr + 15));
    // "…:PORT" in hex, for our end and the server's.
    const auto hex_port = [](int p) {
        char text[8];
        std::snprintf(text, sizeof text, ":%04X", p);
        return std::string(text);
    };
    const std::string local = hex_port(port), remote = hex_port(server.port());
    std::ifstream tcp_table("/proc/net/tcp");
    REQUIRE(tcp_table.good());
    std::string line, timer;
    while (std::getline(tcp_table, line)) {
        std::istringstream fields(line);
        std::string sl, local_address, remote_address, state, queues;
        fields >> sl >> local_address >> remote_address >> state >> queues >> timer;
        if (local_address.ends_with(local) && remote_address.ends_with(remote)) break;
        timer.clear();
    }
    INFO("timer of our socket in /proc/net/tcp: " << timer);
    REQUIRE(timer.size() == 11);  // "02:000003E8"
    CHECK(timer.substr(0, 2) == "02");
    const long ticks = std::stol(timer.substr(3), nullptr, 16);
    CHECK(ticks <= 10 * ::sysconf(_SC_CLK_TCK));
    CHECK(ticks > 5 * ::sysconf(_SC_CLK_TCK));
}

TEST_CASE("ReplyBound refuses a reply where it breaks a bound, and only then", "[redis][fuzz]") {
    using keylock::redis::ReplyBound;
    // How many bytes of `bytes` pass, fed in one piece and byte by byte (the same either way).
    const auto passed = [](std::uint64_t max_bytes, std::uint64_t max_elements, const std::string& bytes,
                           std::string* why = nullptr) {
        ReplyBound whole(max_bytes, max_elements), bytewise(max_bytes, max_elements);
        const std::size_t n = whole.scan(bytes.data(), bytes.size());
        std::size_t m = 0;
        while (m < bytes.size() && bytewise.scan(bytes.data() + m, 1) == 1) ++m;
        CHECK(n == m);
        CHECK(whole.broken() == bytewise.broken());
        if (why != nullptr) *why = whole.broken();
        return n;
    };
    const std::string bulk100 = "$100\r\n" + std::string(100, 'x') + "\r\n";  // 108 bytes
    CHECK(passed(108, 10, bulk100) == 108);                                   // exactly the bound
    std::string why;
    CHECK(passed(107, 10, bulk100, &why) == 5);  // refused at the end of its header ('\n')
    CHECK(why == "a reply of more than max_reply_bytes (107 bytes)");
    CHECK(passed(99, 10, bulk100, &why) == 5);
    CHECK(why == "a bulk string of 100 bytes, more than max_reply_bytes (99)");
    // The bound is per reply: many replies of the bound's size pass.
    std::string many;
    for (int i = 0; i < 100; ++i) many += bulk100;
    CHECK(passed(108, 10, many) == many.size());
    // A line without end: refused at the byte past the bound.
    CHECK(passed(64, 10, "+" + std::string(1000, 'y'), &why) == 64);
    CHECK(why == "a reply of more than max_reply_bytes (64 bytes)");
    // Elements count over all the arrays of a reply; 3 bytes each are announced.
    CHECK(passed(1000, 4, "*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n") == 20);
    CHECK(passed(1000, 4, "*2\r\n*3\r\n:1\r\n", &why) == 7);
    CHECK(why == "more than 4 array elements in one reply");
    CHECK(passed(1000, 1000, "*400\r\n", &why) == 5);  // 400 x 3 bytes announced
    CHECK(why == "a reply of more than max_reply_bytes (1000 bytes)");
    // Nil and empty values, negative lengths.
    CHECK(passed(1000, 10, "$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n") == 20);
    CHECK(passed(1000, 10, "*-2\r\n", &why) == 4);
    CHECK(why == "an array of negative length");
    // Nesting: 16 arrays deep pass, 17 do not.
    std::string deep;
    for (int i = 0; i < 16; ++i) deep += "*1\r\n";
    CHECK(passed(1000, 100, deep + ":1\r\n") == deep.size() + 4);
    CHECK(passed(1000, 100, deep + "*1\r\n", &why) == deep.size() + 3);
    CHECK(why == "arrays nested more than 16 deep");
    // Not RESP2.
    CHECK(passed(1000, 10, "+OK\r\nHTTP/1.1", &why) == 5);
    CHECK(why == "got 'H' as a reply type byte");
    CHECK(passed(1000, 10, "_\r\n", &why) == 0);  // RESP3's null
    // Once refused, nothing more passes.
    ReplyBound refused(10, 10);
    CHECK(refused.scan("+0123456789012", 14) == 10);
    CHECK(refused.scan("+OK\r\n", 5) == 0);
}
