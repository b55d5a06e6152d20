// SPDX-License-Identifier: BSL-1.0
// The Redis backend's watchdog: lease renewals in one pipelined batch every lease/3.
#include "watchdog.hpp"

#include "key_lock.hpp"
#include "lease.hpp"

#include <algorithm>
#include <memory>
#include <utility>

namespace keylock::redis {

namespace {

/// One abandon_hold, sent again while unanswered.
struct Abandon {
    boost::asio::io_context* io;
    Servers* servers;
    const Script* script;
    std::string lock_key, owner;
    std::chrono::steady_clock::time_point until;
    std::function<bool()> stopped;

    bool stop() const { return stopped && stopped(); }

    void operator()() const {
        servers->eval(Op::release, *script, {lock_key}, {owner, lock_key},
                      [r = *this](std::error_code ec, const Reply&, const std::shared_ptr<Connection>&) {
                          if (!retried_unanswered(ec) || r.stop() || std::chrono::steady_clock::now() >= r.until)
                              return;
                          auto timer =
                              std::make_shared<boost::asio::steady_timer>(*r.io, std::chrono::milliseconds(50));
                          timer->async_wait([r, timer](boost::system::error_code e) {
                              if (!e && !r.stop()) r();
                          });
                      });
    }
};

}  // namespace

void abandon_hold(boost::asio::io_context& io, Servers& servers, const Script& script, const std::string& lock_key,
                  const std::string& owner, std::chrono::steady_clock::time_point until,
                  std::function<bool()> stopped) {
    Abandon{&io, &servers, &script, lock_key, owner, until, std::move(stopped)}();
}

Watchdog::Watchdog(boost::asio::io_context& io, const RedisConfig& config, Servers& servers, const Script& extend,
                   const Script& extend_member, const Replication& replication, std::chrono::milliseconds validity,
                   std::function<void(RedisHold*)> lost)
    : config_(config),
      servers_(servers),
      extend_(extend),
      extend_member_(extend_member),
      replication_(replication),
      validity_(validity),
      lease_ms_(std::to_string(config.lease.count())),
      lost_(std::move(lost)),
      timer_(io) {}

void Watchdog::start() { arm(); }

bool Watchdog::guarded() const noexcept {
    return std::any_of(holds_.begin(), holds_.end(), [](const RedisHold* h) { return !h->releasing; });
}

void Watchdog::arm() {
    timer_.expires_after(std::max<std::chrono::milliseconds>(config_.lease / 3, std::chrono::milliseconds(1)));
    timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        renew_all();
        if (!stopping_ || !holds_.empty()) arm();
    });
}

void Watchdog::renew_all() {
    const auto now = lease::Clock::now();  // a renewal counts from when it was sent
    for (RedisHold* h : holds_) {
        if (h->releasing) continue;  // its guard is gone
        if (h->lost()) {
            lost_(h);
            continue;
        }
        // The reply may come after this hold is gone and a new one lives at its address (a
        // hand-over replaces the hold): it counts only for the same acquisition (token).
        const std::string lock_key = config_.prefix + h->key;
        servers_.eval(Op::extend, h->member ? extend_member_ : extend_, {lock_key}, {h->token, lease_ms_},
                      [this, h, token = h->token, now](std::error_code ec, const Reply& r,
                                                       const std::shared_ptr<Connection>& conn) {
                          if (!holds_.contains(h) || h->token != token || h->releasing || ec)
                              return;  // released meanwhile, or no answer
                          if (r.type == Reply::Type::integer && r.integer == 1) {
                              // With wait_replicas, a renewal counts once the replicas have it: a failover
                              // must not bring back an older, shorter lease than the holder counts on.
                              replication_.after(conn, [this, h, token, now](const std::string& why) {
                                  if (!why.empty() || !holds_.contains(h) || h->token != token || h->releasing) return;
                                  if (!h->lost()) h->valid_until(now + validity_);
                              });
                          } else if (r.type == Reply::Type::integer ||
                                     (r.is_error() && r.str.find("WRONGTYPE") != std::string::npos)) {
                              lost_(h);  // gone, or someone else's now (perhaps not even a lock)
                          }
                      });
    }
}

}  // namespace keylock::redis
