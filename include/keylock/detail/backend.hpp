// SPDX-License-Identifier: BSL-1.0
// keylock/detail/backend.hpp — the private interface every backend implements.
//
// Not part of the public API: it is in the public include tree only because the inline and
// template parts of the registry (guards, async_lock) call it. A backend implements acquire,
// release and the few queries below; everything else (RAII guards, with_lock, get_or_create,
// timed waits, completion tokens) is written once above it, in KeyedLockRegistry.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include <keylock/error.hpp>
#include <keylock/export.hpp>
#include <keylock/options.hpp>

namespace keylock::detail {

using Clock = std::chrono::steady_clock;
/// A point on the steady clock; `Deadline::max()` waits forever, `Clock::now()` tries once.
using Deadline = Clock::time_point;

/// A held lock, as the backend knows it. Opaque above the backend.
struct Hold {};
/// A reference that keeps one key's entry alive (for `KeyedLockRegistry::obtain`).
struct Pin {};

struct Acquired {
    Hold* hold = nullptr;     ///< null when not acquired
    std::uint64_t fence = 0;  ///< the fencing token of this acquisition
};

/// How a lock is held. Only exclusive ownership exists yet; shared, upgrade and counted
/// permits extend this, and a backend that cannot keep a mode answers `errc::not_supported`.
enum class Mode : std::uint8_t { exclusive };

/// One acquisition, as the registry asks a backend for it: the key (already checked above the
/// seam: 1 to `max_key_bytes()` bytes), how it is to be held, and how long to wait for it.
struct Request {
    std::string_view key;
    Mode mode = Mode::exclusive;
    Deadline deadline = Deadline::max();  ///< `Clock::now()`: one attempt, no waiting
    std::stop_token stop;                 ///< ends a synchronous wait (async ones end by cancel())
    Pin* pin = nullptr;                   ///< a pin of `key` (a KeyMutex's), which saves the lookup
};

/// Room inside an asynchronous operation for a backend's own record of it (its place in a
/// queue, say), so that an async_lock is one allocation. The registry only creates it. A backend
/// that uses it constructs its record there with `emplace` when `async_acquire` begins, and
/// reaches it with `get` from then on (a `cancel` may come after the completion). The record
/// is never destroyed: the operation's memory is freed under it, so it must own nothing.
class WaitNode {
public:
    static constexpr std::size_t kSize = 48;

    template <class T>
    T* emplace() noexcept {
        static_assert(sizeof(T) <= kSize, "the backend's record does not fit");
        static_assert(alignof(T) <= alignof(WaitNode), "the backend's record needs a stricter alignment");
        static_assert(std::is_nothrow_default_constructible_v<T>);
        return ::new (static_cast<void*>(space_)) T;
    }
    template <class T>
    T* get() noexcept {
        return std::launder(reinterpret_cast<T*>(space_));
    }

private:
    alignas(std::uint64_t) alignas(void*) std::byte space_[kSize];
};

/// An asynchronous acquisition in progress. The backend calls `complete` exactly once, never
/// while holding one of its own locks; the implementation delivers the result through the
/// operation's executor and frees itself after that.
class AsyncWaiter : public WaitNode {
public:
    AsyncWaiter(const AsyncWaiter&) = delete;
    AsyncWaiter& operator=(const AsyncWaiter&) = delete;
    virtual void complete(std::error_code ec, Acquired acquired) noexcept = 0;

protected:
    AsyncWaiter() = default;
    ~AsyncWaiter() = default;
};

class KEYLOCK_API Backend {
public:
    /// `max_key_bytes`: the longest key the registry lets through to this backend.
    explicit Backend(std::size_t max_key_bytes = 1024) noexcept : max_key_bytes_(max_key_bytes) {}
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;
    virtual ~Backend() = default;

    /// Waits for `request.key` until `request.deadline` or until `request.stop` is requested.
    /// On success returns the hold; otherwise returns a null hold and sets `ec` (timeout,
    /// cancelled, too_many_keys, or the backend's own errors).
    virtual Acquired acquire(const Request& request, std::error_code& ec) = 0;

    /// Starts an asynchronous acquisition (its `stop` and `pin` are not used: `cancel` ends
    /// it); `waiter->complete` reports the outcome (possibly before this returns, but never on
    /// this call's stack while a backend lock is held).
    virtual void async_acquire(const Request& request, AsyncWaiter* waiter) = 0;

    /// Ends a pending `async_acquire` with `operation_aborted` if it has not completed yet.
    virtual void cancel(AsyncWaiter* waiter) noexcept = 0;

    /// Releases a hold. Never throws; reports `not_owner` when the lock was no longer ours.
    virtual void release(Hold* hold, std::error_code& ec) noexcept = 0;

    /// Releases a hold when nobody waits for the outcome (a guard's destructor). A remote
    /// backend may send the release without waiting for its answer, as long as the release is
    /// ordered before every later request of this process and flushed when the backend closes.
    virtual void release_unobserved(Hold* hold) noexcept {
        std::error_code ignored;
        release(hold, ignored);
    }

    /// Calls `on_lost` once if `hold` is found lost (at once, on some thread, if it already
    /// is), and never after it is released. For backends whose locks cannot be lost: nothing.
    // NOLINTNEXTLINE(performance-unnecessary-value-param): a sink; the overrides move from it
    virtual void watch_lost(Hold* hold, std::function<void()> on_lost) {
        (void)hold;
        (void)on_lost;
    }

    /// The key of a live hold.
    virtual std::string_view key(const Hold* hold) const noexcept = 0;

    /// Whether the hold's lease has been lost (never, for in-process locks).
    virtual bool lost(const Hold* hold) const noexcept = 0;

    /// Keeps `key`'s entry alive until `unpin` (the key is checked above the seam); throws
    /// keylock::Error (e.g. `too_many_keys`).
    virtual Pin* pin(std::string_view key) = 0;
    virtual void unpin(Pin* pin) noexcept = 0;
    virtual std::string_view key(const Pin* pin) const noexcept = 0;

    virtual Stats stats() const = 0;

    /// For operators: the lock of `key` as the backend sees it now, and deleting it whoever
    /// holds it (returns whether there was one). Backends that cannot: `errc::not_supported`.
    virtual LockInfo inspect(std::string_view key, std::error_code& ec) {
        (void)key;
        ec = make_error_code(errc::not_supported);
        return {};
    }
    virtual bool force_release(std::string_view key, std::error_code& ec) {
        (void)key;
        ec = make_error_code(errc::not_supported);
        return false;
    }

    /// See KeyedLockRegistry::on_lost. Backends whose locks cannot be lost ignore it.
    // NOLINTNEXTLINE(performance-unnecessary-value-param): a sink; the overrides move from it
    virtual void on_lost(std::function<void(std::string_view key, std::uint64_t fencing_token)>) {}

    /// The configuration as a URL, with any password redacted.
    virtual std::string describe() const = 0;

    /// Called when the last registry handle goes. The backend frees itself now, or later when
    /// its last guard, waiter or pin goes.
    virtual void close() noexcept = 0;

    /// The longest key the registry passes to this backend (shorter keys of 1 byte or more
    /// are the backend's to take; the registry refuses the rest).
    std::size_t max_key_bytes() const noexcept { return max_key_bytes_; }

private:
    std::size_t max_key_bytes_;
};

/// Whether `key` may reach `backend`: `invalid_key` (empty), `key_too_long`, or nothing.
inline std::error_code check_key(const Backend& backend, std::string_view key) noexcept {
    if (key.empty()) return make_error_code(errc::invalid_key);
    if (key.size() > backend.max_key_bytes()) return make_error_code(errc::key_too_long);
    return {};
}

/// Makes a backend for a URL of one scheme; throws keylock::Error for a bad URL.
using BackendFactory = std::shared_ptr<Backend> (*)(std::string_view url);

/// Makes `KeyedLockRegistry::from_url` hand URLs of `scheme` (lower case, e.g. "redis") to
/// `factory`. Backend libraries register their schemes at static initialisation (see
/// keylock::redis). Returns true, so that it can initialise a static.
KEYLOCK_API bool register_scheme(std::string_view scheme, BackendFactory factory);

}  // namespace keylock::detail
