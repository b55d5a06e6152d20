#include "servers.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <map>
#include <random>
#include <unordered_map>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/error.hpp>

#include "sentinel.hpp"
#include "slots.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

std::error_code make_ec(errc e) { return make_error_code(e); }

std::string sha1_hex(std::string_view text) {
    std::array<unsigned char, SHA_DIGEST_LENGTH> digest{};
    SHA1(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
    static constexpr std::string_view hex = "0123456789abcdef";
    std::string out;
    for (unsigned char b : digest) {
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 15]);
    }
    return out;
}

bool starts_with(const std::string& text, std::string_view prefix) { return text.rfind(prefix, 0) == 0; }

Reply error_reply(std::string text) {
    Reply r;
    r.type = Reply::Type::error;
    r.str = std::move(text);
    return r;
}

/// `base` (credentials, timeouts, database) for the server at `at`.
Endpoint endpoint_at(const Endpoint& base, const HostPort& at) {
    Endpoint e = base;
    e.host = at.host;
    e.port = at.port;
    return e;
}

/// `numkeys key... arg...`, the tail of an EVALSHA/EVAL.
std::vector<std::string> script_args(const std::vector<std::string_view>& keys,
                                     const std::vector<std::string_view>& args) {
    std::vector<std::string> out;
    out.reserve(1 + keys.size() + args.size());
    out.push_back(std::to_string(keys.size()));
    for (auto k : keys) out.emplace_back(k);
    for (auto a : args) out.emplace_back(a);
    return out;
}

void ignore_reply(std::error_code /*ec*/, const Reply& /*reply*/) {}

/// One server: its command connection and its subscriber connection, each made again after a
/// failure, at once the first time, then after 50 ms doubling up to 1 s (jittered), until one
/// gets through the handshake.
class Node {
public:
    using Factory = std::function<std::shared_ptr<Connection>()>;

    Node(asio::io_context& io, Endpoint endpoint, Factory factory = {})
        : io_(io), endpoint_(std::move(endpoint)), factory_(std::move(factory)), rng_(std::random_device{}()) {}
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
    std::string where() const {
        if (main_ && !main_->endpoint().host.empty()) return main_->endpoint().where();
        return endpoint_.where();
    }

    /// The command connection.
    std::shared_ptr<Connection> command() {
        if (!main_ || (!main_->connected() && main_failed_ && may_connect(main_backoff_))) {
            main_ = make();
            main_failed_ = false;
            refused_ = {};
            std::weak_ptr<Connection> weak = main_;
            main_->on_failure([this, weak](std::error_code, const std::string&) {
                if (main_ == weak.lock()) main_failed_ = true;
            });
            main_->connect([this, weak](std::error_code ec, const std::string&) {
                if (main_ != weak.lock()) return;
                if (ec) {
                    main_failed_ = true;
                    if (ec != errc::unavailable && ec != errc::cancelled) refused_ = ec;
                } else {
                    main_backoff_ = {};
                }
            });
        }
        return main_;
    }

    /// Sends one command on the command connection (see command()); its handler gets the
    /// error that explains a failure (see explain()).
    void send(const std::vector<std::string_view>& argv, std::function<void(std::error_code, Reply)> handler) {
        auto conn = command();
        conn->send(argv, [this, weak = std::weak_ptr<Connection>(conn), handler = std::move(handler)](
                             std::error_code ec, Reply r) { handler(explain(weak.lock(), ec), std::move(r)); });
    }

    /// The subscriber connection, made if there is none (or only a failed one, back-off permitting).
    std::shared_ptr<Connection> subscriber() {
        if (!sub_ || (!sub_->connected() && sub_failed_ && may_connect(sub_backoff_))) {
            sub_ = make();
            sub_failed_ = false;
            std::weak_ptr<Connection> weak = sub_;
            auto lost = [this, weak](std::error_code, const std::string&) {
                if (sub_ != weak.lock()) return;
                sub_failed_ = true;
                if (on_subscriber_lost) on_subscriber_lost();
            };
            sub_->on_failure(lost);
            sub_->connect([this, weak, lost](std::error_code ec, const std::string& m) {
                if (ec) {
                    lost(ec, m);
                } else if (sub_ == weak.lock()) {
                    sub_backoff_ = {};
                }
            });
            sub_->on_push([this](Reply r) {
                if (on_push) on_push(std::move(r));
            });
        }
        return sub_;
    }

    /// The command connection as it is (null if none was made yet), without making a new one.
    std::shared_ptr<Connection> command_if_any() const { return main_; }

    /// The subscriber connection if it is up, else null (nothing to unsubscribe from).
    std::shared_ptr<Connection> live_subscriber() const { return sub_ && sub_->connected() ? sub_ : nullptr; }

    /// EVALSHA `script` with `tail` (numkeys, keys, args) on the command connection, and EVAL
    /// if the server does not know the script (a fresh or restarted server, a failover). With
    /// `asking` (a Cluster ASK redirection), each is sent after an ASKING.
    void run(const Script& script, std::vector<std::string> tail, bool asking, EvalHandler handler) {
        std::vector<std::string> argv;
        argv.reserve(2 + tail.size());
        argv.emplace_back("EVALSHA");
        argv.push_back(script.sha);
        for (auto& t : tail) argv.push_back(std::move(t));
        std::shared_ptr<Connection> conn = command();
        std::weak_ptr<Connection> weak = conn;
        if (asking) conn->send({"ASKING"}, ignore_reply);
        const std::vector<std::string_view> view(argv.begin(), argv.end());
        conn->send(view, [this, &script, weak, asking, argv = std::move(argv), handler = std::move(handler)](
                             std::error_code ec, Reply r) mutable {
            auto c = weak.lock();
            if (!ec && r.is_error() && starts_with(r.str, "NOSCRIPT") && c) {
                argv[0] = "EVAL";
                argv[1] = script.body;
                if (asking) c->send({"ASKING"}, ignore_reply);
                const std::vector<std::string_view> again(argv.begin(), argv.end());
                c->send(again, [this, weak, handler = std::move(handler)](std::error_code ec, Reply r) {
                    done(weak.lock(), ec, std::move(r), handler);
                });
                return;
            }
            done(c, ec, std::move(r), handler);
        });
    }

    /// Breaks both connections as a network failure would (pending commands: `unavailable`).
    void fail(const std::string& why) {
        for (const auto& c : {main_, sub_}) {
            if (c) c->fail_now(why);
        }
    }

    /// The same, for the connections that are not to `to`.
    void fail_unless_at(const HostPort& to, const std::string& why) {
        for (const auto& c : {main_, sub_}) {
            if (c && (c->endpoint().host != to.host || c->endpoint().port != to.port)) c->fail_now(why);
        }
    }

    void close() {
        on_push = nullptr;
        on_subscriber_lost = nullptr;
        for (const auto& c : {main_, sub_}) {
            if (c) c->close();
        }
    }

private:
    struct Backoff {
        std::chrono::milliseconds delay{0};
        Clock::time_point not_before{};
    };

    void done(const std::shared_ptr<Connection>& c, std::error_code ec, Reply r, const EvalHandler& handler) const {
        if (ec) {
            std::string why = c ? c->failure() : std::string();
            r = error_reply(why.empty() ? "no answer from Redis" : std::move(why));
        }
        handler(explain(c, ec), std::move(r), c);
    }

    /// A command on a command connection whose handshake was refused (a wrong password, a
    /// server that is not Redis) fails with `unavailable` while the back-off keeps that
    /// connection: the refusal says more, so it is reported instead until a new one is made.
    std::error_code explain(const std::shared_ptr<Connection>& c, std::error_code ec) const {
        return ec == errc::unavailable && refused_ && c == main_ ? refused_ : ec;
    }

    std::shared_ptr<Connection> make() { return factory_ ? factory_() : std::make_shared<Connection>(io_, endpoint_); }

    /// Whether a new connection may be tried now (and if so, the delay before the next one).
    bool may_connect(Backoff& b) {
        const auto now = Clock::now();
        if (now < b.not_before) return false;
        b.not_before = now + b.delay;
        const auto next = b.delay == std::chrono::milliseconds(0) ? std::chrono::milliseconds(50) : 2 * b.delay;
        b.delay = std::min<std::chrono::milliseconds>(next, std::chrono::seconds(1)) +
                  std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 10)(rng_));
        return true;
    }

    asio::io_context& io_;
    Endpoint endpoint_;
    Factory factory_;
    std::shared_ptr<Connection> main_, sub_;
    bool main_failed_ = false, sub_failed_ = false;
    std::error_code refused_;  // why main_'s handshake was refused, if it was (not: unreachable)
    Backoff main_backoff_, sub_backoff_;
    std::minstd_rand rng_;
};

// ---- one server: standalone, or the master that sentinels name -----------------------

class SingleServers final : public Servers {
public:
    SingleServers(asio::io_context& io, const RedisConfig& config, Events events)
        : Servers(std::move(events)),
          locator_(config.topology == Topology::sentinel ? std::make_shared<SentinelLocator>(io, config) : nullptr),
          master_name_(config.master_name),
          node_(io, config.endpoint, factory(io, config, locator_)) {
        node_.on_push = [this](const Reply& r) { heard(r); };
        node_.on_subscriber_lost = [this] { lost_notifications(); };
        if (locator_) {
            // A failover the sentinels announce: connections to the old master are dropped, and
            // new ones ask the sentinels where the master is now.
            asio::post(io, [this] {
                locator_->watch([this](const HostPort& to) {
                    node_.fail_unless_at(to, "the sentinels switched master '" + master_name_ + "' to " + to.where());
                });
            });
        }
    }

    void eval(Op /*op*/, const Script& script, std::vector<std::string_view> keys, std::vector<std::string_view> args,
              EvalHandler handler) override {
        node_.run(script, script_args(keys, args), false,
                  [this, handler = std::move(handler)](std::error_code ec, Reply r, std::shared_ptr<Connection> conn) {
                      // Behind sentinels, READONLY means the master has become a replica (a
                      // failover): the connection is dropped, the next one asks the sentinels,
                      // and the command counts as not answered.
                      if (!ec && locator_ && r.is_error() && starts_with(r.str, "READONLY")) {
                          const std::string why = "Redis at " + node_.where() + " is a replica now (" + r.str +
                                                  "); asking the sentinels again";
                          node_.fail(why);
                          return handler(make_ec(errc::unavailable), error_reply(why), std::move(conn));
                      }
                      handler(ec, std::move(r), std::move(conn));
                  });
    }

    void subscribe(const std::string& channel, std::function<void(std::error_code)> done) override {
        node_.subscriber()->send({"SUBSCRIBE", channel}, [done = std::move(done)](std::error_code ec, const Reply& r) {
            done(ec ? ec : r.is_error() ? make_ec(errc::backend_error) : std::error_code{});
        });
    }

    void unsubscribe(const std::string& channel) override {
        if (auto sub = node_.live_subscriber()) sub->send({"UNSUBSCRIBE", channel}, ignore_reply);
    }

    void close() override {
        if (locator_) locator_->close();
        node_.close();
    }

private:
    static Node::Factory factory(asio::io_context& io, const RedisConfig& config,
                                 const std::shared_ptr<SentinelLocator>& locator) {
        if (!locator) return {};
        return [&io, endpoint = config.endpoint, locator] {
            Endpoint master = endpoint;
            master.master_only = true;  // a server that sentinels name master may still be a replica
            auto c = std::make_shared<Connection>(io, master);
            c->locate_with([locator](const Connection::Located& done) {
                locator->locate([done](std::error_code ec, std::string why, HostPort m) {
                    done(ec, std::move(why), std::move(m.host), m.port);
                });
            });
            return c;
        };
    }

    std::shared_ptr<SentinelLocator> locator_;
    std::string master_name_;
    Node node_;
};

// ---- Redis Cluster ---------------------------------------------------------------------

/// Parses "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>". An empty host means the
/// node that answered.
bool parse_redirect(const std::string& error, std::uint16_t& slot, std::string& host, std::uint16_t& port) {
    const auto first = error.find(' ');
    const auto second = first == std::string::npos ? std::string::npos : error.find(' ', first + 1);
    if (second == std::string::npos) return false;
    const std::string_view slot_text(error.data() + first + 1, second - first - 1);
    const std::string_view address(error.data() + second + 1, error.size() - second - 1);
    const auto colon = address.rfind(':');
    if (colon == std::string_view::npos) return false;
    unsigned s = 0, p = 0;
    auto r1 = std::from_chars(slot_text.data(), slot_text.data() + slot_text.size(), s);
    auto r2 = std::from_chars(address.data() + colon + 1, address.data() + address.size(), p);
    if (r1.ec != std::errc() || r1.ptr != slot_text.data() + slot_text.size() || r2.ec != std::errc() ||
        r2.ptr != address.data() + address.size() || s >= slot_count || p == 0 || p > 65535) {
        return false;
    }
    slot = static_cast<std::uint16_t>(s);
    host.assign(address.substr(0, colon));
    port = static_cast<std::uint16_t>(p);
    return true;
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
                return done(make_ec(errc::unavailable));
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
        const bool moved = starts_with(error, "MOVED ");
        if (!moved && !starts_with(error, "ASK ")) return nullptr;
        std::uint16_t slot = 0;
        HostPort to;
        if (!parse_redirect(error, slot, to.host, to.port)) return nullptr;
        if (to.host.empty()) to.host = replier.address().host;  // "the node that answered"
        Node& n = node(to);
        if (moved) {
            slots_[slot] = &n;
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
            cmd->handler(make_ec(errc::unavailable),
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
                       const bool redirect = starts_with(r.str, "MOVED ") || starts_with(r.str, "ASK ");
                       if (redirect) {
                           Node* to = redirected(r.str, *n);
                           if (to == nullptr || ++cmd->redirects > kMaxRedirects) {
                               return cmd->handler(make_ec(errc::unavailable),
                                                   error_reply("the cluster keeps redirecting (last: " + r.str + ")"),
                                                   std::move(conn));
                           }
                           return send(cmd, to, starts_with(r.str, "ASK "));
                       }
                       if (starts_with(r.str, "TRYAGAIN") && ++cmd->retries <= kMaxRetries) {
                           // A slot being migrated, with our keys on both sides for a moment.
                           auto timer = std::make_shared<asio::steady_timer>(io_, kTryAgain);
                           timer->async_wait([this, cmd, n, asking, timer](boost::system::error_code e) {
                               if (!e && !closed_) send(cmd, n, asking);
                           });
                           return;
                       }
                       if (starts_with(r.str, "CLUSTERDOWN") || starts_with(r.str, "TRYAGAIN")) {
                           schedule_refresh();
                           return cmd->handler(make_ec(errc::unavailable),
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
                Node* to = starts_with(r.str, "MOVED ") ? redirected(r.str, *n) : nullptr;
                if (to != nullptr && redirects < kMaxRedirects) {
                    return ssubscribe(channel, to, std::move(done), redirects + 1);
                }
                return done(make_ec(errc::backend_error));
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
                                         : not_cluster_ ? make_ec(errc::backend_error)
                                                        : make_ec(errc::unavailable);
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

// ---- Redlock: a quorum of independent masters ------------------------------------------

class QuorumServers final : public Servers {
public:
    QuorumServers(asio::io_context& io, const RedisConfig& config, Events events, QuorumScripts scripts)
        : Servers(std::move(events)),
          io_(io),
          config_(config),
          scripts_(scripts),
          quorum_(static_cast<int>(config.nodes.size()) / 2 + 1),
          suspect_(config.nodes.size(), false),
          rng_(std::random_device{}()) {
        for (const auto& at : config.nodes) {
            auto n = std::make_unique<Node>(io_, endpoint_at(config.endpoint, at));
            n->on_push = [this](const Reply& r) { heard(r); };
            n->on_subscriber_lost = [this] { lost_notifications(); };
            nodes_.push_back(std::move(n));
        }
    }

    bool quorum() const noexcept override { return true; }

    /// 1% of the lease plus 2 ms (the Redlock algorithm's figure).
    std::chrono::milliseconds clock_drift() const noexcept override {
        return config_.lease / 100 + std::chrono::milliseconds(2);
    }

    void eval(Op op, const Script& script, std::vector<std::string_view> keys, std::vector<std::string_view> args,
              EvalHandler handler) override {
        if (op == Op::transfer) {
            return handler(make_ec(errc::not_supported), error_reply("no hand-over on a quorum"), nullptr);
        }
        auto round = start_round(op, std::move(handler));
        round->keys.assign(keys.begin(), keys.end());
        round->args.assign(args.begin(), args.end());
        run_round(round, script, script_args(keys, args));
    }

    void subscribe(const std::string& channel, std::function<void(std::error_code)> done) override {
        // Done once a majority has confirmed (the rest follow), all have answered, or a node
        // round has passed: a frozen node must not hold the waiter up.
        struct Sub {
            int ok = 0, answered = 0;
            bool reported = false;
            std::function<void(std::error_code)> done;
            std::unique_ptr<asio::steady_timer> timer;
        };
        auto sub = std::make_shared<Sub>();
        sub->done = std::move(done);
        auto report = [this, sub](bool final) {
            if (sub->reported || (!final && sub->ok < quorum_ && sub->answered < static_cast<int>(nodes_.size()))) {
                return;
            }
            sub->reported = true;
            sub->timer->cancel();
            sub->done(sub->ok > 0 ? std::error_code{} : make_ec(errc::unavailable));
        };
        sub->timer = std::make_unique<asio::steady_timer>(io_, config_.node_timeout);
        sub->timer->async_wait([report](boost::system::error_code ec) {
            if (!ec) report(true);
        });
        for (auto& n : nodes_) {
            n->subscriber()->send({"SUBSCRIBE", channel}, [sub, report](std::error_code ec, const Reply& r) {
                ++sub->answered;
                if (!ec && !r.is_error()) ++sub->ok;
                report(false);
            });
        }
    }

    void unsubscribe(const std::string& channel) override {
        for (auto& n : nodes_) {
            if (auto sub = n->live_subscriber()) sub->send({"UNSUBSCRIBE", channel}, ignore_reply);
        }
    }

    void close() override {
        closed_ = true;
        for (auto& n : nodes_) n->close();
    }

private:
    /// One script run on every node, and what the nodes answered so far.
    struct Round {
        Op op = Op::acquire;
        int ones = 0, zeros = 0, failed = 0, granted = 0, held = 0, answered = 0;
        std::uint64_t fence = 0;     // acquire: the largest fencing token granted
        long long pttl = -3;         // acquire: the shortest remaining lease of those that said held
        std::string error;           // the first error reply, with its node
        std::error_code hard;        // the first failure that is not "unreachable" (auth_failed, protocol_error)
        std::string reasons;         // why nodes failed, for the message
        std::vector<Reply> replies;  // inspect
        std::vector<bool> heard;     // by node
        bool decided = false;
        Clock::time_point sent;
        std::vector<std::string> keys, args;
        EvalHandler handler;
        std::unique_ptr<asio::steady_timer> timer;
    };

    std::shared_ptr<Round> start_round(Op op, EvalHandler handler) {
        auto round = std::make_shared<Round>();
        round->op = op;
        round->sent = Clock::now();
        round->handler = std::move(handler);
        round->heard.assign(nodes_.size(), false);
        round->replies.resize(nodes_.size());
        round->timer = std::make_unique<asio::steady_timer>(io_, config_.node_timeout);
        round->timer->async_wait([this, weak = std::weak_ptr<Round>(round)](boost::system::error_code ec) {
            auto r = weak.lock();
            if (ec || !r || r->decided || closed_) return;
            for (std::size_t i = 0; i < nodes_.size(); ++i) {
                if (r->heard[i]) continue;
                suspect_[i] = true;
                note(*r, i, "no answer within node_timeout (" + std::to_string(config_.node_timeout.count()) + "ms)");
            }
            decide(r, true);
        });
        return round;
    }

    /// Runs `script` with `tail` on every node, each answer going to `round`.
    void run_round(const std::shared_ptr<Round>& round, const Script& script, const std::vector<std::string>& tail) {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            nodes_[i]->run(script, tail, false,
                           [this, round, i](std::error_code ec, Reply r, const std::shared_ptr<Connection>&) {
                               answer(round, i, ec, std::move(r));
                           });
        }
    }

    /// Marks a round decided (later answers are ignored) and stops its timer.
    static void close_round(Round& r) {
        r.decided = true;
        r.timer->cancel();
    }

    /// Reports that too few nodes answered to decide: the first error reply if there was one,
    /// else the first failure that says more than "unreachable" (a wrong password), else
    /// `unavailable`, with every node's reason.
    void no_majority(const Round& r) const {
        if (!r.error.empty()) return r.handler({}, error_reply(r.error), nullptr);
        r.handler(r.hard ? r.hard : make_ec(errc::unavailable),
                  error_reply("no majority of the Redlock nodes answered (" + std::to_string(quorum_) + " of " +
                              std::to_string(nodes_.size()) + " needed: " + r.reasons + ")"),
                  nullptr);
    }

    void note(Round& r, std::size_t i, const std::string& why) {
        if (!r.reasons.empty()) r.reasons += "; ";
        r.reasons += nodes_[i]->where() + ": " + why;
    }

    void answer(const std::shared_ptr<Round>& round, std::size_t i, std::error_code ec, Reply r) {
        Round& rd = *round;
        if (closed_ || rd.decided) return;
        rd.heard[i] = true;
        ++rd.answered;
        suspect_[i] = static_cast<bool>(ec);
        if (ec) {
            ++rd.failed;
            if (ec != errc::unavailable && ec != errc::cancelled && !rd.hard) rd.hard = ec;
            note(rd, i, r.str);
        } else if (r.is_error()) {
            ++rd.failed;
            if (rd.error.empty()) rd.error = "Redis at " + nodes_[i]->where() + " answered '" + r.str + "'";
            note(rd, i, "'" + r.str + "'");
        } else if (rd.op == Op::acquire) {
            if (r.type == Reply::Type::array && r.elements.size() == 2 && r.elements[0].integer == 1) {
                ++rd.granted;
                rd.fence = std::max(rd.fence, static_cast<std::uint64_t>(r.elements[1].integer));
            } else if (r.type == Reply::Type::array && r.elements.size() == 2) {
                ++rd.held;
                const long long pttl = r.elements[1].integer;
                if (rd.pttl == -3 || (pttl >= 0 && (rd.pttl < 0 || pttl < rd.pttl))) rd.pttl = pttl;
            } else {
                ++rd.failed;
                note(rd, i, "an unexpected answer to the acquire script");
            }
        } else if (rd.op == Op::inspect) {
            rd.replies[i] = std::move(r);
        } else if (r.type == Reply::Type::integer && r.integer == 1) {
            ++rd.ones;
        } else {
            ++rd.zeros;
        }
        decide(round, rd.answered == static_cast<int>(nodes_.size()));
    }

    /// Decides a round as soon as its outcome is certain, or with what is known when `final`
    /// (every node answered, or node_timeout passed).
    void decide(const std::shared_ptr<Round>& round, bool final) {
        Round& r = *round;
        if (r.decided) return;
        const int n = static_cast<int>(nodes_.size());
        auto finish = [&](long long answer) {
            close_round(r);
            r.handler({}, integer_reply(answer), nullptr);
        };
        switch (r.op) {
            case Op::acquire: {
                if (r.granted >= quorum_) {
                    close_round(r);
                    return record_fence(round);
                }
                // Nodes that missed a round's deadline or failed lately are not waited for when
                // only they could still make the majority: giving up early is always safe (what
                // was taken is released), and waiting node_timeout on every contended attempt
                // while a minority is frozen would starve the contenders.
                int doubtful = 0;
                for (std::size_t i = 0; i < nodes_.size(); ++i) doubtful += !r.heard[i] && suspect_[i];
                if (final || r.held + r.failed + doubtful > n - quorum_) {
                    close_round(r);
                    return give_up(round);
                }
                return;
            }
            case Op::release:
            case Op::extend:
                if (r.ones >= quorum_) return finish(1);
                if (r.zeros > n - quorum_) return finish(0);
                if (final) {
                    close_round(r);
                    no_majority(r);
                }
                return;
            case Op::force_release:
                if (!final) return;
                if (r.ones > 0) return finish(1);
                if (r.zeros > 0) return finish(0);
                close_round(r);
                return no_majority(r);
            case Op::inspect:
                if (final) finish_inspect(round);
                return;
            case Op::transfer: return;
        }
    }

    static Reply integer_reply(long long v) {
        Reply r;
        r.type = Reply::Type::integer;
        r.integer = v;
        return r;
    }

    /// A majority granted the lock: before it counts as ours, its fencing token (the largest of
    /// the majority's) is written into the counters of a majority, so that any later majority,
    /// which shares a node with this one, issues a larger token.
    void record_fence(const std::shared_ptr<Round>& acquired) {
        const std::string fence = std::to_string(acquired->fence);
        auto bump = start_round(Op::release, nullptr);  // counts ones like a release
        bump->handler = [this, acquired](std::error_code ec, const Reply& r, const std::shared_ptr<Connection>&) {
            const auto validity = config_.lease - clock_drift();
            if (!ec && !r.is_error() && r.integer == 1 && Clock::now() - acquired->sent < validity) {
                Reply granted;
                granted.type = Reply::Type::array;
                granted.elements = {integer_reply(1), integer_reply(static_cast<long long>(acquired->fence))};
                return acquired->handler({}, std::move(granted), nullptr);
            }
            if (ec || r.is_error()) {
                acquired->reasons = "its fencing token could not be recorded on a majority (" +
                                    (r.str.empty() ? std::string("no answer") : r.str) + ")";
            } else {
                acquired->reasons = "the majority came too late: the lock's validity had passed";
            }
            give_up(acquired, true);
        };
        run_round(bump, *scripts_.bump, script_args({acquired->keys.at(1)}, {fence}));
    }

    /// No majority: releases what was taken, on every node (after the acquire on each
    /// connection, so also where its answer is still to come), and says why.
    void give_up(const std::shared_ptr<Round>& round, bool after_majority = false) {
        Round& r = *round;
        const std::string& lock_key = r.keys.at(0);
        const std::string& token = r.args.at(0);
        const auto tail = script_args({lock_key}, {token, lock_key});
        for (auto& n : nodes_) {
            n->run(*scripts_.release, tail, false,
                   [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
        }
        if (after_majority) {
            return r.handler(make_ec(errc::unavailable), error_reply("a majority granted the lock, but " + r.reasons),
                             nullptr);
        }
        if (r.granted + r.held >= quorum_) {
            // Held elsewhere, or split between contenders: wait for a release, or a little while
            // (at random, so that contenders do not split the nodes again in step).
            const bool split = r.granted > 0 || r.pttl < 0;
            const long long wait = split ? std::uniform_int_distribution<long long>(5, 30)(rng_) : r.pttl;
            Reply held;
            held.type = Reply::Type::array;
            held.elements = {integer_reply(0), integer_reply(wait)};
            if (split) held.elements.push_back(integer_reply(1));  // back off: see Op::acquire
            return r.handler({}, std::move(held), nullptr);
        }
        no_majority(r);
    }

    /// The lock as a majority sees it: held if a majority hold the same value.
    void finish_inspect(const std::shared_ptr<Round>& round) {
        Round& r = *round;
        close_round(r);
        int free = 0;
        std::map<std::string, std::pair<int, long long>> values;  // value -> (nodes, shortest lease)
        for (std::size_t i = 0; i < r.replies.size(); ++i) {
            const Reply& x = r.replies[i];
            if (!r.heard[i] || x.type != Reply::Type::array || x.elements.empty()) continue;
            if (x.elements[0].integer != 1 || x.elements.size() != 3) {
                ++free;
                continue;
            }
            auto& [count, ttl] = values[x.elements[1].str];
            ttl = count == 0 ? x.elements[2].integer : std::min(ttl, x.elements[2].integer);
            ++count;
        }
        for (const auto& [value, seen] : values) {
            if (seen.first >= quorum_) {
                Reply held;
                held.type = Reply::Type::array;
                held.elements = {integer_reply(1), Reply{}, integer_reply(seen.second)};
                held.elements[1].type = Reply::Type::string;
                held.elements[1].str = value;
                return r.handler({}, std::move(held), nullptr);
            }
        }
        int answered = free;
        for (const auto& [value, seen] : values) answered += seen.first;
        if (answered >= quorum_) {
            Reply none;
            none.type = Reply::Type::array;
            none.elements = {integer_reply(0)};
            return r.handler({}, std::move(none), nullptr);
        }
        no_majority(r);
    }

    asio::io_context& io_;
    const RedisConfig config_;
    QuorumScripts scripts_;
    int quorum_;
    std::vector<std::unique_ptr<Node>> nodes_;
    std::vector<bool> suspect_;  // by node: missed a round's deadline or failed, and not heard from since
    std::minstd_rand rng_;
    bool closed_ = false;
};

}  // namespace

Script::Script(std::string text) : body(std::move(text)), sha(sha1_hex(body)) {}

std::unique_ptr<Servers> make_servers(asio::io_context& io, const RedisConfig& config, Servers::Events events,
                                      QuorumScripts quorum_scripts) {
    switch (config.topology) {
        case Topology::cluster: return std::make_unique<ClusterServers>(io, config, std::move(events));
        case Topology::redlock: return std::make_unique<QuorumServers>(io, config, std::move(events), quorum_scripts);
        default: return std::make_unique<SingleServers>(io, config, std::move(events));
    }
}

}  // namespace keylock::redis
