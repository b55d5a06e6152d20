// SPDX-License-Identifier: BSL-1.0
// Where the Redis backend's commands go: one server (standalone, or the master that sentinels
// name), a Redis Cluster (each key to the master of its slot, MOVED and ASK followed), or a
// Redlock quorum of independent masters (each script on every node, the answers combined).
//
// The backend above speaks in scripts and channels only; this layer owns the connections, the
// back-off between reconnections, the slot map, and the quorum arithmetic (one router per
// topology; node.hpp lists the files). Single-threaded, like Connection: every member function
// and every callback runs on the io_context's thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "connection.hpp"
#include "redis_config.hpp"

namespace keylock::redis {

/// A Lua script and its SHA1, for EVALSHA.
struct Script {
    std::string body;
    std::string sha;
    /// A small number of its own, the same for every Script of the same text: the process's
    /// distinct script texts are numbered from 0 as they are first made (there are a few dozen),
    /// so that a connection can note the scripts it has run in a short vector (Node::run).
    std::uint32_t id = 0;
    explicit Script(std::string text);
};

/// What a script does. A quorum combines the nodes' answers by it; the other topologies only
/// route by the first key.
enum class Op {
    acquire,        ///< replies {1, fencing token} or {0, remaining lease in ms[, 1: contended, back off that long]}
    release,        ///< replies 1 (was ours, deleted) or 0
    extend,         ///< replies 1 (was ours, renewed) or 0
    transfer,       ///< replies the new fencing token, or 0
    inspect,        ///< replies {0} or {1, value, remaining lease in ms}
    force_release,  ///< replies 1 (there was a lock) or 0
};

/// A script's outcome: `ec` when no answer came (then `reply.str` says why, naming the server but
/// never a password); otherwise the reply, which may be an error reply. `conn` is the connection
/// the script ran on, for a WAIT that must follow it there (null for a quorum).
using EvalHandler = std::function<void(std::error_code ec, Reply reply, std::shared_ptr<Connection> conn)>;

class Servers {
public:
    /// What the servers tell the backend about its subscriptions.
    struct Events {
        /// A release was published on `channel`.
        std::function<void(const std::string& channel)> message;
        /// The server ended the subscription to `channel` (its Cluster slot moved elsewhere).
        std::function<void(const std::string& channel)> unsubscribed;
        /// A subscriber connection broke or could not connect: any subscription may be gone.
        std::function<void()> notifications_lost;
    };

    explicit Servers(Events events) : events_(std::move(events)) {}
    Servers(const Servers&) = delete;
    Servers& operator=(const Servers&) = delete;
    virtual ~Servers() = default;

    /// Runs `script` with `keys` (all of one Cluster slot; routed by the first) and `args`:
    /// EVALSHA, then EVAL if the server lacks the script. `handler` is called exactly once.
    virtual void eval(Op op, const Script& script, std::vector<std::string_view> keys,
                      std::vector<std::string_view> args, EvalHandler handler) = 0;

    /// Subscribes to release notifications on `channel` (a lock key); `done` reports whether the
    /// subscription took effect (on at least one node, for a quorum).
    virtual void subscribe(const std::string& channel, std::function<void(std::error_code)> done) = 0;
    /// Ends a subscription; nothing is reported.
    virtual void unsubscribe(const std::string& channel) = 0;

    /// Closes every connection; no callback runs after this.
    virtual void close() = 0;

    /// A Redlock quorum: each node counts fencing tokens on its own, so the lock's value is the
    /// owner token alone (not `<fencing token>:<owner token>`) and a lock is never handed over
    /// in place (no Op::transfer).
    virtual bool quorum() const noexcept { return false; }

protected:
    /// Tells the backend of a pub/sub message (`[kind, channel, payload]`).
    void heard(const Reply& message) const {
        if (message.elements.size() >= 2 && events_.message) events_.message(message.elements[1].str);
    }
    void lost_notifications() const {
        if (events_.notifications_lost) events_.notifications_lost();
    }

    Events events_;
};

/// The servers `config` names. For a quorum, `acquire`, `release` and `bump` are the scripts its
/// acquisition uses (owned by the caller, which outlives the servers).
struct QuorumScripts {
    const Script* acquire = nullptr;
    const Script* release = nullptr;
    const Script* bump = nullptr;
};
std::unique_ptr<Servers> make_servers(boost::asio::io_context& io, const RedisConfig& config, Servers::Events events,
                                      QuorumScripts quorum_scripts = {});

}  // namespace keylock::redis
