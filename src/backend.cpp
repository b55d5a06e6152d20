// SPDX-License-Identifier: BSL-1.0
// The parts of detail::Backend written once above the seam: the lost-lease bookkeeping and
// the blocking wait that backends without a faster one get from async_acquire.
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <utility>

#include <keylock/detail/backend.hpp>

#include "src/futex.hpp"

namespace keylock::detail {

namespace {

/// A blocking acquire, as an asynchronous one the calling thread sleeps through. It sleeps on
/// its own futex word, which complete() sets and wakes only if the thread is asleep: one
/// wake-up, and no lock for the woken thread to take.
class BlockingWait final : public AsyncWaiter {
public:
    void complete(std::error_code ec, Acquired acquired, std::string_view why) noexcept override {
        ec_ = ec;
        acquired_ = acquired;
        if (ec) {
            try {
                why_.assign(why);
            } catch (...) {  // out of memory: the error code alone
            }
        }
        done_.set();  // from here on, the waiting thread may return and `this` be gone
    }

    void wait() noexcept { done_.wait(); }

    std::error_code ec_;
    Acquired acquired_;
    std::string why_;

private:
    Event done_;
};

}  // namespace

Acquired Backend::acquire(const Request& request, std::error_code& ec) {
    BlockingWait w;
    async_acquire(request, &w);
    {
        // A stop only asks the backend to end the wait; the answer comes as complete().
        std::stop_callback on_stop(request.stop, [this, &w] { cancel(&w); });
        w.wait();
    }
    if (w.ec_ && !w.why_.empty())
        throw_error(w.ec_, request.key, operation_of(request.mode, request.from != nullptr), w.why_);
    ec = w.ec_;
    return w.acquired_;
}

Acquired Backend::convert(const Request& request, std::error_code& ec) {
    if (loss_ == Loss::impossible) return acquire(request, ec);
    // The watcher leaves the old hold for the call (a loss meanwhile is not missed: watch_lost
    // calls it at once on a hold already lost), then goes to whichever hold is ours after it.
    auto* from = static_cast<LeasedHold*>(request.from);
    std::function<void()> watcher;
    {
        std::lock_guard lk(loss_mu_);
        watcher = std::move(from->watch_);
        from->watch_ = nullptr;
    }
    Acquired a;
    try {
        a = acquire(request, ec);
    } catch (...) {
        if (watcher) watch_lost(from, std::move(watcher));
        throw;
    }
    if (watcher) watch_lost(a.hold != nullptr ? a.hold : from, std::move(watcher));
    return a;
}

void Backend::watch_lost(Hold* hold, std::function<void()> on_lost) {
    if (loss_ == Loss::impossible) return;
    auto* h = static_cast<LeasedHold*>(hold);
    std::unique_lock lk(loss_mu_);
    if (!h->lost_.load(std::memory_order_acquire)) {
        h->watch_ = std::move(on_lost);
        return;
    }
    lk.unlock();
    on_lost();  // found lost before it was watched
}

void Backend::unwatch(LeasedHold* hold) noexcept {
    std::lock_guard lk(loss_mu_);
    hold->watch_ = nullptr;
}

void Backend::on_lost(std::function<void(std::string_view, std::uint64_t)> handler) {
    std::lock_guard lk(loss_mu_);
    lost_handler_ = std::move(handler);
}

bool Backend::mark_lost(LeasedHold* hold, Found found) noexcept {
    if (hold->lost_.exchange(true, std::memory_order_acq_rel)) return false;
    lost_count_.fetch_add(1, std::memory_order_relaxed);
    if (found == Found::at_release) return true;  // no guard to tell; the release says not_owner
    std::function<void(std::string_view, std::uint64_t)> handler;
    {
        // The watcher (a guard's: it only posts) runs under the mutex, so it never runs once
        // release_hold() has taken it away. A handler's exception must not reach the backend.
        std::lock_guard lk(loss_mu_);
        if (auto watch = std::exchange(hold->watch_, nullptr)) {
            try {
                watch();
            } catch (...) {
            }
        }
        try {
            handler = lost_handler_;
        } catch (...) {  // out of memory copying it: the handler is not told
        }
    }
    if (handler) {
        try {
            handler(key(hold), hold->fence);
        } catch (...) {
        }
    }
    return true;
}

Stats Backend::stats() const {
    Stats s = snapshot();
    s.lost = lost_count_.load(std::memory_order_relaxed);
    return s;
}

}  // namespace keylock::detail
