// SPDX-License-Identifier: BSL-1.0
// What the routers of servers.hpp share: Node (one server's connections), a few helpers, and the
// factory of each router. Private to the Redis backend's servers layer:
//
//   node.cpp            Node, the helpers, Script and make_servers (which picks the router)
//   single_servers.cpp  one server: standalone, or the master that sentinels name
//   cluster_servers.cpp Redis Cluster: the slot map, MOVED/ASK/TRYAGAIN, sharded pub/sub
//   quorum_servers.cpp  Redlock: every script on every node, the answers combined
//
// Single-threaded, like Connection: everything runs on the io_context's thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "connection.hpp"
#include "redis_config.hpp"
#include "servers.hpp"

namespace keylock::redis {

/// An error reply saying `text` (what a script's handler gets when no answer came).
Reply error_reply(std::string text);

/// `base` (credentials, timeouts, database) for the server at `at`.
Endpoint endpoint_at(const Endpoint& base, const HostPort& at);

/// `numkeys key... arg...`, the tail of an EVALSHA/EVAL.
std::vector<std::string> script_args(const std::vector<std::string_view>& keys,
                                     const std::vector<std::string_view>& args);

/// A reply handler for commands whose answer does not matter (UNSUBSCRIBE, ASKING).
inline void ignore_reply(std::error_code /*ec*/, const Reply& /*reply*/) {}

/// One server: its command connection and its subscriber connection, each made again after a
/// failure, at once the first time, then after 50 ms doubling up to 1 s (jittered), until one
/// gets through the handshake.
class Node {
public:
    /// Makes the node's connections (by default, to `endpoint`).
    using Factory = std::function<std::shared_ptr<Connection>()>;

    Node(boost::asio::io_context& io, Endpoint endpoint, Factory factory = {});
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    ~Node() = default;

    /// Messages on the subscriber connection (pub/sub pushes).
    std::function<void(Reply)> on_push;
    /// A subscriber connection broke or could not connect: its subscriptions are gone.
    std::function<void()> on_subscriber_lost;

    /// The host and port it was made for (empty for the master sentinels name).
    HostPort address() const { return {endpoint_.host, endpoint_.port}; }

    /// "host:port" as configured (for a node found through sentinels: as last located).
    std::string where() const;

    /// The command connection, made if there is none (or only a failed one, back-off permitting).
    std::shared_ptr<Connection> command();

    /// Sends one command on the command connection (see command()); its handler gets the
    /// error that explains a failure (see explain()).
    void send(const std::vector<std::string_view>& argv, std::function<void(std::error_code, Reply)> handler);

    /// The subscriber connection, made if there is none (or only a failed one, back-off permitting).
    std::shared_ptr<Connection> subscriber();

    /// The command connection as it is (null if none was made yet), without making a new one.
    std::shared_ptr<Connection> command_if_any() const { return main_; }

    /// The subscriber connection if it is up, else null (nothing to unsubscribe from).
    std::shared_ptr<Connection> live_subscriber() const { return sub_ && sub_->connected() ? sub_ : nullptr; }

    /// EVALSHA `script` with `tail` (numkeys, keys, args) on the command connection; EVAL the
    /// first time the connection runs the script (which caches it on the server), so that a
    /// script's first use cannot meet NOSCRIPT and be sent again behind commands sent after it;
    /// and EVAL again if the server has lost it meanwhile (`SCRIPT FLUSH`). With `asking` (a
    /// Cluster ASK redirection), each is sent after an ASKING. `script` must outlive the answer.
    void run(const Script& script, std::vector<std::string> tail, bool asking, EvalHandler handler);

    /// Breaks both connections as a network failure would (pending commands: `unavailable`).
    void fail(const std::string& why);

    /// The same, for the connections that are not to `to`.
    void fail_unless_at(const HostPort& to, const std::string& why);

    /// Closes both connections; no callback of the node runs after this.
    void close();

private:
    struct Backoff {
        std::chrono::milliseconds delay{0};
        std::chrono::steady_clock::time_point not_before{};
    };

    void done(const std::shared_ptr<Connection>& c, std::error_code ec, Reply r, const EvalHandler& handler) const;
    std::error_code explain(const std::shared_ptr<Connection>& c, std::error_code ec) const;
    std::shared_ptr<Connection> make();
    bool may_connect(Backoff& b);

    boost::asio::io_context& io_;
    Endpoint endpoint_;
    Factory factory_;
    std::shared_ptr<Connection> main_, sub_;
    bool main_failed_ = false, sub_failed_ = false;
    std::error_code refused_;  // why main_'s handshake was refused, if it was (not: unreachable)
    Backoff main_backoff_, sub_backoff_;
    std::vector<bool> scripts_sent_;  // by Script::id: sent as EVAL on main_ (cleared when main_ is made)
    std::minstd_rand rng_;
};

// The routers, one per topology (see make_servers).
std::unique_ptr<Servers> make_single_servers(boost::asio::io_context& io, const RedisConfig& config,
                                             Servers::Events events);
std::unique_ptr<Servers> make_cluster_servers(boost::asio::io_context& io, const RedisConfig& config,
                                              Servers::Events events);
std::unique_ptr<Servers> make_quorum_servers(boost::asio::io_context& io, const RedisConfig& config,
                                             Servers::Events events, QuorumScripts scripts);

}  // namespace keylock::redis
