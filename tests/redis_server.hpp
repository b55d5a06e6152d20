// SPDX-License-Identifier: BSL-1.0
// A real redis-server for tests: started on a free loopback port and on a Unix socket in a
// fresh temporary directory, and always stopped (also if the test process dies: the server
// gets SIGKILL with its parent). No persistence unless a test asks for it.
//
// Opt-in TLS (RedisServer(RedisServer::Tls{})): the fixture makes throwaway certificates with the
// openssl command-line tool in the server's directory (or takes those of a deployment, made once
// per test binary: shared_certificates()) and adds a TLS port next to the plain one (which stays,
// so tests reach both and the readiness check needs no TLS client). A TLS server replicates, and
// a TLS sentinel or cluster node talks to its peers, over TLS, presenting the client certificate.
//
// Opt-in Redis Cluster mode (RedisServer(RedisServer::Cluster{})): a node with `--cluster-enabled
// yes`, its nodes.conf in its directory (kept across restart(), so a restarted node rejoins its
// cluster), its cluster bus on a free port of its own (`--cluster-port`, not port+10000, which
// may be taken or past 65535). It belongs to no cluster until told (tests/topology.hpp).
//
// Tests that need Redis must never skip: if redis-server (or, for TLS, openssl) is missing or
// does not start, the constructor throws, and the test fails with the server's (or openssl's) log.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
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
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keylock::test {

class RedisServer {
public:
    /// How a TLS server is set up. Its members are enums, not bools, so that a braced list of
    /// strings (`RedisServer({"--appendonly", "yes"})`) can never be taken for a `Tls`.
    struct Tls {
        /// `optional`: a client may present a certificate (then it must be signed by ca_file());
        /// `required`: `--tls-auth-clients yes`, a client without one is refused.
        enum class ClientAuth { optional, required };
        /// `localhost`: the certificate for IP 127.0.0.1 and DNS localhost; `wrong_name`: one for
        /// "wrong.example" only, signed by the same CA (for host-name verification tests).
        enum class ServerCert { localhost, wrong_name };
        ClientAuth client_auth = ClientAuth::optional;
        ServerCert server_cert = ServerCert::localhost;
        /// A directory with the certificates in "tls/" (shared_certificates()): one CA for every
        /// server of a deployment. Empty: the server makes its own.
        std::string certificates = {};
    };

    /// A sentinel instead of a server (`redis-server sentinel.conf --sentinel`), watching one master.
    struct Sentinel {
        int master_port = 0;  ///< on 127.0.0.1
        std::string master_name = "mymaster";
        int quorum = 2;
        int down_after_ms = 1000;  ///< how long the master may not answer before it is down
        int failover_timeout_ms = 3000;
        std::string auth_pass;  ///< the master's password, if it has one
    };

    /// A Redis Cluster node: `--cluster-enabled yes`, `--cluster-config-file <dir>/nodes.conf`,
    /// `--cluster-node-timeout`, `--cluster-port cluster_port()`. A duration, not an int, so that a
    /// braced list of strings can never be taken for a `Cluster`.
    struct Cluster {
        std::chrono::milliseconds node_timeout{2000};
    };

    /// Starts a sentinel (port() is its port; command() talks to it); `extra` as below.
    explicit RedisServer(Sentinel sentinel, std::vector<std::string> extra = {})
        : extra_(std::move(extra)), sentinel_(std::move(sentinel)) {
        init();
    }
    /// Starts a sentinel that also listens with TLS on tls_port() and reaches the servers it
    /// watches (and the other sentinels) over TLS (`tls-replication yes`): give it the master's
    /// TLS port as Sentinel::master_port. `extra` as below.
    RedisServer(Sentinel sentinel, Tls tls, std::vector<std::string> extra = {})
        : extra_(std::move(extra)), tls_(std::move(tls)), sentinel_(std::move(sentinel)) {
        init();
    }

    /// Starts a server; `extra` are more `redis-server` arguments (e.g. {"--appendonly", "yes"}).
    explicit RedisServer(std::vector<std::string> extra = {}) : extra_(std::move(extra)) { init(); }
    /// Starts a server that also listens with TLS on tls_port(); see the file accessors below.
    explicit RedisServer(Tls tls, std::vector<std::string> extra = {}) : extra_(std::move(extra)), tls_(tls) { init(); }
    /// Starts a Redis Cluster node (in no cluster yet); `extra` as above.
    explicit RedisServer(Cluster cluster, std::vector<std::string> extra = {})
        : extra_(std::move(extra)), cluster_(cluster) {
        init();
    }
    /// Starts a Redis Cluster node whose clients and cluster bus are TLS (`tls-cluster yes`);
    /// CLUSTER SLOTS and MOVED name the nodes' TLS ports to TLS clients.
    RedisServer(Cluster cluster, Tls tls, std::vector<std::string> extra = {})
        : extra_(std::move(extra)), tls_(std::move(tls)), cluster_(cluster) {
        init();
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
    /// Cluster mode only: the cluster bus port (0 otherwise).
    int cluster_port() const noexcept { return cluster_port_; }
    bool running() const noexcept { return pid_ > 0; }

    // TLS mode only (the file accessors throw std::logic_error otherwise). All files are PEM, in
    // dir(), valid for a week; keys are EC P-256 (fast to make) and unencrypted.
    bool tls() const noexcept { return tls_.has_value(); }
    /// The TLS port (0 without TLS); port() keeps serving plain RESP.
    int tls_port() const noexcept { return tls_port_; }
    /// The CA that signed the server and client certificates (what a client should trust).
    std::string ca_file() const { return tls_file("ca.crt"); }
    /// The certificate the server presents (for 127.0.0.1 and localhost) and its key.
    std::string server_cert_file() const { return tls_file("server.crt"); }
    std::string server_key_file() const { return tls_file("server.key"); }
    /// A certificate for "wrong.example" only (CN and subjectAltName), signed by ca_file(); the
    /// server presents it with Tls::ServerCert::wrong_name.
    std::string wrong_name_cert_file() const { return tls_file("wrong-name.crt"); }
    std::string wrong_name_key_file() const { return tls_file("wrong-name.key"); }
    /// A client certificate signed by ca_file(): accepted with Tls::ClientAuth::required.
    std::string client_cert_file() const { return tls_file("client.crt"); }
    std::string client_key_file() const { return tls_file("client.key"); }
    /// An unrelated CA: trusting only it, a client must refuse the server.
    std::string other_ca_file() const { return tls_file("other-ca.crt"); }
    /// A client certificate signed by other_ca_file(): the server must refuse it.
    std::string other_client_cert_file() const { return tls_file("other-client.crt"); }
    std::string other_client_key_file() const { return tls_file("other-client.key"); }
    /// Makes every certificate above in `dir`/tls, as a TLS server does in its own dir(); for
    /// shared_certificates().
    static void make_certificates_in(const std::string& dir) { make_certificates(dir); }

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
    /// Starts it again on the same ports and socket, with the same certificates (a restart:
    /// empty unless persisted).
    void restart() {
        stop();
        start(port_, tls_port_, cluster_port_);
    }
    /// Stops the server (SIGSTOP) and returns once the kernel reports it stopped: the signal
    /// alone is delivered asynchronously, and a server still running on the other CPU could
    /// answer a command sent right after (at most 2 s of waiting).
    void pause() noexcept {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGSTOP);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        while (std::chrono::steady_clock::now() < until) {
            std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
            std::string line;
            std::getline(stat, line);
            const auto paren = line.rfind(')');  // "pid (comm) state ...": comm may hold spaces
            if (!stat || paren == std::string::npos || paren + 2 >= line.size()) return;
            if (line[paren + 2] == 'T' || line[paren + 2] == 't') return;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    }
    void resume() noexcept {
        if (pid_ > 0) ::kill(pid_, SIGCONT);
    }

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
    /// Makes the directory, the certificates (TLS mode) and starts the server. A constructor
    /// that throws runs no destructor, so this cleans up itself.
    void init() {
        char tmpl[] = "/tmp/keylock-redis-XXXXXX";
        if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
        dir_ = tmpl;
        try {
            if (tls_ && tls_->certificates.empty()) make_certificates(dir_);
            start();
        } catch (...) {
            stop();
            std::error_code ignored;
            std::filesystem::remove_all(dir_, ignored);
            throw;
        }
    }

    std::string tls_file(const char* name) const {
        if (!tls_) throw std::logic_error("RedisServer: TLS files exist only with RedisServer::Tls");
        return (tls_->certificates.empty() ? dir_ : tls_->certificates) + "/tls/" + name;
    }

    /// Runs `openssl args...` (no shell, so no quoting: paths are single arguments) with stdin
    /// from /dev/null (it must never wait for a prompt) and its output in a log file; throws
    /// with that output unless it exits with 0.
    static void openssl(const std::string& dir, std::vector<std::string> args) {
        const std::string log_path = dir + "/tls/openssl.log";
        args.insert(args.begin(), "openssl");
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);

        std::string command;
        for (const auto& a : args) command += (command.empty() ? "" : " ") + a;

        // posix_spawn rather than fork: nothing of this (possibly multithreaded) process runs
        // in the child, and a missing binary is an error code here, not an exit status.
        posix_spawn_file_actions_t actions;
        if (::posix_spawn_file_actions_init(&actions) != 0) throw std::runtime_error("posix_spawn_file_actions_init");
        int spawned = ::posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        if (spawned == 0) {
            spawned = ::posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                                         O_WRONLY | O_CREAT | O_TRUNC, 0600);
        }
        if (spawned == 0) spawned = ::posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
        pid_t pid = -1;
        if (spawned == 0) spawned = ::posix_spawnp(&pid, "openssl", &actions, nullptr, argv.data(), environ);
        ::posix_spawn_file_actions_destroy(&actions);
        if (spawned != 0) {
            throw std::runtime_error("cannot run `" + command + "`: " + std::strerror(spawned) +
                                     " (is openssl installed? Debian: apt-get install openssl)");
        }
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) throw std::runtime_error("waitpid(openssl): " + std::string(std::strerror(errno)));
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::ifstream in(log_path);
            std::stringstream output;
            output << in.rdbuf();
            throw std::runtime_error("`" + command + "` failed (" +
                                     (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                                        : "signal " + std::to_string(WTERMSIG(status))) +
                                     "):\n" + output.str());
        }
    }

    /// A CA: a key and a self-signed certificate, `<name>.key` and `<name>.crt`.
    static void make_ca(const std::string& dir, const std::string& name, const std::string& subject) {
        const std::string base = dir + "/tls/" + name;
        openssl(dir, {"req", "-x509", "-config", dir + "/tls/openssl.cnf", "-extensions", "ca", "-newkey", "ec",
                      "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", base + ".key", "-out", base + ".crt",
                      "-days", "7", "-subj", subject});
    }

    /// A key and a certificate signed by the CA `ca`, with the extensions of config section
    /// `extensions`, in one run (`req -CA`, OpenSSL 3.0+: each run costs ~40 ms of start-up);
    /// serials only need to differ among one CA's certificates.
    static void make_leaf(const std::string& top, const std::string& name, const std::string& ca,
                          const std::string& subject, const std::string& extensions, int serial) {
        const std::string dir = top + "/tls/";
        const std::string base = dir + name;
        openssl(top, {"req",         "-x509",
                      "-config",     dir + "openssl.cnf",
                      "-extensions", extensions,
                      "-CA",         dir + ca + ".crt",
                      "-CAkey",      dir + ca + ".key",
                      "-set_serial", std::to_string(serial),
                      "-newkey",     "ec",
                      "-pkeyopt",    "ec_paramgen_curve:P-256",
                      "-nodes",      "-keyout",
                      base + ".key", "-out",
                      base + ".crt", "-days",
                      "7",           "-subj",
                      subject});
    }

    /// Every certificate a TLS test needs, made once per fixture (restart() reuses them). Our
    /// own config file, so that the system's openssl.cnf (or $OPENSSL_CONF) cannot change what
    /// is made.
    static void make_certificates(const std::string& dir) {
        std::filesystem::create_directory(dir + "/tls");
        {
            std::ofstream cnf(dir + "/tls/openssl.cnf");
            cnf << "[req]\n"
                   "distinguished_name = dn\n"
                   "prompt = no\n"
                   "[dn]\n"
                   "[ca]\n"
                   "basicConstraints = critical, CA:TRUE\n"
                   "keyUsage = critical, keyCertSign, cRLSign\n"
                   "subjectKeyIdentifier = hash\n"
                   "[server]\n"
                   "basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = serverAuth\n"
                   "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                   "[wrong_name]\n"
                   "basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = serverAuth\n"
                   "subjectAltName = DNS:wrong.example\n"
                   "[client]\n"
                   "basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = clientAuth\n";
            if (!cnf.flush()) throw std::runtime_error("cannot write " + dir + "/tls/openssl.cnf");
        }
        make_ca(dir, "ca", "/CN=keylock test CA");
        make_ca(dir, "other-ca", "/CN=keylock unrelated test CA");
        make_leaf(dir, "server", "ca", "/CN=localhost", "server", 1);
        make_leaf(dir, "wrong-name", "ca", "/CN=wrong.example", "wrong_name", 2);
        make_leaf(dir, "client", "ca", "/CN=keylock test client", "client", 3);
        make_leaf(dir, "other-client", "other-ca", "/CN=keylock unrelated test client", "client", 1);
    }

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

    void start(int fixed_port = 0, int fixed_tls_port = 0, int fixed_cluster_port = 0) {
        socket_ = dir_ + "/redis.sock";
        std::string last_log;
        for (int attempt = 0; attempt < (fixed_port != 0 ? 1 : 5); ++attempt) {
            port_ = fixed_port != 0 ? fixed_port : free_port();
            if (tls_) {
                // Both ports were free when picked; the kernel may hand out the same one twice.
                tls_port_ = fixed_tls_port;
                while (tls_port_ == 0 || tls_port_ == port_) tls_port_ = free_port();
            }
            if (cluster_) {
                cluster_port_ = fixed_cluster_port;
                while (cluster_port_ == 0 || cluster_port_ == port_ || cluster_port_ == tls_port_) {
                    cluster_port_ = free_port();
                }
            }
            std::vector<std::string> args = {
                "redis-server", "--bind",    "127.0.0.1",         "--port", std::to_string(port_),
                "--unixsocket", socket_,     "--unixsocketperm",  "700",    "--dir",
                dir_,           "--logfile", dir_ + "/redis.log", "--save", "",
                "--appendonly", "no",        "--daemonize",       "no"};
            const std::size_t common = args.size();  // what a sentinel does not take: the TLS arguments follow
            if (tls_) {
                const bool wrong_name = tls_->server_cert == Tls::ServerCert::wrong_name;
                const bool required = tls_->client_auth == Tls::ClientAuth::required;
                args.insert(args.end(), {"--tls-port", std::to_string(tls_port_), "--tls-cert-file",
                                         wrong_name ? wrong_name_cert_file() : server_cert_file(), "--tls-key-file",
                                         wrong_name ? wrong_name_key_file() : server_key_file(), "--tls-ca-cert-file",
                                         ca_file(), "--tls-auth-clients", required ? "yes" : "optional"});
                // Its own connections (a replica's to its master, the cluster bus) over TLS, with
                // the client certificate (the server's is for serverAuth only).
                args.insert(args.end(), {"--tls-replication", "yes", "--tls-client-cert-file", client_cert_file(),
                                         "--tls-client-key-file", client_key_file()});
                if (cluster_) args.insert(args.end(), {"--tls-cluster", "yes"});
            }
            if (cluster_) {
                // A bus port taken meanwhile makes the server exit: retried like the port.
                args.insert(args.end(), {"--cluster-enabled", "yes", "--cluster-config-file", dir_ + "/nodes.conf",
                                         "--cluster-node-timeout", std::to_string(cluster_->node_timeout.count()),
                                         "--cluster-port", std::to_string(cluster_port_)});
            }
            if (sentinel_) {
                // Its own config file (which it rewrites as it learns of replicas and failovers).
                const std::string conf = dir_ + "/sentinel.conf";
                if (fixed_port == 0) {
                    const auto& c = *sentinel_;
                    std::ofstream out(conf);
                    out << "sentinel monitor " << c.master_name << " 127.0.0.1 " << c.master_port << " " << c.quorum
                        << "\nsentinel down-after-milliseconds " << c.master_name << " " << c.down_after_ms
                        << "\nsentinel failover-timeout " << c.master_name << " " << c.failover_timeout_ms
                        << "\nsentinel parallel-syncs " << c.master_name << " 1\n";
                    if (!c.auth_pass.empty())
                        out << "sentinel auth-pass " << c.master_name << " " << c.auth_pass << "\n";
                    if (!out.flush()) throw std::runtime_error("cannot write " + conf);
                }
                std::vector<std::string> tls_args;  // as above, without the Unix socket and cluster
                tls_args.assign(args.begin() + static_cast<std::ptrdiff_t>(common), args.end());
                args = {"redis-server",
                        conf,
                        "--sentinel",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        std::to_string(port_),
                        "--dir",
                        dir_,
                        "--logfile",
                        dir_ + "/redis.log",
                        "--daemonize",
                        "no"};
                args.insert(args.end(), tls_args.begin(), tls_args.end());
            }
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
                    // Redis opens every listener before it serves any, so the TLS port is open
                    // by now; checked all the same, as a cheap guard against a silent change.
                    const int tls_fd = tls_ ? connect_tcp(tls_port_) : -1;
                    if (tls_fd >= 0) ::close(tls_fd);
                    if ((pong == "+PONG" || pong.rfind("-NOAUTH", 0) == 0) && (!tls_ || tls_fd >= 0)) return;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            last_log = log();
            stop();
        }
        throw std::runtime_error("redis-server did not start (is it installed? scripts/install-deps.sh "
                                 "installs it). Its log:\n" +
                                 last_log);
    }

    std::vector<std::string> extra_;
    std::optional<Tls> tls_;
    std::optional<Sentinel> sentinel_;
    std::optional<Cluster> cluster_;
    std::string dir_;
    std::string socket_;
    int port_ = 0;
    int tls_port_ = 0;
    int cluster_port_ = 0;
    pid_t pid_ = -1;
};

/// Certificates made once per test binary (in a directory removed at exit), for deployments of
/// TLS servers that share one CA: pass shared_certificates() as RedisServer::Tls::certificates.
inline const std::string& shared_certificates() {
    struct Dir {
        std::string path;
        Dir() {
            char tmpl[] = "/tmp/keylock-certs-XXXXXX";
            if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
            path = tmpl;
            RedisServer::make_certificates_in(path);
        }
        Dir(const Dir&) = delete;
        Dir& operator=(const Dir&) = delete;
        ~Dir() {
            std::error_code ignored;
            std::filesystem::remove_all(path, ignored);
        }
    };
    static const Dir dir;
    return dir.path;
}

/// The registry URL of a server listening on loopback `port`, with `query` as its options
/// (e.g. "lease=1s&connect_timeout=300ms").
inline std::string url(int port, const std::string& query = "") {
    return "redis://127.0.0.1:" + std::to_string(port) + (query.empty() ? "" : "/?" + query);
}
inline std::string url(const RedisServer& server, const std::string& query = "") { return url(server.port(), query); }

}  // namespace keylock::test
