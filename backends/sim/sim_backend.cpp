// SPDX-License-Identifier: BSL-1.0
// sim:// — the simulated store of keylock/testing.hpp (keylock::testing): a backend (one per
// registry) over a local backend shared by every registry of one Simulation (the "store"), with
// the faults a test scripts.
//
// A grant from the store is wrapped in a SimHold (a LeasedHold, so the registry's lost-lease
// bookkeeping works as on Redis), in every mode: shared, upgrade and permit holds are the
// store's own, one SimHold each. lose() releases the store's holds of the key at once (the key
// is free for others) and marks the SimHolds lost; the holders' own releases then only report
// not_owner. A conversion (upgrade, downgrade) is the store's, of the SimHold's store hold; a
// hold lost while its conversion waits is given back when the store answers (lose() ends that
// wait) and the conversion reports not_owner. Delayed grants wait on one timer thread per
// simulation; conversions are not delayed (a grant cut short could not be given back).
#include <keylock/testing.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backends/local/local_backend.hpp"

namespace keylock::testing {

namespace {

using keylock::detail::Acquired;
using keylock::detail::AsyncWaiter;
using keylock::detail::Backend;
using keylock::detail::Clock;
using keylock::detail::Deadline;
using keylock::detail::Hold;
using keylock::detail::LeasedHold;
using keylock::detail::Pin;
using keylock::detail::Request;
using std::chrono::milliseconds;

class SimBackend;

struct SimHold final : LeasedHold {
    SimHold(SimBackend* b, Hold* i, std::string k) : backend(b), inner(i), key(std::move(k)) {}
    SimBackend* backend;
    Hold* inner;  // the store's hold
    std::string key;
    keylock::detail::Mode mode = keylock::detail::Mode::exclusive;
    // Under the state's mu:
    bool losing = false;    // lose() took it and is telling its registry
    bool released = false;  // released meanwhile: lose() frees it
    // A conversion on its way through the store (its relay), and what lose() left it:
    std::shared_ptr<AsyncWaiter> converting;
    bool submitted = false;        // the store has the conversion's request: it can be cancelled
    bool cancel_wanted = false;    // lost before that: cancel it once submitted
    bool lost_converting = false;  // lost meanwhile: the conversion's answer gives the store hold back
};

struct SimPin final : Pin {
    SimPin(Pin* i, std::string k) : inner(i), key(std::move(k)) {}
    Pin* inner;
    std::string key;
};

/// The names of live simulations, for sim://NAME.
struct Names {
    std::mutex mu;
    std::map<std::string, std::weak_ptr<detail::SimState>, std::less<>> live;
};
Names& names() {
    static auto* n = new Names;  // never destroyed: simulations may end during static destruction
    return *n;
}

bool good_name(std::string_view name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
               c == '.';
    });
}

/// Delayed grants: (due, deliver) run in order of due time by one thread, which keeps this
/// queue alive (not the simulation: a delivery may free the simulation's last registry, and with
/// it the simulation).
struct TimerQueue {
    std::mutex mu;
    std::condition_variable cv;
    std::multimap<Clock::time_point, std::function<void()>> due;
    bool stopping = false;

    void run() {
        std::unique_lock lk(mu);
        while (!stopping || !due.empty()) {
            if (due.empty()) {
                cv.wait(lk);
                continue;
            }
            const auto first = due.begin();
            if (!stopping && first->first > Clock::now()) {
                cv.wait_until(lk, first->first);
                continue;
            }
            auto deliver = std::move(first->second);
            due.erase(first);
            lk.unlock();
            deliver();
            deliver = nullptr;  // what it holds goes before the lock is taken again
            lk.lock();
        }
    }
};

}  // namespace

namespace detail {

/// What every registry of one simulation shares: the store, the scripts and the clock.
struct SimState {
    SimulationOptions options;
    std::shared_ptr<Backend> store;

    std::mutex mu;  // everything below
    bool down = false;
    milliseconds now{0}, down_since{0};
    milliseconds delay{0};
    std::map<std::string, std::deque<errc>, std::less<>> scripted;  // "" : any key
    std::set<SimHold*> holds;                                       // granted, not released or lost
    std::vector<std::pair<milliseconds, Hold*>> orphans;            // released while down: freed at

    std::shared_ptr<TimerQueue> timer_queue = std::make_shared<TimerQueue>();
    std::thread timer;  // started by the first delayed grant

    SimState(const SimState&) = delete;
    SimState& operator=(const SimState&) = delete;
    SimState(SimState&&) = delete;
    SimState& operator=(SimState&&) = delete;

    explicit SimState(SimulationOptions o) : options(std::move(o)) {
        LocalOptions local;
        local.max_key_bytes = options.max_key_bytes;
        store = keylock::local::make_backend(local);
    }
    ~SimState() {
        {
            std::lock_guard lk(timer_queue->mu);
            timer_queue->stopping = true;
        }
        timer_queue->cv.notify_all();
        if (!timer.joinable()) return;
        // The last registry may be freed by a delivery, on the timer thread: it cannot join
        // itself, and needs nothing of this object to finish.
        if (timer.get_id() == std::this_thread::get_id()) {
            timer.detach();
        } else {
            timer.join();
        }
    }

    /// Runs `deliver` at `at` on the timer thread. Under `mu`.
    void schedule(Clock::time_point at, std::function<void()> deliver) {
        {
            std::lock_guard lk(timer_queue->mu);
            timer_queue->due.emplace(at, std::move(deliver));
        }
        if (!timer.joinable()) timer = std::thread([q = timer_queue] { q->run(); });
        timer_queue->cv.notify_all();
    }

    /// The next scripted fault for `key`, if any. Under `mu`.
    std::error_code take_fault(std::string_view key) {
        for (std::string_view k : {key, std::string_view()}) {
            auto it = scripted.find(k);
            if (it == scripted.end()) continue;
            const errc code = it->second.front();
            it->second.pop_front();
            if (it->second.empty()) scripted.erase(it);
            return make_error_code(code);
        }
        return {};
    }

    /// Frees the store's holds of releases made while down whose lease has passed. Under `mu`;
    /// returns them, for the caller to release outside it.
    std::vector<Hold*> expired_orphans() {
        std::vector<Hold*> expired;
        std::erase_if(orphans, [&](const auto& o) {
            if (o.first > now) return false;
            expired.push_back(o.second);
            return true;
        });
        return expired;
    }
};

}  // namespace detail

namespace {

/// One registry's view of the simulated store.
class SimBackend final : public Backend {
public:
    /// `max_key_bytes`: this registry's, at most the simulation's.
    SimBackend(std::shared_ptr<detail::SimState> state, std::size_t max_key_bytes)
        : Backend(max_key_bytes, Loss::possible), state_(std::move(state)) {}

    void async_acquire(const Request& request, AsyncWaiter* waiter) override {
        auto* const from = static_cast<SimHold*>(request.from);  // a conversion's hold
        auto relay = std::make_shared<Relay>(this, waiter, request);
        {
            std::lock_guard lk(mu_);
            relays_[waiter] = relay;
            ++live_;  // the wait
        }
        Request inner = request;
        inner.pin = request.pin != nullptr ? static_cast<SimPin*>(request.pin)->inner : nullptr;
        std::error_code fault;
        {
            std::lock_guard lk(state_->mu);
            if (from != nullptr && !state_->holds.contains(from)) {
                fault = make_error_code(errc::not_owner);  // lost (or being lost) already
            } else {
                fault = state_->down ? make_error_code(errc::unavailable) : state_->take_fault(request.key);
            }
            if (!fault && from != nullptr) {
                // lose() finds the conversion here from now on (see SimHold).
                from->converting = relay;
                from->submitted = false;
                from->cancel_wanted = false;
                inner.from = from->inner;
            }
        }
        if (fault) {
            {
                std::lock_guard lk(mu_);
                relays_.erase(waiter);
            }
            if (fault == errc::timeout) timeouts_.fetch_add(1);
            waiter->complete(fault, {},
                             fault == errc::unavailable ? "the simulated store is down or unreachable"
                             : fault == errc::not_owner ? "the lock was lost before the conversion"
                             : fault == errc::timeout   ? ""
                                                        : "a fault scripted by keylock::testing::Simulation");
            done_one();  // the wait; `this` may be gone after it
            return;
        }
        try {
            state_->store->async_acquire(inner, relay.get());
        } catch (...) {  // never started: undone
            Hold* give_back = nullptr;
            if (from != nullptr) {
                std::lock_guard lk(state_->mu);
                from->converting.reset();
                if (std::exchange(from->lost_converting, false)) give_back = from->inner;
            }
            if (give_back != nullptr) state_->store->release(give_back, nullptr);
            {
                std::lock_guard lk(mu_);
                relays_.erase(waiter);
            }
            done_one();
            throw;
        }
        if (from != nullptr) {
            bool cancel = false;
            {
                std::lock_guard lk(state_->mu);
                from->submitted = true;
                cancel = std::exchange(from->cancel_wanted, false);
            }
            if (cancel) state_->store->cancel(relay.get());  // lost meanwhile: the wait ends now
        }
        // The store's async waits have no deadline (async_lock's have none): a timed wait ends
        // here, as a cancellation of the store's wait that the relay reports as a timeout.
        if (request.deadline == Deadline::max() || relay->granted.load()) return;
        if (request.deadline <= Clock::now()) {
            relay->timed_out.store(true);
            state_->store->cancel(relay.get());
            return;
        }
        std::lock_guard lk(state_->mu);
        state_->schedule(request.deadline, [relay, store = state_->store] {
            if (relay->granted.load()) return;  // answered: the backend may be gone, the store is not
            relay->timed_out.store(true);
            store->cancel(relay.get());
        });
    }

    void cancel(AsyncWaiter* waiter) noexcept override {
        std::shared_ptr<Relay> relay;
        {
            std::lock_guard lk(mu_);
            auto it = relays_.find(waiter);
            if (it == relays_.end()) return;
            relay = it->second;
        }
        relay->cancelled.store(true);
        std::unique_lock lk(state_->mu);
        if (relay->delayed.load()) {  // granted, waiting out the delay: ends now, the grant given back
            state_->schedule(Clock::now(), [relay] { relay->deliver(); });
        } else if (!relay->granted.load()) {
            lk.unlock();
            state_->store->cancel(relay.get());  // completes it with `cancelled`, unless granted already
        }
    }

    void release(Hold* hold, std::error_code* ec) noexcept override {
        auto* h = static_cast<SimHold*>(hold);
        Hold* inner = nullptr;
        bool orphaned = false, keep = false;
        {
            std::lock_guard lk(state_->mu);
            if (state_->holds.erase(h) == 1) {
                inner = h->inner;
                if (state_->down) {  // the release never reaches the store: the lease frees it
                    state_->orphans.emplace_back(state_->now + state_->options.lease, inner);
                    orphaned = true;
                }
            } else if (h->losing) {
                h->released = true;  // lose() is still telling its watchers: it frees the hold
                keep = true;
            }
        }
        std::error_code outcome;
        if (keep) {
            outcome = make_error_code(errc::not_owner);  // lose() counts and frees it
        } else if (inner == nullptr) {
            outcome = make_error_code(errc::not_owner);
            mark_lost(h, Found::at_release);  // counted once, whoever found it first
        } else if (orphaned) {
            outcome = make_error_code(errc::unavailable);
        } else {
            state_->store->release(inner, nullptr);
        }
        if (ec != nullptr) *ec = outcome;
        if (keep) return;
        delete h;
        done_one();
    }

    std::string_view key(const Hold* hold) const noexcept override { return static_cast<const SimHold*>(hold)->key; }
    std::string_view key(const Pin* pin) const noexcept override { return static_cast<const SimPin*>(pin)->key; }

    Pin* pin(std::string_view key) override {
        auto p = std::make_unique<SimPin>(nullptr, std::string(key));
        p->inner = state_->store->pin(key);
        std::lock_guard lk(mu_);
        ++live_;
        return p.release();
    }
    void unpin(Pin* pin) noexcept override {
        auto* p = static_cast<SimPin*>(pin);
        state_->store->unpin(p->inner);
        delete p;
        done_one();
    }

    /// The store's figures (shared by the simulation's registries), with this registry's own
    /// timeouts and cancellations (the store sees every ended wait as a cancellation).
    Stats snapshot() const override {
        Stats s = state_->store->snapshot();
        s.timeouts = timeouts_.load();
        s.cancellations = cancellations_.load();
        return s;
    }

    /// The store's view of the key's holders (the local backend's inspect), with an exclusive
    /// holder's fencing token; no lease (-1: the simulated leases never run out while the
    /// store is up). While the store is down: `unavailable`.
    LockInfo inspect(std::string_view key, std::error_code& ec) override {
        {
            std::lock_guard lk(state_->mu);
            if (state_->down) {
                ec = make_error_code(errc::unavailable);
                return {};
            }
        }
        LockInfo info = state_->store->inspect(key, ec);
        if (ec || !info.held || info.mode != keylock::detail::Mode::exclusive) return info;
        std::lock_guard lk(state_->mu);
        for (const SimHold* h : state_->holds) {
            if (h->key == key && h->mode == keylock::detail::Mode::exclusive) info.fencing_token = h->fence;
        }
        return info;
    }

    std::string describe() const override {
        std::string url = "sim://" + state_->options.name;
        if (max_key_bytes() != state_->options.max_key_bytes)
            url += "?max_key_bytes=" + std::to_string(max_key_bytes());
        return url;
    }

    void close() noexcept override {
        bool now = false;
        {
            std::lock_guard lk(mu_);
            closing_ = true;
            now = live_ == 0;
        }
        if (now) delete this;
    }

    /// From lose(): `h`'s lease ended and its store hold was given back; `h->losing` is set, so
    /// a release meanwhile leaves `h` to this call, which frees it if so.
    void lost(SimHold* h) noexcept {
        mark_lost(h);
        bool released = false;
        {
            std::lock_guard lk(state_->mu);
            h->losing = false;
            released = h->released;
        }
        if (!released) return;
        delete h;
        done_one();
    }

private:
    /// An acquisition on its way through the store (and the delay), for one waiter. Everything
    /// its completion needs is allocated up front: complete() and deliver() are noexcept.
    struct Relay final : AsyncWaiter {
        Relay(SimBackend* b, AsyncWaiter* w, const Request& r)
            : backend(b),
              waiter(w),
              deadline(r.deadline),
              mode(r.mode),
              from(static_cast<SimHold*>(r.from)),
              hold(from != nullptr ? nullptr : std::make_unique<SimHold>(b, nullptr, std::string(r.key))) {
            if (hold) hold->mode = r.mode;
        }

        void complete(std::error_code ec, Acquired acquired, std::string_view why) noexcept override {
            outcome = ec;
            try {
                reason.assign(why);
            } catch (...) {  // out of memory: the error code alone
            }
            if (!ec && from != nullptr) {
                converted = acquired;  // the SimHold's own, in deliver()
            } else if (!ec) {
                hold->inner = acquired.hold;
                hold->fence = acquired.fence;
            }
            std::shared_ptr<Relay> self = backend->relay_of(waiter);
            {
                std::lock_guard lk(backend->state_->mu);
                granted.store(true);
                const milliseconds delay = backend->state_->delay;
                if (!ec && delay.count() > 0 && !cancelled.load() && from == nullptr) {
                    const Deadline due = Clock::now() + delay;
                    // Set before the timer may run deliver(), which reads them on its thread.
                    delayed.store(true);
                    cut.store(deadline < due);  // the wait ends first: a timeout, the grant given back
                    try {
                        backend->state_->schedule(deadline < due ? deadline : due, [self] { self->deliver(); });
                        return;
                    } catch (...) {  // no timer: delivered now, undelayed
                        delayed.store(false);
                        cut.store(false);
                    }
                }
            }
            deliver();
        }

        /// Hands the outcome to the waiter, once.
        void deliver() noexcept {
            if (delivered.exchange(true)) return;
            std::error_code ec = outcome;
            if (!ec && delayed.load() && (cut.load() || cancelled.load())) {
                ec = make_error_code(cancelled.load() ? errc::cancelled : errc::timeout);
            } else if (ec == errc::cancelled && timed_out.load() && !cancelled.load()) {
                ec = make_error_code(errc::timeout);  // the store's wait, ended at the deadline
            }
            Acquired acquired;
            Hold* give_back = nullptr;                // a store hold that is nobody's
            std::shared_ptr<AsyncWaiter> conversion;  // from's reference to this: dropped after the mutex
            if (from != nullptr) {
                std::lock_guard lk(backend->state_->mu);
                conversion = std::move(from->converting);
                if (std::exchange(from->lost_converting, false)) {
                    // lost while the store converted it: the store's hold, converted or not, goes back
                    give_back = ec ? from->inner : converted.hold;
                    ec = make_error_code(errc::not_owner);
                    reason.clear();
                } else if (!ec) {
                    from->inner = converted.hold;
                    from->fence = converted.fence;
                    from->mode = mode;
                    acquired = {from, converted.fence};
                }
            } else if (!ec) {
                std::lock_guard lk(backend->state_->mu);
                try {
                    backend->state_->holds.insert(hold.get());
                    const std::uint64_t fence = hold->fence;
                    acquired = {hold.release(), fence};
                } catch (...) {  // out of memory: no grant
                    ec = make_error_code(errc::backend_error);
                }
            }
            if (ec && hold && hold->inner != nullptr) give_back = hold->inner;
            if (give_back != nullptr) backend->state_->store->release(give_back, nullptr);
            if (ec == errc::timeout) backend->timeouts_.fetch_add(1);
            if (ec == errc::cancelled) backend->cancellations_.fetch_add(1);
            SimBackend* b = backend;
            b->finish(waiter, !ec && from == nullptr);  // a conversion's hold is counted already
            waiter->complete(ec, acquired, reason);
            b->done_one();  // the wait; `this` may be gone after it (with the backend)
        }

        SimBackend* backend;
        AsyncWaiter* waiter;
        Deadline deadline;
        keylock::detail::Mode mode;
        SimHold* from;                       // a conversion's hold, or null
        Acquired converted;                  // a conversion's grant: the store's new hold
        std::atomic<bool> granted{false};    // the store answered
        std::atomic<bool> cancelled{false};  // by cancel()
        std::atomic<bool> timed_out{false};  // the deadline passed before the store answered
        std::atomic<bool> delivered{false};
        std::atomic<bool> delayed{false};  // the grant waits out delay_grants()
        std::atomic<bool> cut{false};      // ... and the wait's deadline comes first
        std::error_code outcome;
        std::string reason;
        std::unique_ptr<SimHold> hold;  // the grant's, made up front; the waiter's once granted
    };

    std::shared_ptr<Relay> relay_of(AsyncWaiter* waiter) noexcept {
        std::lock_guard lk(mu_);
        auto it = relays_.find(waiter);
        return it == relays_.end() ? nullptr : it->second;  // there until finish()
    }
    /// The wait of `waiter` is answered; with a grant, its hold now counts as live.
    void finish(AsyncWaiter* waiter, bool granted) noexcept {
        std::lock_guard lk(mu_);
        relays_.erase(waiter);
        if (granted) ++live_;
    }

    /// A pin, a hold or a wait ended: frees the backend after close() once none is left.
    void done_one() noexcept {
        bool now = false;
        {
            std::lock_guard lk(mu_);
            now = --live_ == 0 && closing_;
        }
        if (now) delete this;
    }

    std::shared_ptr<detail::SimState> state_;
    std::mutex mu_;  // relays_, live_, closing_
    std::map<AsyncWaiter*, std::shared_ptr<Relay>> relays_;
    std::size_t live_ = 0;  // waits, holds and pins not yet ended
    bool closing_ = false;
    std::atomic<std::uint64_t> timeouts_{0}, cancellations_{0};
};

/// Holds whose leases end (lose(), advance()): gathered under the state's mutex, ended after it.
struct Losses {
    std::vector<SimHold*> holds;                         // taken out of the state's set, `losing` set
    std::vector<Hold*> inner;                            // their store holds to give back now
    std::vector<std::shared_ptr<AsyncWaiter>> converts;  // their conversions' store waits, to end

    /// Room for `n` holds, made before any is taken (so that taking them cannot fail).
    void reserve(std::size_t n) {
        holds.reserve(n);
        inner.reserve(n);
        converts.reserve(n);
    }
};

/// Takes `h` out of the granted holds (`losses` has room). Under the state's mutex. A hold
/// being converted keeps its store hold until the store answers the conversion (which then
/// gives it back): its wait is ended now, or as soon as the store has it.
void take_for_loss(detail::SimState& state, SimHold* h, Losses& losses) noexcept {
    state.holds.erase(h);
    h->losing = true;
    losses.holds.push_back(h);
    if (!h->converting) {
        losses.inner.push_back(h->inner);
        return;
    }
    h->lost_converting = true;
    if (h->submitted) {
        losses.converts.push_back(h->converting);
    } else {
        h->cancel_wanted = true;
    }
}

/// Ends the leases: the conversions' waits end (each gives its hold back as it answers), the
/// other store holds go back, then each registry is told.
void end_leases(detail::SimState& state, const Losses& losses) {
    for (const auto& relay : losses.converts) state.store->cancel(relay.get());
    for (Hold* inner : losses.inner) state.store->release(inner, nullptr);
    for (SimHold* h : losses.holds) h->backend->lost(h);
}

/// sim://NAME[?max_key_bytes=N]: a registry on the live simulation NAME.
std::shared_ptr<Backend> sim_factory(std::string_view url) {
    constexpr std::string_view scheme = "sim://";
    std::string_view rest = url.substr(scheme.size());
    const auto q = rest.find('?');
    const std::string_view name = rest.substr(0, q);
    const std::string_view query = q == std::string_view::npos ? std::string_view() : rest.substr(q + 1);
    if (!good_name(name)) {
        throw Error(errc::invalid_url, "keylock: a sim:// URL is sim://NAME[?max_key_bytes=N], NAME a live "
                                       "keylock::testing::Simulation's name (letters, digits, '-', '_', '.')");
    }
    std::shared_ptr<detail::SimState> state;
    {
        std::lock_guard lk(names().mu);
        if (auto it = names().live.find(name); it != names().live.end()) state = it->second.lock();
    }
    if (!state) {
        throw Error(errc::unavailable,
                    "keylock: no keylock::testing::Simulation named '" + std::string(name) + "' is alive");
    }
    std::size_t max_key_bytes = state->options.max_key_bytes;
    if (!query.empty()) {
        constexpr std::string_view option = "max_key_bytes=";
        if (!query.starts_with(option)) {
            throw Error(errc::unknown_option, "keylock: sim:// has one option, max_key_bytes, not '" +
                                                  std::string(query.substr(0, query.find('='))) + "'");
        }
        const std::string_view value = query.substr(option.size());
        std::size_t n = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (ec != std::errc{} || end != value.data() + value.size() || n == 0 || n > max_key_bytes) {
            throw Error(errc::invalid_option, "keylock: sim:// max_key_bytes must be 1 to the simulation's " +
                                                  std::to_string(max_key_bytes) + ", not '" + std::string(value) + "'");
        }
        max_key_bytes = n;
    }
    return std::shared_ptr<Backend>(new SimBackend(std::move(state), max_key_bytes), [](Backend* b) { b->close(); });
}

const bool sim_registered = keylock::detail::register_scheme("sim", sim_factory);

}  // namespace

Simulation::Simulation(SimulationOptions options) {
    (void)sim_registered;
    if (!good_name(options.name)) {
        throw Error(errc::invalid_option, "keylock: a simulation's name is 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if (options.lease < milliseconds(1)) throw Error(errc::invalid_option, "keylock: a simulation's lease is >= 1ms");
    if (options.max_key_bytes == 0) throw Error(errc::invalid_option, "keylock: max_key_bytes must be at least 1");
    state_ = std::make_shared<detail::SimState>(std::move(options));
    std::lock_guard lk(names().mu);
    auto& slot = names().live[state_->options.name];
    if (!slot.expired()) {
        throw Error(errc::invalid_option,
                    "keylock: a simulation named '" + state_->options.name + "' is alive already");
    }
    slot = state_;
}

Simulation::~Simulation() {
    std::lock_guard lk(names().mu);
    auto it = names().live.find(state_->options.name);
    if (it != names().live.end() && it->second.lock() == state_) names().live.erase(it);
}

KeyedLockRegistry Simulation::registry() const {
    return KeyedLockRegistry::from_backend(std::shared_ptr<Backend>(
        new SimBackend(state_, state_->options.max_key_bytes), [](Backend* b) { b->close(); }));
}

std::string Simulation::url() const { return "sim://" + state_->options.name; }

bool Simulation::lose(std::string_view key) {
    Losses losses;
    {
        std::lock_guard lk(state_->mu);
        std::vector<SimHold*> of_key;  // every holder: one exclusive, or the readers, or the permits'
        for (SimHold* h : state_->holds) {
            if (h->key == key) of_key.push_back(h);
        }
        losses.reserve(of_key.size());
        for (SimHold* h : of_key) take_for_loss(*state_, h, losses);
    }
    end_leases(*state_, losses);
    return !losses.holds.empty();
}

void Simulation::fail_next(std::string_view key, errc code, int times) {
    std::lock_guard lk(state_->mu);
    auto& queue = state_->scripted[std::string(key)];
    for (int i = 0; i < times; ++i) queue.push_back(code);
    if (queue.empty()) state_->scripted.erase(std::string(key));
}

void Simulation::set_down(bool down) {
    std::lock_guard lk(state_->mu);
    if (down && !state_->down) state_->down_since = state_->now;
    state_->down = down;
}

void Simulation::delay_grants(milliseconds delay) {
    std::lock_guard lk(state_->mu);
    state_->delay = std::max(delay, milliseconds(0));
}

void Simulation::advance(milliseconds d) {
    Losses losses;
    std::vector<Hold*> expired;
    {
        std::lock_guard lk(state_->mu);
        state_->now += std::max(d, milliseconds(0));
        if (state_->down && state_->now - state_->down_since >= state_->options.lease) {
            const std::vector<SimHold*> all(state_->holds.begin(), state_->holds.end());
            losses.reserve(all.size());
            for (SimHold* h : all) take_for_loss(*state_, h, losses);
        }
        expired = state_->expired_orphans();
    }
    for (Hold* h : expired) state_->store->release(h, nullptr);
    end_leases(*state_, losses);
}

milliseconds Simulation::now() const {
    std::lock_guard lk(state_->mu);
    return state_->now;
}

std::size_t Simulation::held() const {
    std::lock_guard lk(state_->mu);
    return state_->holds.size();
}

}  // namespace keylock::testing
