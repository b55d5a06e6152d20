// SPDX-License-Identifier: BSL-1.0
#include "node.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <mutex>
#include <unordered_map>

#include <boost/algorithm/hex.hpp>

#include <keylock/error.hpp>

namespace keylock::redis {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

Reply error_reply(std::string text) {
    Reply r;
    r.type = Reply::Type::error;
    r.str = std::move(text);
    return r;
}

Endpoint endpoint_at(const Endpoint& base, const HostPort& at) {
    Endpoint e = base;
    e.host = at.host;
    e.port = at.port;
    return e;
}

std::vector<std::string> script_args(const std::vector<std::string_view>& keys,
                                     const std::vector<std::string_view>& args) {
    std::vector<std::string> out;
    out.reserve(1 + keys.size() + args.size());
    out.push_back(std::to_string(keys.size()));
    for (auto k : keys) out.emplace_back(k);
    for (auto a : args) out.emplace_back(a);
    return out;
}

namespace {

std::string sha1_hex(std::string_view text) {
    std::array<unsigned char, SHA_DIGEST_LENGTH> digest{};
    SHA1(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
    std::string out;
    out.reserve(2 * digest.size());
    boost::algorithm::hex_lower(digest.begin(), digest.end(), std::back_inserter(out));
    return out;
}

}  // namespace

namespace {

/// The number of the script whose SHA1 is `sha`, a new one for a text not seen before.
std::uint32_t script_id(const std::string& sha) {
    static std::mutex mu;
    static std::unordered_map<std::string, std::uint32_t> ids;
    const std::lock_guard lock(mu);
    return ids.try_emplace(sha, static_cast<std::uint32_t>(ids.size())).first->second;
}

}  // namespace

Script::Script(std::string text) : body(std::move(text)), sha(sha1_hex(body)), id(script_id(sha)) {}

std::unique_ptr<Servers> make_servers(asio::io_context& io, const RedisConfig& config, Servers::Events events,
                                      QuorumScripts quorum_scripts) {
    switch (config.topology) {
        case Topology::cluster: return make_cluster_servers(io, config, std::move(events));
        case Topology::redlock: return make_quorum_servers(io, config, std::move(events), quorum_scripts);
        default: return make_single_servers(io, config, std::move(events));
    }
}

// ---- Node ------------------------------------------------------------------------------

Node::Node(asio::io_context& io, Endpoint endpoint, Factory factory)
    : io_(io), endpoint_(std::move(endpoint)), factory_(std::move(factory)), rng_(std::random_device{}()) {}

std::string Node::where() const {
    if (main_ && !main_->endpoint().host.empty()) return main_->endpoint().where();
    return endpoint_.where();
}

std::shared_ptr<Connection> Node::command() {
    if (!main_ || (!main_->connected() && main_failed_ && may_connect(main_backoff_))) {
        main_ = make();
        scripts_sent_.clear();  // a new connection has run no script yet
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

void Node::send(const std::vector<std::string_view>& argv, std::function<void(std::error_code, Reply)> handler) {
    auto conn = command();
    conn->send(argv, [this, weak = std::weak_ptr<Connection>(conn), handler = std::move(handler)](
                         std::error_code ec, Reply r) { handler(explain(weak.lock(), ec), std::move(r)); });
}

std::shared_ptr<Connection> Node::subscriber() {
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

void Node::run(const Script& script, std::vector<std::string> tail, bool asking, EvalHandler handler) {
    std::shared_ptr<Connection> conn = command();
    if (script.id >= scripts_sent_.size()) scripts_sent_.resize(script.id + 1, false);
    const bool first = !scripts_sent_[script.id];
    scripts_sent_[script.id] = true;
    std::vector<std::string> argv;
    argv.reserve(2 + tail.size());
    argv.emplace_back(first ? "EVAL" : "EVALSHA");
    argv.push_back(first ? script.body : script.sha);
    for (auto& t : tail) argv.push_back(std::move(t));
    std::weak_ptr<Connection> weak = conn;
    if (asking) conn->send({"ASKING"}, ignore_reply);
    const std::vector<std::string_view> view(argv.begin(), argv.end());
    conn->send(view, [this, &script, weak, asking, argv = std::move(argv), handler = std::move(handler)](
                         std::error_code ec, Reply r) mutable {
        auto c = weak.lock();
        if (!ec && r.is_error() && r.str.starts_with("NOSCRIPT") && c) {
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

void Node::fail(const std::string& why) {
    for (const auto& c : {main_, sub_}) {
        if (c) c->fail_now(why);
    }
}

void Node::fail_unless_at(const HostPort& to, const std::string& why) {
    for (const auto& c : {main_, sub_}) {
        if (c && (c->endpoint().host != to.host || c->endpoint().port != to.port)) c->fail_now(why);
    }
}

void Node::close() {
    on_push = nullptr;
    on_subscriber_lost = nullptr;
    for (const auto& c : {main_, sub_}) {
        if (c) c->close();
    }
}

void Node::done(const std::shared_ptr<Connection>& c, std::error_code ec, Reply r, const EvalHandler& handler) const {
    if (ec) {
        std::string why = c ? c->failure() : std::string();
        r = error_reply(why.empty() ? "no answer from Redis" : std::move(why));
    }
    handler(explain(c, ec), std::move(r), c);
}

/// A command on a command connection whose handshake was refused (a wrong password, a server
/// that is not Redis) fails with `unavailable` while the back-off keeps that connection: the
/// refusal says more, so it is reported instead until a new one is made.
std::error_code Node::explain(const std::shared_ptr<Connection>& c, std::error_code ec) const {
    return ec == errc::unavailable && refused_ && c == main_ ? refused_ : ec;
}

std::shared_ptr<Connection> Node::make() {
    return factory_ ? factory_() : std::make_shared<Connection>(io_, endpoint_);
}

/// Whether a new connection may be tried now (and if so, the delay before the next one).
bool Node::may_connect(Backoff& b) {
    const auto now = Clock::now();
    if (now < b.not_before) return false;
    b.not_before = now + b.delay;
    const auto next = b.delay == std::chrono::milliseconds(0) ? std::chrono::milliseconds(50) : 2 * b.delay;
    b.delay = std::min<std::chrono::milliseconds>(next, std::chrono::seconds(1)) +
              std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 10)(rng_));
    return true;
}

}  // namespace keylock::redis
