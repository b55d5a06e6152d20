// SPDX-License-Identifier: BSL-1.0
// keylock/detail/backend.hpp — the private interface every backend implements.
//
// Not part of the public API: it is in the public include tree only because the inline and
// template parts of the registry (guards, async_lock) call it. A backend implements acquire,
// release and the few queries below; everything else (key checks, lost-lease bookkeeping,
// blocking waits, RAII guards, with_lock, get_or_create, completion tokens) is written once
// above it, here and in KeyedLockRegistry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <ratio>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <time.h>

#include <keylock/error.hpp>
#include <keylock/export.hpp>
#include <keylock/options.hpp>

namespace keylock::detail {

using Clock = std::chrono::steady_clock;
/// A point on the steady clock; `Deadline::max()` waits forever, `Clock::now()` tries once.
using Deadline = Clock::time_point;

/// `now + d`, saturating at "forever" instead of overflowing.
template <class Rep, class Period>
Deadline deadline_after(std::chrono::duration<Rep, Period> d) {
    const auto now = Clock::now();
    if (d <= d.zero()) return now;
    const std::chrono::duration<double> wanted = d;
    const std::chrono::duration<double> room = Deadline::max() - now;
    if (wanted >= room) return Deadline::max();
    return now + std::chrono::ceil<Clock::duration>(d);
}

/// A duration as std::chrono's: itself, or one of a library of the same shape (Boost.Chrono's,
/// which Boost.Thread's lock types and concepts use).
template <class Rep, class Period>
std::chrono::duration<Rep, Period> std_duration(const std::chrono::duration<Rep, Period>& d) {
    return d;
}
template <class D>
requires requires(const D& d) {
    d.count();
    D::period::num;
    D::period::den;
}
auto std_duration(const D& d) {
    return std::chrono::duration<typename D::rep, std::ratio<D::period::num, D::period::den>>(d.count());
}

/// A time point of a clock of another library (Boost.Chrono) as a Deadline, by the time left.
template <class TimePoint>
requires requires(const TimePoint& tp) { std_duration(tp - TimePoint::clock::now()); }
Deadline to_deadline(const TimePoint& tp) { return deadline_after(std_duration(tp - TimePoint::clock::now())); }

/// A time point of any clock as a Deadline (the steady clock's exactly, others by the time left).
template <class C, class D>
Deadline to_deadline(const std::chrono::time_point<C, D>& tp) {
    if constexpr (std::is_same_v<C, Clock>) {
        return std::chrono::time_point_cast<Clock::duration>(tp);
    } else {
        return deadline_after(tp - C::now());
    }
}


/// The clock leases are judged on (a Clock, in the standard's sense): CLOCK_BOOTTIME on Linux,
/// which, unlike the steady clock (CLOCK_MONOTONIC), goes on counting while the machine is
/// suspended, as a lease on a server does. Where there is no CLOCK_BOOTTIME, CLOCK_MONOTONIC.
/// Callers' deadlines stay on the steady clock.
struct BootClock {
    using duration = std::chrono::nanoseconds;
    using rep = duration::rep;
    using period = duration::period;
    using time_point = std::chrono::time_point<BootClock>;
    static constexpr bool is_steady = true;

    static time_point now() noexcept {
        timespec ts{};
#ifdef CLOCK_BOOTTIME
        ::clock_gettime(CLOCK_BOOTTIME, &ts);
#else
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
        return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
    }
};

/// A held lock, as the backend knows it. Opaque above the backend, except for LeasedHold.
struct Hold {};
/// A reference that keeps one key's entry alive (for `KeyedLockRegistry::obtain`).
struct Pin {};

/// A hold that can be lost while held (a lease that ran out, a session that died): the hold type
/// of every backend constructed with `Backend::Loss::possible`. The registry keeps the rest of
/// the bookkeeping (the guard's watcher, the registry's handler, `Stats::lost`); the backend
/// only says when it learns, through `Backend::mark_lost`, and may give the lease's end.
class LeasedHold : public Hold {
public:
    /// Lost: marked so, or past its lease's end (then another owner may hold the key already,
    /// even though the backend has not found out yet).
    bool lost() const noexcept {
        return lost_.load(std::memory_order_acquire) ||
               BootClock::now().time_since_epoch().count() >= valid_until_.load(std::memory_order_relaxed);
    }
    /// The lease counts until `t` (on BootClock, which counts a suspend); `time_point::max()`,
    /// the default, for a hold lost only when marked.
    void valid_until(BootClock::time_point t) noexcept {
        valid_until_.store(t.time_since_epoch().count(), std::memory_order_relaxed);
    }

    std::uint64_t fence = 0;  ///< the fencing token, for the registry's handler

private:
    friend class Backend;
    std::atomic<bool> lost_{false};
    std::atomic<BootClock::rep> valid_until_{BootClock::time_point::max().time_since_epoch().count()};
    std::function<void()> watch_;  // see Backend::watch_lost; under the backend's loss mutex
};

struct Acquired {
    Hold* hold = nullptr;     ///< null when not acquired
    std::uint64_t fence = 0;  ///< the fencing token of this acquisition
};

/// How a lock is held (the public LockMode). A backend that cannot keep a mode answers
/// `errc::not_supported`.
using Mode = LockMode;

/// The operation a request is, as error messages name it.
inline const char* operation_of(Mode mode, bool conversion = false) noexcept {
    if (conversion) return "convert";
    switch (mode) {
        case Mode::shared: return "lock_shared";
        case Mode::upgrade: return "lock_upgrade";
        case Mode::permits: return "acquire_permits";
        case Mode::exclusive: break;
    }
    return "lock";
}

/// One acquisition, as the registry asks a backend for it: the key (already checked above the
/// seam: 1 to `max_key_bytes()` bytes), how it is to be held, and how long to wait for it.
///
/// With `from`, a conversion instead: `from` is a live hold of `key` (of this caller), to be
/// held in `mode` from now on, without letting go in between (upgrade to exclusive, shared to
/// upgrade or exclusive, and the downgrades, which never wait). On success the returned hold
/// replaces `from`, which is gone (even when the pointer is the same); on any failure `from`
/// is still held as it was. A conversion the backend does not offer: `errc::invalid_argument`.
struct Request {
    std::string_view key;
    Mode mode = Mode::exclusive;
    Deadline deadline = Deadline::max();  ///< `Clock::now()`: one attempt, no waiting
    std::stop_token stop;                 ///< ends a synchronous wait (async ones end by cancel())
    Pin* pin = nullptr;                   ///< a pin of `key` (a KeyMutex's), which saves the lookup
    Hold* from = nullptr;                 ///< the hold to convert, or null for a new acquisition
    std::uint32_t permits = 1;            ///< Mode::permits: how many, 1 to `limit`
    std::uint32_t limit = 0;              ///< Mode::permits: the semaphore's limit, at least 1
};

/// Room inside an asynchronous operation for a backend's own record of it (its place in a
/// queue, say), so that an async_lock is one allocation. The registry only creates it. A backend
/// that uses it constructs its record there with `emplace` when `async_acquire` begins, and
/// reaches it with `get` from then on (a `cancel` may come after the completion). The record
/// is never destroyed: the operation's memory is freed under it, so it must own nothing.
class WaitNode {
public:
    static constexpr std::size_t kSize = 64;

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

/// An asynchronous acquisition in progress: an async_lock, or the registry's own blocking wait
/// (Backend::acquire's default). The backend calls `complete` exactly once, never while holding
/// one of its own locks; the implementation delivers the result and frees itself after that.
class AsyncWaiter : public WaitNode {
public:
    AsyncWaiter(const AsyncWaiter&) = delete;
    AsyncWaiter& operator=(const AsyncWaiter&) = delete;
    /// `why`: with an error, the backend's own words for it (a server's message), for the
    /// exception a blocking caller gets; empty when the error code says it all.
    virtual void complete(std::error_code ec, Acquired acquired, std::string_view why) noexcept = 0;
    void complete(std::error_code ec, Acquired acquired) noexcept { complete(ec, acquired, {}); }

protected:
    AsyncWaiter() = default;
    ~AsyncWaiter() = default;
};

/// The seam: what a backend implements. The registry above it checks keys, keeps the lost-lease
/// bookkeeping (LeasedHold), runs blocking waits over `async_acquire` unless the backend has a
/// faster way, and turns everything into guards, handles, async operations and exceptions.
class KEYLOCK_API Backend {
public:
    /// Whether the backend's locks can be lost while held; with `possible`, its holds are
    /// LeasedHolds.
    enum class Loss : std::uint8_t { impossible, possible };

    /// `max_key_bytes`: the longest key the registry lets through to this backend.
    explicit Backend(std::size_t max_key_bytes = 1024, Loss loss = Loss::impossible) noexcept
        : max_key_bytes_(max_key_bytes), loss_(loss) {}
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;
    virtual ~Backend() = default;

    // ---- what a backend implements ----------------------------------------------------------

    /// Waits for `request.key` until `request.deadline` or until `request.stop` is requested.
    /// On success returns the hold; otherwise returns a null hold and sets `ec` (timeout,
    /// cancelled, too_many_keys, or the backend's own errors), or throws keylock::Error with
    /// the detail. The default runs `async_acquire` (which must then keep `request.deadline`)
    /// and blocks the calling thread until it completes; a stop request cancels it.
    virtual Acquired acquire(const Request& request, std::error_code& ec);

    /// Starts an asynchronous acquisition or conversion (its `stop` and `pin` are not used:
    /// `cancel` ends it); `waiter->complete` reports the outcome (possibly before this returns,
    /// but never on this call's stack while a backend lock is held). Ends with `timeout` at
    /// `request.deadline` (async_lock passes `Deadline::max()`; the default acquire() does not).
    virtual void async_acquire(const Request& request, AsyncWaiter* waiter) = 0;

    /// Ends a pending `async_acquire` with `cancelled` if it has not completed yet.
    virtual void cancel(AsyncWaiter* waiter) noexcept = 0;

    /// lock_all's fast path: takes the first k keys of `keys` (checked, sorted, distinct; k of
    /// the backend's choosing, at least 1) exclusively, all at once and without waiting, or
    /// none. Returns k, having appended k acquisitions to `out` (in the order of `keys`), each
    /// a hold like `acquire`'s; or 0 (nothing taken, nothing appended), and then `held` says
    /// the index of a key found held (0 when none was), so that the registry takes keys one by
    /// one, in order, through that one before it asks again. Never throws: an error is for
    /// the one-by-one path to meet and report. `deadline`: the caller's; a backend that retries
    /// an unanswered attempt does not retry past it. The default: 0, always.
    virtual std::size_t try_acquire_all(std::span<const std::string_view> keys, Deadline deadline,
                                        std::vector<Acquired>& out, std::size_t& held) {
        (void)keys;
        (void)deadline;
        (void)out;
        held = 0;
        return 0;
    }

    /// Releases a hold. With `ec`, returns once the outcome is known and reports `not_owner`
    /// when the lock was no longer ours. Without (a guard's destructor: nobody waits for the
    /// outcome), a remote backend may send the release without waiting for its answer, as long
    /// as it is ordered before every later request of this process and flushed at close().
    /// Never throws. Call through `release_hold`, which ends the hold's loss watch first.
    virtual void release(Hold* hold, std::error_code* ec) noexcept = 0;

    /// The key of a live hold, and of a pin.
    virtual std::string_view key(const Hold* hold) const noexcept = 0;
    virtual std::string_view key(const Pin* pin) const noexcept = 0;

    /// Keeps `key`'s entry alive until `unpin` (the key is checked above the seam); throws
    /// keylock::Error (e.g. `too_many_keys`).
    virtual Pin* pin(std::string_view key) = 0;
    virtual void unpin(Pin* pin) noexcept = 0;

    /// The backend's counters and gauges; `lost` is the registry's (see `stats()`).
    virtual Stats snapshot() const = 0;

    /// For operators: the lock of `key` as the backend sees it now, and deleting it whoever
    /// holds it (returns whether there was one). Errors through `ec`, or thrown as
    /// keylock::Error with the backend's reason. Backends that cannot: `errc::not_supported`.
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

    /// The configuration as a URL, with any password redacted.
    virtual std::string describe() const = 0;

    /// Called when the last registry handle goes. The backend frees itself now, or later when
    /// its last guard, waiter or pin goes.
    virtual void close() noexcept = 0;

    // ---- written once, above the seam -------------------------------------------------------

    /// The longest key the registry passes to this backend (shorter keys of 1 byte or more
    /// are the backend's to take; the registry refuses the rest).
    std::size_t max_key_bytes() const noexcept { return max_key_bytes_; }

    /// Whether the hold's lock was lost while held (never, for `Loss::impossible`).
    bool lost(const Hold* hold) const noexcept {
        return loss_ == Loss::possible && static_cast<const LeasedHold*>(hold)->lost();
    }

    /// `acquire` for a conversion (`request.from` set): the hold's loss watch, if any, moves
    /// to the hold that replaces it. Throws as acquire does.
    Acquired convert(const Request& request, std::error_code& ec);

    /// Releases through the backend, after ending the hold's loss watch (so a watcher is
    /// never called after its guard has released). `ec` as for `release`.
    void release_hold(Hold* hold, std::error_code* ec) noexcept {
        if (loss_ == Loss::possible) unwatch(static_cast<LeasedHold*>(hold));
        release(hold, ec);
    }

    /// Calls `on_lost` once when `hold` is found lost (at once, on this thread, if it already
    /// is), never after `release_hold(hold)` has begun. Nothing for `Loss::impossible`.
    void watch_lost(Hold* hold, std::function<void()> on_lost);

    /// See KeyedLockRegistry::on_lost: called, with the key and the fencing token, for each
    /// hold found lost from now on.
    void on_lost(std::function<void(std::string_view key, std::uint64_t fencing_token)> handler);

    /// The backend's snapshot with the registry's count of lost holds.
    Stats stats() const;

protected:
    /// When a backend finds a hold lost: while it is held, or only by its release.
    enum class Found : std::uint8_t { while_held, at_release };

    /// For the backend: `hold` was found lost (its lease ran out or is someone else's now, its
    /// session died). The first call counts it in `Stats::lost`; `while_held`, it also calls
    /// the hold's watcher and the registry's handler (on this thread: call it outside the
    /// backend's own locks). Later calls do nothing. Returns whether this call was the first.
    bool mark_lost(LeasedHold* hold, Found found = Found::while_held) noexcept;

private:
    void unwatch(LeasedHold* hold) noexcept;

    std::size_t max_key_bytes_;
    Loss loss_;
    std::atomic<std::uint64_t> lost_count_{0};
    std::mutex loss_mu_;  // the holds' watchers and the handler
    std::function<void(std::string_view, std::uint64_t)> lost_handler_;
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
