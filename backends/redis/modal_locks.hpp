// SPDX-License-Identifier: BSL-1.0
// Shared, upgrade and permit holds on Redis, and conversions between modes (the scripts are in
// mode_scripts.hpp; the data layout in docs/design.md). Exclusive acquisitions stay with each
// key's KeyLock (key_lock.hpp); this part keeps, per key in use, a FIFO queue of this process's
// modal requests, of which the one at the front asks Redis (one attempt in flight per key), so
// that a large permit request or a conversion is not overtaken by the requests behind it. The
// front's attempt carries the requests right behind it that the same script can grant too (a
// run of shared requests, or of permit requests of one limit; up to 64): Redis grants them in
// order as far as they fit, in one round trip, and those that do not fit stay at the front. A
// request that finds the key taken waits for a release on the key's channel, or at most half a
// lease (a waiting writer's intent lasts one lease: the retry renews it), then asks again.
//
// Every grant is its own hold, with its own member in the key's sorted set and its own owner
// token (the same for every retry of one request, so a retry finds an earlier grant whose
// answer was lost); the watchdog renews it with the others. I/O thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/detail/backend.hpp>

#include "redis_config.hpp"
#include "replication.hpp"
#include "servers.hpp"
#include "src/tally.hpp"
#include "watchdog.hpp"

namespace keylock::redis {

/// The scripts of modal holds, publishing with PUBLISH or (Redis Cluster) SPUBLISH.
struct ModalScripts {
    explicit ModalScripts(bool sharded);
    Script acquire_shared, acquire_permits, release_member, convert, drop_intent, abandon_member;
};

class ModalLocks {
public:
    /// What the backend does for the modal part.
    class Host {
    public:
        Host(const Host&) = delete;
        Host& operator=(const Host&) = delete;
        /// Subscribes to (and ends a subscription to) a lock key's channel, counted with the
        /// key's KeyLock's own subscription.
        virtual void subscribe(const std::string& channel, std::function<void(std::error_code)> done) = 0;
        virtual void unsubscribe(const std::string& channel) = 0;
        /// `from` was converted and is gone: the backend forgets it (and tells the key's KeyLock,
        /// whose holder it was if it is an exclusive hold the KeyLock granted).
        virtual void retire(RedisHold* from) = 0;
        /// A random pause of 0 to 10 ms.
        virtual std::chrono::milliseconds jitter() = 0;
        /// A new owner token.
        virtual std::string next_token() = 0;
        /// The last key with modal requests is done (the backend may finish closing).
        virtual void modal_idle() = 0;
        /// Reports the outcome of the wait `op` (which cannot be cancelled after this).
        virtual void complete(detail::AsyncWaiter* op, std::error_code ec, detail::Acquired a,
                              const std::string& why) = 0;

    protected:
        Host() = default;
        ~Host() = default;
    };

    ModalLocks(boost::asio::io_context& io, const RedisConfig& config, Servers& servers, Watchdog& watchdog,
               const Replication& replication, std::chrono::milliseconds validity, detail::Tally& tally, Host& host);
    ModalLocks(const ModalLocks&) = delete;
    ModalLocks& operator=(const ModalLocks&) = delete;
    ~ModalLocks();

    const ModalScripts& scripts() const noexcept { return scripts_; }

    /// A shared, upgrade or permit acquisition, or a conversion (`request.from`, a RedisHold of
    /// `key`); `id` names it for cancel(). Reports through `op`.
    void enqueue(std::uint64_t id, detail::AsyncWaiter* op, const std::string& key, const detail::Request& request);
    /// Ends the wait `id` with `why`, or (its attempt in flight) once that attempt has answered.
    /// False if `id` is not a modal wait.
    bool cancel(std::uint64_t id, errc why);

    /// A release was published on `key`'s channel.
    void notified(const std::string& key);
    /// The server ended the subscription of `key` (a Cluster slot moved).
    void unsubscribed(const std::string& key);
    /// A subscriber connection broke: every waiting key looks again.
    void notifications_lost();

    /// Modal requests wait for `key` in this process: its exclusive holder must not hand it over
    /// within the process past them.
    bool waiting_for(const std::string& key) const;
    /// No modal wait and no attempt under way.
    bool idle() const noexcept { return keys_.empty(); }
    std::size_t keys() const noexcept { return keys_.size(); }
    /// Stops every timer (the backend is closing, nothing is waiting).
    void close();
    /// Removes the holds that owner token `owner` may have in `lock_key` (an attempt, or a
    /// release, that went unanswered), tried again every 50 ms while Redis cannot be reached,
    /// up to connect_timeout.
    void abandon(const std::string& lock_key, const std::string& owner);

private:
    struct Key;
    struct Waiter;
    struct Grant;

    Key& key_state(const std::string& key);
    void pump(Key& k);
    void attempt(Key& k);
    void answered(const std::string& key, const std::vector<std::uint64_t>& ids, std::error_code ec, const Reply& r,
                  const std::shared_ptr<Connection>& conn, detail::BootClock::time_point sent);
    void converted(Key& k, Waiter* w, const Reply& r, const std::shared_ptr<Connection>& conn,
                   detail::BootClock::time_point sent);
    void conclude(Key& k, const std::vector<Grant>& grants, const std::vector<std::uint64_t>& refused, long long ms,
                  std::uint32_t full, detail::BootClock::time_point sent, const std::string& why);
    void hand_out(Key& k, Waiter* w, std::uint64_t fence, const std::string& member,
                  detail::BootClock::time_point sent);
    void held(Key& k, Waiter* w, long long ms);
    void finish(Key& k, Waiter* w, std::error_code ec, const std::string& why = {}, detail::Acquired acquired = {});
    void drop(Key& k, Waiter* w, std::error_code ec, const std::string& why = {}, detail::Acquired acquired = {});
    void give_back(const Key& k, const std::string& member);
    void wake(Key& k);
    void arm_retry(Key& k, std::chrono::milliseconds after);
    void settle(Key& k);

    boost::asio::io_context& io_;
    const RedisConfig& config_;
    Servers& servers_;
    Watchdog& watchdog_;
    const Replication& replication_;
    const std::chrono::milliseconds validity_;
    detail::Tally& tally_;
    Host& host_;
    const ModalScripts scripts_;
    const std::string lease_ms_;
    std::unordered_map<std::string, std::unique_ptr<Key>> keys_;
    std::unordered_map<std::uint64_t, Waiter*> waiters_;
};

}  // namespace keylock::redis
