// SPDX-License-Identifier: BSL-1.0
// One key of the Redis backend, as a state machine: its queue of local waiters, its local
// holder, its attempt, its subscription, and every decision taken about them. It does no I/O
// and reads no clock: the backend feeds it events (an attempt's answer, a notification, a timer)
// and carries out what it asks for through KeyLock::Host (send an attempt, subscribe, arm a
// timer at a time, complete a waiter, free the key). tests/test_redis_key_lock.cpp drives it
// with a fake clock and a recording host, without sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <system_error>

#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>

namespace keylock::redis {

/// At most this many local hand-overs in a row before a real release, so that other processes
/// waiting for the key get their turn.
inline constexpr int kMaxTransfers = 16;

/// How often a waiter looks again while release notifications cannot be had.
inline constexpr std::chrono::milliseconds kPollWithoutNotifications{200};

/// Whether an attempt (or a release) that went unanswered with `ec` is tried again, every 50 ms
/// up to connect_timeout: only when Redis could not be reached; a refusal (credentials, an ACL)
/// or a protocol error is final. KeyLock, ModalLocks and abandon_hold (watchdog.hpp) go by it.
inline bool retried_unanswered(std::error_code ec) noexcept { return ec == errc::unavailable; }

/// A local wait for a key, as the key's queue knows it. The backend's record derives from it.
struct QueuedWaiter {
    std::uint64_t id = 0;
    detail::Deadline deadline = detail::Deadline::max();
    bool expired = false;  // the deadline passed while this waiter's attempt was in flight
    bool waited = false;   // could not be granted at once (counts as contended)
    bool told = false;     // has been told "held" (or had no answer): its deadline ends it at once
};

/// What the answer to an acquire attempt says.
struct AttemptOutcome {
    enum class Kind : std::uint8_t {
        granted,    ///< the lock is ours (with `fence`), once the backend has confirmed it
        held,       ///< someone else holds it for `pttl` ms more
        no_answer,  ///< Redis could not be asked: `ec` (unavailable, auth_failed, …) and `why`
        failed,     ///< an answer that is an error, or not the script's: `ec` and `why`
    };
    Kind kind = Kind::no_answer;
    std::uint64_t fence = 0;  ///< granted: the fencing token
    long long pttl = 0;       ///< held: the holder's lease left, in ms (-1: none, -2: gone meanwhile)
    bool back_off = false;    ///< held: a quorum split between contenders; wait `pttl` whatever is heard
    std::error_code ec;
    std::string why;
};

class KeyLock {
public:
    using Clock = detail::Clock;

    /// What a key asks of the backend. Each call is made on the I/O thread, from within one of
    /// the key's events; `free` is always the last thing an event does.
    class Host {
    public:
        Host(const Host&) = delete;
        Host& operator=(const Host&) = delete;

        /// The time now (a fake clock in tests).
        virtual Clock::time_point now() = 0;
        /// A random pause of 0 to 10 ms, so that processes do not retry in step.
        virtual std::chrono::milliseconds jitter() = 0;
        /// Send an acquire attempt with a new owner token; its answer comes back as `answered`.
        virtual void send_attempt(KeyLock& key) = 0;
        /// Subscribe to the key's release notifications; the outcome comes back as `subscribed`.
        virtual void subscribe(KeyLock& key) = 0;
        virtual void unsubscribe(KeyLock& key) = 0;
        /// Call `retry_due` at `at` (replacing the time armed before), or not at all.
        virtual void arm_retry(KeyLock& key, Clock::time_point at) = 0;
        virtual void cancel_retry(KeyLock& key) = 0;
        /// Call `deadline_passed(w)` at `w->deadline`, or not at all.
        virtual void arm_deadline(QueuedWaiter* w) = 0;
        virtual void cancel_deadline(QueuedWaiter* w) = 0;
        /// `w` has left the queue: report the outcome (`why`: the reason of an error, for its
        /// message) and free it.
        virtual void complete(QueuedWaiter* w, std::error_code ec, detail::Acquired acquired, std::string why) = 0;
        /// A grant that nobody is waiting for any more: release it at once.
        virtual void give_back(detail::Hold* hold) = 0;
        /// Nothing refers to the key any more: drop it (this destroys `key`).
        virtual void free(KeyLock& key) = 0;

    protected:
        Host() = default;
        ~Host() = default;
    };

    /// The same for every key of a backend.
    struct Rules {
        /// A Redlock quorum: no hand-over in place, and a notification wakes a waiter after a
        /// random pause rather than at once.
        bool quorum = false;
        /// How long a run of `unavailable` attempts is retried before its waiters fail.
        std::chrono::milliseconds connect_timeout{};
    };

    /// `lock_key`: the key in Redis, also the channel its releases are published on;
    /// `fence_key`: the fencing counter of its slot.
    KeyLock(Host& host, const Rules& rules, std::string key, std::string lock_key, std::string fence_key)
        : host_(host),
          rules_(rules),
          key_(std::move(key)),
          lock_key_(std::move(lock_key)),
          fence_key_(std::move(fence_key)) {}
    KeyLock(const KeyLock&) = delete;
    KeyLock& operator=(const KeyLock&) = delete;
    ~KeyLock() = default;

    const std::string& key() const noexcept { return key_; }
    const std::string& lock_key() const noexcept { return lock_key_; }
    const std::string& fence_key() const noexcept { return fence_key_; }
    /// Held by this process (until its release is confirmed), or an attempt under way.
    bool busy() const noexcept { return holder_ != nullptr || attempting_; }
    /// Waiting for someone else's release with no subscription: it must look again itself.
    bool waiting_unsubscribed() const noexcept { return waiting_remote_ && !subscribed_; }
    std::size_t queued() const noexcept { return queue_.size(); }

    // ---- events: each may end with `Host::free`, after which the key must not be touched ----

    /// A new local waiter, at the back of the queue.
    void enqueue(QueuedWaiter* w);
    /// `w`'s deadline has passed (its timer fired).
    void deadline_passed(QueuedWaiter* w);
    /// `w` leaves the queue with `why` (a cancellation).
    void cancel(QueuedWaiter* w, errc why);

    /// The answer to the attempt in flight. `granted` keeps the attempt under way: the backend
    /// confirms it (WAIT for replicas, when asked) and then calls `granted` or `unconfirmed`.
    void answered(const AttemptOutcome& outcome);
    /// A grant, confirmed: `hold` is the backend's new hold of the key.
    void granted(detail::Hold* hold, std::uint64_t fence);
    /// A grant the replicas did not confirm (`why`): the backend has released it already.
    void unconfirmed(const std::string& why);
    /// A grant whose answer came after the lease it granted had run out: the lock may be
    /// someone else's already, so it is never handed out. The backend has given it back
    /// (token-checked); the key tries again at once, after failing the waiters out of time.
    void granted_too_late();

    /// The answer to `Host::subscribe`: `unavailable` (no notifications for now: poll), or
    /// `auth_failed` (an ACL refuses the channel: the waiters fail).
    void subscribed(std::error_code ec);
    /// A release notification: the key may be free now.
    void notified() { wake(); }
    /// The server ended the subscription (a Cluster slot moved): look again, and subscribe
    /// again where the slot is now if it still has to wait.
    void unsubscribed();
    /// The subscriber connection broke: notifications may have been missed.
    void notifications_lost() noexcept { subscribed_ = false; }
    /// Look again now if waiting for someone else's release (the retry timer fired, or
    /// notifications were lost).
    void retry_due();

    /// lock_all's fast path (one script for several keys) is taking this key, which was not in
    /// use: attempts wait for its outcome as for an attempt of the key's own (local waiters
    /// queue meanwhile, and get the key from the fast path's hold by hand-over).
    void reserve() noexcept { attempting_ = true; }
    /// The fast path took the key: `hold` is the backend's new hold of it, which is the key's
    /// holder from now on (given to no waiter). A waiter whose deadline passed meanwhile ends.
    void adopt(detail::Hold* hold);
    /// The fast path did not take the key: attempts go on as usual (frees the key if unused).
    void unreserve();

    /// How the holder's release goes.
    enum class Release : std::uint8_t {
        hand_over,  ///< a local waiter is next: transfer the lock in one round trip
        release,    ///< delete it in Redis (token-checked)
    };
    /// The holder is being released; `lost`: it is not ours any more, as far as we know.
    Release release_by(bool lost);
    /// The holder's release (or a failed hand-over) is done: the key is free of it.
    void released();
    /// A hand-over succeeded: the holder is gone and the new grant is under way, to be confirmed
    /// as for `answered`.
    void handed_over();

private:
    void pump();
    void attempt();
    void held_elsewhere(long long pttl, bool back_off);
    void no_answer(std::error_code ec, const std::string& why);
    void fail_all(std::error_code ec, const std::string& why);
    bool drop_expired(errc code = errc::timeout, const std::string& why = {});
    void finish(QueuedWaiter* w, std::error_code ec, detail::Acquired a, bool then_settle = true, std::string why = {});
    void settle();
    void wake();
    void arm_retry(std::chrono::milliseconds after);

    Host& host_;
    const Rules& rules_;
    const std::string key_;
    const std::string lock_key_;
    const std::string fence_key_;
    std::deque<QueuedWaiter*> queue_;
    detail::Hold* holder_ = nullptr;     // held by this process (until its release is confirmed)
    bool attempting_ = false;            // an acquire (or its confirmation) is in flight
    bool releasing_ = false;             // the holder's release (not a hand-over) is in flight
    bool waiting_remote_ = false;        // held elsewhere: waiting for a notification or the retry timer
    bool subscribed_ = false;            // subscription asked for (confirmed or not)
    bool look_again_ = false;            // a release, or our subscription, came while an attempt was in flight
    int transfers_ = 0;                  // hand-overs within this process in a row
    Clock::time_point first_failure_{};  // of the current run of unavailable attempts
    Clock::time_point backoff_until_{};  // a quorum split between contenders: no retry before this
    Clock::time_point retry_at_{};       // when the retry timer was last armed for
    std::string failure_;                // why the last of them failed (for the messages)
};

}  // namespace keylock::redis
