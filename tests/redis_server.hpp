// A real redis-server for tests: started on a free loopback port and on a Unix socket in a
// fresh temporary directory, and always stopped (also if the test process dies: the server
// gets SIGKILL with its parent). No persistence unless a test asks for it.
//
// Tests that need Redis must never skip: if redis-server is missing or does not start, the
// constructor throws, and the test fails with the server's log.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keylock::test {

class RedisServer {
public:
    /// Starts a server; `extra` are more `redis-server` arguments (e.g. {"--appendonly", "yes"}).
    explicit RedisServer(std::vector<std::string> extra = {}) : extra_(std::move(extra)) {
        char tmpl[] = "/tmp/keylock-redis-XXXXXX";
        if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
        dir_ = tmpl;
        start();
    }
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;
    ~RedisServer() {
        stop();
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    int port() const noexcept { return port_; }
    const std::string& unix_socket() const noexcept { return socket_; }
    const std::string& dir() const noexcept { return dir_; }
    pid_t pid() const noexcept { return pid_; }
    bool running() const noexcept { return pid_ > 0; }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and reaps it.
    void stop() noexcept {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGCONT);  // a paused server cannot exit
        ::kill(pid_, SIGTERM);
        if (!reap(std::chrono::seconds(5))) {
            ::kill(pid_, SIGKILL);
            reap(std::chrono::seconds(5));
        }
        pid_ = -1;
    }
    /// Kills the server at once (SIGKILL), as a crash would.
    void kill() noexcept {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        reap(std::chrono::seconds(5));
        pid_ = -1;
    }
    /// Starts it again on the same port and socket (a restart: empty unless persisted).
    void restart() {
        stop();
        start(port_);
    }
    void pause() noexcept { if (pid_ > 0) ::kill(pid_, SIGSTOP); }
    void resume() noexcept { if (pid_ > 0) ::kill(pid_, SIGCONT); }

    /// Sends one inline command over TCP and returns the first reply line (e.g. "+PONG").
    std::string command(const std::string& inline_command) const {
        const int fd = connect_tcp(port_);
        if (fd < 0) throw std::runtime_error("cannot connect to redis-server on port " + std::to_string(port_));
        std::string out = inline_command + "\r\n";
        const bool sent = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(out.size());
        std::string line;
        char c = 0;
        while (sent && ::recv(fd, &c, 1, 0) == 1 && c != '\n') {
            if (c != '\r') line += c;
        }
        ::close(fd);
        return line;
    }

    /// The server's log so far (for failure messages).
    std::string log() const {
        std::ifstream in(dir_ + "/redis.log");
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }

private:
    static int connect_tcp(int port) noexcept {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd);
            return -1;
        }
        timeval tv{2, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return fd;
    }

    /// A loopback port nobody listens on now (the kernel picks it; a race with another process
    /// taking it before the server does is retried by start()).
    static int free_port() {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            if (fd >= 0) ::close(fd);
            throw std::runtime_error("cannot find a free loopback port");
        }
        ::close(fd);
        return ntohs(a.sin_port);
    }

    bool reap(std::chrono::seconds limit) noexcept {
        const auto end = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < end) {
            int status = 0;
            const pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_ || (r < 0 && errno == ECHILD)) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return false;
    }

    void start(int fixed_port = 0) {
        socket_ = dir_ + "/redis.sock";
        std::string last_log;
        for (int attempt = 0; attempt < (fixed_port != 0 ? 1 : 5); ++attempt) {
            port_ = fixed_port != 0 ? fixed_port : free_port();
            std::vector<std::string> args = {"redis-server",
                                             "--bind", "127.0.0.1",
                                             "--port", std::to_string(port_),
                                             "--unixsocket", socket_,
                                             "--unixsocketperm", "700",
                                             "--dir", dir_,
                                             "--logfile", dir_ + "/redis.log",
                                             "--save", "",
                                             "--appendonly", "no",
                                             "--daemonize", "no"};
            args.insert(args.end(), extra_.begin(), extra_.end());
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);

            const pid_t parent = ::getpid();
            pid_ = ::fork();
            if (pid_ < 0) throw std::runtime_error("fork: " + std::string(std::strerror(errno)));
            if (pid_ == 0) {
                ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test process
                if (::getppid() != parent) ::_exit(127);
                ::execvp("redis-server", argv.data());
                ::_exit(127);
            }
            const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (std::chrono::steady_clock::now() < end) {
                int status = 0;
                if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: port taken, or no redis-server
                    pid_ = -1;
                    break;
                }
                if (const int fd = connect_tcp(port_); fd >= 0) {
                    ::close(fd);
                    // A server with a password answers NOAUTH: it is up all the same.
                    const std::string pong = command("PING");
                    if (pong == "+PONG" || pong.rfind("-NOAUTH", 0) == 0) return;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            last_log = log();
            stop();
        }
        throw std::runtime_error("redis-server did not start (is it installed? scripts/install-deps.sh "
                                 "installs it). Its log:\n" + last_log);
    }

    std::vector<std::string> extra_;
    std::string dir_;
    std::string socket_;
    int port_ = 0;
    pid_t pid_ = -1;
};

}  // namespace keylock::test
