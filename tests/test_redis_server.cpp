// SPDX-License-Identifier: BSL-1.0
// The test fixture that later Redis tests stand on: a real redis-server, started and always
// stopped by the test itself. If redis-server is missing this fails; it never skips.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>

#include "redis_server.hpp"

using keylock::test::RedisServer;

namespace {

/// PING over the Unix socket; returns the reply line.
std::string ping_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    std::string line;
    if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6) {
        char c = 0;
        while (::recv(fd, &c, 1, 0) == 1 && c != '\n') {
            if (c != '\r') line += c;
        }
    }
    if (fd >= 0) ::close(fd);
    return line;
}

}  // namespace

TEST_CASE("the Redis fixture runs a real server on loopback and a Unix socket, and stops it", "[redis]") {
    std::string dir;
    {
        RedisServer server;
        dir = server.dir();
        REQUIRE(server.running());
        CHECK(server.port() > 0);
        CHECK(server.command("PING") == "+PONG");
        CHECK(ping_unix(server.unix_socket()) == "+PONG");

        // Data lives until a restart without persistence empties it.
        CHECK(server.command("SET fixture-key 1") == "+OK");
        CHECK(server.command("GET fixture-key") == "$1");
        server.restart();
        CHECK(server.command("GET fixture-key") == "$-1");

        // Paused, it does not answer (the fixture's read times out); resumed, it does.
        server.pause();
        CHECK(server.command("PING").empty());
        server.resume();
        CHECK(server.command("PING") == "+PONG");

        // Killed, the port is closed.
        server.kill();
        CHECK_FALSE(server.running());
        CHECK_THROWS(server.command("PING"));
    }
    CHECK_FALSE(std::filesystem::exists(dir));  // the temporary directory goes with the fixture

    // The destructor stops a running server, which then no longer exists.
    pid_t live = -1;
    {
        RedisServer server;
        live = server.pid();
    }
    CHECK(::kill(live, 0) == -1);
}
