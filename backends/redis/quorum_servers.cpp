// SPDX-License-Identifier: BSL-1.0
// Redlock: a quorum of independent masters. Each script runs on every node at once, and a round
// decides by the majority (see servers.hpp, node.hpp, docs/design.md).
#include <algorithm>
#include <map>

#include <boost/asio/steady_timer.hpp>

#include <keylock/error.hpp>

#include "lease.hpp"
#include "node.hpp"
#include "replies.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

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

    void eval(Op op, const Script& script, std::vector<std::string_view> keys, std::vector<std::string_view> args,
              EvalHandler handler) override {
        if (op == Op::transfer) {
            return handler(make_error_code(errc::not_supported), error_reply("no hand-over on a quorum"), nullptr);
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
            bool reported = false, refused = false;
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
            sub->done(sub->ok > 0 ? std::error_code{}
                                  : make_error_code(sub->refused ? errc::auth_failed : errc::unavailable));
        };
        sub->timer = std::make_unique<asio::steady_timer>(io_, config_.node_timeout);
        sub->timer->async_wait([report](boost::system::error_code ec) {
            if (!ec) report(true);
        });
        for (auto& n : nodes_) {
            n->subscriber()->send({"SUBSCRIBE", channel}, [sub, report](std::error_code ec, const Reply& r) {
                ++sub->answered;
                if (!ec && !r.is_error()) ++sub->ok;
                if (!ec && error_code_of(r) == errc::auth_failed) sub->refused = true;
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
        bool given_up = false;          // acquire: released on every node whose answer is in, the rest on theirs
        lease::Clock::time_point sent;  // for the lease's validity
        std::vector<std::string> keys, args;
        EvalHandler handler;
        std::unique_ptr<asio::steady_timer> timer;
    };

    std::shared_ptr<Round> start_round(Op op, EvalHandler handler) {
        auto round = std::make_shared<Round>();
        round->op = op;
        round->sent = lease::Clock::now();
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
        r.handler(r.hard ? r.hard : make_error_code(errc::unavailable),
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
        if (closed_) return;
        if (rd.decided) {
            // Given up before this node answered: release there now, after its acquire (also
            // one re-sent as EVAL after NOSCRIPT), which a release sent earlier could overtake.
            if (rd.given_up && !rd.heard[i]) release_on(rd, i);
            rd.heard[i] = true;
            return;
        }
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
            const auto validity = lease::validity(config_.lease);
            if (!ec && !r.is_error() && r.integer == 1 && lease::Clock::now() - acquired->sent < validity) {
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
        r.given_up = true;
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (r.heard[i]) release_on(r, i);  // the others on their answer (see answer)
        }
        if (after_majority) {
            return r.handler(make_error_code(errc::unavailable),
                             error_reply("a majority granted the lock, but " + r.reasons), nullptr);
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

    /// Releases what an acquire round may have taken on node `i` (token-checked).
    void release_on(const Round& r, std::size_t i) {
        const std::string& lock_key = r.keys.at(0);
        nodes_[i]->run(*scripts_.release, script_args({lock_key}, {r.args.at(0), lock_key}), false,
                       [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
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

std::unique_ptr<Servers> make_quorum_servers(asio::io_context& io, const RedisConfig& config, Servers::Events events,
                                             QuorumScripts scripts) {
    return std::make_unique<QuorumServers>(io, config, std::move(events), scripts);
}

}  // namespace keylock::redis
