// SPDX-License-Identifier: BSL-1.0
// A TCP listener on a loopback port for tests of servers that are not Redis or never answer.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keylock::test {

/// A TCP listener on a free loopback port that accepts nothing (connections sit in the
/// backlog) or, with `answer`, writes it to each connection it accepts and keeps them open until
/// it is destroyed.
class FakeServer {
public:
    explicit FakeServer(std::string answer = {}) : answer_(std::move(answer)) {
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
        if (!answer_.empty()) {
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
    FakeServer(const FakeServer&) = delete;
    FakeServer& operator=(const FakeServer&) = delete;
    ~FakeServer() {
        ::shutdown(fd_, SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
        ::close(fd_);
    }
    std::uint16_t port() const { return port_; }

private:
    std::string answer_;
    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::thread thread_;
};

}  // namespace keylock::test
