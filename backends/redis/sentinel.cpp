// SPDX-License-Identifier: BSL-1.0
#include "sentinel.hpp"

#include <algorithm>
#include <optional>
#include <sstream>
#include <vector>

#include <keylock/error.hpp>

#include "src/config.hpp"

namespace keylock::redis {

bool parse_switch_master(const std::string& message, const std::string& master, HostPort& to) {
    std::istringstream in(message);
    std::string name, old_host, old_port, new_host, new_port, extra;
    if (!(in >> name >> old_host >> old_port >> new_host >> new_port) || (in >> extra)) return false;
    const auto port = parse_port(new_port);
    if (name != master || !port) return false;
    to.host = new_host;
    to.port = *port;
    return true;
}

/// One lookup: the sentinels tried so far and why each could not say.
struct SentinelLocator::Lookup {
    Located done;
    std::size_t tried = 0;
    std::string reasons;
    bool refused_auth = false;  // a sentinel refused our credentials: the lookup fails with auth_failed
    std::shared_ptr<Connection> connection;
};

SentinelLocator::SentinelLocator(boost::asio::io_context& io, RedisConfig config)
    : io_(io), config_(std::move(config)), rewatch_(io) {}

Endpoint SentinelLocator::sentinel_endpoint(std::size_t index) const {
    const Endpoint& master = config_.endpoint;
    Endpoint e;
    e.host = config_.sentinels[index].host;
    e.port = config_.sentinels[index].port;
    // The master's TLS settings (each sentinel verified for its own host name), the sentinels'
    // own credentials.
    e.tls = master.tls;
    e.ca_file = master.ca_file;
    e.cert_file = master.cert_file;
    e.key_file = master.key_file;
    e.verify = master.verify;
    e.user = config_.sentinel_user;
    e.password = config_.sentinel_password;
    const auto share = config_.endpoint.connect_timeout / static_cast<int>(config_.sentinels.size());
    e.connect_timeout = std::max<std::chrono::milliseconds>(share, std::chrono::milliseconds(10));
    e.command_timeout = std::min(config_.endpoint.command_timeout, e.connect_timeout);
    e.health_check = config_.endpoint.health_check;
    e.max_reply_bytes = config_.endpoint.max_reply_bytes;
    return e;
}

void SentinelLocator::locate(Located done) {
    auto lookup = std::make_shared<Lookup>();
    lookup->done = std::move(done);
    std::erase_if(lookups_, [](const std::weak_ptr<Lookup>& l) { return l.expired(); });
    lookups_.push_back(lookup);
    ask(lookup);
}

void SentinelLocator::ask(const std::shared_ptr<Lookup>& lookup) {
    if (closed_) return;
    const std::size_t n = config_.sentinels.size();
    if (lookup->tried == n) {
        lookup->done(make_error_code(lookup->refused_auth ? errc::auth_failed : errc::unavailable),
                     "no sentinel gave the address of master '" + config_.master_name + "' (" + lookup->reasons + ")",
                     {});
        return;
    }
    const std::size_t index = (preferred_ + lookup->tried) % n;
    ++lookup->tried;
    const std::string at = config_.sentinels[index].where();
    auto failed = [this, lookup, at](const std::string& why) {
        if (!lookup->reasons.empty()) lookup->reasons += "; ";
        lookup->reasons += "sentinel " + at + ": " + why;
        if (lookup->connection) lookup->connection->close();
        lookup->connection.reset();
        ask(lookup);
    };
    lookup->connection = std::make_shared<Connection>(io_, sentinel_endpoint(index));
    lookup->connection->connect([this, lookup, failed, index](std::error_code ec, const std::string& message) {
        if (closed_) return;
        if (ec) {
            // "keylock: cannot connect to Redis at …: why", "keylock: TLS handshake with … failed:
            // why", "keylock: Redis at … refused AUTH (why)": the whole sentence, without "keylock: ".
            if (ec == errc::auth_failed) lookup->refused_auth = true;
            constexpr std::string_view ours = "keylock: ";
            failed(message.starts_with(ours) ? message.substr(ours.size()) : message);
            return;
        }
        lookup->connection->send({"SENTINEL", "get-master-addr-by-name", config_.master_name},
                                 [this, lookup, failed, index](std::error_code ec, Reply r) {
                                     if (closed_) return;
                                     if (ec) return failed("no answer");
                                     if (r.is_error()) return failed("answered '" + detail::shown(r.str) + "'");
                                     if (r.is_nil() || (r.type == Reply::Type::array && r.elements.empty())) {
                                         return failed("does not know master '" + config_.master_name + "'");
                                     }
                                     // [host, port]
                                     const bool pair = r.type == Reply::Type::array && r.elements.size() == 2 &&
                                                       r.elements[0].type == Reply::Type::string &&
                                                       !r.elements[0].str.empty();
                                     const auto port = pair ? parse_port(r.elements[1].str) : std::nullopt;
                                     if (!port) return failed("answered with something that is not an address");
                                     const HostPort master{r.elements[0].str, *port};
                                     preferred_ = index;
                                     lookup->connection->close();
                                     lookup->connection.reset();
                                     lookup->done({}, {}, master);
                                 });
    });
}

void SentinelLocator::watch(std::function<void(const HostPort&)> on_switch) {
    on_switch_ = std::move(on_switch);
    watching_ = preferred_;
    subscribe();
}

void SentinelLocator::subscribe() {
    if (closed_) return;
    watch_ = std::make_shared<Connection>(io_, sentinel_endpoint(watching_));
    std::weak_ptr<Connection> weak = watch_;
    auto again = [this, weak](std::error_code, const std::string&) {
        if (closed_ || watch_ != weak.lock()) return;
        watch_.reset();
        watching_ = (watching_ + 1) % config_.sentinels.size();
        rewatch_.expires_after(std::chrono::seconds(1));
        rewatch_.async_wait([this](boost::system::error_code ec) {
            if (!ec) subscribe();
        });
    };
    watch_->on_failure(again);
    watch_->on_push([this](Reply r) {
        HostPort to;
        if (r.elements.size() == 3 && on_switch_ && parse_switch_master(r.elements[2].str, config_.master_name, to)) {
            on_switch_(to);
        }
    });
    watch_->connect([again](std::error_code ec, const std::string& message) {
        if (ec) again(ec, message);
    });
    watch_->send({"SUBSCRIBE", "+switch-master"}, [](std::error_code, const Reply&) {});
}

void SentinelLocator::close() {
    closed_ = true;
    rewatch_.cancel();
    if (watch_) watch_->close();
    watch_.reset();
    // A lookup and its connection's pending callbacks refer to each other: closing the
    // connection drops the callbacks, and with them the lookup.
    for (const auto& weak : lookups_) {
        if (auto lookup = weak.lock(); lookup && lookup->connection) lookup->connection->close();
    }
    lookups_.clear();
}

}  // namespace keylock::redis
