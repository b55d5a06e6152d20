// SPDX-License-Identifier: BSL-1.0
// keylock/registry.hpp — KeyedLockRegistry, the one interface to every backend, and KeyMutex,
// a per-key handle that meets the standard TimedLockable requirements.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <keylock/detail/async_op.hpp>
#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>
#include <keylock/guard.hpp>
#include <keylock/multi_guard.hpp>
#include <keylock/options.hpp>

namespace keylock {

struct LocalOptions;  // <keylock/local.hpp>

namespace detail {

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

/// What get_or_create's `find()` may return: `std::optional<T>`, or a nullable pointer (raw or
/// smart) that tests as false when nothing was found.
template <class R>
concept FindResult = !std::is_reference_v<R> && std::is_move_constructible_v<R> &&
                     (is_optional<R>::value || (std::is_constructible_v<bool, const R&> && requires(const R& r) {
                          *r;
                          R(nullptr);
                      }));

/// get_or_create's result for a `find()` returning R: T for std::optional<T>, else R itself.
template <class R>
struct found {
    using type = R;
};
template <class T>
struct found<std::optional<T>> {
    using type = T;
};
template <class R>
using found_t = typename found<R>::type;

template <class R>
found_t<R> take_found(R found) {
    if constexpr (is_optional<R>::value) {
        return found_t<R>(std::move(*found));
    } else {
        return found;
    }
}

/// `create` for a result T: called with the Guard or with nothing, returning something
/// convertible to T.
template <class F, class T>
concept CreatesFor = (std::is_invocable_v<F&, Guard&> && std::is_convertible_v<std::invoke_result_t<F&, Guard&>, T>) ||
                     (std::is_invocable_v<F&> && std::is_convertible_v<std::invoke_result_t<F&>, T>);

/// `commit` for a created T: called with (T&, Guard&), (T&) or nothing.
template <class F, class T>
concept CommitsFor = std::is_invocable_v<F&, T&, Guard&> || std::is_invocable_v<F&, T&> || std::is_invocable_v<F&>;

/// Where from_env() and the keylock command look for a URL, and what they take without one.
inline constexpr const char* kUrlVariable = "KEYLOCK_URL";
inline constexpr std::string_view kDefaultUrl = "local://";

/// The value of the environment variable `var`, or `fallback` when it is unset or empty.
KEYLOCK_API std::string url_from_env(const char* var, std::string_view fallback);

/// A stop token that is never stopped.
inline const std::stop_token& no_stop() noexcept {
    static const std::stop_token token;
    return token;
}

}  // namespace detail

/// A per-key lock handle from `KeyedLockRegistry::obtain`. It meets the standard
/// *TimedLockable* requirements, so `std::unique_lock`, `std::scoped_lock` and `std::lock` work
/// with it. While the handle exists, its key's entry stays in memory (so repeated locking
/// through one handle skips the lookup).
///
/// Like a mutex, one handle may be shared by several threads: `lock()` in one thread waits while
/// another thread holds the key through the same handle, or through any other handle or guard.
/// It is not recursive: locking a handle twice from one thread deadlocks as std::mutex would.
/// Destroying a locked handle releases the lock.
class KeyMutex {
public:
    /// Takes over `other`'s key (and its lock, if held); `other` refers to nothing afterwards.
    KeyMutex(KeyMutex&& other) noexcept
        : backend_(std::exchange(other.backend_, nullptr)),
          pin_(std::exchange(other.pin_, nullptr)),
          held_(std::move(other.held_)),
          upgrade_(std::move(other.upgrade_)),
          shared_(std::move(other.shared_)) {}
    /// Releases this handle's lock (if held) and key, then takes over `other`'s.
    KeyMutex& operator=(KeyMutex&& other) noexcept {
        if (this != &other) {
            reset();
            backend_ = std::exchange(other.backend_, nullptr);
            pin_ = std::exchange(other.pin_, nullptr);
            held_ = std::move(other.held_);
            upgrade_ = std::move(other.upgrade_);
            shared_ = std::move(other.shared_);
        }
        return *this;
    }
    KeyMutex(const KeyMutex&) = delete;
    KeyMutex& operator=(const KeyMutex&) = delete;
    ~KeyMutex() { reset(); }

    /// Waits until the key is ours.
    void lock() { acquire(detail::Deadline::max()); }
    /// One attempt, no waiting.
    [[nodiscard]] bool try_lock() { return acquire(detail::Clock::now()); }
    /// Waits up to `d` for the key; false if it is not ours by then.
    template <class Duration>
    [[nodiscard]] bool try_lock_for(const Duration& d) {
        return acquire(detail::deadline_after(detail::std_duration(d)));
    }
    /// Waits until `tp` (of any clock) for the key; false if it is not ours by then.
    template <class TimePoint>
    [[nodiscard]] bool try_lock_until(const TimePoint& tp) {
        return acquire(detail::to_deadline(tp));
    }
    /// Releases the key and returns once the backend has answered. Never throws, as the standard
    /// requires of `unlock()`: `std::unique_lock`, `std::scoped_lock` and `std::lock_guard` call it
    /// from destructors. A lease found lost by this release (the lock was someone else's by then)
    /// is counted in `stats().lost`; a server that cannot be reached is asked again, by the
    /// lock's owner token, for up to `connect_timeout`, and otherwise leaves the lock to end with
    /// its lease. Check `lost()` before unlocking, or use `on_lost`, to learn of a loss; a Guard's
    /// `release()` reports the outcome for callers who want it. On a handle that holds nothing
    /// (which the standard leaves undefined) it does nothing.
    void unlock() noexcept {
        std::error_code ignored;
        if (held_.owns_lock()) held_.release(ignored);
    }

    // ---- Boost.Thread's SharedLockable and UpgradeLockable -----------------------------------
    // So that boost::shared_lock, boost::upgrade_lock, boost::upgrade_to_unique_lock and
    // std::shared_lock work with a handle. Several threads may hold the key shared through one
    // handle at once; `unlock_shared()` gives back one of the handle's shared holds. The waiting
    // forms throw keylock::Error as lock() does; the unlocks and downgrades never throw (a
    // downgrade the backend could not make leaves the stronger hold in place until its unlock).

    /// Shared ownership of the key (see KeyedLockRegistry::lock_shared).
    void lock_shared() { (void)acquire_shared(LockMode::shared, detail::Deadline::max()); }
    /// One attempt at lock_shared().
    [[nodiscard]] bool try_lock_shared() { return acquire_shared(LockMode::shared, detail::Clock::now()); }
    /// lock_shared(), waiting at most `d`.
    template <class Duration>
    [[nodiscard]] bool try_lock_shared_for(const Duration& d) {
        return acquire_shared(LockMode::shared, detail::deadline_after(detail::std_duration(d)));
    }
    /// lock_shared(), waiting until `tp` at most.
    template <class TimePoint>
    [[nodiscard]] bool try_lock_shared_until(const TimePoint& tp) {
        return acquire_shared(LockMode::shared, detail::to_deadline(tp));
    }
    /// Gives back one shared hold of this handle (nothing if it has none).
    void unlock_shared() noexcept { (void)take_shared(); }

    /// Upgrade ownership of the key (see KeyedLockRegistry::lock_upgrade).
    void lock_upgrade() { (void)acquire_shared(LockMode::upgrade, detail::Deadline::max()); }
    /// One attempt at lock_upgrade().
    [[nodiscard]] bool try_lock_upgrade() { return acquire_shared(LockMode::upgrade, detail::Clock::now()); }
    /// lock_upgrade(), waiting at most `d`.
    template <class Duration>
    [[nodiscard]] bool try_lock_upgrade_for(const Duration& d) {
        return acquire_shared(LockMode::upgrade, detail::deadline_after(detail::std_duration(d)));
    }
    /// lock_upgrade(), waiting until `tp` at most.
    template <class TimePoint>
    [[nodiscard]] bool try_lock_upgrade_until(const TimePoint& tp) {
        return acquire_shared(LockMode::upgrade, detail::to_deadline(tp));
    }
    /// Gives back the handle's upgrade hold (nothing if it has none).
    void unlock_upgrade() noexcept {
        std::error_code ignored;
        if (upgrade_.owns_lock()) upgrade_.release(ignored);
    }

    /// Upgrade to exclusive ownership without letting go: waits for the shared holders to leave.
    void unlock_upgrade_and_lock() { (void)upgrade_to_exclusive(detail::Deadline::max()); }
    /// One attempt at unlock_upgrade_and_lock().
    [[nodiscard]] bool try_unlock_upgrade_and_lock() { return upgrade_to_exclusive(detail::Clock::now()); }
    /// unlock_upgrade_and_lock(), waiting at most `d` (false: still upgrade ownership).
    template <class Duration>
    [[nodiscard]] bool try_unlock_upgrade_and_lock_for(const Duration& d) {
        return upgrade_to_exclusive(detail::deadline_after(detail::std_duration(d)));
    }
    /// unlock_upgrade_and_lock(), waiting until `tp` at most.
    template <class TimePoint>
    [[nodiscard]] bool try_unlock_upgrade_and_lock_until(const TimePoint& tp) {
        return upgrade_to_exclusive(detail::to_deadline(tp));
    }
    /// Shared to exclusive ownership, if this is the key's one holder now.
    [[nodiscard]] bool try_unlock_shared_and_lock() { return shared_to(LockMode::exclusive, detail::Clock::now()); }
    /// Shared to exclusive ownership, if this becomes the key's one holder within `d`.
    template <class Duration>
    [[nodiscard]] bool try_unlock_shared_and_lock_for(const Duration& d) {
        return shared_to(LockMode::exclusive, detail::deadline_after(detail::std_duration(d)));
    }
    /// Shared to exclusive ownership, if this becomes the key's one holder by `tp`.
    template <class TimePoint>
    [[nodiscard]] bool try_unlock_shared_and_lock_until(const TimePoint& tp) {
        return shared_to(LockMode::exclusive, detail::to_deadline(tp));
    }
    /// Shared to upgrade ownership, if nobody else has upgrade ownership now.
    [[nodiscard]] bool try_unlock_shared_and_lock_upgrade() {
        return shared_to(LockMode::upgrade, detail::Clock::now());
    }
    /// Shared to upgrade ownership, waiting at most `d` for the upgrade holder to leave.
    template <class Duration>
    [[nodiscard]] bool try_unlock_shared_and_lock_upgrade_for(const Duration& d) {
        return shared_to(LockMode::upgrade, detail::deadline_after(detail::std_duration(d)));
    }
    /// Shared to upgrade ownership, waiting until `tp` at most.
    template <class TimePoint>
    [[nodiscard]] bool try_unlock_shared_and_lock_upgrade_until(const TimePoint& tp) {
        return shared_to(LockMode::upgrade, detail::to_deadline(tp));
    }
    /// Exclusive to shared ownership, without letting go; never waits.
    void unlock_and_lock_shared() noexcept { downgrade(held_, LockMode::shared); }
    /// Exclusive to upgrade ownership, without letting go; never waits.
    void unlock_and_lock_upgrade() noexcept { downgrade(held_, LockMode::upgrade); }
    /// Upgrade to shared ownership, without letting go; never waits.
    void unlock_upgrade_and_lock_shared() noexcept { downgrade(upgrade_, LockMode::shared); }

    /// Whether the current hold's lease was lost while held (another owner may now hold the
    /// key); false when nothing is held, and always for `local://`.
    bool lost() const noexcept { return held_.lost(); }

    /// The key of this handle; empty for a moved-from handle.
    std::string_view key() const noexcept { return pin_ ? backend_->key(pin_) : std::string_view{}; }
    /// The fencing token of the current hold (0 if never locked).
    std::uint64_t fencing_token() const noexcept { return held_.fencing_token(); }

private:
    friend class KeyedLockRegistry;
    KeyMutex(detail::Backend* backend, detail::Pin* pin) noexcept : backend_(backend), pin_(pin) {}

    bool acquire(detail::Deadline deadline) {
        std::error_code ec;
        detail::Request request;
        request.key = backend_->key(pin_);
        request.deadline = deadline;
        request.pin = pin_;
        auto acquired = backend_->acquire(request, ec);
        if (acquired.hold == nullptr) {
            if (ec == errc::timeout) return false;
            detail::throw_error(ec, key(), "lock");
        }
        held_ = Guard(backend_, acquired);
        return true;
    }
    void reset() noexcept {
        held_ = Guard();
        upgrade_ = Guard();
        shared_.guards.clear();
        if (pin_ != nullptr) std::exchange(backend_, nullptr)->unpin(std::exchange(pin_, nullptr));
    }

    /// A shared or upgrade hold through the handle's pin.
    bool acquire_shared(LockMode mode, detail::Deadline deadline) {
        std::error_code ec;
        detail::Request request;
        request.key = backend_->key(pin_);
        request.mode = mode;
        request.deadline = deadline;
        request.pin = pin_;
        auto acquired = backend_->acquire(request, ec);
        if (acquired.hold == nullptr) {
            if (ec == errc::timeout) return false;
            detail::throw_error(ec, key(), mode == LockMode::shared ? "lock_shared" : "lock_upgrade");
        }
        Guard guard(backend_, acquired, mode);
        if (mode == LockMode::upgrade) {
            upgrade_ = std::move(guard);
        } else {
            put_shared(std::move(guard));
        }
        return true;
    }
    bool upgrade_to_exclusive(detail::Deadline deadline) {
        if (!upgrade_.owns_lock()) detail::throw_error(errc::not_held, key(), "unlock_upgrade_and_lock");
        std::error_code ec;
        if (!upgrade_.convert(LockMode::exclusive, deadline, ec)) {
            if (ec == errc::timeout) return false;
            detail::throw_error(ec, key(), "unlock_upgrade_and_lock");
        }
        held_ = std::move(upgrade_);
        return true;
    }
    bool shared_to(LockMode mode, detail::Deadline deadline) {
        Guard guard = take_shared();
        if (!guard.owns_lock()) detail::throw_error(errc::not_held, key(), "unlock_shared_and_lock");
        std::error_code ec;
        if (!guard.convert(mode, deadline, ec)) {
            put_shared(std::move(guard));
            if (ec == errc::timeout) return false;
            detail::throw_error(ec, key(), "unlock_shared_and_lock");
        }
        (mode == LockMode::upgrade ? upgrade_ : held_) = std::move(guard);
        return true;
    }
    void downgrade(Guard& from, LockMode to) noexcept {
        std::error_code ignored;
        (void)from.convert(to, detail::Deadline::max(), ignored);
        Guard guard = std::move(from);
        if (to == LockMode::upgrade) {
            upgrade_ = std::move(guard);
        } else {
            put_shared(std::move(guard));
        }
    }
    void put_shared(Guard guard) noexcept {
        std::lock_guard lk(shared_.mu);
        try {
            shared_.guards.push_back(std::move(guard));
        } catch (...) {  // out of memory: released here rather than kept where no unlock finds it
        }
    }
    Guard take_shared() noexcept {
        std::lock_guard lk(shared_.mu);
        if (shared_.guards.empty()) return Guard();
        Guard g = std::move(shared_.guards.back());
        shared_.guards.pop_back();
        return g;
    }

    /// The handle's shared holds, which several threads may take and give back at once.
    struct SharedHolds {
        SharedHolds() = default;
        SharedHolds(const SharedHolds&) = delete;
        SharedHolds& operator=(const SharedHolds&) = delete;
        ~SharedHolds() = default;
        SharedHolds(SharedHolds&& other) noexcept : guards(std::move(other.guards)) {}
        SharedHolds& operator=(SharedHolds&& other) noexcept {
            guards = std::move(other.guards);
            return *this;
        }
        std::mutex mu;
        std::vector<Guard> guards;
    };

    detail::Backend* backend_ = nullptr;
    detail::Pin* pin_ = nullptr;
    Guard held_;     // the exclusive hold
    Guard upgrade_;  // the upgrade hold
    SharedHolds shared_;
};


/// A registry of per-key locks: "only one holder of key K at a time", for any number of keys,
/// with memory proportional to the keys in use, not to the keys ever seen.
///
/// Thread safety: every member function may be called from any number of threads at once.
/// Copies are cheap and share one underlying registry; the state lives until the last copy and
/// the last guard, handle and pending wait are gone.
///
/// Keys are arbitrary bytes (NUL, CR, LF included), 1 to `max_key_bytes` long; an empty key
/// fails with `errc::invalid_key`, a longer one with `errc::key_too_long`. Locks are not
/// recursive: a thread that locks a key it holds waits for itself.
class KEYLOCK_API KeyedLockRegistry {
public:
    /// A `local://` registry with default options. (Defined by the local backend, which
    /// keylock::keylock links by default.)
    KeyedLockRegistry();
    /// A `local://` registry with the given options (<keylock/local.hpp>); throws
    /// keylock::Error (`invalid_option`) when an option is out of range.
    explicit KeyedLockRegistry(const LocalOptions& options);

    /// A registry for a backend URL, handed to the backend registered for its scheme: e.g.
    /// `local://?idle_ttl=30s&max_keys=100000&fair=true` (keylock::keylock), `redis://host:6379`
    /// (keylock::redis). Throws keylock::Error (`invalid_url`, `unknown_scheme`,
    /// `unknown_option`, `invalid_option`) naming the part at fault; passwords are never part of
    /// a message.
    static KeyedLockRegistry from_url(std::string_view url);

    /// `from_url(getenv(var))`, or `from_url(fallback)` when the variable is unset or empty.
    static KeyedLockRegistry from_env(const char* var = detail::kUrlVariable,
                                      std::string_view fallback = detail::kDefaultUrl);

    /// Waits as long as it takes for `key`. Throws keylock::Error for a bad key or when the
    /// registry refuses a new entry (`too_many_keys`).
    Guard lock(std::string_view key) { return acquire_or_throw(key, detail::Deadline::max(), detail::no_stop()); }
    /// Waits for `key` until it is ours or `stop` is requested; on stop, throws keylock::Error
    /// with `errc::cancelled` and leaves nothing behind.
    Guard lock(std::string_view key, const std::stop_token& stop) {
        return acquire_or_throw(key, detail::Deadline::max(), stop);
    }

    /// One attempt without waiting: the guard, or nullopt if someone else holds the key.
    std::optional<Guard> try_lock(std::string_view key) {
        return try_acquire(key, detail::Clock::now(), detail::no_stop());
    }
    /// Waits up to `timeout` (or until `stop`); nullopt when the time ran out or the wait was
    /// stopped. Errors other than those (bad key, too many keys) throw keylock::Error.
    template <class Rep, class Period>
    std::optional<Guard> try_lock_for(std::string_view key, const std::chrono::duration<Rep, Period>& timeout,
                                      const std::stop_token& stop = {}) {
        return try_acquire(key, detail::deadline_after(timeout), stop);
    }
    /// Waits until `deadline` (any clock; the steady clock is exact) or `stop`.
    template <class C, class D>
    std::optional<Guard> try_lock_until(std::string_view key, const std::chrono::time_point<C, D>& deadline,
                                        const std::stop_token& stop = {}) {
        return try_acquire(key, detail::to_deadline(deadline), stop);
    }

    /// Shared ownership of `key`: any number of shared holders at once (and one upgrade
    /// holder among them), never beside an exclusive one. A request that finds others waiting
    /// queues behind them, so a stream of readers cannot starve a writer (docs/semantics.md,
    /// "Modes"). The guard's fencing token is drawn like an exclusive one's. Throws as lock().
    Guard lock_shared(std::string_view key, const std::stop_token& stop = {}) {
        return acquire_or_throw(request(key, LockMode::shared, detail::Deadline::max(), stop));
    }
    /// One attempt at lock_shared(), without waiting.
    std::optional<Guard> try_lock_shared(std::string_view key) {
        return try_acquire(request(key, LockMode::shared, detail::Clock::now(), {}));
    }
    /// lock_shared(), waiting at most `timeout` (or until `stop`): nullopt if the time ran out.
    template <class Rep, class Period>
    std::optional<Guard> try_lock_shared_for(std::string_view key, const std::chrono::duration<Rep, Period>& timeout,
                                             const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::shared, detail::deadline_after(timeout), stop));
    }
    /// lock_shared(), waiting until `deadline` at most (or until `stop`).
    template <class C, class D>
    std::optional<Guard> try_lock_shared_until(std::string_view key, const std::chrono::time_point<C, D>& deadline,
                                               const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::shared, detail::to_deadline(deadline), stop));
    }
    /// Upgrade ownership of `key`: shared ownership that at most one holder has at a time, and
    /// that Guard::upgrade() turns into exclusive ownership without letting go. Two would-be
    /// writers that both read first take this mode, not shared: the second waits here instead
    /// of deadlocking with the first in an upgrade. Throws as lock().
    Guard lock_upgrade(std::string_view key, const std::stop_token& stop = {}) {
        return acquire_or_throw(request(key, LockMode::upgrade, detail::Deadline::max(), stop));
    }
    /// One attempt at lock_upgrade(), without waiting.
    std::optional<Guard> try_lock_upgrade(std::string_view key) {
        return try_acquire(request(key, LockMode::upgrade, detail::Clock::now(), {}));
    }
    /// lock_upgrade(), waiting at most `timeout` (or until `stop`).
    template <class Rep, class Period>
    std::optional<Guard> try_lock_upgrade_for(std::string_view key, const std::chrono::duration<Rep, Period>& timeout,
                                              const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::upgrade, detail::deadline_after(timeout), stop));
    }
    /// lock_upgrade(), waiting until `deadline` at most (or until `stop`).
    template <class C, class D>
    std::optional<Guard> try_lock_upgrade_until(std::string_view key, const std::chrono::time_point<C, D>& deadline,
                                                const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::upgrade, detail::to_deadline(deadline), stop));
    }
    /// `permits` of the `limit` permits of `key` (a keyed semaphore: at most `limit` permits
    /// held at once, by any number of holders); the guard gives them back. Waiting requests are
    /// served in order, so a large request is not starved by small ones. Throws keylock::Error:
    /// `invalid_argument` (0 permits, a limit of 0, more permits than the limit),
    /// `mode_conflict` (the key is in use as a lock, or as a semaphore of another limit), or as
    /// lock().
    Guard acquire_permits(std::string_view key, std::uint32_t permits, std::uint32_t limit,
                          const std::stop_token& stop = {}) {
        return acquire_or_throw(request(key, LockMode::permits, detail::Deadline::max(), stop, permits, limit));
    }
    /// One attempt at acquire_permits(), without waiting.
    std::optional<Guard> try_acquire_permits(std::string_view key, std::uint32_t permits, std::uint32_t limit) {
        return try_acquire(request(key, LockMode::permits, detail::Clock::now(), {}, permits, limit));
    }
    /// acquire_permits(), waiting at most `timeout` (or until `stop`).
    template <class Rep, class Period>
    std::optional<Guard> try_acquire_permits_for(std::string_view key, std::uint32_t permits, std::uint32_t limit,
                                                 const std::chrono::duration<Rep, Period>& timeout,
                                                 const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::permits, detail::deadline_after(timeout), stop, permits, limit));
    }
    /// acquire_permits(), waiting until `deadline` at most (or until `stop`).
    template <class C, class D>
    std::optional<Guard> try_acquire_permits_until(std::string_view key, std::uint32_t permits, std::uint32_t limit,
                                                   const std::chrono::time_point<C, D>& deadline,
                                                   const std::stop_token& stop = {}) {
        return try_acquire(request(key, LockMode::permits, detail::to_deadline(deadline), stop, permits, limit));
    }
    /// Every key of `keys` exclusively, or none: the keys are taken in one global order (their
    /// bytes, compared as unsigned), so callers that list the same keys in different orders
    /// never deadlock; if one cannot be had, those taken are released. Throws keylock::Error:
    /// `invalid_argument` for no keys or a repeated one, or as lock() for a key.
    template <class Keys>
    MultiGuard lock_all(const Keys& keys, const std::stop_token& stop = {}) {
        return *acquire_all(key_list(keys), detail::Deadline::max(), stop, true);
    }
    /// lock_all() for a braced list of keys: `lock_all({"from", "to"})`.
    MultiGuard lock_all(std::initializer_list<std::string_view> keys, const std::stop_token& stop = {}) {
        return *acquire_all(std::vector<std::string_view>(keys), detail::Deadline::max(), stop, true);
    }
    /// As lock_all(), waiting at most `timeout` for all of them: nullopt (nothing held) when the
    /// time runs out or `stop` is requested.
    template <class Keys, class Rep, class Period>
    std::optional<MultiGuard> try_lock_all_for(const Keys& keys, const std::chrono::duration<Rep, Period>& timeout,
                                               const std::stop_token& stop = {}) {
        return acquire_all(key_list(keys), detail::deadline_after(timeout), stop, false);
    }
    /// As lock_all(), waiting until `deadline` at most for all of them.
    template <class Keys, class C, class D>
    std::optional<MultiGuard> try_lock_all_until(const Keys& keys, const std::chrono::time_point<C, D>& deadline,
                                                 const std::stop_token& stop = {}) {
        return acquire_all(key_list(keys), detail::to_deadline(deadline), stop, false);
    }
    /// Locks `key`, runs `fn` and returns its result; the lock is released however `fn` ends.
    /// `fn` is called with the Guard if it accepts one (`[](keylock::Guard& g) {…}`), so it can
    /// read the fencing token; otherwise with no arguments.
    template <class Fn>
    decltype(auto) with_lock(std::string_view key, Fn&& fn) {
        Guard guard = lock(key);
        if constexpr (std::is_invocable_v<Fn, Guard&>) {
            return std::invoke(std::forward<Fn>(fn), guard);
        } else {
            return std::invoke(std::forward<Fn>(fn));
        }
    }

    /// Get-or-create without duplicates: `find()` is tried first without the lock; if it finds
    /// nothing, the key is locked, `find()` is tried again, and only if it still finds nothing
    /// is `create` called, under the lock. Concurrent callers for one key thus create at most
    /// once, provided every writer of that entity goes through the same key.
    ///
    /// `find()` returns `std::optional<T>` (the result is then a T) or a nullable pointer (`T*`,
    /// `std::shared_ptr<T>`, `std::unique_ptr<T>`: the result is that pointer type). `create`
    /// returns something convertible to the result; it is called with the Guard if it accepts
    /// one (`[](keylock::Guard& g) {…}`), so it can pass `g.fencing_token()` to the store and
    /// check `g.lost()` before it commits.
    ///
    /// The commit trap: the lock protects only what is *visible to others* before it is
    /// released. A database transaction that commits the new row after the lock is released
    /// lets the next caller find nothing and create it again. Commit inside `create`, or pass
    /// `commit` (next overload), which runs after `create` while the key is still locked.
    template <class Find, class Create>
    requires detail::FindResult<std::invoke_result_t<Find&>> &&
        detail::CreatesFor<Create, detail::found_t<std::invoke_result_t<Find&>>>
            detail::found_t<std::invoke_result_t<Find&>> get_or_create(std::string_view key, Find&& find,
                                                                       Create&& create) {
        return get_or_create(key, std::forward<Find>(find), std::forward<Create>(create), [] {});
    }

    /// As above, then `commit` (called with the created value, or with the value and the Guard,
    /// or with nothing: whichever it accepts) while the key is still locked: the caller's
    /// transaction commits before any other caller can look again. A value found needs no
    /// commit: `commit` runs only after `create`. An exception from `create` or `commit` leaves
    /// the function (the lock released on the way out) with nothing returned.
    template <class Find, class Create, class Commit>
    requires detail::FindResult<std::invoke_result_t<Find&>> &&
        detail::CreatesFor<Create, detail::found_t<std::invoke_result_t<Find&>>> &&
        detail::CommitsFor<Commit, detail::found_t<std::invoke_result_t<Find&>>>
            detail::found_t<std::invoke_result_t<Find&>> get_or_create(std::string_view key, Find&& find,
                                                                       Create&& create, Commit&& commit) {
        using Found = std::invoke_result_t<Find&>;
        using Result = detail::found_t<Found>;
        if (Found found = std::invoke(find)) return detail::take_found(std::move(found));
        Guard guard = lock(key);
        if (Found found = std::invoke(find)) return detail::take_found(std::move(found));
        Result created = [&]() -> Result {
            if constexpr (std::is_invocable_v<Create&, Guard&>) {
                return std::invoke(create, guard);
            } else {
                return std::invoke(create);
            }
        }();
        if constexpr (std::is_invocable_v<Commit&, Result&, Guard&>) {
            std::invoke(commit, created, guard);
        } else if constexpr (std::is_invocable_v<Commit&, Result&>) {
            std::invoke(commit, created);
        } else {
            std::invoke(commit);
        }
        return created;
    }

    /// A TimedLockable handle for `key` (see KeyMutex). Throws keylock::Error for a bad key.
    KeyMutex obtain(std::string_view key) {
        if (std::error_code ec = detail::check_key(*backend_, key)) detail::throw_error(ec, key, "obtain");
        return KeyMutex(backend_.get(), backend_->pin(key));
    }

    /// Waits for `key` without blocking a thread and completes with
    /// `void(boost::system::error_code, keylock::Guard)`. Works with any Asio completion
    /// token: callbacks, `use_awaitable`, `use_future`, `deferred`. The handler runs on its
    /// associated executor (a plain callback: the system executor's threads).
    ///
    /// Per-operation cancellation: emitting any cancellation type on the handler's bound slot
    /// ends the wait with `boost::asio::error::operation_aborted` and leaves nothing behind; a
    /// lock granted before the cancellation is delivered normally. Like Asio's own operations,
    /// emit cancellation from the handler's executor (or strand).
    /// Bad keys complete with the keylock error code.
    template <class CompletionToken = boost::asio::default_completion_token_t<boost::asio::system_executor>>
    auto async_lock(std::string_view key,
                    CompletionToken&& token = boost::asio::default_completion_token_t<boost::asio::system_executor>()) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, Guard)>(
            detail::AsyncLockInitiation{backend_}, token, std::string(key));
    }

    /// async_lock() for shared ownership (see lock_shared()).
    template <class CompletionToken = boost::asio::default_completion_token_t<boost::asio::system_executor>>
    auto async_lock_shared(
        std::string_view key,
        CompletionToken&& token = boost::asio::default_completion_token_t<boost::asio::system_executor>()) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, Guard)>(
            detail::AsyncLockInitiation{backend_}, token, std::string(key), LockMode::shared);
    }
    /// async_lock() for upgrade ownership (see lock_upgrade()).
    template <class CompletionToken = boost::asio::default_completion_token_t<boost::asio::system_executor>>
    auto async_lock_upgrade(
        std::string_view key,
        CompletionToken&& token = boost::asio::default_completion_token_t<boost::asio::system_executor>()) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, Guard)>(
            detail::AsyncLockInitiation{backend_}, token, std::string(key), LockMode::upgrade);
    }
    /// async_lock() for `permits` of `limit` permits (see acquire_permits()).
    template <class CompletionToken = boost::asio::default_completion_token_t<boost::asio::system_executor>>
    auto async_acquire_permits(
        std::string_view key, std::uint32_t permits, std::uint32_t limit,
        CompletionToken&& token = boost::asio::default_completion_token_t<boost::asio::system_executor>()) {
        return boost::asio::async_initiate<CompletionToken, void(boost::system::error_code, Guard)>(
            detail::AsyncLockInitiation{backend_}, token, std::string(key), LockMode::permits, permits, limit);
    }
    /// A registry over a backend of your own (the extension point for new backends and for
    /// tests). The shared_ptr's deleter should call `close()`.
    static KeyedLockRegistry from_backend(std::shared_ptr<detail::Backend> backend) noexcept {
        return KeyedLockRegistry(std::move(backend));
    }

    /// A snapshot of the counters (see Stats).
    Stats stats() const { return backend_->stats(); }

    /// The configuration as a URL (passwords redacted).
    std::string describe() const { return backend_->describe(); }

    /// For operators: whether `key` is held now, with the holder's fencing token and remaining
    /// lease, as the backend's server sees it (whoever holds it, in any process). Throws
    /// keylock::Error: `not_supported` for `local://` (its locks live inside one process, and
    /// another process could not see them anyway), or a backend error.
    LockInfo inspect(std::string_view key) {
        std::error_code ec = detail::check_key(*backend_, key);
        LockInfo info = ec ? LockInfo{} : backend_->inspect(key, ec);
        if (ec) detail::throw_error(ec, key, "inspect");
        return info;
    }

    /// For operators: deletes the lock of `key` whoever holds it, and wakes its waiters; the
    /// holder's guard finds it lost at its next renewal, and its release reports `not_owner`.
    /// Returns whether there was a lock. Breaks mutual exclusion by design: for a holder known
    /// to be dead whose lease is too long to wait out. Throws as inspect() does.
    bool force_release(std::string_view key) {
        std::error_code ec = detail::check_key(*backend_, key);
        const bool was_held = !ec && backend_->force_release(key, ec);
        if (ec) detail::throw_error(ec, key, "force_release");
        return was_held;
    }

    /// Calls `handler(key, fencing_token)` when a lock held through this registry is found
    /// lost while its guard lives (a distributed backend could not renew its lease in time, or
    /// found it taken by someone else); from then on the guard's `lost()` is true. Runs on the
    /// backend's own thread: keep it short and do not wait for keylock in it. Replaces any
    /// earlier handler; an empty function removes it. Locks of the local backend are never
    /// lost, so it never calls it.
    void on_lost(std::function<void(std::string_view key, std::uint64_t fencing_token)> handler) {
        backend_->on_lost(std::move(handler));
    }

private:
    explicit KeyedLockRegistry(std::shared_ptr<detail::Backend> backend) noexcept : backend_(std::move(backend)) {}

    /// The request checked (key, permits), then the backend asked: the hold, or a null one
    /// and `ec`.
    detail::Acquired acquire(const detail::Request& request, std::error_code& ec) {
        ec = detail::check_key(*backend_, request.key);
        if (!ec && request.mode == LockMode::permits &&
            (request.limit == 0 || request.permits == 0 || request.permits > request.limit)) {
            ec = errc::invalid_argument;
        }
        if (ec) return {};
        return backend_->acquire(request, ec);
    }
    static detail::Request request(std::string_view key, LockMode mode, detail::Deadline deadline,
                                   const std::stop_token& stop, std::uint32_t permits = 1, std::uint32_t limit = 0) {
        detail::Request r;
        r.key = key;
        r.mode = mode;
        r.deadline = deadline;
        r.stop = stop;
        r.permits = permits;
        r.limit = limit;
        return r;
    }
    Guard acquire_or_throw(const detail::Request& r) {
        std::error_code ec;
        const auto acquired = acquire(r, ec);
        if (acquired.hold == nullptr) detail::throw_error(ec, r.key, detail::operation_of(r.mode));
        return Guard(backend_.get(), acquired, r.mode, r.permits);
    }
    std::optional<Guard> try_acquire(const detail::Request& r) {
        std::error_code ec;
        const auto acquired = acquire(r, ec);
        if (acquired.hold != nullptr) return Guard(backend_.get(), acquired, r.mode, r.permits);
        if (ec == errc::timeout || ec == errc::cancelled) return std::nullopt;
        detail::throw_error(ec, r.key, detail::operation_of(r.mode));
    }
    Guard acquire_or_throw(std::string_view key, detail::Deadline deadline, const std::stop_token& stop) {
        return acquire_or_throw(request(key, LockMode::exclusive, deadline, stop));
    }
    std::optional<Guard> try_acquire(std::string_view key, detail::Deadline deadline, const std::stop_token& stop) {
        return try_acquire(request(key, LockMode::exclusive, deadline, stop));
    }
    std::optional<MultiGuard> acquire_all(std::vector<std::string_view> keys, detail::Deadline deadline,
                                          const std::stop_token& stop, bool waits_forever);
    template <class Keys>
    static std::vector<std::string_view> key_list(const Keys& keys) {
        std::vector<std::string_view> list;
        for (const auto& k : keys) list.emplace_back(k);
        return list;
    }

    std::shared_ptr<detail::Backend> backend_;
};

/// The registry's configuration as a URL, with any password written as `***` (describe()).
inline std::string to_string(const KeyedLockRegistry& registry) { return registry.describe(); }

}  // namespace keylock
