// SPDX-License-Identifier: BSL-1.0
// keylock/guard.hpp — Guard, the RAII ownership of one key's lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <system_error>
#include <utility>

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/post.hpp>

#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>

namespace keylock {

class KeyedLockRegistry;
class KeyMutex;
namespace detail {
template <class Handler>
class AsyncLockOp;
}

/// Owns the lock of one key until it is destroyed, moved from, or `release()`d.
///
/// A Guard is move-only and not thread-safe (one thread uses a guard at a time; it may be
/// moved to and released from another thread). A default-constructed or moved-from guard owns
/// nothing. The destructor releases and never throws.
///
/// A guard may outlive every copy of the registry that made it: the registry's state stays
/// alive until its last guard, waiter and handle are gone.
class Guard {
public:
    /// A guard that owns nothing.
    Guard() noexcept = default;
    /// Takes over `other`'s lock (if any); `other` owns nothing afterwards.
    Guard(Guard&& other) noexcept
        : backend_(std::exchange(other.backend_, nullptr)),
          hold_(std::exchange(other.hold_, nullptr)),
          fence_(other.fence_),
          permits_(other.permits_),
          mode_(other.mode_),
          lost_signal_(std::move(other.lost_signal_)) {}
    /// Releases this guard's lock (if any), then takes over `other`'s.
    Guard& operator=(Guard&& other) noexcept {
        if (this != &other) {
            reset();
            backend_ = std::exchange(other.backend_, nullptr);
            hold_ = std::exchange(other.hold_, nullptr);
            fence_ = other.fence_;
            permits_ = other.permits_;
            mode_ = other.mode_;
            lost_signal_ = std::move(other.lost_signal_);
        }
        return *this;
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { reset(); }

    /// Whether this guard holds a lock (it may still have been `lost()`).
    bool owns_lock() const noexcept { return hold_ != nullptr; }
    /// `owns_lock()`.
    explicit operator bool() const noexcept { return owns_lock(); }

    /// The key held; empty once released. Valid while the guard holds the lock.
    std::string_view key() const noexcept { return hold_ ? backend_->key(hold_) : std::string_view{}; }

    /// The fencing token of this acquisition: strictly larger than that of every earlier
    /// acquisition of the same key from the same registry state (for distributed backends: the
    /// same server). Pass it to the store you write to, so it can refuse stale writers.
    /// Remains readable after release.
    std::uint64_t fencing_token() const noexcept { return fence_; }

    /// How the lock is held: exclusive, shared, upgrade or permits. Remains readable after
    /// release.
    LockMode mode() const noexcept { return mode_; }
    /// The permits held, for `LockMode::permits` (1 for the other modes).
    std::uint32_t permits() const noexcept { return permits_; }

    /// Turns upgrade ownership into exclusive ownership without letting go: waits until the
    /// other (shared) holders have left; new shared holders wait meanwhile, so this cannot be
    /// starved. Takes a new fencing token. Throws keylock::Error: `not_held`,
    /// `invalid_argument` unless the guard is in upgrade mode, or the backend's errors; on an
    /// error the guard still holds what it held.
    void upgrade() { convert_or_throw(LockMode::exclusive, detail::Deadline::max(), LockMode::upgrade); }
    /// As upgrade(), but gives up at `deadline` (then false, and the guard holds what it held).
    /// From shared ownership too: it then succeeds only while this is the key's one holder.
    template <class C, class D>
    bool try_upgrade_until(const std::chrono::time_point<C, D>& deadline) {
        return try_convert(LockMode::exclusive, detail::to_deadline(deadline));
    }
    /// As try_upgrade_until(now + timeout).
    template <class Rep, class Period>
    bool try_upgrade_for(const std::chrono::duration<Rep, Period>& timeout) {
        return try_convert(LockMode::exclusive, detail::deadline_after(timeout));
    }
    /// One attempt at upgrade(), without waiting.
    bool try_upgrade() { return try_convert(LockMode::exclusive, detail::Clock::now()); }
    /// Shared ownership to upgrade ownership, if no one else has it by `deadline`.
    template <class C, class D>
    bool try_upgrade_to_upgradable_until(const std::chrono::time_point<C, D>& deadline) {
        return try_convert(LockMode::upgrade, detail::to_deadline(deadline));
    }
    /// Exclusive to shared or upgrade ownership, or upgrade to shared, without letting go (the
    /// waiters that can now join get in). Never waits. Throws keylock::Error: `not_held`,
    /// `invalid_argument` for another conversion, or the backend's errors.
    void downgrade(LockMode to = LockMode::shared) {
        const bool allowed = (mode_ == LockMode::exclusive && (to == LockMode::shared || to == LockMode::upgrade)) ||
                             (mode_ == LockMode::upgrade && to == LockMode::shared);
        if (hold_ != nullptr && !allowed) detail::throw_error(errc::invalid_argument, key(), "downgrade");
        convert_or_throw(to, detail::Deadline::max(), mode_);
    }

    /// Whether the lease behind this guard was lost while held (another owner may now hold
    /// the key). Always false for the local backend.
    bool lost() const noexcept { return hold_ != nullptr && backend_->lost(hold_); }

    /// For async code: a cancellation slot that is emitted, with
    /// `cancellation_type::terminal`, when the lease behind this guard is found lost. Bind it to
    /// the operations that must stop once the lock may be someone else's:
    ///
    ///     co_await write(bind_cancellation_slot(g.cancellation_slot(ex), use_awaitable));
    ///
    /// The emit is posted to `ex`, which must be the executor (or strand) those operations run
    /// on, as Asio requires. The first call chooses the executor; later calls return the same
    /// slot. If the lease is already lost, the emit is posted at once. Never emitted after the
    /// guard has released the lock, nor for backends whose locks cannot be lost (`local://`).
    /// Keep the guard (or what it was moved to) alive while operations bound to the slot run.
    template <class Executor>
    boost::asio::cancellation_slot cancellation_slot(const Executor& ex) {
        if (!lost_signal_) {
            lost_signal_ = std::make_shared<boost::asio::cancellation_signal>();
            if (hold_ != nullptr) {
                backend_->watch_lost(hold_, [signal = std::weak_ptr(lost_signal_), ex] {
                    boost::asio::post(ex, [signal] {
                        if (auto s = signal.lock()) s->emit(boost::asio::cancellation_type::terminal);
                    });
                });
            }
        }
        return lost_signal_->slot();
    }

    /// Releases the lock now. Throws keylock::Error with `errc::not_held` if the guard holds
    /// nothing, or `errc::not_owner` if the lock turned out to be no longer ours (nothing of
    /// another owner's is touched). The guard is empty afterwards in every case.
    void release() {
        std::error_code ec;
        release(ec);
        if (ec) detail::throw_error(ec, {}, "release");
    }
    /// As `release()`, reporting through `ec` instead of throwing.
    void release(std::error_code& ec) noexcept {
        ec.clear();
        if (hold_ == nullptr) {
            ec = errc::not_held;
            return;
        }
        std::exchange(backend_, nullptr)->release_hold(std::exchange(hold_, nullptr), &ec);
    }

private:
    friend class KeyedLockRegistry;
    friend class KeyMutex;
    template <class Handler>
    friend class detail::AsyncLockOp;

    Guard(detail::Backend* backend, detail::Acquired acquired, LockMode mode = LockMode::exclusive,
          std::uint32_t permits = 1) noexcept
        : backend_(acquired.hold ? backend : nullptr),
          hold_(acquired.hold),
          fence_(acquired.fence),
          permits_(permits),
          mode_(mode) {}

    /// Converts the hold to `to` by `deadline`: true, or false on timeout (the hold unchanged).
    /// Other errors through `ec`.
    bool convert(LockMode to, detail::Deadline deadline, std::error_code& ec) {
        ec.clear();
        if (hold_ == nullptr) {
            ec = errc::not_held;
            return false;
        }
        detail::Request request;
        request.key = backend_->key(hold_);
        request.mode = to;
        request.deadline = deadline;
        request.from = hold_;
        const detail::Acquired a = backend_->convert(request, ec);
        if (a.hold == nullptr) return false;
        hold_ = a.hold;
        fence_ = a.fence;
        mode_ = to;
        return true;
    }
    bool try_convert(LockMode to, detail::Deadline deadline) {
        std::error_code ec;
        if (hold_ != nullptr && to == LockMode::exclusive && mode_ != LockMode::upgrade && mode_ != LockMode::shared) {
            detail::throw_error(errc::invalid_argument, key(), "upgrade");
        }
        if (convert(to, deadline, ec)) return true;
        if (ec == errc::timeout) return false;
        detail::throw_error(ec, key(), "upgrade");
    }
    void convert_or_throw(LockMode to, detail::Deadline deadline, LockMode required) {
        if (hold_ != nullptr && mode_ != required) detail::throw_error(errc::invalid_argument, key(), "upgrade");
        std::error_code ec;
        if (!convert(to, deadline, ec))
            detail::throw_error(ec, key(), to == LockMode::exclusive ? "upgrade" : "downgrade");
    }

    void reset() noexcept {
        if (hold_ != nullptr) std::exchange(backend_, nullptr)->release_hold(std::exchange(hold_, nullptr), nullptr);
    }

    detail::Backend* backend_ = nullptr;
    detail::Hold* hold_ = nullptr;
    std::uint64_t fence_ = 0;
    std::uint32_t permits_ = 1;
    LockMode mode_ = LockMode::exclusive;
    std::shared_ptr<boost::asio::cancellation_signal> lost_signal_;  // see cancellation_slot()
};

}  // namespace keylock
