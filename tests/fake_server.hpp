// SPDX-License-Identifier: BSL-1.0
// A TCP listener on a loopback port for tests of servers that are not Redis, never answer, or
// echo what they are sent.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
/// its arguments: a password sent with AUTH is in every later reply).
class FakeServer {
public:
    struct Echo {
        bool accept_auth = false;  ///< AUTH gets +OK, so that the commands after it are answered too
    };

    explicit FakeServer(std::string answer = {}) : answer_(std::move(answer)) { start(); }
    explicit FakeServer(Echo echo) : echo_(echo) { start(); }
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
        if (echo_) {
            thread_ = std::thread([this] {
                for (;;) {  // until the destructor's shutdown() makes accept() fail
                    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
                    if (c < 0) break;
                    const std::lock_guard lock(mutex_);
                    echoing_.push_back(c);
                    echoers_.emplace_back([this, c] { echo(c); });
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
    void echo(int c) const {
        std::string received;  // all of it, for the replies
        std::size_t parsed = 0;
        char buf[4096];
        for (ssize_t n; (n = ::recv(c, buf, sizeof buf, 0)) > 0;) {
            received.append(buf, static_cast<std::size_t>(n));
            while (const auto command = next_command(received, parsed)) {
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
    std::mutex mutex_;
    std::vector<int> echoing_;          // the connections of echo(), closed by the destructor
    std::vector<std::thread> echoers_;  // one per connection
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

}  // namespace keylock::test
