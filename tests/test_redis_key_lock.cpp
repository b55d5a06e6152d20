// SPDX-License-Identifier: BSL-1.0
// The Redis backend's per-key state machine (backends/redis/key_lock.hpp), without sockets: a
// fake clock and a host that records what the key asks for, driven event by event.
#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "backends/redis/key_lock.hpp"

using keylock::errc;
using keylock::detail::Acquired;
using keylock::detail::Deadline;
using keylock::detail::Hold;
using keylock::redis::AttemptOutcome;
using keylock::redis::KeyLock;
using keylock::redis::kMaxTransfers;
using keylock::redis::kPollWithoutNotifications;
using keylock::redis::QueuedWaiter;
using Clock = KeyLock::Clock;
using std::chrono::milliseconds;

namespace {

/// The backend, as far as one key can tell: a clock the test moves, and a record of each thing
/// the key asked for.
class Fake final : public KeyLock::Host {
public:
    struct Completion {
        QueuedWaiter* waiter;
        std::error_code ec;
        Acquired acquired;
        std::string why;
    };

    explicit Fake(KeyLock::Rules rules = {.quorum = false, .connect_timeout = milliseconds(5000)})
        : rules_(rules), key(std::make_unique<KeyLock>(*this, rules_, "k", "keylock:k", "keylock:fence:{x}")) {}

    Clock::time_point now() override { return time; }
    milliseconds jitter() override { return jitter_ms; }
    void send_attempt(KeyLock& /*key*/) override { ++attempts; }
    void subscribe(KeyLock& /*key*/) override { ++subscribes; }
    void unsubscribe(KeyLock& /*key*/) override { ++unsubscribes; }
    void arm_retry(KeyLock& /*key*/, Clock::time_point at) override { retry_at = at; }
    void cancel_retry(KeyLock& /*key*/) override { retry_at.reset(); }
    void arm_deadline(QueuedWaiter* w) override { deadlines.insert(w); }
    void cancel_deadline(QueuedWaiter* w) override { deadlines.erase(w); }
    void complete(QueuedWaiter* w, std::error_code ec, Acquired a, std::string why) override {
        done.push_back({w, ec, a, std::move(why)});
    }
    void give_back(Hold* hold) override { given_back.push_back(hold); }
    void free(KeyLock& /*key*/) override { key.reset(); }  // as the backend does: the key is gone

    /// The time moves on by `d`; the retry timer fires if it is due.
    void advance(milliseconds d) {
        time += d;
        if (retry_at && *retry_at <= time) {
            retry_at.reset();
            key->retry_due();
        }
    }

    /// A waiter whose deadline is `after` from now (none: waits forever).
    QueuedWaiter* waiter(std::optional<milliseconds> after = std::nullopt) {
        auto& w = waiters.emplace_back(std::make_unique<QueuedWaiter>());
        w->id = waiters.size();
        if (after) w->deadline = time + *after;
        return w.get();
    }

    /// The key grants the lock, confirmed at once (no wait_replicas), as a new hold.
    Hold* grant(std::uint64_t fence) {
        key->answered(granted(fence));
        return confirm(fence);
    }
    Hold* confirm(std::uint64_t fence) {
        Hold* h = holds.emplace_back(std::make_unique<Hold>()).get();
        key->granted(h, fence);
        return h;
    }

    static AttemptOutcome granted(std::uint64_t fence) {
        AttemptOutcome o;
        o.kind = AttemptOutcome::Kind::granted;
        o.fence = fence;
        return o;
    }
    static AttemptOutcome held(long long pttl, bool back_off = false) {
        AttemptOutcome o;
        o.kind = AttemptOutcome::Kind::held;
        o.pttl = pttl;
        o.back_off = back_off;
        return o;
    }
    static AttemptOutcome no_answer(errc code, std::string why) {
        AttemptOutcome o;
        o.kind = AttemptOutcome::Kind::no_answer;
        o.ec = make_error_code(code);
        o.why = std::move(why);
        return o;
    }

    Clock::time_point time = Clock::time_point(std::chrono::seconds(1000));
    milliseconds jitter_ms{3};
    int attempts = 0;
    int subscribes = 0;
    int unsubscribes = 0;
    std::optional<Clock::time_point> retry_at;
    std::set<QueuedWaiter*> deadlines;
    std::vector<Completion> done;
    std::vector<Hold*> given_back;

private:
    KeyLock::Rules rules_;

public:
    std::unique_ptr<KeyLock> key;  // null once freed
    std::vector<std::unique_ptr<QueuedWaiter>> waiters;
    std::vector<std::unique_ptr<Hold>> holds;
};

/// Releases the holder (as the backend does: hand over if the key says so, else release).
KeyLock::Release release(Fake& f, bool lost = false) {
    const KeyLock::Release how = f.key->release_by(lost);
    if (how == KeyLock::Release::release) f.key->released();
    return how;
}

}  // namespace

TEST_CASE("a redis key serves its local waiters in FIFO order, one attempt at a time", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* a = f.waiter();
    QueuedWaiter* b = f.waiter();
    QueuedWaiter* c = f.waiter();
    f.key->enqueue(a);
    f.key->enqueue(b);
    f.key->enqueue(c);
    CHECK(f.attempts == 1);
    CHECK_FALSE(a->waited);
    CHECK(b->waited);
    CHECK(c->waited);

    Hold* h1 = f.grant(1);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].waiter == a);
    CHECK(f.done[0].acquired.hold == h1);
    CHECK(f.done[0].acquired.fence == 1);

    // Each release hands over to the next one in line.
    for (QueuedWaiter* next : {b, c}) {
        REQUIRE(release(f) == KeyLock::Release::hand_over);
        f.key->handed_over();
        Hold* h = f.confirm(f.done.size() + 1);
        CHECK(f.done.back().waiter == next);
        CHECK(f.done.back().acquired.hold == h);
        CHECK_FALSE(f.done.back().ec);
    }
    CHECK(f.attempts == 1);
    CHECK(release(f) == KeyLock::Release::release);
    CHECK(f.key == nullptr);  // nothing refers to it any more
}

TEST_CASE("a redis waiter out of time while its attempt is in flight fails after the attempt", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* head = f.waiter(milliseconds(100));
    QueuedWaiter* second = f.waiter(milliseconds(100));
    f.key->enqueue(head);
    f.key->enqueue(second);
    CHECK(f.deadlines.size() == 2);
    f.time += milliseconds(100);

    // The head's attempt is in flight: it must finish first (it may have taken the lock).
    f.key->deadline_passed(head);
    CHECK(f.done.empty());
    CHECK(head->expired);
    // Another waiter's deadline ends its wait at once.
    f.key->deadline_passed(second);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].waiter == second);
    CHECK(f.done[0].ec == errc::timeout);
    CHECK_FALSE(f.deadlines.contains(second));

    f.key->answered(Fake::held(5000));
    REQUIRE(f.done.size() == 2);
    CHECK(f.done[1].waiter == head);
    CHECK(f.done[1].ec == errc::timeout);
    CHECK(f.deadlines.empty());
    CHECK(f.subscribes == 0);  // nobody left to wait for the holder
    CHECK(f.key == nullptr);
}

TEST_CASE("a redis waiter that has waited ends at its deadline, even with an attempt in flight", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* w = f.waiter(milliseconds(1000));
    f.key->enqueue(w);
    f.key->answered(Fake::held(5000));  // it waits now
    f.key->notified();                  // a release: the key attempts again
    REQUIRE(f.attempts == 2);
    f.time = w->deadline;
    f.key->deadline_passed(w);  // that attempt is on the wire: the wait ends all the same
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].ec == errc::timeout);
    REQUIRE(f.key != nullptr);  // the attempt keeps the key
    f.key->answered(Fake::granted(9));
    Hold* h = f.confirm(9);
    CHECK(f.given_back == std::vector<Hold*>{h});  // nobody waits for it: given back at once
}

TEST_CASE("a redis release heard during an attempt makes the key look again", "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.key->notified();  // heard before the attempt's answer, which will say "held"
    f.key->answered(Fake::held(5000));
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time);  // at once, not at the end of the holder's lease
    f.advance(milliseconds(0));
    CHECK(f.attempts == 2);

    // Without that notification, the key waits for one (or the holder's lease).
    f.key->answered(Fake::held(5000));
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + milliseconds(5000) + f.jitter_ms);
}

TEST_CASE("a redis key held elsewhere subscribes, looks once more, then waits", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* w = f.waiter();
    f.key->enqueue(w);
    f.key->answered(Fake::held(5000));
    CHECK(f.subscribes == 1);
    CHECK(w->waited);
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + milliseconds(5000) + f.jitter_ms);
    CHECK(f.attempts == 1);

    // Subscribed: a release between the first attempt and the subscription would be missed,
    // so one more attempt.
    f.key->subscribed({});
    CHECK(f.attempts == 2);
    CHECK_FALSE(f.retry_at);

    // Still held: now it waits for a notification, without subscribing again.
    f.key->answered(Fake::held(4000));
    CHECK(f.subscribes == 1);
    CHECK(f.attempts == 2);
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + milliseconds(4000) + f.jitter_ms);

    f.key->notified();
    CHECK(f.attempts == 3);
    f.grant(7);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].waiter == w);
    release(f);
    CHECK(f.unsubscribes == 1);
    CHECK(f.key == nullptr);
}

TEST_CASE("a redis key without notifications looks again every kPollWithoutNotifications", "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.key->answered(Fake::held(30000));
    REQUIRE(f.subscribes == 1);
    f.key->subscribed(make_error_code(errc::unavailable));  // the subscriber is down
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + kPollWithoutNotifications + f.jitter_ms);

    for (int round = 2; round <= 4; ++round) {
        f.advance(kPollWithoutNotifications + f.jitter_ms);
        CHECK(f.attempts == round);
        f.key->answered(Fake::held(30000));
        CHECK(f.subscribes == round);  // tries to subscribe again each time
        f.key->subscribed(make_error_code(errc::unavailable));
        REQUIRE(f.retry_at);
        CHECK(*f.retry_at == f.time + kPollWithoutNotifications + f.jitter_ms);
    }

    // A subscription lost while waiting: the key looks again at once.
    f.advance(kPollWithoutNotifications + f.jitter_ms);
    f.key->answered(Fake::held(30000));
    f.key->subscribed({});
    f.key->answered(Fake::held(30000));
    const int before = f.attempts;
    f.key->notifications_lost();
    REQUIRE(f.key->waiting_unsubscribed());
    f.key->retry_due();
    CHECK(f.attempts == before + 1);
}

TEST_CASE("redis waiters that cannot reach Redis fail with unavailable and the reason", "[redis][key_lock]") {
    SECTION("at their deadline") {
        Fake f;
        QueuedWaiter* w = f.waiter(milliseconds(1000));
        f.key->enqueue(w);
        for (int i = 0; i < 3; ++i) {
            f.key->answered(Fake::no_answer(errc::unavailable, "Redis at h:1: refused"));
            CHECK(f.done.empty());
            REQUIRE(f.retry_at);
            CHECK(*f.retry_at == f.time + milliseconds(50) + f.jitter_ms);
            f.advance(milliseconds(50) + f.jitter_ms);
        }
        f.key->answered(Fake::no_answer(errc::unavailable, "Redis at h:1: refused"));
        f.time = w->deadline;
        f.key->deadline_passed(w);
        REQUIRE(f.done.size() == 1);
        CHECK(f.done[0].ec == errc::unavailable);
        CHECK(f.done[0].why == "Redis at h:1: refused");
        CHECK(f.key == nullptr);
    }
    SECTION("when its deadline passed during the attempt") {
        Fake f;
        QueuedWaiter* w = f.waiter(milliseconds(10));
        f.key->enqueue(w);
        f.key->deadline_passed(w);
        f.key->answered(Fake::no_answer(errc::unavailable, "Redis at h:1: timed out"));
        REQUIRE(f.done.size() == 1);
        CHECK(f.done[0].ec == errc::unavailable);
        CHECK(f.done[0].why == "Redis at h:1: timed out");
    }
    SECTION("after connect_timeout, even without a deadline") {
        Fake f;
        f.key->enqueue(f.waiter());
        f.key->enqueue(f.waiter());
        for (int i = 0; i < 1000 && f.done.empty(); ++i) {  // 53 ms apart: ~95 attempts in 5 s
            f.key->answered(Fake::no_answer(errc::unavailable, "Redis at h:1: refused"));
            if (f.done.empty()) f.advance(milliseconds(50) + f.jitter_ms);
        }
        REQUIRE(f.done.size() == 2);
        CHECK(f.done[1].ec == errc::unavailable);
        CHECK(f.done[1].why == "Redis at h:1: refused");
        CHECK(f.time - Clock::time_point(std::chrono::seconds(1000)) >= milliseconds(5000));
        CHECK(f.key == nullptr);
    }
    SECTION("at once when it refuses the credentials") {
        Fake f;
        f.key->enqueue(f.waiter());
        f.key->answered(Fake::no_answer(errc::auth_failed, "WRONGPASS"));
        REQUIRE(f.done.size() == 1);
        CHECK(f.done[0].ec == errc::auth_failed);
        CHECK(f.key == nullptr);
    }
}

TEST_CASE("a redis key hands over locally at most kMaxTransfers times in a row", "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.grant(1);
    for (int i = 0; i < kMaxTransfers; ++i) {
        f.key->enqueue(f.waiter());
        REQUIRE(release(f) == KeyLock::Release::hand_over);
        f.key->handed_over();
        f.confirm(static_cast<std::uint64_t>(i) + 2);
    }
    CHECK(f.done.size() == static_cast<std::size_t>(kMaxTransfers) + 1);
    // The next one is a real release, even with a waiter queued: other processes get a turn.
    QueuedWaiter* w = f.waiter();
    f.key->enqueue(w);
    CHECK(release(f) == KeyLock::Release::release);
    CHECK(f.attempts == 2);  // the queued waiter competes through Redis
    f.grant(100);
    CHECK(f.done.back().waiter == w);
    // And the count starts again.
    f.key->enqueue(f.waiter());
    CHECK(release(f) == KeyLock::Release::hand_over);
}

TEST_CASE("a redis hold found lost is released, not handed over", "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.grant(1);
    f.key->enqueue(f.waiter());
    CHECK(release(f, true) == KeyLock::Release::release);
    CHECK(f.attempts == 2);
}

TEST_CASE("a redis key on a quorum never hands over, and wakes after a random pause", "[redis][key_lock]") {
    Fake f({.quorum = true, .connect_timeout = milliseconds(5000)});
    f.key->enqueue(f.waiter());
    f.grant(1);
    f.key->enqueue(f.waiter());
    CHECK(release(f) == KeyLock::Release::release);
    CHECK(f.attempts == 2);
    f.key->answered(Fake::held(20, true));  // contenders split the nodes: back off 20 ms
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + milliseconds(20));
    f.key->notified();  // during the back-off: ignored
    CHECK(f.attempts == 2);
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + milliseconds(20));
    f.time += milliseconds(20);
    f.key->notified();  // after it: a pause of jitter, not at once
    CHECK(f.attempts == 2);
    REQUIRE(f.retry_at);
    CHECK(*f.retry_at == f.time + f.jitter_ms);
    f.advance(f.jitter_ms);
    CHECK(f.attempts == 3);
}

TEST_CASE("a redis grant with nobody left waiting is given back at once", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* w = f.waiter();
    f.key->enqueue(w);
    f.key->cancel(w, errc::cancelled);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].ec == errc::cancelled);
    REQUIRE(f.key != nullptr);  // its attempt is still in flight
    Hold* h = f.grant(3);
    CHECK(f.done.size() == 1);
    REQUIRE(f.given_back.size() == 1);
    CHECK(f.given_back[0] == h);
    CHECK(release(f) == KeyLock::Release::release);
    CHECK(f.key == nullptr);
}

TEST_CASE("a cancelled redis waiter leaves the queue and the rest keep their order", "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* a = f.waiter();
    QueuedWaiter* b = f.waiter(milliseconds(1000));
    QueuedWaiter* c = f.waiter();
    f.key->enqueue(a);
    f.key->enqueue(b);
    f.key->enqueue(c);
    f.key->cancel(b, errc::cancelled);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].waiter == b);
    CHECK(f.done[0].ec == errc::cancelled);
    CHECK_FALSE(f.deadlines.contains(b));  // its timer is cancelled too
    CHECK(f.key->queued() == 2);

    f.grant(1);
    CHECK(f.done.back().waiter == a);
    REQUIRE(release(f) == KeyLock::Release::hand_over);
    f.key->handed_over();
    f.confirm(2);
    CHECK(f.done.back().waiter == c);
    CHECK(f.done.size() == 3);
}

TEST_CASE("a redis grant the replicas do not confirm fails every waiter with unavailable", "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.key->enqueue(f.waiter());
    f.key->answered(Fake::granted(1));
    f.key->unconfirmed("0 of 1 replicas acknowledged it within wait_timeout");
    REQUIRE(f.done.size() == 2);
    for (const auto& d : f.done) {
        CHECK(d.ec == errc::unavailable);
        CHECK(d.why.find("0 of 1 replicas") != std::string::npos);
    }
    CHECK(f.key == nullptr);
}

TEST_CASE("a redis grant whose answer came after its lease is never handed out: the key tries again at once",
          "[redis][key_lock]") {
    Fake f;
    QueuedWaiter* a = f.waiter(milliseconds(5000));
    f.key->enqueue(a);
    REQUIRE(f.attempts == 1);
    f.key->answered(Fake::granted(7));
    f.time += milliseconds(1500);  // the answer was that late; the backend gave the grant back
    f.key->granted_too_late();
    CHECK(f.done.empty());   // not handed out
    CHECK(f.attempts == 2);  // at once: no notification will come for a lock that was ours
    CHECK_FALSE(f.retry_at.has_value());
    f.grant(8);
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].waiter == a);
    CHECK_FALSE(f.done[0].ec);
    CHECK(f.done[0].acquired.fence == 8);

    // A waiter whose deadline passed while that attempt was in flight fails, and the key goes.
    Fake g;
    QueuedWaiter* b = g.waiter(milliseconds(100));
    g.key->enqueue(b);
    g.key->answered(Fake::granted(3));
    g.time += milliseconds(1500);
    g.key->deadline_passed(b);  // its one attempt is in flight: it waits for the answer
    CHECK(g.done.empty());
    g.key->granted_too_late();
    REQUIRE(g.done.size() == 1);
    CHECK(g.done[0].ec == errc::timeout);
    CHECK(g.attempts == 1);
    CHECK(g.key == nullptr);
}

TEST_CASE("a redis try_lock that comes while this process's release of the key is in flight waits for it",
          "[redis][key_lock]") {
    Fake f;
    f.key->enqueue(f.waiter());
    f.grant(1);
    // The holder's release is on the wire (a guard's destructor): the key counts as held.
    REQUIRE(f.key->release_by(false) == KeyLock::Release::release);
    QueuedWaiter* t = f.waiter(milliseconds(0));  // a try_lock: one attempt, no waiting
    f.key->enqueue(t);
    f.key->deadline_passed(t);
    CHECK(f.done.size() == 1);  // not failed at once: its one attempt is still to come
    CHECK(t->expired);
    f.key->released();  // the release answered: the attempt goes out
    CHECK(f.attempts == 2);
    f.grant(2);
    REQUIRE(f.done.size() == 2);
    CHECK(f.done[1].waiter == t);
    CHECK_FALSE(f.done[1].ec);
    CHECK(f.done[1].acquired.fence == 2);
}

TEST_CASE("a redis key reserved by lock_all's fast path: waiters queue behind it, then get its hold by hand-over",
          "[redis][key_lock][lock_all]") {
    Fake f;
    f.key->reserve();
    CHECK(f.key->busy());
    QueuedWaiter* a = f.waiter();
    QueuedWaiter* late = f.waiter(milliseconds(10));
    f.key->enqueue(a);
    f.key->enqueue(late);
    CHECK(f.attempts == 0);  // the fast path's script decides first
    f.advance(milliseconds(20));
    f.key->deadline_passed(late);  // not at the front: ends at once
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].ec == errc::timeout);
    Hold* multi = f.holds.emplace_back(std::make_unique<Hold>()).get();
    f.key->adopt(multi);  // the key's holder now, given to no waiter
    CHECK(f.done.size() == 1);
    CHECK(f.given_back.empty());
    CHECK(f.attempts == 0);
    CHECK(release(f) == KeyLock::Release::hand_over);  // to the waiter that came meanwhile
    f.key->handed_over();
    Hold* h = f.confirm(7);
    REQUIRE(f.done.size() == 2);
    CHECK(f.done[1].waiter == a);
    CHECK(f.done[1].acquired.hold == h);
    CHECK(release(f) == KeyLock::Release::release);
    CHECK(f.key == nullptr);  // nothing refers to it any more
}

TEST_CASE("a redis key the fast path did not take goes back to its own attempts, or is freed",
          "[redis][key_lock][lock_all]") {
    Fake f;
    f.key->reserve();
    QueuedWaiter* a = f.waiter(milliseconds(10));
    f.key->enqueue(a);
    f.advance(milliseconds(20));
    f.key->deadline_passed(a);  // at the front while "an attempt" is in flight: that decides
    CHECK(f.done.empty());
    f.key->unreserve();
    CHECK(f.attempts == 1);  // its own attempt now
    f.key->answered(Fake::held(500));
    REQUIRE(f.done.size() == 1);
    CHECK(f.done[0].ec == errc::timeout);
    CHECK(f.key == nullptr);

    Fake g;
    g.key->reserve();
    g.key->unreserve();  // nobody waits: freed
    CHECK(g.key == nullptr);
    CHECK(g.attempts == 0);

    Fake e;  // adopted with an expired waiter at the front: it ends with timeout, the hold stays
    e.key->reserve();
    QueuedWaiter* w = e.waiter(milliseconds(10));
    e.key->enqueue(w);
    e.advance(milliseconds(20));
    e.key->deadline_passed(w);
    Hold* multi = e.holds.emplace_back(std::make_unique<Hold>()).get();
    e.key->adopt(multi);
    REQUIRE(e.done.size() == 1);
    CHECK(e.done[0].ec == errc::timeout);
    CHECK(e.given_back.empty());
    CHECK(release(e) == KeyLock::Release::release);
    CHECK(e.key == nullptr);
}
