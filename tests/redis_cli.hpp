// SPDX-License-Identifier: BSL-1.0
// Talking to test servers from a test: redis-cli (for its cluster tools and for readable
// output) and a small RESP client (binary-safe arguments, whole replies, several commands on one
// connection, as ASKING needs).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace keylock::test {

/// Runs a shell command and returns its exit status (-1 if it did not exit) and its output
/// (stdout and stderr).
inline std::pair<int, std::string> run(const std::string& command) {
    FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr) return {-1, "popen failed: " + command};
    std::string out;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, pipe) != nullptr) out += buf;
    const int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

/// Runs redis-cli against a loopback port and returns its output (every line).
inline std::string cli(int port, const std::string& args) {
    return run("redis-cli -p " + std::to_string(port) + " " + args).second;
}

/// The value of `field` in the flat field/value list redis-cli prints (e.g. for SENTINEL MASTER).
inline std::string field(const std::string& listing, const std::string& name) {
    std::istringstream in(listing);
    std::string line;
    while (std::getline(in, line)) {
        if (line == name && std::getline(in, line)) return line;
    }
    return {};
}

/// The value of `name` in an INFO or CLUSTER INFO text (`name:value` lines), or "".
inline std::string info_field(const std::string& info, const std::string& name) {
    std::istringstream in(info);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ':') {
            return line.substr(name.size() + 1);
        }
    }
    return {};
}

/// A RESP2 reply.
struct Reply {
    enum class Type { status, error, integer, bulk, nil, array };
    Type type = Type::nil;
    std::string str;  ///< status, error (without the '-') or bulk string
    long long integer = 0;
    std::vector<Reply> elements;

    bool is_error() const noexcept { return type == Type::error; }
    /// One line for messages: "OK", "-ERR …", "5", "(nil)", "[a, b]".
    std::string text() const {
        switch (type) {
            case Type::status: return str;
            case Type::error: return "-" + str;
            case Type::integer: return std::to_string(integer);
            case Type::bulk: return str;
            case Type::nil: return "(nil)";
            case Type::array: {
                std::string s = "[";
                for (std::size_t i = 0; i < elements.size(); ++i) s += (i ? ", " : "") + elements[i].text();
                return s + "]";
            }
        }
        return {};
    }
};

/// Sends `commands` on one new connection to 127.0.0.1:`port`, in order, and returns their
/// replies. Throws std::runtime_error if it cannot connect or a reply does not come within
/// `timeout` (a paused server).
inline std::vector<Reply> call_all(int port, const std::vector<std::vector<std::string>>& commands,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("socket failed");
    struct Closer {
        int fd;
        explicit Closer(int f) : fd(f) {}
        Closer(const Closer&) = delete;
        Closer& operator=(const Closer&) = delete;
        ~Closer() { ::close(fd); }
    } closer(fd);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port));
    }
    std::string out;
    for (const auto& args : commands) {
        out.append("*").append(std::to_string(args.size())).append("\r\n");
        for (const auto& arg : args)
            out.append("$").append(std::to_string(arg.size())).append("\r\n").append(arg).append("\r\n");
    }
    for (std::size_t sent = 0; sent < out.size();) {
        const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) throw std::runtime_error("cannot send to 127.0.0.1:" + std::to_string(port));
        sent += static_cast<std::size_t>(n);
    }

    std::string in;
    std::size_t pos = 0;
    auto fail = [&](const char* why) {
        return std::runtime_error(std::string(why) + " from 127.0.0.1:" + std::to_string(port));
    };
    auto fill = [&] {
        char buf[16384];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) throw fail(n == 0 ? "connection closed before the reply" : "no reply in time");
        in.append(buf, static_cast<std::size_t>(n));
    };
    auto line = [&] {
        std::size_t end;
        while ((end = in.find("\r\n", pos)) == std::string::npos) fill();
        std::string l = in.substr(pos, end - pos);
        pos = end + 2;
        return l;
    };
    auto parse = [&](auto& self) -> Reply {
        const std::string l = line();
        if (l.empty()) throw fail("an empty reply line");
        Reply r;
        const std::string rest = l.substr(1);
        switch (l[0]) {
            case '+':
                r.type = Reply::Type::status;
                r.str = rest;
                break;
            case '-':
                r.type = Reply::Type::error;
                r.str = rest;
                break;
            case ':':
                r.type = Reply::Type::integer;
                r.integer = std::stoll(rest);
                break;
            case '$': {
                const long long n = std::stoll(rest);
                if (n < 0) break;  // nil
                while (in.size() < pos + static_cast<std::size_t>(n) + 2) fill();
                r.type = Reply::Type::bulk;
                r.str = in.substr(pos, static_cast<std::size_t>(n));
                pos += static_cast<std::size_t>(n) + 2;
                break;
            }
            case '*': {
                const long long n = std::stoll(rest);
                if (n < 0) break;  // nil
                r.type = Reply::Type::array;
                for (long long i = 0; i < n; ++i) r.elements.push_back(self(self));
                break;
            }
            default: throw fail("a reply that is not RESP2");
        }
        return r;
    };
    std::vector<Reply> replies;
    for (std::size_t i = 0; i < commands.size(); ++i) replies.push_back(parse(parse));
    return replies;
}

/// One command (arguments binary-safe) and its reply; throws as call_all().
inline Reply call(int port, const std::vector<std::string>& args,
                  std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    return call_all(port, {args}, timeout).front();
}

}  // namespace keylock::test
