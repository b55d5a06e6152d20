// SPDX-License-Identifier: BSL-1.0
// The Redis backend: detail::Backend over the parts in this directory. All of its state lives
// on one I/O thread per registry (io_thread.hpp): user threads post requests to it and wait
// (sync calls) or get a completion (async calls). That thread owns the servers' connections
// (servers.hpp), one entry per key in use (its state machine, key_lock.hpp, with the timers it
// asks for), the waiters, and the holds with their watchdog (watchdog.hpp). Here: the wiring,
// releases and hand-overs, operators' calls, make_backend and the URL schemes.
#include "redis_backend.hpp"

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <random>
#include <span>
#include <unordered_map>

#include <boost/asio/steady_timer.hpp>

#include <keylock/error.hpp>

#include "connection.hpp"
#include "io_thread.hpp"
#include "key_lock.hpp"
#include "lease.hpp"
#include "modal_locks.hpp"
#include "mode_scripts.hpp"
#include "replies.hpp"
#include "scripts.hpp"
#include "servers.hpp"
#include "slots.hpp"
#include "src/futex.hpp"
#include "src/tally.hpp"
#include "token_source.hpp"
#include "watchdog.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using detail::Acquired;
using detail::Deadline;
using Clock = std::chrono::steady_clock;

namespace {

struct RedisPin final : detail::Pin {
    std::string key;
};

/// One key in use in this process: its state machine, and the timer of its next attempt.
struct KeyEntry final : KeyLock {
    using KeyLock::KeyLock;
    std::unique_ptr<asio::steady_timer> retry;
    /// The owner token of the key's next grant: every attempt sends it until a grant made with
    /// it is handed out or given back, so that a retry finds an earlier attempt's grant whose
    /// answer was lost (see scripts.hpp). Empty: a new one is drawn for the next attempt.
    std::string token;
    /// An attempt (or hand-over) with `token` went unanswered: the lock may be held under it.
    bool unanswered = false;
    /// An attempt with `token` was told to wait: on a key of shared holds it left an intent.
    bool told_to_wait = false;
};

/// A wait on the I/O thread: an async operation, or the registry's blocking wait over one.
struct Waiter final : QueuedWaiter {
    explicit Waiter(detail::AsyncWaiter* w) : op(w) {}

    detail::AsyncWaiter* op;
    KeyEntry* state = nullptr;
    std::unique_ptr<asio::steady_timer> timer;
};

/// Keys of this form would name the fencing counters (`<prefix>fence:{<tag>}`, under the prefix
/// like every key of ours): the backend refuses them with `invalid_key`.
bool names_a_counter(std::string_view key) noexcept { return key.starts_with("fence:{") && key.ends_with('}'); }
constexpr const char* kCounterKeys = "keys of the form 'fence:{...}' name the Redis backend's fencing counters";

/// At most this many keys in one acquire_all script (the next ones go in the next), so that one
/// lock_all of many keys does not keep the server to itself for long.
constexpr std::size_t kMaxKeysPerScript = 128;

/// A reply a user thread waits for (a release's outcome, an operator's call).
struct Answer {
    detail::Event done;
    std::error_code ec;
};

class RedisBackend final : public detail::Backend, private KeyLock::Host, private ModalLocks::Host {
public:
    explicit RedisBackend(const RedisConfig& config)
        : Backend(config.max_key_bytes, Loss::possible),
          config_(config),
          acquire_(config.topology == Topology::redlock   ? scripts::acquire_plain
                   : config.topology == Topology::cluster ? scripts::acquire_sharded
                                                          : scripts::acquire),
          release_(config.topology == Topology::cluster ? scripts::release_sharded : scripts::release),
          abandon_(config.topology == Topology::cluster ? scripts::abandon_sharded : scripts::abandon),
          extend_(scripts::extend),
          transfer_(scripts::transfer),
          inspect_(scripts::inspect),
          force_release_(config.topology == Topology::cluster ? scripts::force_release_sharded
                                                              : scripts::force_release),
          bump_(scripts::bump),
          extend_member_(scripts::extend_member),
          inspect_modes_(scripts::inspect_modes),
          acquire_all_(config.topology == Topology::cluster ? scripts::acquire_all_sharded : scripts::acquire_all),
          replication_(config) {
        lease_ms_ = std::to_string(config_.lease.count());
        Servers::Events events;
        events.message = [this](const std::string& channel) { on_message(channel); };
        events.unsubscribed = [this](const std::string& channel) { on_unsubscribed(channel); };
        events.notifications_lost = [this] { on_notifications_lost(); };
        servers_ = make_servers(io_thread_.io(), config_, std::move(events), {&acquire_, &release_, &bump_});
        rules_.quorum = servers_->quorum();
        rules_.connect_timeout = config_.endpoint.connect_timeout;
        // A holder counts on its lease only minus the clock drift its servers may have.
        validity_ = lease::validity(config_.lease);
        watchdog_ = std::make_unique<Watchdog>(io_thread_.io(), config_, *servers_, extend_, extend_member_,
                                               replication_, validity_, [this](RedisHold* h) { mark_lost(h); });
        ModalLocks::Host& modal_host = *this;
        modal_ = std::make_unique<ModalLocks>(io_thread_.io(), config_, *servers_, *watchdog_, replication_, validity_,
                                              tally_, modal_host);
        io_thread_.start("keylock-redis", [this] { delete this; });
        post([this] { watchdog_->start(); });
    }

    ~RedisBackend() override = default;

    void async_acquire(const detail::Request& request, detail::AsyncWaiter* op) override {
        const bool modal = request.mode != detail::Mode::exclusive || request.from != nullptr;
        if (modal && rules_.quorum) {
            op->complete(make_error_code(errc::not_supported), {},
                         "shared, upgrade and permit holds, and conversions, are not on Redlock (redlock://); "
                         "a single Redis, Sentinel or Cluster has them");
            return;
        }
        if (request.from != nullptr && (request.mode == detail::Mode::permits ||
                                        static_cast<const RedisHold*>(request.from)->mode == detail::Mode::permits)) {
            op->complete(make_error_code(errc::invalid_argument), {}, "permits convert to no other mode");
            return;
        }
        const std::string_view key = request.key;
        auto* w = new Waiter(op);
        w->deadline = request.deadline;
        w->id = next_id_.fetch_add(1, std::memory_order_relaxed);
        {
            std::lock_guard lk(async_mu_);
            async_ids_[op] = w->id;
        }
        if (modal) {
            detail::Request copy = request;
            copy.key = {};
            const std::uint64_t id = w->id;
            delete w;
            post([this, id, op, copy, k = std::string(key)] {
                if (!names_a_counter(k)) return modal_->enqueue(id, op, k, copy);
                tally_.began();
                tally_.ended(make_error_code(errc::invalid_key), false);
                complete(op, make_error_code(errc::invalid_key), {}, kCounterKeys);
            });
            return;
        }
        post([this, w, k = std::string(key)] {
            if (!names_a_counter(k)) return enqueue(w, k);
            tally_.began();
            complete(w, make_error_code(errc::invalid_key), {}, kCounterKeys);
        });
    }

    /// lock_all's fast path: the first keys of `keys` that may go in one script (all of them on
    /// a single server or Sentinel, a run of one slot on Cluster, none on Redlock), taken by
    /// one acquire_all script if every one is free in Redis and not in use in this process.
    std::size_t try_acquire_all(std::span<const std::string_view> keys, Deadline deadline, std::vector<Acquired>& out,
                                std::size_t& held) override {
        held = 0;
        if (rules_.quorum || keys.size() < 2) return 0;
        std::size_t n = keys.size();
        if (config_.topology == Topology::cluster) {
            const std::uint16_t slot = key_slot(std::string(config_.prefix).append(keys[0]));
            n = 1;
            while (n < keys.size() && key_slot(std::string(config_.prefix).append(keys[n])) == slot) ++n;
            if (n < 2) return 0;
        }
        n = std::min(n, kMaxKeysPerScript);
        AllAttempt attempt;
        attempt.deadline = deadline;
        attempt.keys.assign(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(n));
        post([this, &attempt] { start_all(attempt); });
        attempt.done.wait();
        held = attempt.held;
        if (attempt.taken.empty()) return 0;
        out.insert(out.end(), attempt.taken.begin(), attempt.taken.end());
        return attempt.taken.size();
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

    /// A handle (KeyMutex) keeps the backend open: it may lock after the last registry copy is
    /// gone. Pins are made through a registry, so never after close(); they end on the I/O
    /// thread, where close() counts them.
    detail::Pin* pin(std::string_view key) override {
        auto p = std::make_unique<RedisPin>();
        p->key.assign(key);
        pins_.fetch_add(1, std::memory_order_relaxed);
        return p.release();
    }
    void unpin(detail::Pin* pin) noexcept override {
        post([this, p = std::unique_ptr<RedisPin>(static_cast<RedisPin*>(pin))]() mutable {
            p.reset();
            if (pins_.fetch_sub(1, std::memory_order_relaxed) == 1 && closing_) finished();
        });
    }
    std::string_view key(const detail::Pin* pin) const noexcept override {
        return static_cast<const RedisPin*>(pin)->key;
    }

    Stats snapshot() const override { return tally_.snapshot(entries_.load(std::memory_order_relaxed)); }

    std::string describe() const override { return to_url(config_); }

    LockInfo inspect(std::string_view key, std::error_code& ec) override {
        if (names_a_counter(key)) detail::throw_error(make_error_code(errc::invalid_key), key, "inspect", kCounterKeys);
        if (rules_.quorum) {  // a quorum of string locks (modes are not on Redlock)
            const Reply r = call(Op::inspect, inspect_, config_.prefix + std::string(key), {}, ec);
            if (ec) throw_with_reason(ec, key, "inspect", r);
            return lock_info_of(r, ec);
        }
        const Reply r = call(Op::inspect, inspect_modes_, config_.prefix + std::string(key), {}, ec);
        if (ec) throw_with_reason(ec, key, "inspect", r);
        std::string why;
        LockInfo info = lock_info_of_modes(r, ec, why);
        if (ec) detail::throw_error(ec, key, "inspect", why);
        return info;
    }

    bool force_release(std::string_view key, std::error_code& ec) override {
        if (names_a_counter(key)) {
            detail::throw_error(make_error_code(errc::invalid_key), key, "force_release", kCounterKeys);
        }
        const std::string lock_key = config_.prefix + std::string(key);
        const Reply r = call(Op::force_release, force_release_, lock_key, lock_key, ec);
        if (ec) throw_with_reason(ec, key, "force_release", r);
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
            const bool in_use = !waiters_.empty() || !modal_->idle() || watchdog_->guarded() ||
                                pins_.load(std::memory_order_relaxed) != 0;
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
        if (stopped_) return true;
        if (!closing_ || !watchdog_->empty() || !waiters_.empty() || !modal_->idle() ||
            pins_.load(std::memory_order_relaxed) != 0) {
            return false;
        }
        for (auto& [key, st] : keys_) {
            if (st->busy()) return false;
        }
        servers_->close();
        watchdog_->cancel();
        modal_->close();
        for (auto& [key, st] : keys_) {
            if (st->retry) st->retry->cancel();
        }
        keys_.clear();
        io_thread_.stop();
        stopped_ = true;
        return true;
    }

    // ---- subscriptions -------------------------------------------------------------

    /// A subscriber connection broke: notifications may have been missed, so every waiting key
    /// looks again now (and subscribes again if it still has to wait).
    void on_notifications_lost() {
        subs_.clear();  // every party subscribes again when it must wait
        for (auto& [key, st] : keys_) st->notifications_lost();
        modal_->notifications_lost();
        post([this] {
            std::vector<std::string> waiting;
            for (auto& [key, st] : keys_) {
                if (st->waiting_unsubscribed()) waiting.push_back(key);
            }
            for (const auto& key : waiting) {
                if (KeyEntry* st = find(key)) st->retry_due();
            }
        });
    }

    /// The server ended one subscription (a Cluster slot moved): the key looks again, and
    /// subscribes again where its slot is now if it still has to wait.
    void on_unsubscribed(const std::string& channel) {
        subs_.erase(channel);
        if (channel.compare(0, config_.prefix.size(), config_.prefix) == 0)
            modal_->unsubscribed(channel.substr(config_.prefix.size()));
        if (KeyEntry* st = state_of_channel(channel)) st->unsubscribed();
    }

    /// A release notification: the key may be free now.
    void on_message(const std::string& channel) {
        if (channel.compare(0, config_.prefix.size(), config_.prefix) == 0)
            modal_->notified(channel.substr(config_.prefix.size()));
        if (KeyEntry* st = state_of_channel(channel)) st->notified();
    }

    /// A key's KeyLock and its modal requests share one subscription to its channel: SUBSCRIBE
    /// is sent for each (Redis ignores a repeat), UNSUBSCRIBE once neither needs it. A party
    /// whose SUBSCRIBE failed is not subscribed (and never unsubscribes): it no longer counts,
    /// unless the channel's count was reset meanwhile (a subscriber connection broke, a slot moved).
    void subscribe_channel(const std::string& channel, std::function<void(std::error_code)> done) {
        Subscription& s = subs_[channel];
        if (s.parties++ == 0) s.serial = ++subs_serial_;
        servers_->subscribe(channel, [this, channel, serial = s.serial, done = std::move(done)](std::error_code ec) {
            if (ec) {
                auto it = subs_.find(channel);
                if (it != subs_.end() && it->second.serial == serial && --it->second.parties == 0) subs_.erase(it);
            }
            done(ec);
        });
    }
    void unsubscribe_channel(const std::string& channel) {
        auto it = subs_.find(channel);
        if (it == subs_.end() || --it->second.parties > 0) return;
        subs_.erase(it);
        servers_->unsubscribe(channel);
    }

    /// The state of the key whose releases are published on `channel`, if it is in use.
    KeyEntry* state_of_channel(const std::string& channel) {
        if (channel.compare(0, config_.prefix.size(), config_.prefix) != 0) return nullptr;
        return find(channel.substr(config_.prefix.size()));
    }

    /// The value of our lock: `<fencing token>:<owner token>`, or (a quorum, each node with its
    /// own counter) the owner token alone.
    std::string lock_value(std::uint64_t fence, const std::string& token) const {
        return rules_.quorum ? token : std::to_string(fence) + ":" + token;
    }

    // ---- waiting ----------------------------------------------------------------------

    KeyEntry* find(const std::string& key) {
        auto it = keys_.find(key);
        return it == keys_.end() ? nullptr : it->second.get();
    }

    KeyEntry& state_of(const std::string& key) {
        auto& slot = keys_[key];
        if (!slot) {
            std::string lock_key = config_.prefix + key;
            std::string fence_key = fence_key_of(config_.prefix, lock_key);
            KeyLock::Host& host = *this;
            slot = std::make_unique<KeyEntry>(host, rules_, key, std::move(lock_key), std::move(fence_key));
            entries_.store(keys_.size(), std::memory_order_relaxed);
        }
        return *slot;
    }

    void enqueue(Waiter* w, const std::string& key) {
        KeyEntry& st = state_of(key);
        w->state = &st;
        waiters_[w->id] = w;
        tally_.began();
        st.enqueue(w);
    }

    void deadline_passed(std::uint64_t id) {
        auto it = waiters_.find(id);
        if (it == waiters_.end()) return;
        it->second->state->deadline_passed(it->second);
    }

    void cancel_waiter(std::uint64_t id, errc why) {
        auto it = waiters_.find(id);
        if (it == waiters_.end()) {
            modal_->cancel(id, why);  // a modal wait, or done already
            return;
        }
        it->second->state->cancel(it->second, why);
    }

    /// Redis has given us the lock: with wait_replicas, only once that many replicas have it too
    /// (WAIT on the connection it was written on). Unreplicated, a failover could give it to
    /// someone else: it is released, and the waiters fail with `unavailable`.
    void confirm(KeyEntry& st, const std::shared_ptr<Connection>& conn, const std::string& token, std::uint64_t fence,
                 lease::Clock::time_point sent) {
        if (!replication_.waits()) return grant(st, token, fence, sent);
        replication_.after(conn, [this, key = st.key(), token, fence, sent](const std::string& why) {
            KeyEntry* st = find(key);
            if (st == nullptr) return;  // cannot happen: a grant under way keeps its key
            if (why.empty()) return grant(*st, token, fence, sent);
            discard(*st, lock_value(fence, token));
            st->unconfirmed(why);
        });
    }

    /// The lock is ours, with owner token `token` and fencing token `fence`: a new hold for the
    /// key, which gives it to its first waiter or back at once.
    void grant(KeyEntry& st, const std::string& token, std::uint64_t fence, lease::Clock::time_point sent) {
        const auto valid_until = sent + validity_;  // the lease began in Redis after `sent`, never before
        if (lease::Clock::now() >= valid_until) {
            // The answer came after the lease it granted had run out (replies queued behind a
            // slow command, a stalled connection): the lock may be someone else's by now.
            discard(st, lock_value(fence, token));
            return st.granted_too_late();
        }
        st.token.clear();  // handed out: the key's next grant gets a new owner token
        st.unanswered = false;
        st.told_to_wait = false;
        auto* h = new RedisHold;
        h->key = st.key();
        h->token = lock_value(fence, token);  // the lock key's value (see scripts.hpp)
        h->fence = fence;
        h->valid_until(valid_until);
        watchdog_->add(h);
        st.granted(h, fence);
    }

    /// Deletes a grant that is not handed out (`value`: its lock value), if it is still ours;
    /// sent before any later attempt of this process on the key.
    void discard(KeyEntry& st, const std::string& value) {
        st.token.clear();
        st.unanswered = false;
        st.told_to_wait = false;
        servers_->eval(Op::release, release_, {st.lock_key()}, {value, st.lock_key()},
                       [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
    }

    // ---- lock_all's fast path ------------------------------------------------------------

    /// One acquire_all script, as the user thread waiting for it sees it.
    struct AllAttempt {
        std::vector<std::string> keys;
        Deadline deadline = Deadline::max();  // no retry after it
        std::vector<Acquired> taken;          // all of `keys`, or none
        std::size_t held = 0;                 // none taken: the index of a key found held (0 if none was)
        detail::Event done;
        // I/O thread only.
        std::string token;                            // the owner token of every try
        Clock::time_point first_failure{};            // of the current run of unanswered tries
        std::unique_ptr<asio::steady_timer> retry{};  // the next try's
    };

    /// Only keys this process does not use (no entry: no holder, waiter or attempt; no modal
    /// waiter) go in: their entries are reserved while the script runs, so that a local waiter
    /// that comes meanwhile queues behind it, as behind an attempt of the key's own.
    void start_all(AllAttempt& a) {
        for (const std::string& key : a.keys) {
            if (names_a_counter(key) || find(key) != nullptr || modal_->waiting_for(key)) return a.done.set();
        }
        for (const std::string& key : a.keys) state_of(key).reserve();
        a.token = tokens_.next();
        send_all(a);
    }

    /// A try of `a`'s script. Unanswered as a single attempt is retried (retried_unanswered),
    /// it is tried again with the same owner token every 50 ms, while its deadline and
    /// connect_timeout allow: a try that ran finds its keys ours and renews them.
    void send_all(AllAttempt& a) {
        std::vector<std::string_view> redis_keys;
        for (const std::string& key : a.keys) {
            const KeyEntry* st = find(key);  // reserved: still there
            redis_keys.push_back(st->lock_key());
            redis_keys.push_back(st->fence_key());
        }
        const auto sent = lease::Clock::now();
        auto token = std::make_shared<std::string>(a.token);
        servers_->eval(
            Op::acquire, acquire_all_, std::move(redis_keys), {*token, lease_ms_},
            [this, &a, token, sent](std::error_code ec, const Reply& r, const std::shared_ptr<Connection>& conn) {
                const std::size_t n = a.keys.size();
                if (ec && retried_unanswered(ec) && !closing_) {
                    const auto now = Clock::now();
                    if (a.first_failure == Clock::time_point{}) a.first_failure = now;
                    const auto next = now + std::chrono::milliseconds(50) + jitter();
                    if (next < a.deadline && next - a.first_failure < config_.endpoint.connect_timeout) {
                        if (!a.retry) a.retry = std::make_unique<asio::steady_timer>(io_thread_.io());
                        a.retry->expires_at(next);
                        a.retry->async_wait([this, &a](boost::system::error_code e) {
                            if (!e) return send_all(a);
                            abandon_all(a);
                            none_taken(a, 0);
                        });
                        return;
                    }
                }
                if (ec || r.type != Reply::Type::array || r.elements.empty() ||
                    r.elements[0].type != Reply::Type::integer ||
                    (r.elements[0].integer == 1 && r.elements.size() != n + 1)) {
                    // No answer in time (it may have run), an error (it may have run
                    // halfway): whatever it took under this owner token goes back, and the
                    // keys go the one-by-one way, which meets the error and reports it.
                    abandon_all(a);
                    return none_taken(a, 0);
                }
                if (r.elements[0].integer != 1) {  // {0, i}: nothing written
                    const long long i = r.elements.size() > 1 ? r.elements[1].integer : 1;
                    return none_taken(a,
                                      i >= 1 && static_cast<std::size_t>(i) <= n ? static_cast<std::size_t>(i - 1) : 0);
                }
                std::vector<std::uint64_t> fences;
                for (std::size_t i = 1; i <= n; ++i)
                    fences.push_back(static_cast<std::uint64_t>(r.elements[i].integer));
                if (!replication_.waits()) return grant_all(a, *token, fences, sent);
                replication_.after(conn, [this, &a, token, fences, sent](const std::string& why) {
                    if (why.empty()) return grant_all(a, *token, fences, sent);
                    discard_all(a, *token, fences);
                });
            });
    }

    /// No try of `a` will come again: deletes what one may have taken under its owner token.
    void abandon_all(const AllAttempt& a) {
        for (const std::string& key : a.keys)
            abandon(config_.prefix + key, a.token, Clock::now() + config_.endpoint.connect_timeout);
    }

    /// Every key of `a` was taken, under owner token `token` with fencing tokens `fences`: a
    /// new hold for each, as `grant` makes (the watchdog renews it, Stats count it), which is
    /// its key's holder; a local waiter that came meanwhile gets it by hand-over at release.
    void grant_all(AllAttempt& a, const std::string& token, const std::vector<std::uint64_t>& fences,
                   lease::Clock::time_point sent) {
        const auto valid_until = sent + validity_;
        if (lease::Clock::now() >= valid_until) return discard_all(a, token, fences);  // see grant
        for (std::size_t i = 0; i < a.keys.size(); ++i) {
            KeyEntry* st = find(a.keys[i]);  // reserved: still there
            auto* h = new RedisHold;
            h->key = st->key();
            h->token = lock_value(fences[i], token);
            h->fence = fences[i];
            h->valid_until(valid_until);
            watchdog_->add(h);
            tally_.began();
            tally_.ended({}, false);
            st->adopt(h);
            a.taken.push_back({h, fences[i]});
        }
        a.retry.reset();
        a.done.set();  // the user thread may return right after this
    }

    /// A grant not handed out (not confirmed by replicas, or too late): given back, if still ours.
    void discard_all(AllAttempt& a, const std::string& token, const std::vector<std::uint64_t>& fences) {
        for (std::size_t i = 0; i < a.keys.size(); ++i) {
            const std::string lock_key = config_.prefix + a.keys[i];
            servers_->eval(Op::release, release_, {lock_key}, {lock_value(fences[i], token), lock_key},
                           [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
        }
        none_taken(a, 0);
    }

    /// Nothing taken: the keys' entries go back to their usual ways (or are freed).
    void none_taken(AllAttempt& a, std::size_t held) {
        a.held = held;
        for (const std::string& key : a.keys) {
            if (KeyEntry* st = find(key)) st->unreserve();
        }
        a.retry.reset();
        a.done.set();  // the user thread may return right after this
    }

    // ---- what the keys ask for (KeyLock::Host) ------------------------------------------

    Clock::time_point now() override { return Clock::now(); }

    std::chrono::milliseconds jitter() override { return std::chrono::milliseconds(jitter_(rng_)); }

    void send_attempt(KeyLock& key) override {
        const auto sent = lease::Clock::now();
        auto& st = static_cast<KeyEntry&>(key);
        if (st.token.empty()) st.token = tokens_.next();
        auto token = std::make_shared<std::string>(st.token);
        servers_->eval(Op::acquire, acquire_, {key.lock_key(), key.fence_key()}, {*token, lease_ms_},
                       [this, key = key.key(), token, sent](std::error_code ec, const Reply& r,
                                                            const std::shared_ptr<Connection>& conn) {
                           KeyEntry* st = find(key);
                           if (st == nullptr) return;      // cannot happen: an attempt keeps its key
                           if (ec) st->unanswered = true;  // perhaps it ran: the retry will tell
                           AttemptOutcome outcome = acquire_outcome_of(ec, r);
                           if (rules_.quorum && outcome.kind != AttemptOutcome::Kind::granted) {
                               // A quorum round that did not win has given back what it took on
                               // every node, where an answer is still to come on that answer:
                               // such a late release, sent after the next round's acquire on
                               // the same connection, would delete that round's grant if it
                               // had the same owner token. So the next round draws a new one.
                               st->token.clear();
                               st->unanswered = false;
                           }
                           if (outcome.ec == errc::auth_failed && r.str.find("NOPERM") != std::string::npos &&
                               r.str.find("keylock:") == std::string::npos) {
                               // Redis's own NOPERM does not say which key or channel. (Not for a
                               // refused AUTH, of a server or of the sentinels: no ACL is at fault.)
                               outcome.why += " (the lock needs key " + st->lock_key() + ", its fencing counter " +
                                              st->fence_key() + " and channel " + st->lock_key() +
                                              ": see the minimum ACL in docs/configuration.md)";
                           }
                           if (outcome.kind == AttemptOutcome::Kind::held) {
                               st->told_to_wait = true;
                               // On a key of shared holds the attempt left an intent for one lease,
                               // which keeps new readers out while this writer waits: ask again
                               // within half a lease, which renews it.
                               outcome.pttl = std::min<long long>(outcome.pttl, config_.lease.count() / 2);
                           }
                           st->answered(outcome);
                           if (outcome.kind == AttemptOutcome::Kind::granted)
                               confirm(*st, conn, *token, outcome.fence, sent);
                       });
    }

    void subscribe(KeyLock& key) override {
        subscribe_channel(key.lock_key(), [this, key = key.key()](std::error_code ec) {
            if (KeyEntry* st = find(key)) st->subscribed(ec);
        });
    }

    void unsubscribe(KeyLock& key) override { unsubscribe_channel(key.lock_key()); }

    // ---- what the modal part asks for (ModalLocks::Host) ---------------------------------

    void subscribe(const std::string& channel, std::function<void(std::error_code)> done) override {
        subscribe_channel(channel, std::move(done));
    }
    void unsubscribe(const std::string& channel) override { unsubscribe_channel(channel); }
    std::string next_token() override { return tokens_.next(); }
    void modal_idle() override {
        if (closing_) finished();
    }
    void complete(detail::AsyncWaiter* op, std::error_code ec, Acquired a, const std::string& why) override {
        {
            std::lock_guard lk(async_mu_);
            async_ids_.erase(op);
        }
        op->complete(ec, a, why);  // a blocking caller may return right after this
    }

    void retire(RedisHold* from) override {
        watchdog_->remove(from);
        const bool keylocks = !from->modal;  // the holder of the key's KeyLock
        const std::string key = from->key;
        delete from;
        if (!keylocks) return;
        if (KeyEntry* st = find(key)) st->released();
    }

    void arm_retry(KeyLock& key, Clock::time_point at) override {
        auto& st = static_cast<KeyEntry&>(key);
        if (!st.retry) st.retry = std::make_unique<asio::steady_timer>(io_thread_.io());
        st.retry->expires_at(at);
        st.retry->async_wait([this, key = st.key()](boost::system::error_code ec) {
            if (ec) return;
            if (KeyEntry* st = find(key)) st->retry_due();
        });
    }

    void cancel_retry(KeyLock& key) override {
        auto& st = static_cast<KeyEntry&>(key);
        if (st.retry) st.retry->cancel();
    }

    void arm_deadline(QueuedWaiter* waiter) override {
        auto* w = static_cast<Waiter*>(waiter);
        w->timer = std::make_unique<asio::steady_timer>(io_thread_.io(), w->deadline);
        w->timer->async_wait([this, id = w->id](boost::system::error_code ec) {
            if (!ec) deadline_passed(id);
        });
    }

    void cancel_deadline(QueuedWaiter* waiter) override {
        auto* w = static_cast<Waiter*>(waiter);
        if (w->timer) w->timer->cancel();
    }

    /// Ends a wait, which has left its key's queue, and reports.
    void complete(QueuedWaiter* waiter, std::error_code ec, Acquired a, std::string why) override {
        auto* w = static_cast<Waiter*>(waiter);
        waiters_.erase(w->id);
        tally_.ended(ec, w->waited);
        {
            std::lock_guard lk(async_mu_);
            async_ids_.erase(w->op);
        }
        const std::unique_ptr<Waiter> done(w);
        w->op->complete(ec, a, why);  // a blocking caller may return right after this
    }

    void give_back(detail::Hold* hold) override {
        do_release(static_cast<RedisHold*>(hold), [](std::error_code) {});
    }

    /// Frees a key's state once nothing refers to it; stops the loop after close().
    void free(KeyLock& key) override {
        auto& st = static_cast<KeyEntry&>(key);
        if (st.unanswered) abandon(st.lock_key(), st.token, Clock::now() + config_.endpoint.connect_timeout);
        if (st.told_to_wait && !st.token.empty()) {
            // A writer that gave up: the intent its attempts left on a key of shared holds would
            // keep new readers out for up to a lease.
            servers_->eval(Op::release, modal_->scripts().drop_intent, {st.lock_key()}, {st.token, st.lock_key()},
                           [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
        }
        keys_.erase(key.key());
        entries_.store(keys_.size(), std::memory_order_relaxed);
        if (closing_) finished();
    }

    /// No attempt will retry with owner token `token`, whose last attempt went unanswered:
    /// deletes the lock of `lock_key` if it was taken under that token. Its connection broke
    /// just now, most likely: tried again every 50 ms until `until`.
    void abandon(const std::string& lock_key, const std::string& token, Clock::time_point until) {
        abandon_hold(io_thread_.io(), *servers_, abandon_, lock_key, token, until, [this] { return closing_; });
    }

    /// The same for a lock value of ours (`<fencing token>:<owner token>`, or an owner token
    /// alone) whose release or hand-over went unanswered, and may not have run.
    void abandon_value(const std::string& lock_key, const std::string& value) {
        abandon(lock_key, owner_of(value), Clock::now() + config_.endpoint.connect_timeout);
    }

    // ---- releasing ---------------------------------------------------------------------

    /// Releases a hold and then calls `reply` with the outcome — after the backend's own
    /// bookkeeping, so that a caller woken by it sees the entry gone from stats().
    void do_release(RedisHold* h, std::function<void(std::error_code)> reply) {
        h->releasing = true;
        KeyEntry* st = find(h->key);
        auto forget = [this, h] {
            watchdog_->remove(h);
            KeyEntry* st = h->modal ? nullptr : find(h->key);  // a KeyLock's holder
            delete h;
            if (st != nullptr) st->released();
            if (closing_) finished();  // (a KeyLock's release gets there through free())
        };
        // Ours no more, as far as we know: the release still goes out (token-checked: it
        // deletes the lock only if it is ours after all), but the answer is not_owner.
        const bool lost = h->lost();
        // Hand-over only between exclusive holds of a KeyLock, and not past modal waiters.
        if (st != nullptr && !h->modal &&
            st->release_by(lost || modal_->waiting_for(h->key)) == KeyLock::Release::hand_over) {
            hand_over(*st, h, std::move(reply), forget);
            return;
        }
        const std::string channel = config_.prefix + h->key;
        servers_->eval(Op::release, h->member ? modal_->scripts().release_member : release_, {channel},
                       {h->token, channel},
                       [this, h, channel, reply = std::move(reply), forget, lost](std::error_code ec, const Reply& r,
                                                                                  const std::shared_ptr<Connection>&) {
                           std::error_code result;
                           if (ec && h->member) modal_->abandon(channel, owner_of(h->token));
                           if (ec && !h->member) abandon_value(channel, h->token);  // it may not have run: again
                           if (!lost && ec) {
                               result = ec;
                           } else if (!lost && r.is_error()) {
                               result = error_code_of(r);
                           } else if (lost || r.integer != 1) {
                               result = make_error_code(errc::not_owner);
                               mark_lost(h, Found::at_release);  // found only now, perhaps: the key deleted or taken
                           }
                           forget();
                           reply(result);
                       });
        // This process's modal waiters for the key ask again now, right behind the release on
        // the same connection, rather than when its notification comes back.
        if (h->modal) modal_->notified(h->key);
    }

    /// A waiter of this process is next: hands the lock over in one round trip (a new owner
    /// token and fencing token; never free in between).
    template <class Forget>
    void hand_over(KeyEntry& st, RedisHold* h, std::function<void(std::error_code)> reply, Forget forget) {
        const auto sent = lease::Clock::now();
        // The next waiter's owner token: if the answer is lost, its own attempt finds the lock
        // handed over to it and takes it.
        if (st.token.empty()) st.token = tokens_.next();
        auto token = std::make_shared<std::string>(st.token);
        servers_->eval(Op::transfer, transfer_, {st.lock_key(), st.fence_key()}, {h->token, *token, lease_ms_},
                       [this, h, token, sent, reply = std::move(reply), forget](
                           std::error_code ec, const Reply& r, const std::shared_ptr<Connection>& conn) {
                           if (ec) {
                               // Perhaps it ran (the lock is the next waiter's, whose attempt
                               // takes it: same owner token), perhaps not (it is still ours):
                               find(h->key)->unanswered = true;  // the hold keeps its key
                               abandon_value(find(h->key)->lock_key(), h->token);
                           }
                           if (ec || r.type != Reply::Type::integer || r.integer == 0) {
                               if (!ec && !r.is_error()) mark_lost(h, Found::at_release);
                               forget();
                               reply(ec ? ec : r.is_error() ? error_code_of(r) : make_error_code(errc::not_owner));
                               return;
                           }
                           watchdog_->remove(h);
                           KeyEntry& st = *find(h->key);  // the hold kept it
                           delete h;
                           st.handed_over();
                           confirm(st, conn, *token, static_cast<std::uint64_t>(r.integer), sent);
                           reply({});
                       });
    }

    /// An operator call failed with `ec`: throws it with the reason `r` gives (the connection's
    /// failure, or the server's error reply), as a failed lock does.
    [[noreturn]] static void throw_with_reason(std::error_code ec, std::string_view key, const char* what,
                                               const Reply& r) {
        detail::throw_error(ec, key, what, r.is_error() ? error_reason(r) : r.str);
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
                               if (!e && r.is_error()) e = error_code_of(r);
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
    bool stopped_ = false;  // finished(): the loop is told to stop

    const Script acquire_, release_, abandon_, extend_, transfer_, inspect_, force_release_, bump_, extend_member_,
        inspect_modes_, acquire_all_;
    const Replication replication_;

    // I/O thread only.
    std::unique_ptr<Servers> servers_;
    KeyLock::Rules rules_;                  // quorum: see Servers::quorum
    std::chrono::milliseconds validity_{};  // lease minus drift: how long a hold counts after it was sent
    std::unordered_map<std::string, std::unique_ptr<KeyEntry>> keys_;
    std::unordered_map<std::uint64_t, Waiter*> waiters_;
    std::unique_ptr<Watchdog> watchdog_;  // and the holds
    std::unique_ptr<ModalLocks> modal_;   // shared, upgrade and permit holds, and conversions
    /// A channel subscribed to: by how many parties, since the count's start number `serial`.
    struct Subscription {
        int parties = 0;
        std::uint64_t serial = 0;
    };
    std::unordered_map<std::string, Subscription> subs_;  // by channel
    std::uint64_t subs_serial_ = 0;
    TokenSource tokens_;
    std::mt19937 rng_{std::random_device{}()};
    std::uniform_int_distribution<int> jitter_{0, 10};

    std::mutex async_mu_;
    std::unordered_map<detail::AsyncWaiter*, std::uint64_t> async_ids_;

    std::atomic<std::uint64_t> next_id_{1};
    std::atomic<std::size_t> pins_{0};  // handles alive: made on user threads, ended on the I/O thread
    std::atomic<std::uint64_t> entries_{0};
    detail::Tally tally_;
};

std::shared_ptr<detail::Backend> from_url(std::string_view url) { return make_backend(parse_redis_url(url)); }

}  // namespace

std::shared_ptr<detail::Backend> make_backend(const RedisConfig& config) {
    return std::shared_ptr<detail::Backend>(new RedisBackend(config), [](detail::Backend* b) { b->close(); });
}

}  // namespace keylock::redis

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
                                      keylock::detail::register_scheme("redlock", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("rediss+sentinel", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("rediss+cluster", keylock::redis::from_url) &&
                                      keylock::detail::register_scheme("rediss+redlock", keylock::redis::from_url);
}
