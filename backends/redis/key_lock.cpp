// SPDX-License-Identifier: BSL-1.0
// One key of the Redis backend, as a state machine (see key_lock.hpp): queue → attempt →
// granted, or → subscribe → wait for a notification or the lease → attempt again.
#include "key_lock.hpp"

#include <algorithm>
#include <utility>
#include <vector>

namespace keylock::redis {

void KeyLock::enqueue(QueuedWaiter* w) {
    queue_.push_back(w);
    if (w->deadline != detail::Deadline::max()) host_.arm_deadline(w);
    if (holder_ != nullptr || attempting_ || waiting_remote_ || queue_.size() > 1) w->waited = true;
    pump();
}

void KeyLock::deadline_passed(QueuedWaiter* w) {
    if ((attempting_ || releasing_) && !queue_.empty() && queue_.front() == w && !w->told) {
        // Its first attempt is in flight (a try_lock's one attempt, or a deadline shorter than
        // a round trip), or is about to be sent once this process's own release of the key has
        // been answered (a try_lock right after a guard's destructor): that attempt decides,
        // within command_timeout.
        w->expired = true;
        return;
    }
    // A waiter that has had its answer ("held") ends at its deadline, whatever is in flight:
    // what the attempt wins goes to the next waiter, or back.
    // Out of time while Redis could not be reached: that is the reason, not a holder.
    if (first_failure_ != Clock::time_point{}) return finish(w, make_error_code(errc::unavailable), {}, true, failure_);
    finish(w, make_error_code(errc::timeout), {});
}

void KeyLock::cancel(QueuedWaiter* w, errc why) { finish(w, make_error_code(why), {}); }

/// Fails the waiters at the head whose deadline passed during the attempt with `code` (and
/// `why` for the message). Returns false (and frees the key if it can) when nobody is left
/// waiting.
bool KeyLock::drop_expired(errc code, const std::string& why) {
    while (!queue_.empty() && queue_.front()->expired) finish(queue_.front(), make_error_code(code), {}, false, why);
    if (!queue_.empty()) return true;
    settle();
    return false;
}

/// Ends a wait: takes the waiter out of the queue and reports.
void KeyLock::finish(QueuedWaiter* w, std::error_code ec, detail::Acquired a, bool then_settle, std::string why) {
    queue_.erase(std::find(queue_.begin(), queue_.end(), w));
    if (w->deadline != detail::Deadline::max()) host_.cancel_deadline(w);
    host_.complete(w, ec, a, std::move(why));  // a blocking caller may return right after this
    if (then_settle) settle();
}

/// Frees the key once nothing refers to it.
void KeyLock::settle() {
    if (!queue_.empty() || holder_ != nullptr || attempting_) return;
    host_.cancel_retry(*this);
    if (subscribed_) host_.unsubscribe(*this);
    host_.free(*this);
}

/// Starts an attempt if one is needed and none is under way.
void KeyLock::pump() {
    if (queue_.empty() || holder_ != nullptr || attempting_ || waiting_remote_) return;
    attempt();
}

void KeyLock::attempt() {
    attempting_ = true;
    waiting_remote_ = false;
    look_again_ = false;
    host_.send_attempt(*this);
}

void KeyLock::answered(const AttemptOutcome& outcome) {
    attempting_ = false;
    switch (outcome.kind) {
        case AttemptOutcome::Kind::no_answer: return no_answer(outcome.ec, outcome.why);
        case AttemptOutcome::Kind::failed: return fail_all(outcome.ec, outcome.why);
        case AttemptOutcome::Kind::granted:
            first_failure_ = {};
            attempting_ = true;  // still deciding: keeps the key, and other attempts out
            return;
        case AttemptOutcome::Kind::held: first_failure_ = {}; return held_elsewhere(outcome.pttl, outcome.back_off);
    }
}

/// The lock is ours: give it to the first waiter still waiting, or give it back at once if
/// none is.
void KeyLock::granted(detail::Hold* hold, std::uint64_t fence) {
    attempting_ = false;
    holder_ = hold;
    if (queue_.empty()) return host_.give_back(hold);
    finish(queue_.front(), {}, {hold, fence});
}

void KeyLock::granted_too_late() {
    attempting_ = false;
    if (!drop_expired()) return;
    attempt();  // it was ours a moment ago: most likely free, and no notification will say so
}

void KeyLock::unconfirmed(const std::string& why) {
    attempting_ = false;
    fail_all(make_error_code(errc::unavailable), "the lock was acquired on the master, but " + why +
                                                     "; it was released, since a failover could hand it out again");
}

/// Someone else holds the key for `pttl` ms more: wait for its release notification (or, if
/// that is missed, for the lease to run out), after failing the waiters out of time. With
/// `back_off` (a quorum whose nodes contenders split between them), wait `pttl` ms whatever is
/// heard meanwhile.
void KeyLock::held_elsewhere(long long pttl, bool back_off) {
    if (!drop_expired()) return;
    for (QueuedWaiter* w : queue_) w->waited = w->told = true;
    waiting_remote_ = true;
    if (!subscribed_) {
        // Subscribe first, then try again once: a release between our attempt and the
        // subscription would otherwise go unnoticed.
        subscribed_ = true;
        host_.subscribe(*this);
    }
    if (back_off) {
        // The release heard meanwhile was most likely a contender's giving up too.
        look_again_ = false;
        backoff_until_ = host_.now() + std::chrono::milliseconds(pttl);
        arm_retry(std::chrono::milliseconds(pttl));
        return;
    }
    if (std::exchange(look_again_, false)) {
        arm_retry(std::chrono::milliseconds(0));  // see wake() and subscribed()
        return;
    }
    // Never wait longer than the holder's lease (a crashed holder's lock frees itself then),
    // plus a little jitter so that waiters of several processes do not retry in step.
    const std::chrono::milliseconds wait =
        pttl >= 0 ? std::chrono::milliseconds(pttl) : std::chrono::milliseconds(pttl == -2 ? 0 : 1000);
    arm_retry(wait + host_.jitter());
}

void KeyLock::subscribed(std::error_code ec) {
    if (ec == errc::auth_failed) {
        subscribed_ = false;
        return fail_all(ec, "this user may not subscribe to channel " + lock_key_ +
                                " (waiters hear releases there; see the minimum ACL in docs/configuration.md)");
    }
    if (ec) {
        // No notifications for now (the subscriber is down): look again soon rather than at the
        // end of the holder's lease.
        subscribed_ = false;
        if (waiting_remote_ && retry_at_ > host_.now() + kPollWithoutNotifications)
            arm_retry(kPollWithoutNotifications + host_.jitter());
        return;
    }
    // An attempt in flight may have been sent before the subscription took effect: only one
    // sent after it is sure to be followed by a notification.
    wake();
}

void KeyLock::unsubscribed() {
    subscribed_ = false;
    wake();
}

/// The key's next attempt, `after` from now unless something wakes it earlier.
void KeyLock::arm_retry(std::chrono::milliseconds after) {
    retry_at_ = host_.now() + after;
    host_.arm_retry(*this, retry_at_);
}

void KeyLock::retry_due() {
    if (!waiting_remote_) return;
    waiting_remote_ = false;
    host_.cancel_retry(*this);
    pump();
}

/// The key may be free now (a release was heard, or our subscription took effect).
void KeyLock::wake() {
    // Notifications and replies come on different connections, and Redis writes its replies
    // newest client first: a release may be heard of before the answer to our attempt, which
    // ran before it and will say "held". Keep it for that answer.
    if (attempting_) {
        look_again_ = true;
        return;
    }
    if (!waiting_remote_ || host_.now() < backoff_until_) return;
    if (rules_.quorum) {
        // A quorum: contenders that split the nodes between them release what they took and
        // hear each other's releases; a random pause keeps them out of step.
        arm_retry(host_.jitter());
        return;
    }
    retry_due();
}

/// The attempt could not reach Redis. Credentials or protocol errors fail the waiters at once;
/// a connection problem is retried with back-off for up to connect_timeout.
void KeyLock::no_answer(std::error_code ec, const std::string& why) {
    if (!retried_unanswered(ec)) return fail_all(ec, why);
    const auto now = host_.now();
    if (first_failure_ == Clock::time_point{}) first_failure_ = now;
    failure_ = why;
    if (now - first_failure_ >= rules_.connect_timeout) return fail_all(ec, why);
    if (!drop_expired(errc::unavailable, why)) return;  // e.g. a try_lock: its one attempt failed
    waiting_remote_ = true;
    arm_retry(std::chrono::milliseconds(50) + host_.jitter());
}

/// Fails every waiter, then frees the key if nothing else refers to it.
void KeyLock::fail_all(std::error_code ec, const std::string& why) {
    first_failure_ = {};
    const std::vector<QueuedWaiter*> all(queue_.begin(), queue_.end());
    for (QueuedWaiter* w : all) finish(w, ec, {}, false, why);
    settle();
}

void KeyLock::adopt(detail::Hold* hold) {
    attempting_ = false;
    holder_ = hold;
    while (!queue_.empty() && queue_.front()->expired)
        finish(queue_.front(), make_error_code(errc::timeout), {}, false);
}

void KeyLock::unreserve() {
    attempting_ = false;
    pump();
    settle();
}

KeyLock::Release KeyLock::release_by(bool lost) {
    // A quorum never hands over in place: each node counts fencing tokens on its own.
    if (!lost && !rules_.quorum && !queue_.empty() && transfers_ < kMaxTransfers) return Release::hand_over;
    transfers_ = 0;
    releasing_ = true;
    return Release::release;
}

void KeyLock::released() {
    holder_ = nullptr;
    releasing_ = false;
    pump();
    settle();
}

void KeyLock::handed_over() {
    holder_ = nullptr;
    ++transfers_;
    attempting_ = true;  // the new grant is being confirmed
}

}  // namespace keylock::redis
