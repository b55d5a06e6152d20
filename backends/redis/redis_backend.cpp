// SPDX-License-Identifier: BSL-1.0
// The Redis backend. All of its state lives on one I/O thread per registry: user threads post
// requests to it and wait (sync calls) or get a completion (async calls). That thread owns two
// connections (commands, and a subscriber for release notifications), one entry per key in
// use (its local queue of waiters, its local holder), the holds, and the watchdog timer.
#include "redis_backend.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <future>
#include <iterator>
#include <mutex>
#include <random>
#include <unordered_map>

#include <boost/algorithm/hex.hpp>
#include <boost/asio/steady_timer.hpp>

#include <keylock/error.hpp>
#include <keylock/redis.hpp>

#include "connection.hpp"
#include "io_thread.hpp"
#include "scripts.hpp"
#include "servers.hpp"
#include "slots.hpp"
#include "src/futex.hpp"
#include "src/tally.hpp"
#include "watchdog.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using detail::Acquired;
using detail::Deadline;
using Clock = std::chrono::steady_clock;

namespace {

/// Owner tokens, one per acquisition: 128 random bits as 32 hex digits. The bits come from
/// OpenSSL's CSPRNG, 64 tokens per call. (Each backend has its own, used on its I/O thread; a
/// forked child cannot use its parent's backend, so it never repeats the parent's tokens.)
class TokenSource {
public:
    std::string next() {
        if (used_ == kTokens) refill();
        const unsigned char* bytes = bytes_ + used_++ * 16;
        std::string out;
        out.reserve(32);
        boost::algorithm::hex_lower(bytes, bytes + 16, std::back_inserter(out));
        return out;
    }

private:
    void refill() {
        if (RAND_bytes(bytes_, sizeof bytes_) != 1) {
            // Never expected; fall back to the OS's generator rather than failing a lock.
            std::random_device rd;
            for (auto& b : bytes_) b = static_cast<unsigned char>(rd());
        }
        used_ = 0;
    }
    static constexpr int kTokens = 64;
    unsigned char bytes_[kTokens * 16];
    int used_ = kTokens;
};

struct KeyState;

struct RedisPin final : detail::Pin {
    std::string key;
};

/// A wait on the I/O thread: an async operation, or the registry's blocking wait over one.
struct Waiter {
    explicit Waiter(detail::AsyncWaiter* w) : op(w) {}

    detail::AsyncWaiter* op;
    std::uint64_t id = 0;
    Deadline deadline = Deadline::max();
    std::string why;       // with an error: what went wrong, for the message (the server's words)
    bool expired = false;  // the deadline passed while this waiter's attempt was in flight
    bool waited = false;   // could not be granted at once (counts as contended)
    KeyState* state = nullptr;
    std::unique_ptr<asio::steady_timer> timer;
};

/// A reply a user thread waits for (a release's outcome, an operator's call).
struct Answer {
    detail::Event done;
    std::error_code ec;
};

/// One key in use in this process.
struct KeyState {
    std::string key;
    std::string lock_key;   // <prefix><key>; also the channel its releases are published on
    std::string fence_key;  // the fencing counter of lock_key's slot
    std::deque<Waiter*> queue;
    RedisHold* holder = nullptr;        // held by this process (until its release is confirmed)
    bool attempting = false;            // an acquire is in flight
    bool waiting_remote = false;        // held elsewhere: waiting for a notification or the retry timer
    bool subscribed = false;            // SUBSCRIBE sent (confirmed or not)
    bool look_again = false;            // a release, or our subscription, came while an attempt was in flight
    int transfers = 0;                  // hand-overs within this process in a row
    Clock::time_point first_failure{};  // of the current run of unavailable attempts
    Clock::time_point backoff_until{};  // a quorum split between contenders: no retry before this
    std::string failure;                // why the last of them failed (for the messages)
    std::unique_ptr<asio::steady_timer> retry;
};

/// At most this many local hand-overs in a row before a real release, so that other processes
/// waiting for the key get their turn.
constexpr int kMaxTransfers = 16;

/// How often a waiter looks again while release notifications cannot be had.
constexpr std::chrono::milliseconds kPollWithoutNotifications{200};

class RedisBackend final : public detail::Backend {
public:
    explicit RedisBackend(const RedisConfig& config)
        : Backend(config.max_key_bytes, Loss::possible),
          config_(config),
          acquire_(config.topology == Topology::redlock ? scripts::acquire_plain : scripts::acquire),
          release_(config.topology == Topology::cluster ? scripts::release_sharded : scripts::release),
          extend_(scripts::extend),
          transfer_(scripts::transfer),
          inspect_(scripts::inspect),
          force_release_(config.topology == Topology::cluster ? scripts::force_release_sharded
                                                              : scripts::force_release),
          bump_(scripts::bump),
          replication_(config) {
        lease_ms_ = std::to_string(config_.lease.count());
        Servers::Events events;
        events.message = [this](const std::string& channel) { on_message(channel); };
        events.unsubscribed = [this](const std::string& channel) { on_unsubscribed(channel); };
        events.notifications_lost = [this] { on_notifications_lost(); };
        servers_ = make_servers(io_thread_.io(), config_, std::move(events), {&acquire_, &release_, &bump_});
        quorum_ = servers_->quorum();
        // A holder counts on its lease only minus the clock drift its servers may have.
        validity_ = config_.lease - servers_->clock_drift();
        watchdog_ = std::make_unique<Watchdog>(io_thread_.io(), config_, *servers_, extend_, replication_, validity_,
                                               [this](RedisHold* h) { mark_lost(h); });
        io_thread_.start("keylock-redis", [this] { delete this; });
        post([this] { watchdog_->start(); });
    }

    ~RedisBackend() override = default;

    void async_acquire(const detail::Request& request, detail::AsyncWaiter* op) override {
        const std::string_view key = request.key;
        auto* w = new Waiter(op);
        w->deadline = request.deadline;
        w->id = next_id_.fetch_add(1, std::memory_order_relaxed);
        {
            std::lock_guard lk(async_mu_);
            async_ids_[op] = w->id;
        }
        post([this, w, k = std::string(key)] { enqueue(w, k); });
    }

    void cancel(detail::AsyncWaiter* op) noexcept override {
        std::uint64_t id = 0;
        {
            std::lock_guard lk(async_mu_);
            auto it = async_ids_.find(op);
            if (it == async_ids_.end()) return;
            id = it->second;
        }
        post([this, id] { cancel_waiter(id, errc::cancelled); });
    }

    /// Without `ec` (a guard's destructor) the release is only queued. It is ordered before
    /// every later request of this process (they go through the same thread, and the key counts
    /// as held until Redis has answered), and close() waits for it.
    void release(detail::Hold* hold, std::error_code* ec) noexcept override {
        auto* h = static_cast<RedisHold*>(hold);
        if (ec == nullptr) {
            post([this, h] { do_release(h, [](std::error_code) {}); });
            return;
        }
        Answer answer;
        post([this, h, &answer] {
            do_release(h, [&answer](std::error_code e) {
                answer.ec = e;
                answer.done.set();
            });
        });
        answer.done.wait();
        *ec = answer.ec;
    }

    std::string_view key(const detail::Hold* hold) const noexcept override {
        return static_cast<const RedisHold*>(hold)->key;
    }

    detail::Pin* pin(std::string_view key) override {
        auto* p = new RedisPin;
        p->key.assign(key);
        return p;
    }
    void unpin(detail::Pin* pin) noexcept override { delete static_cast<RedisPin*>(pin); }
    std::string_view key(const detail::Pin* pin) const noexcept override {
        return static_cast<const RedisPin*>(pin)->key;
    }

    Stats snapshot() const override { return tally_.snapshot(entries_.load(std::memory_order_relaxed)); }

    std::string describe() const override { return to_url(config_); }

    LockInfo inspect(std::string_view key, std::error_code& ec) override {
        const Reply r = call(Op::inspect, inspect_, config_.prefix + std::string(key), {}, ec);
        if (ec) return {};
        if (r.type != Reply::Type::array || r.elements.empty()) {
            ec = make_error_code(errc::backend_error);
            return {};
        }
        LockInfo info;
        if (r.elements[0].integer != 1 || r.elements.size() != 3) return info;
        info.held = true;
        // `<fencing token>:<owner token>`; anything else (someone else's value) has no token.
        const std::string& value = r.elements[1].str;
        if (const auto colon = value.find(':'); colon != std::string::npos && colon > 0 && colon <= 20) {
            std::uint64_t fence = 0;
            bool digits = true;
            for (std::size_t i = 0; i < colon; ++i) {
                digits = digits && value[i] >= '0' && value[i] <= '9';
                fence = fence * 10 + static_cast<std::uint64_t>(value[i] - '0');
            }
            if (digits) info.fencing_token = fence;
        }
        info.ttl = std::chrono::milliseconds(r.elements[2].integer >= 0 ? r.elements[2].integer : -1);
        return info;
    }

    bool force_release(std::string_view key, std::error_code& ec) override {
        const std::string lock_key = config_.prefix + std::string(key);
        const Reply r = call(Op::force_release, force_release_, lock_key, lock_key, ec);
        if (ec) return false;
        if (r.type != Reply::Type::integer) {
            ec = make_error_code(errc::backend_error);
            return false;
        }
        return r.integer == 1;
    }

    void close() noexcept override {
        // The last registry copy is gone. Guards and waits may still be out: then the I/O
        // thread goes on, and deletes the backend when the last of them has gone. If only
        // releases are under way (guards destroyed just before), wait for them, so that a
        // program that ends now does not leave its locks to expire.
        std::promise<bool> live;
        auto answer = live.get_future();
        post([this, &live] {
            closing_ = true;
            watchdog_->stop_when_idle();
            const bool in_use = !waiters_.empty() || watchdog_->guarded();
            live.set_value(!finished() && in_use);
        });
        if (io_thread_.close(answer.get(), config_.endpoint.command_timeout + std::chrono::seconds(1))) delete this;
    }

private:
    template <class F>
    void post(F&& f) {
        io_thread_.post(std::forward<F>(f));
    }

    /// After close(): true (and the loop is told to stop) once no hold and no wait is left.
    bool finished() {
        if (!closing_ || !watchdog_->empty() || !waiters_.empty()) return false;
        for (auto& [key, st] : keys_) {
            if (st->holder != nullptr || st->attempting) return false;
        }
        servers_->close();
        watchdog_->cancel();
        for (auto& [key, st] : keys_) {
            if (st->retry) st->retry->cancel();
        }
        keys_.clear();
        io_thread_.stop();
        return true;
    }

    // ---- subscriptions -------------------------------------------------------------

    /// A subscriber connection broke: notifications may have been missed, so every waiting key
    /// looks again now (and subscribes again if it still has to wait).
    void on_notifications_lost() {
        for (auto& [key, st] : keys_) st->subscribed = false;
        post([this] {
            std::vector<std::string> waiting;
            for (auto& [key, st] : keys_) {
                if (st->waiting_remote && !st->subscribed) waiting.push_back(key);
            }
            for (const auto& key : waiting) {
                if (auto it = keys_.find(key); it != keys_.end()) retry_now(*it->second);
            }
        });
    }

    /// The server ended one subscription (a Cluster slot moved): the key looks again, and
    /// subscribes again where its slot is now if it still has to wait.
    void on_unsubscribed(const std::string& channel) {
        if (KeyState* st = state_of_channel(channel)) {
            st->subscribed = false;
            wake(*st);
        }
    }

    /// The state of the key whose releases are published on `channel`, if it is in use.
    KeyState* state_of_channel(const std::string& channel) {
        if (channel.compare(0, config_.prefix.size(), config_.prefix) != 0) return nullptr;
        auto it = keys_.find(channel.substr(config_.prefix.size()));
        return it == keys_.end() ? nullptr : it->second.get();
    }

    /// The value of our lock: `<fencing token>:<owner token>`, or (a quorum, each node with its
    /// own counter) the owner token alone.
    std::string lock_value(std::uint64_t fence, const std::string& token) const {
        return quorum_ ? token : std::to_string(fence) + ":" + token;
    }

    // ---- waiting ----------------------------------------------------------------------

    KeyState& state_of(const std::string& key) {
        auto& slot = keys_[key];
        if (!slot) {
            slot = std::make_unique<KeyState>();
            slot->key = key;
            slot->lock_key = config_.prefix + key;
            slot->fence_key = "{" + std::string(slot_tag(key_slot(slot->lock_key))) + "}" + config_.prefix + "fence";
            entries_.store(keys_.size(), std::memory_order_relaxed);
        }
        return *slot;
    }

    void enqueue(Waiter* w, const std::string& key) {
        KeyState& st = state_of(key);
        w->state = &st;
        waiters_[w->id] = w;
        tally_.began();
        st.queue.push_back(w);
        if (w->deadline != Deadline::max()) {
            w->timer = std::make_unique<asio::steady_timer>(io_thread_.io(), w->deadline);
            w->timer->async_wait([this, id = w->id](boost::system::error_code ec) {
                if (!ec) deadline_passed(id);
            });
        }
        if (st.holder != nullptr || st.attempting || st.waiting_remote || st.queue.size() > 1) w->waited = true;
        pump(st);
    }

    void deadline_passed(std::uint64_t id) {
        auto it = waiters_.find(id);
        if (it == waiters_.end()) return;
        Waiter* w = it->second;
        KeyState& st = *w->state;
        if (st.attempting && !st.queue.empty() && st.queue.front() == w) {
            w->expired = true;  // its one attempt is in flight: let it finish
            return;
        }
        // Out of time while Redis could not be reached: that is the reason, not a holder.
        if (st.first_failure != Clock::time_point{})
            return finish(w, make_error_code(errc::unavailable), {}, true, st.failure);
        finish(w, make_error_code(errc::timeout), {});
    }

    /// Fails the waiters at the head whose deadline passed during the attempt with `code` (and
    /// `why` for the message).
    /// Returns false (and frees the key's state if it can) when nobody is left waiting.
    bool drop_expired(KeyState& st, errc code = errc::timeout, const std::string& why = {}) {
        while (!st.queue.empty() && st.queue.front()->expired)
            finish(st.queue.front(), make_error_code(code), {}, false, why);
        if (!st.queue.empty()) return true;
        settle(st);
        return false;
    }

    void cancel_waiter(std::uint64_t id, errc why) {
        auto it = waiters_.find(id);
        if (it == waiters_.end()) return;  // done already
        finish(it->second, make_error_code(why), {});
    }

    /// Ends a wait: takes the waiter out of its queue and reports.
    void finish(Waiter* w, std::error_code ec, Acquired a, bool then_settle = true, std::string why = {}) {
        KeyState& st = *w->state;
        w->why = std::move(why);
        st.queue.erase(std::find(st.queue.begin(), st.queue.end(), w));
        waiters_.erase(w->id);
        if (w->timer) w->timer->cancel();
        tally_.ended(ec, w->waited);
        {
            std::lock_guard lk(async_mu_);
            async_ids_.erase(w->op);
        }
        const std::unique_ptr<Waiter> done(w);
        w->op->complete(ec, a, w->why);  // a blocking caller may return right after this
        if (then_settle) settle(st);
    }

    /// Frees a key's state once nothing refers to it; stops the loop after close().
    void settle(KeyState& st) {
        if (st.queue.empty() && st.holder == nullptr && !st.attempting) {
            if (st.retry) st.retry->cancel();
            if (st.subscribed) servers_->unsubscribe(st.lock_key);
            keys_.erase(st.key);
            entries_.store(keys_.size(), std::memory_order_relaxed);
        }
        if (closing_) finished();
    }

    /// Starts an attempt for the key if one is needed and none is under way.
    void pump(KeyState& st) {
        if (st.queue.empty() || st.holder != nullptr || st.attempting || st.waiting_remote) return;
        attempt(st);
    }

    void attempt(KeyState& st) {
        st.attempting = true;
        st.waiting_remote = false;
        st.look_again = false;
        const auto sent = Clock::now();
        auto token = std::make_shared<std::string>(tokens_.next());
        servers_->eval(
            Op::acquire, acquire_, {st.lock_key, st.fence_key}, {*token, lease_ms_},
            [this, key = st.key, token, sent](std::error_code ec, const Reply& r,
                                              const std::shared_ptr<Connection>& conn) {
                auto it = keys_.find(key);
                if (it == keys_.end()) return;  // cannot happen: an attempt keeps its state
                KeyState& st = *it->second;
                st.attempting = false;
                if (ec) return unavailable(st, ec, r.str);
                if (r.is_error()) {
                    // A quorum's error already names its node and says 'answered'.
                    return fail_all(st, make_error_code(errc::backend_error),
                                    r.str.rfind("Redis at ", 0) == 0 ? r.str : "Redis answered '" + r.str + "'");
                }
                if (r.type != Reply::Type::array || r.elements.size() < 2 || r.elements.size() > 3) {
                    return fail_all(st, make_error_code(errc::backend_error), "unexpected reply to the acquire script");
                }
                st.first_failure = {};
                if (r.elements[0].integer == 1) {
                    const auto fence = static_cast<std::uint64_t>(r.elements[1].integer);
                    return replicated_grant(st, conn, *token, fence, sent);
                }
                held_elsewhere(st, r.elements[1].integer, r.elements.size() == 3);
            });
    }

    /// Redis has given us the lock: with wait_replicas, only once that many replicas have it too
    /// (WAIT on the connection it was written on). Unreplicated, a failover could give it to
    /// someone else: it is released, and the waiters fail with `unavailable`.
    void replicated_grant(KeyState& st, const std::shared_ptr<Connection>& conn, const std::string& token,
                          std::uint64_t fence, Clock::time_point sent) {
        if (!replication_.waits()) return granted(st, token, fence, sent);
        st.attempting = true;  // still deciding: keeps the state, and other attempts out
        replication_.after(conn, [this, key = st.key, token, fence, sent](const std::string& why) {
            auto it = keys_.find(key);
            if (it == keys_.end()) return;  // cannot happen: attempting keeps the state
            KeyState& st = *it->second;
            st.attempting = false;
            if (why.empty()) return granted(st, token, fence, sent);
            const std::string value = lock_value(fence, token);
            servers_->eval(Op::release, release_, {st.lock_key}, {value, st.lock_key},
                           [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
            fail_all(st, make_error_code(errc::unavailable),
                     "the lock was acquired on the master, but " + why +
                         "; it was released, since a failover could hand it out again");
        });
    }

    /// The lock is ours, with owner token `token` and fencing token `fence`: give it to the first
    /// waiter still waiting, or give it back at once if none is.
    void granted(KeyState& st, const std::string& token, std::uint64_t fence, Clock::time_point sent) {
        auto* h = new RedisHold;
        h->key = st.key;
        h->token = lock_value(fence, token);  // the lock key's value (see scripts.hpp)
        h->fence = fence;
        h->valid_until(sent + validity_);  // the lease began in Redis after `sent`, never before
        st.holder = h;
        watchdog_->add(h);
        if (st.queue.empty()) {
            do_release(h, [](std::error_code) {});
            return;
        }
        finish(st.queue.front(), {}, {h, fence});
    }

    /// Someone else holds the key for `pttl` ms more: wait for its release notification (or,
    /// if that is missed, for the lease to run out), after failing the waiters out of time.
    /// With `back_off` (a quorum whose nodes contenders split between them), wait `pttl` ms
    /// whatever is heard meanwhile.
    void held_elsewhere(KeyState& st, long long pttl, bool back_off = false) {
        if (!drop_expired(st)) return;
        for (Waiter* w : st.queue) w->waited = true;
        st.waiting_remote = true;
        if (!st.subscribed) {
            // Subscribe first, then try again once: a release between our attempt and the
            // subscription would otherwise go unnoticed.
            st.subscribed = true;
            servers_->subscribe(st.lock_key, [this, key = st.key](std::error_code ec) {
                auto it = keys_.find(key);
                if (it == keys_.end()) return;
                KeyState& st = *it->second;
                if (ec) {
                    // No notifications for now (the subscriber is down): look again soon
                    // rather than at the end of the holder's lease.
                    st.subscribed = false;
                    if (st.waiting_remote && st.retry->expiry() > Clock::now() + kPollWithoutNotifications) {
                        arm_retry(st, kPollWithoutNotifications + std::chrono::milliseconds(jitter_(rng_)));
                    }
                    return;
                }
                // An attempt in flight may have been sent before the subscription took effect:
                // only one sent after it is sure to be followed by a notification.
                wake(st);
            });
        }
        if (back_off) {
            // The release heard meanwhile was most likely a contender's giving up too.
            st.look_again = false;
            st.backoff_until = Clock::now() + std::chrono::milliseconds(pttl);
            arm_retry(st, std::chrono::milliseconds(pttl));
            return;
        }
        if (std::exchange(st.look_again, false)) {
            arm_retry(st, std::chrono::milliseconds(0));  // see on_message and the SUBSCRIBE reply
            return;
        }
        // Never wait longer than the holder's lease (a crashed holder's lock frees itself then),
        // plus a little jitter so that waiters of several processes do not retry in step.
        std::chrono::milliseconds wait =
            pttl >= 0 ? std::chrono::milliseconds(pttl) : std::chrono::milliseconds(pttl == -2 ? 0 : 1000);
        arm_retry(st, wait + std::chrono::milliseconds(jitter_(rng_)));
    }

    /// The key's next attempt, `after` from now unless something wakes it earlier.
    void arm_retry(KeyState& st, std::chrono::milliseconds after) {
        if (!st.retry) st.retry = std::make_unique<asio::steady_timer>(io_thread_.io());
        st.retry->expires_after(after);
        st.retry->async_wait([this, key = st.key](boost::system::error_code ec) {
            if (ec) return;
            auto it = keys_.find(key);
            if (it != keys_.end()) retry_now(*it->second);
        });
    }

    void retry_now(KeyState& st) {
        if (!st.waiting_remote) return;
        st.waiting_remote = false;
        if (st.retry) st.retry->cancel();
        pump(st);
    }

    /// A release notification: the key may be free now.
    void on_message(const std::string& channel) {
        if (KeyState* st = state_of_channel(channel)) wake(*st);
    }

    /// The key may be free now (a release was heard, or our subscription took effect).
    void wake(KeyState& st) {
        // Notifications and replies come on different connections, and Redis writes its
        // replies newest client first: a release may be heard of before the answer to our
        // attempt, which ran before it and will say "held". Keep it for that answer.
        if (st.attempting) {
            st.look_again = true;
            return;
        }
        if (!st.waiting_remote || Clock::now() < st.backoff_until) return;
        if (quorum_) {
            // A quorum: contenders that split the nodes between them release what they took
            // and hear each other's releases; a random pause keeps them out of step.
            arm_retry(st, std::chrono::milliseconds(jitter_(rng_)));
            return;
        }
        retry_now(st);
    }

    /// The attempt could not reach Redis. Credentials or protocol errors fail the waiters at
    /// once; a connection problem is retried with back-off for up to connect_timeout.
    void unavailable(KeyState& st, std::error_code ec, const std::string& why) {
        if (ec != errc::unavailable) return fail_all(st, ec, why);
        const auto now = Clock::now();
        if (st.first_failure == Clock::time_point{}) st.first_failure = now;
        st.failure = why;
        if (now - st.first_failure >= config_.endpoint.connect_timeout) return fail_all(st, ec, why);
        if (!drop_expired(st, errc::unavailable, why)) return;  // e.g. a try_lock: its one attempt failed
        st.waiting_remote = true;
        arm_retry(st, std::chrono::milliseconds(50 + jitter_(rng_)));
    }

    /// Fails every waiter of the key, then frees the key's state if nothing else refers to it:
    /// `st` may be gone when this returns.
    void fail_all(KeyState& st, std::error_code ec, const std::string& why) {
        st.first_failure = {};
        std::vector<Waiter*> all(st.queue.begin(), st.queue.end());
        for (Waiter* w : all) finish(w, ec, {}, false, why);
        settle(st);
    }

    // ---- releasing ---------------------------------------------------------------------

    /// Releases a hold and then calls `reply` with the outcome — after the backend's own
    /// bookkeeping, so that a caller woken by it sees the entry gone from stats().
    void do_release(RedisHold* h, std::function<void(std::error_code)> reply) {
        h->releasing = true;
        auto it = keys_.find(h->key);
        KeyState* st = it != keys_.end() ? it->second.get() : nullptr;
        auto forget = [this, h] {
            watchdog_->remove(h);
            auto it = keys_.find(h->key);
            delete h;
            if (it == keys_.end()) return;
            KeyState& st = *it->second;
            st.holder = nullptr;
            pump(st);
            settle(st);
        };
        // Ours no more, as far as we know: the release still goes out (token-checked: it
        // deletes the lock only if it is ours after all), but the answer is not_owner.
        const bool lost = h->lost();
        // A quorum never hands over in place: each node counts fencing tokens on its own.
        if (!lost && !quorum_ && st != nullptr && !st->queue.empty() && st->transfers < kMaxTransfers) {
            hand_over(*st, h, std::move(reply), forget);
            return;
        }
        if (st != nullptr) st->transfers = 0;
        const std::string channel = st != nullptr ? st->lock_key : config_.prefix + h->key;
        servers_->eval(Op::release, release_, {channel}, {h->token, channel},
                       [this, h, reply = std::move(reply), forget, lost](std::error_code ec, const Reply& r,
                                                                         const std::shared_ptr<Connection>&) {
                           std::error_code result;
                           if (!lost && ec) {
                               result = ec;  // the lease will free it
                           } else if (!lost && r.is_error()) {
                               result = make_error_code(errc::backend_error);
                           } else if (lost || r.integer != 1) {
                               result = make_error_code(errc::not_owner);
                               mark_lost(h, Found::at_release);  // found only now, perhaps: the key deleted or taken
                           }
                           forget();
                           reply(result);
                       });
    }

    /// A waiter of this process is next: hands the lock over in one round trip (a new owner
    /// token and fencing token; never free in between).
    template <class Forget>
    void hand_over(KeyState& st, RedisHold* h, std::function<void(std::error_code)> reply, Forget forget) {
        const auto sent = Clock::now();
        auto token = std::make_shared<std::string>(tokens_.next());
        servers_->eval(Op::transfer, transfer_, {st.lock_key, st.fence_key}, {h->token, *token, lease_ms_},
                       [this, h, token, sent, reply = std::move(reply), forget](
                           std::error_code ec, const Reply& r, const std::shared_ptr<Connection>& conn) {
                           if (ec || r.type != Reply::Type::integer || r.integer == 0) {
                               if (!ec && !r.is_error()) mark_lost(h, Found::at_release);
                               forget();
                               reply(ec ? ec : make_error_code(r.is_error() ? errc::backend_error : errc::not_owner));
                               return;
                           }
                           watchdog_->remove(h);
                           auto it = keys_.find(h->key);
                           delete h;
                           KeyState& st = *it->second;
                           st.holder = nullptr;
                           ++st.transfers;
                           replicated_grant(st, conn, *token, static_cast<std::uint64_t>(r.integer), sent);
                           settle(st);
                           reply({});
                       });
    }

    /// Runs a one-key script from a user thread and waits for its reply (operator calls).
    Reply call(Op op, const Script& script, const std::string& lock_key, std::string_view arg, std::error_code& ec) {
        Answer answer;
        Reply reply;
        post([&] {
            std::vector<std::string_view> args;
            if (!arg.empty()) args.push_back(arg);
            servers_->eval(op, script, {lock_key}, std::move(args),
                           [&](std::error_code e, Reply r, const std::shared_ptr<Connection>&) {
                               if (!e && r.is_error()) e = make_error_code(errc::backend_error);
                               reply = std::move(r);
                               answer.ec = e;
                               answer.done.set();
                           });
        });
        answer.done.wait();
        ec = answer.ec;
        return reply;
    }

    const RedisConfig config_;
    std::string lease_ms_;
    IoThread io_thread_;
    bool closing_ = false;

    const Script acquire_, release_, extend_, transfer_, inspect_, force_release_, bump_;
    const Replication replication_;

    // I/O thread only.
    std::unique_ptr<Servers> servers_;
    bool quorum_ = false;                   // see Servers::quorum
    std::chrono::milliseconds validity_{};  // how long a hold counts on its lease after it was sent
    std::unordered_map<std::string, std::unique_ptr<KeyState>> keys_;
    std::unordered_map<std::uint64_t, Waiter*> waiters_;
    std::unique_ptr<Watchdog> watchdog_;  // and the holds
    TokenSource tokens_;
    std::mt19937 rng_{std::random_device{}()};
    std::uniform_int_distribution<int> jitter_{0, 10};

    std::mutex async_mu_;
    std::unordered_map<detail::AsyncWaiter*, std::uint64_t> async_ids_;

    std::atomic<std::uint64_t> next_id_{1};
    std::atomic<std::uint64_t> entries_{0};
    detail::Tally tally_;
};

std::shared_ptr<detail::Backend> from_url(std::string_view url) { return make_backend(parse_redis_url(url)); }

}  // namespace

std::shared_ptr<detail::Backend> make_backend(const RedisConfig& config) {
    return std::shared_ptr<detail::Backend>(new RedisBackend(config), [](detail::Backend* b) { b->close(); });
}

}  // namespace keylock::redis

namespace keylock {

KeyedLockRegistry redis_registry(const RedisOptions& o) {
    if (o.tls && !o.unix_socket.empty()) {
        throw Error(make_error_code(errc::invalid_option),
                    "keylock: RedisOptions: tls is for TCP connections, not for unix_socket");
    }
    // What the URL would misread, or report in its own terms (a path, a host part), is checked
    // here first, in the terms of the struct.
    auto bad = [](const std::string& why) {
        throw Error(make_error_code(errc::invalid_option), "keylock: RedisOptions: " + why);
    };
    const bool sentinel = !o.sentinels.empty();
    const bool cluster = !o.cluster_nodes.empty();
    const bool redlock = !o.redlock_nodes.empty();
    const bool listed = sentinel || cluster || redlock;
    if (int(sentinel) + int(cluster) + int(redlock) > 1)
        bad("give at most one of sentinels, cluster_nodes and redlock_nodes");
    if (listed && (o.tls || !o.unix_socket.empty())) {
        bad(std::string(sentinel  ? "sentinels"
                        : cluster ? "cluster nodes"
                                  : "Redlock nodes") +
            " are reached over plain TCP: no tls, no unix_socket");
    }
    if (!sentinel && !o.master_name.empty()) bad("master_name is for sentinels; set sentinels too");
    if (!o.unix_socket.empty() && o.unix_socket.front() != '/') bad("unix_socket must be an absolute path");
    if (!listed && o.unix_socket.empty() && o.host.empty()) bad("host is empty; set host (and port), or unix_socket");
    if (!listed && o.unix_socket.empty() && o.port == 0) bad("port is 0; expected 1 to 65535");
    if (o.db < 0) bad("db is " + std::to_string(o.db) + "; expected 0 or more");
    if (cluster && o.db != 0) bad("db must be 0 with cluster_nodes: Redis Cluster has database 0 only");
    redis::RedisConfig c;
    c.endpoint.host = o.host;
    c.endpoint.port = o.port;
    c.endpoint.unix_path = o.unix_socket;
    c.endpoint.tls = o.tls;
    c.endpoint.ca_file = o.ca_file;
    c.endpoint.cert_file = o.cert_file;
    c.endpoint.key_file = o.key_file;
    c.endpoint.verify = o.verify;
    c.endpoint.user = o.user;
    c.endpoint.password = o.password;
    c.endpoint.db = o.db;
    c.endpoint.connect_timeout = o.connect_timeout;
    c.endpoint.command_timeout = o.command_timeout;
    c.prefix = o.prefix;
    c.lease = o.lease;
    c.max_key_bytes = o.max_key_bytes;
    c.wait_replicas = o.wait_replicas;
    c.wait_timeout = o.wait_timeout;
    c.node_timeout = o.node_timeout;
    if (listed) {
        c.endpoint.host.clear();
        c.endpoint.port = 0;
        c.topology = sentinel  ? redis::Topology::sentinel
                     : cluster ? redis::Topology::cluster
                               : redis::Topology::redlock;
        const auto& hosts = sentinel ? o.sentinels : cluster ? o.cluster_nodes : o.redlock_nodes;
        for (const auto& [host, port] : hosts) {
            if (host.empty() || port == 0) {
                bad(std::string(sentinel  ? "a sentinel"
                                : cluster ? "a cluster node"
                                          : "a Redlock node") +
                    " needs a host and a port from 1 to 65535");
            }
            (sentinel ? c.sentinels : c.nodes).push_back({host, port});
        }
        c.master_name = o.master_name;
    }
    // One set of rules for code and URLs: the options are checked by the URL parser.
    const redis::RedisConfig checked = redis::parse_redis_url(redis::to_url(c, redis::Password::included));
    return KeyedLockRegistry::from_backend(redis::make_backend(checked));
}

}  // namespace keylock

// Registers the schemes when this object file is linked in. keylock::redis's CMake target
// makes the linker keep it (it references this symbol), so from_url("redis://…") works in any
// program that links keylock::redis.
extern "C" {
extern KEYLOCK_API const bool keylock_redis_registered;
const bool keylock_redis_registered = keylock::detail::register_scheme("redis", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("rediss", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("unix", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("redis+sentinel", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("redis+cluster", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("redlock", keylock::redis::from_url);
}
