// SPDX-License-Identifier: BSL-1.0
// Redis Cluster: each script to the master of its first key's slot, MOVED, ASK and TRYAGAIN
// followed, the slot map refreshed from CLUSTER SLOTS; notifications by sharded pub/sub (see
// servers.hpp, node.hpp, docs/design.md).
#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/error.hpp>

#include "node.hpp"
#include "replies.hpp"
#include "slots.hpp"
#include "src/config.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

/// Where a MOVED or ASK error sends a command.
struct Redirect {
    std::uint16_t slot = 0;
    HostPort to;  ///< an empty host means the node that answered
};

/// Parses "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>".
std::optional<Redirect> parse_redirect(std::string_view error) {
    const auto first = error.find(' ');
    const auto second = first == std::string_view::npos ? first : error.find(' ', first + 1);
    if (second == std::string_view::npos) return std::nullopt;
    const auto slot = detail::parse_size(error.substr(first + 1, second - first - 1));
    const std::string_view address = error.substr(second + 1);
    const auto colon = address.rfind(':');
    if (!slot || *slot >= slot_count || colon == std::string_view::npos) return std::nullopt;
    const auto port = parse_port(address.substr(colon + 1));
    if (!port) return std::nullopt;
    return Redirect{static_cast<std::uint16_t>(*slot), {std::string(address.substr(0, colon)), *port}};
}

class ClusterServers final : public Servers {
public:
    ClusterServers(asio::io_context& io, RedisConfig config, Events events)
        : Servers(std::move(events)),
          io_(io),
          config_(std::move(config)),
          slots_(slot_count, nullptr),
          refresh_timer_(io) {
        asio::post(io_, [this] { refresh(); });
    }

    void eval(Op /*op*/, const Script& script, std::vector<std::string_view> keys, std::vector<std::string_view> args,
              EvalHandler handler) override {
        auto cmd = std::make_shared<Command>();
        cmd->script = &script;
        cmd->tail = script_args(keys, args);
        cmd->slot = key_slot(keys.front());
        cmd->handler = std::move(handler);
        route(cmd);
    }

    void subscribe(const std::string& channel, std::function<void(std::error_code)> done) override {
        with_map([this, channel, done = std::move(done)](std::error_code ec) mutable {
            if (ec) return done(ec);
            Node* n = slots_[key_slot(channel)];
            if (n == nullptr) {
                schedule_refresh();
                return done(make_error_code(errc::unavailable));
            }
            ssubscribe(channel, n, std::move(done), 0);
        });
    }

    void unsubscribe(const std::string& channel) override {
        auto it = subs_.find(channel);
        if (it == subs_.end()) return;
        Node* n = it->second;
        subs_.erase(it);
        if (auto sub = n->live_subscriber()) sub->send({"SUNSUBSCRIBE", channel}, ignore_reply);
    }

    void close() override {
        closed_ = true;
        refresh_timer_.cancel();
        for (auto& [name, n] : nodes_) n->close();
        for (auto& n : retired_) n->close();
        map_waiters_.clear();
    }

private:
    struct Command {
        const Script* script = nullptr;
        std::vector<std::string> tail;
        std::uint16_t slot = 0;
        int redirects = 0;
        int retries = 0;
        EvalHandler handler;
    };

    static constexpr int kMaxRedirects = 5;
    static constexpr int kMaxRetries = 50;  // TRYAGAIN, 20 ms apart: a migration's key moves take ~1 s
    static constexpr std::chrono::milliseconds kTryAgain{20};
    static constexpr std::chrono::milliseconds kMinRefreshGap{100};

    /// The node at `at`, made on first use.
    Node& node(const HostPort& at) {
        auto& slot = nodes_[at.where()];
        if (!slot) {
            slot = std::make_unique<Node>(io_, endpoint_at(config_.endpoint, at));
            Node* n = slot.get();
            n->on_push = [this, n](const Reply& r) { on_push(n, r); };
            n->on_subscriber_lost = [this, n] {
                std::erase_if(subs_, [n](const auto& entry) { return entry.second == n; });
                lost_notifications();
            };
        }
        return *slot;
    }

    /// The node a MOVED or ASK error from `replier` sends us to (a MOVED also corrects the slot
    /// map at once and schedules a refresh), or null if `error` is no redirection.
    Node* redirected(const std::string& error, const Node& replier) {
        const bool moved = error.starts_with("MOVED ");
        if (!moved && !error.starts_with("ASK ")) return nullptr;
        auto redirect = parse_redirect(error);
        if (!redirect) return nullptr;
        HostPort& to = redirect->to;
        if (to.host.empty()) to.host = replier.address().host;  // "the node that answered"
        Node& n = node(to);
        if (moved) {
            slots_[redirect->slot] = &n;
            schedule_refresh();
        }
        return &n;
    }

    void on_push(Node* n, const Reply& r) {
        if (r.elements.size() < 2) return;
        const std::string& kind = r.elements[0].str;
        const std::string& channel = r.elements[1].str;
        if (kind == "sunsubscribe") {
            // The slot moved away from this node: the subscription is gone.
            auto it = subs_.find(channel);
            if (it == subs_.end() || it->second != n) return;
            subs_.erase(it);
            schedule_refresh();
            if (events_.unsubscribed) events_.unsubscribed(channel);
            return;
        }
        heard(r);
    }

    /// Calls `then` once the slot map is known (at once if it is), or with the error that kept
    /// every node from giving it.
    void with_map(std::function<void(std::error_code)> then) {
        if (have_map_) return then({});
        map_waiters_.push_back(std::move(then));
        refresh();
    }

    void route(const std::shared_ptr<Command>& cmd) {
        if (!have_map_) {
            with_map([this, cmd](std::error_code ec) {
                if (!ec) return route(cmd);
                cmd->handler(ec, error_reply(map_error_), nullptr);
            });
            return;
        }
        Node* n = slots_[cmd->slot];
        if (n == nullptr) {
            schedule_refresh();
            cmd->handler(make_error_code(errc::unavailable),
                         error_reply("slot " + std::to_string(cmd->slot) + " has no master in the cluster's slot map"),
                         nullptr);
            return;
        }
        send(cmd, n, false);
    }

    void send(const std::shared_ptr<Command>& cmd, Node* n, bool asking) {
        n->run(*cmd->script, cmd->tail, asking,
               [this, cmd, n, asking](std::error_code ec, Reply r, std::shared_ptr<Connection> conn) {
                   if (closed_) return;
                   if (ec) {
                       schedule_refresh();  // a failed master: its replica may be promoted by now
                       return cmd->handler(ec, std::move(r), std::move(conn));
                   }
                   if (r.is_error()) {
                       const bool redirect = r.str.starts_with("MOVED ") || r.str.starts_with("ASK ");
                       if (redirect) {
                           Node* to = redirected(r.str, *n);
                           if (to == nullptr || ++cmd->redirects > kMaxRedirects) {
                               return cmd->handler(make_error_code(errc::unavailable),
                                                   error_reply("the cluster keeps redirecting (last: " + r.str + ")"),
                                                   std::move(conn));
                           }
                           return send(cmd, to, r.str.starts_with("ASK "));
                       }
                       if (r.str.starts_with("TRYAGAIN") && ++cmd->retries <= kMaxRetries) {
                           // A slot being migrated, with our keys on both sides for a moment.
                           auto timer = std::make_shared<asio::steady_timer>(io_, kTryAgain);
                           timer->async_wait([this, cmd, n, asking, timer](boost::system::error_code e) {
                               if (!e && !closed_) send(cmd, n, asking);
                           });
                           return;
                       }
                       if (r.str.starts_with("CLUSTERDOWN") || r.str.starts_with("TRYAGAIN")) {
                           schedule_refresh();
                           return cmd->handler(make_error_code(errc::unavailable),
                                               error_reply("Redis at " + n->where() + ": " + r.str), std::move(conn));
                       }
                   }
                   cmd->handler(ec, std::move(r), std::move(conn));
               });
    }

    void ssubscribe(const std::string& channel, Node* n, std::function<void(std::error_code)> done, int redirects) {
        subs_[channel] = n;
        n->subscriber()->send({"SSUBSCRIBE", channel}, [this, channel, n, redirects, done = std::move(done)](
                                                           std::error_code ec, const Reply& r) mutable {
            if (closed_) return;
            auto forget = [&] {
                if (auto it = subs_.find(channel); it != subs_.end() && it->second == n) subs_.erase(it);
            };
            if (ec) {
                forget();
                return done(ec);
            }
            if (r.is_error()) {
                forget();
                Node* to = r.str.starts_with("MOVED ") ? redirected(r.str, *n) : nullptr;
                if (to != nullptr && redirects < kMaxRedirects) {
                    return ssubscribe(channel, to, std::move(done), redirects + 1);
                }
                return done(error_code_of(r));
            }
            done({});
        });
    }

    /// A refresh soon, but not more often than every kMinRefreshGap.
    void schedule_refresh() {
        if (closed_ || refresh_armed_) return;
        const auto due = last_refresh_ + kMinRefreshGap;
        if (!refreshing_ && Clock::now() >= due) return refresh();
        refresh_armed_ = true;
        refresh_timer_.expires_at(std::max(due, Clock::now() + std::chrono::milliseconds(1)));
        refresh_timer_.async_wait([this](boost::system::error_code ec) {
            refresh_armed_ = false;
            if (!ec && !closed_) {
                if (refreshing_) return schedule_refresh();
                refresh();
            }
        });
    }

    /// Asks the nodes for the slot map (CLUSTER SLOTS): the masters known now, then the seeds.
    void refresh() {
        if (refreshing_ || closed_) return;
        refreshing_ = true;
        last_refresh_ = Clock::now();
        auto candidates = std::make_shared<std::vector<HostPort>>();
        for (Node* n : slots_) {
            if (n == nullptr) continue;
            const HostPort at = n->address();
            if (std::find(candidates->begin(), candidates->end(), at) == candidates->end()) candidates->push_back(at);
            if (candidates->size() >= 3) break;
        }
        for (const auto& seed : config_.nodes) {
            if (std::find(candidates->begin(), candidates->end(), seed) == candidates->end()) {
                candidates->push_back(seed);
            }
        }
        hard_error_ = {};
        ask(candidates, 0, std::make_shared<std::string>());
    }

    void ask(const std::shared_ptr<std::vector<HostPort>>& candidates, std::size_t i,
             const std::shared_ptr<std::string>& reasons) {
        if (closed_) return;
        if (i == candidates->size()) {
            refreshing_ = false;
            map_error_ = "no node of the cluster gave its slot map (" + *reasons + ")";
            auto waiting = std::move(map_waiters_);
            map_waiters_.clear();
            // Credentials or a server that is not Redis say more than "unreachable".
            const std::error_code code = hard_error_    ? hard_error_
                                         : not_cluster_ ? make_error_code(errc::backend_error)
                                                        : make_error_code(errc::unavailable);
            for (auto& w : waiting) w(code);
            return;
        }
        const HostPort at = (*candidates)[i];
        Node& n = node(at);
        n.send({"CLUSTER", "SLOTS"}, [this, candidates, i, reasons, at, &n](std::error_code ec, const Reply& r) {
            if (closed_) return;
            auto note = [&](const std::string& why) {
                if (!reasons->empty()) *reasons += "; ";
                *reasons += at.where() + ": " + why;
            };
            if (ec) {
                const auto c = n.command_if_any();
                if (ec != errc::unavailable && ec != errc::cancelled && !hard_error_) hard_error_ = ec;
                note(c && !c->failure().empty() ? c->failure() : "no answer");
                return ask(candidates, i + 1, reasons);
            }
            if (r.is_error()) {
                if (r.str.find("cluster support disabled") != std::string::npos) {
                    not_cluster_ = true;
                    note("not a cluster node (cluster support disabled): use redis:// for a single server");
                } else {
                    note("CLUSTER SLOTS answered '" + r.str + "'");
                }
                return ask(candidates, i + 1, reasons);
            }
            if (!apply(r, at.host)) {
                note("an unexpected answer to CLUSTER SLOTS");
                return ask(candidates, i + 1, reasons);
            }
            refreshing_ = false;
            have_map_ = true;
            not_cluster_ = false;
            auto waiting = std::move(map_waiters_);
            map_waiters_.clear();
            for (auto& w : waiting) w({});
        });
    }

    /// Takes the slot map from a CLUSTER SLOTS reply: [[start, end, [host, port, id], replicas...], ...].
    bool apply(const Reply& r, const std::string& asked_host) {
        if (r.type != Reply::Type::array) return false;
        std::vector<Node*> map(slot_count, nullptr);
        for (const Reply& range : r.elements) {
            if (range.type != Reply::Type::array || range.elements.size() < 3) return false;
            const Reply& master = range.elements[2];
            if (master.type != Reply::Type::array || master.elements.size() < 2) return false;
            const long long start = range.elements[0].integer, end = range.elements[1].integer;
            const long long port = master.elements[1].integer;
            if (start < 0 || end >= slot_count || start > end || port <= 0 || port > 65535) return false;
            std::string host = master.elements[0].str;
            if (host.empty() || host == "?") host = asked_host;  // the node we asked ("unknown endpoint")
            Node* n = &node({host, static_cast<std::uint16_t>(port)});
            for (long long s = start; s <= end; ++s) map[static_cast<std::size_t>(s)] = n;
        }
        slots_ = std::move(map);
        // Nodes that serve no slot any more (a failed master, now a replica or gone) are
        // retired: their connections are broken, so that commands and subscriptions still on
        // them fail now (and are retried where the map says) rather than at a timeout.
        for (auto it = nodes_.begin(); it != nodes_.end();) {
            Node* n = it->second.get();
            const bool serves = std::find(slots_.begin(), slots_.end(), n) != slots_.end();
            const bool seed =
                std::find(config_.nodes.begin(), config_.nodes.end(), n->address()) != config_.nodes.end();
            if (serves || seed) {
                ++it;
                continue;
            }
            retired_.push_back(std::move(it->second));
            it = nodes_.erase(it);
            asio::post(io_, [n] { n->fail("no longer a master in the cluster's slot map"); });
        }
        return true;
    }

    asio::io_context& io_;
    const RedisConfig config_;
    std::map<std::string, std::unique_ptr<Node>> nodes_;  // by "host:port"
    std::vector<std::unique_ptr<Node>> retired_;          // kept until close(): callbacks may refer to them
    std::vector<Node*> slots_;                            // slot -> its master
    std::unordered_map<std::string, Node*> subs_;         // channel -> the node it is subscribed on
    std::vector<std::function<void(std::error_code)>> map_waiters_;
    std::string map_error_;
    std::error_code hard_error_;  // of the refresh under way: auth_failed or protocol_error from a node
    asio::steady_timer refresh_timer_;
    Clock::time_point last_refresh_{};
    bool have_map_ = false, refreshing_ = false, refresh_armed_ = false, not_cluster_ = false, closed_ = false;
};

}  // namespace

std::unique_ptr<Servers> make_cluster_servers(asio::io_context& io, const RedisConfig& config, Servers::Events events) {
    return std::make_unique<ClusterServers>(io, config, std::move(events));
}

}  // namespace keylock::redis
