// SPDX-License-Identifier: BSL-1.0
// A TCP listener on a loopback port for tests of servers that are not Redis, never answer, echo
// what they are sent, or answer with a reply that never ends.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keylock::test {

/// A TCP listener on a free loopback port that accepts nothing (connections sit in the
/// backlog) or, with `answer`, writes it to each connection it accepts and keeps them open until
/// it is destroyed; or, with Echo, answers every RESP command with an error reply that repeats
/// all that its connection has sent so far (as an old server or one that is not Redis may echo
/// its arguments: a password sent with AUTH is in every later reply); or, with Endless, answers a
/// command with `header` followed by 'x' bytes for ever (until the client closes the connection).
class FakeServer {
public:
    struct Echo {
        bool accept_auth = false;  ///< AUTH gets +OK, so that the commands after it are answered too
    };
    struct Endless {
        /// What the endless answer begins with: "$1099511627776\r\n" (a bulk string of 1 TiB),
        /// "*2147483647\r\n" (an array), "*1\r\n+" (a line without end)...
        std::string header;
        /// The command (any case) answered so ("EVAL": EVALSHA too, since keylock sends a
        /// script's first use on a connection as EVAL); empty: every command, the handshake's too. The
        /// others are answered as Redis would, roughly: AUTH, SELECT +OK, PING +PONG, EVALSHA and
        /// EVAL with the acquire script's "held for 30 s more", SUBSCRIBE and SSUBSCRIBE with
        /// their confirmation, anything else with an error.
        std::string on;
    };

    explicit FakeServer(std::string answer = {}) : answer_(std::move(answer)) { start(); }
    explicit FakeServer(Echo echo) : echo_(echo) { start(); }
    explicit FakeServer(Endless endless) : endless_(std::move(endless)) { start(); }
    FakeServer(const FakeServer&) = delete;
    FakeServer& operator=(const FakeServer&) = delete;
    ~FakeServer() {
        ::shutdown(fd_, SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
        {
            const std::lock_guard lock(mutex_);
            for (const int c : echoing_) ::shutdown(c, SHUT_RDWR);
        }
        for (std::thread& t : echoers_) t.join();
        for (const int c : echoing_) ::close(c);
        ::close(fd_);
    }
    std::uint16_t port() const { return port_; }
    /// Endless: the endless answers begun, and those the client ended by closing its connection.
    int endless_begun() const { return begun_.load(); }
    int endless_ended_by_client() const { return ended_by_client_.load(); }
    /// Endless: the most bytes written in one endless answer so far.
    std::size_t endless_most_bytes() const { return most_bytes_.load(); }

private:
    void start() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 16) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            ::close(fd_);
            throw std::runtime_error("FakeServer: cannot listen on loopback");
        }
        port_ = ntohs(a.sin_port);
        if (echo_ || endless_) {
            thread_ = std::thread([this] {
                for (;;) {  // until the destructor's shutdown() makes accept() fail
                    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
                    if (c < 0) break;
                    const std::lock_guard lock(mutex_);
                    echoing_.push_back(c);
                    echoers_.emplace_back([this, c] { echo(c); });  // or answer endlessly
                }
            });
        } else if (!answer_.empty()) {
            thread_ = std::thread([this] {
                std::vector<int> clients;
                for (;;) {  // until the destructor's shutdown() makes accept() fail
                    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
                    if (c < 0) break;
                    clients.push_back(c);
                    (void)::send(c, answer_.data(), answer_.size(), MSG_NOSIGNAL);
                }
                for (const int c : clients) ::close(c);
            });
        }
    }

    /// Reads RESP commands (arrays of bulk strings) from `c` until it closes, answering each.
    void echo(int c) {
        std::string received;  // all of it, for the replies
        std::size_t parsed = 0;
        char buf[4096];
        for (ssize_t n; (n = ::recv(c, buf, sizeof buf, 0)) > 0;) {
            received.append(buf, static_cast<std::size_t>(n));
            while (const auto command = next_command(received, parsed)) {
                if (endless_) {
                    if (!answer_endless(c, *command)) return;
                    continue;
                }
                std::string reply;
                if (echo_->accept_auth && !command->empty() &&
                    (command->front() == "AUTH" || command->front() == "auth")) {
                    reply = "+OK\r\n";
                } else {
                    reply = "-ERR you sent:";
                    for (const char ch : received) reply += ch == '\r' || ch == '\n' ? ' ' : ch;
                    reply += "\r\n";
                }
                (void)::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
            }
        }
    }

    /// Endless: answers `command` on `c`; false once the endless answer has ended.
    bool answer_endless(int c, const std::vector<std::string>& command) {
        const std::string verb = command.empty() ? std::string() : command.front();
        const auto is = [&](const char* name) { return ::strcasecmp(verb.c_str(), name) == 0; };
        const bool script =
            ::strcasecmp(endless_->on.c_str(), "EVAL") == 0 && ::strcasecmp(verb.c_str(), "EVALSHA") == 0;
        if (endless_->on.empty() || script || ::strcasecmp(verb.c_str(), endless_->on.c_str()) == 0) {
            ++begun_;
            std::size_t sent = 0;
            std::string chunk = endless_->header;
            for (;;) {
                const ssize_t n = ::send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL);
                if (n <= 0) break;  // the client closed it (or the destructor shut it down)
                sent += static_cast<std::size_t>(n);
                for (std::size_t most = most_bytes_.load();
                     sent > most && !most_bytes_.compare_exchange_weak(most, sent);) {
                }
                chunk.assign(64 * 1024, 'x');
            }
            ++ended_by_client_;
            return false;
        }
        std::string reply;
        if (is("AUTH") || is("SELECT")) {
            reply = "+OK\r\n";
        } else if (is("PING")) {
            reply = "+PONG\r\n";
        } else if (is("EVALSHA") || is("EVAL")) {
            reply = "*2\r\n:0\r\n:30000\r\n";  // held, for 30 s more
        } else if ((is("SUBSCRIBE") || is("SSUBSCRIBE")) && command.size() == 2) {
            const std::string kind = is("SUBSCRIBE") ? "subscribe" : "ssubscribe";
            reply = "*3\r\n$" + std::to_string(kind.size()) + "\r\n" + kind + "\r\n$" +
                    std::to_string(command[1].size()) + "\r\n" + command[1] + "\r\n:1\r\n";
        } else {
            reply = "-ERR not here\r\n";
        }
        (void)::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
        return true;
    }

    /// The command that begins at `at` in `in`, if all of it is there (then `at` moves past it).
    static std::optional<std::vector<std::string>> next_command(const std::string& in, std::size_t& at) {
        std::size_t p = at;
        const auto number = [&](char kind) -> std::optional<std::size_t> {
            const std::size_t eol = in.find("\r\n", p);
            if (p >= in.size() || in[p] != kind || eol == std::string::npos) return std::nullopt;
            const std::size_t value = std::stoul(in.substr(p + 1, eol - p - 1));
            p = eol + 2;
            return value;
        };
        const auto count = number('*');
        if (!count) return std::nullopt;
        std::vector<std::string> args;
        for (std::size_t i = 0; i < *count; ++i) {
            const auto len = number('$');
            if (!len || in.size() < p + *len + 2) return std::nullopt;
            args.push_back(in.substr(p, *len));
            p += *len + 2;
        }
        at = p;
        return args;
    }

    std::string answer_;
    std::optional<Echo> echo_;
    std::optional<Endless> endless_;
    std::atomic<int> begun_{0}, ended_by_client_{0};
    std::atomic<std::size_t> most_bytes_{0};
    std::mutex mutex_;
    std::vector<int> echoing_;          // the connections of echo(), closed by the destructor
    std::vector<std::thread> echoers_;  // one per connection
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

}  // namespace keylock::test
