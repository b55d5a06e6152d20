// SPDX-License-Identifier: BSL-1.0
// One connection to a Redis server: TCP, Unix socket or TLS, owned by Boost.Asio, with
// hiredis's RESP encoder and reply parser. Commands are pipelined: any number may be in
// flight, and their callbacks run in order as the replies arrive.
//
// Single-threaded: every member function must be called on the io_context's thread (the
// backend runs one thread per registry), and callbacks run there.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>

#include <keylock/error.hpp>

namespace keylock::redis {

/// "host:port", with an IPv6 address in brackets, for messages and as a name.
std::string host_port(const std::string& host, std::uint16_t port);

/// Where and how to connect. Built from a `redis://`, `rediss://` or `unix://` URL.
struct Endpoint {
    std::string host;  ///< TCP host name or address (empty for a Unix socket)
    std::uint16_t port = 6379;
    std::string unix_path;  ///< Unix socket path (empty for TCP)
    bool tls = false;
    std::string ca_file, cert_file, key_file;  ///< TLS files (PEM); empty = system defaults / none
    bool verify = true;                        ///< TLS: verify the server's certificate and host name
    std::string user;                          ///< ACL user (empty = "default" via password-only AUTH)
    std::string password;                      ///< never printed
    int db = 0;
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds command_timeout{5000};
    bool master_only = false;  ///< the handshake asks ROLE and refuses a replica (Sentinel)
    /// A connection that has heard nothing for this long, with no command in flight, sends a
    /// PING (whose answer must come within command_timeout); 0: never.
    std::chrono::milliseconds health_check{5000};
    /// The most one reply may take (reply_bound.hpp); a longer one fails the connection.
    std::uint64_t max_reply_bytes = std::uint64_t{64} << 20;

    /// "host:port" or the socket path, for messages (no user, no password).
    std::string where() const;

    friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

/// A reply, copied out of hiredis's reply tree.
struct Reply {
    enum class Type { string, array, integer, nil, status, error };
    Type type = Type::nil;
    long long integer = 0;
    std::string str;              ///< string, status and error replies
    std::vector<Reply> elements;  ///< array replies

    bool is_error() const noexcept { return type == Type::error; }
    bool is_nil() const noexcept { return type == Type::nil; }
};

/// Callback of a command: `ec` is set when the connection failed before the reply came (the
/// reply is then empty); an error *reply* from Redis is a successful call with `Type::error`.
using ReplyHandler = std::function<void(std::error_code ec, Reply reply)>;

class Connection : public std::enable_shared_from_this<Connection> {
public:
    /// `on_failure` runs once, when the connection breaks after having been established (I/O
    /// error, a command timing out, a reply that is not RESP); pending commands have then
    /// already failed with `errc::unavailable`.
    Connection(boost::asio::io_context& io, Endpoint endpoint);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Connects, does the TLS handshake, AUTH and SELECT, all within `connect_timeout`. The
    /// handler gets a keylock error (`unavailable`, `auth_failed`, `protocol_error`) and a
    /// message naming the endpoint but never the password.
    void connect(std::function<void(std::error_code, std::string message)> handler);

    /// Where to connect is found out first, e.g. by asking sentinels: `locate` is called by
    /// connect() (within connect_timeout) and answers with an error (and why) or a host and
    /// port, which replace the endpoint's. Set before connect().
    using Located = std::function<void(std::error_code, std::string why, std::string host, std::uint16_t port)>;
    void locate_with(std::function<void(Located)> locate) { locate_ = std::move(locate); }

    /// Sends one command (binary-safe arguments). Commands sent before the connection is up
    /// wait for it.
    void send(const std::vector<std::string_view>& argv, ReplyHandler handler);

    /// Called once when an established connection breaks (see above), with a message. That
    /// includes a connection found dead by its health check (Endpoint::health_check) and one
    /// whose server sent a reply larger than the bounds of reply_bound.hpp (`protocol_error`).
    void on_failure(std::function<void(std::error_code, std::string)> handler) { on_failure_ = std::move(handler); }

    /// For a subscriber connection: pub/sub messages (arrays whose first element is "message"
    /// or "smessage", and a "sunsubscribe" that no SUNSUBSCRIBE asked for: Redis Cluster ends
    /// shard-channel subscriptions itself when their slot moves) go to `handler` instead of
    /// answering a command.
    void on_push(std::function<void(Reply)> handler) { on_push_ = std::move(handler); }

    /// Closes the connection; pending commands fail with `errc::cancelled`.
    void close();

    /// Breaks the connection as a network failure would: pending commands fail with
    /// `unavailable`, on_failure runs (if it was established), failure() says `why`. For an
    /// owner that learns the server is no longer the right one (e.g. a failover).
    void fail_now(const std::string& why) { fail(make_error_code(errc::unavailable), why); }

    /// The endpoint, with the host and port found by the locator once it has answered.
    const Endpoint& endpoint() const noexcept { return endpoint_; }

    bool connected() const noexcept { return state_ == State::ready; }
    /// Why the connection failed (names the endpoint, never the password); empty until then.
    const std::string& failure() const noexcept { return failure_; }
    std::size_t pending() const noexcept { return pending_.size(); }

private:
    struct Impl;
    enum class State { idle, connecting, ready, failed, closed };
    struct Pending {
        ReplyHandler handler;
        std::chrono::steady_clock::time_point deadline;
        std::string unsubscribing;  ///< for a SUNSUBSCRIBE: its channel (see on_bytes)
    };

    struct Connect;  // connecting, step by step (connection.cpp)

    void fail(std::error_code ec, const std::string& message);
    void handshake();
    void handshake_answered(const std::string& verb, const Reply& r);
    void start_write();
    void start_read();
    void read_failed(boost::system::error_code ec);
    void write_failed(boost::system::error_code ec);
    void arm_timer();
    void arm_health(std::chrono::steady_clock::time_point at);
    void on_bytes(const char* data, std::size_t n);
    void on_replies(const char* data, std::size_t n);

    std::unique_ptr<Impl> impl_;
    Endpoint endpoint_;
    State state_ = State::idle;
    std::deque<Pending> pending_;  // commands written (or queued), oldest first
    std::string out_;              // formatted commands not yet handed to a write
    std::string writing_;          // the buffer of the write in flight
    bool write_in_flight_ = false;
    std::function<void(std::error_code, std::string)> on_failure_;
    std::function<void(Reply)> on_push_;
    std::function<void(Located)> locate_;
    std::string failure_;
};

}  // namespace keylock::redis
