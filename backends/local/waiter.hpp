// SPDX-License-Identifier: BSL-1.0
// A waiter in an entry's FIFO queue: a blocked lock() call, or an async_lock, whose record lives
// inside the operation (detail::WaitNode). The queue is a Boost.Intrusive list through a hook in
// the waiter, so queueing allocates nothing.
//
// Each sync waiter sleeps on its own futex word, so a release wakes exactly one thread. With
// `fair`, release hands the lock straight to the first waiter; otherwise it frees the lock and
// wakes the first waiter, and a thread arriving meanwhile may take it (as with std::mutex).
// Async waiters are always handed the lock directly, since they cannot retry by themselves. A
// release must go through the shard mutex exactly when the entry word's "slow release" bit
// says the queue's head needs it (entry.hpp, queue_bits).
#pragma once

#include <atomic>
#include <cstdint>

#include <boost/intrusive/list.hpp>

#include <keylock/detail/backend.hpp>

namespace keylock::local {

struct Entry;

/// Safe-link mode: a dequeued waiter's hook is reset, so `queued()` is the hook's own state.
using WaitHook = boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::safe_link>>;

/// The fields are written under the mutex of the entry's shard.
struct Waiter : WaitHook {
    Entry* entry = nullptr;                       // the entry waited for
    detail::AsyncWaiter* async = nullptr;         // the operation of an async waiter; null for a sync one
    std::uint64_t fence = 0;                      // the fencing token handed over with a grant
    detail::Hold* result = nullptr;               // modes.hpp: the hold granted (a permit's record until then)
    std::uint32_t shard = 0;                      // where that entry lives
    std::uint32_t permits = 0;                    // Mode::permits: how many
    bool granted = false;                         // ownership was handed to this waiter
    bool woken = false;                           // told to retry (unfair hand-off)
    detail::Mode mode = detail::Mode::exclusive;  // what it waits for
    std::uint8_t from = 0;                        // a conversion: the tag of the hold it converts (modes.hpp), else 0
    bool converting = false;                      // a conversion (it holds the key meanwhile)

    bool queued() const noexcept { return is_linked(); }
};

using WaitQueue = boost::intrusive::list<Waiter, boost::intrusive::constant_time_size<false>>;

/// A blocked lock() call. `signal` is set to 1 by whoever wants it to look again (a release,
/// a grant, a stop request); the waiter clears it under the shard mutex before each look, so
/// no signal between that look and its sleep is lost.
struct SyncWaiter final : Waiter {
    std::atomic<std::uint32_t> signal{0};
};

/// The record of an async_lock, made in the operation's own memory when it starts.
inline Waiter* start_async(detail::AsyncWaiter* op) noexcept {
    auto* w = op->emplace<Waiter>();
    w->async = op;
    return w;
}

/// The record made by start_async.
inline Waiter* async_record(detail::AsyncWaiter* op) noexcept { return op->get<Waiter>(); }

}  // namespace keylock::local
