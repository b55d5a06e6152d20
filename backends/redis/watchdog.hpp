// SPDX-License-Identifier: BSL-1.0
// The Redis backend's holds and their watchdog: every lease/3 it renews every held lease in one
// pipelined batch, and tells the backend of each hold it finds lost. I/O thread only.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <unordered_set>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/detail/backend.hpp>

#include "redis_config.hpp"
#include "replication.hpp"
#include "servers.hpp"

namespace keylock::redis {

/// A lock held through this backend, written on the I/O thread. Its lease's end (LeasedHold::
/// valid_until) is that of the last confirmed renewal: past it the lock may be someone else's,
/// so the hold counts as lost even before the watchdog says so.
struct RedisHold final : detail::LeasedHold {
    std::string key;
    std::string token;  // the lock key's value (see scripts.hpp), or a modal hold's member
    detail::Mode mode = detail::Mode::exclusive;
    bool member = false;     // `token` is a member of the key's sorted set (shared, upgrade, permits)
    bool modal = false;      // granted by ModalLocks (a conversion's exclusive hold too), not by a KeyLock
    bool releasing = false;  // its release is under way (no guard refers to it)
};

/// Deletes what owner token `owner` may hold in `lock_key` after an attempt, a release or a
/// hand-over that went unanswered (and may or may not have run), with `script` (an abandon
/// script: KEYS `lock_key`, ARGV `owner` and `lock_key`). Its connection broke just now, most
/// likely: while it goes unanswered in a way retried_unanswered (key_lock.hpp) allows, it is
/// sent again every 50 ms until `until`, unless `stopped` (if given) says so first. `servers`
/// and `script` must outlive the retries.
void abandon_hold(boost::asio::io_context& io, Servers& servers, const Script& script, const std::string& lock_key,
                  const std::string& owner, std::chrono::steady_clock::time_point until,
                  std::function<bool()> stopped = {});

class Watchdog {
public:
    /// `lost`: a hold was found lost while held (Backend::mark_lost). `extend` and `replication`
    /// are the backend's and outlive the watchdog; `validity` is how long a hold counts on its
    /// lease after the renewal was sent.
    /// `extend_member` renews the holds that are members of a sorted set (RedisHold::member).
    Watchdog(boost::asio::io_context& io, const RedisConfig& config, Servers& servers, const Script& extend,
             const Script& extend_member, const Replication& replication, std::chrono::milliseconds validity,
             std::function<void(RedisHold*)> lost);

    /// Starts the rounds (on the I/O thread).
    void start();
    /// After close(): the first round that finds no hold is the last.
    void stop_when_idle() noexcept { stopping_ = true; }
    /// Ends the rounds now.
    void cancel() { timer_.cancel(); }

    void add(RedisHold* h) { holds_.insert(h); }
    void remove(RedisHold* h) { holds_.erase(h); }
    bool empty() const noexcept { return holds_.empty(); }
    /// Whether a guard still refers to one of the holds (one whose release has not begun).
    bool guarded() const noexcept;

private:
    void arm();
    /// Renews every held lease, all in one pipelined batch; a lease that could not be renewed
    /// before it ran out, or that turns out to be someone else's now, is lost.
    void renew_all();

    const RedisConfig& config_;
    Servers& servers_;
    const Script& extend_;
    const Script& extend_member_;
    const Replication& replication_;
    const std::chrono::milliseconds validity_;
    const std::string lease_ms_;
    std::function<void(RedisHold*)> lost_;
    boost::asio::steady_timer timer_;
    std::unordered_set<RedisHold*> holds_;
    bool stopping_ = false;
};

}  // namespace keylock::redis
