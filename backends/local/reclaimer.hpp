// SPDX-License-Identifier: BSL-1.0
// When a published entry's memory may go back to the allocator: hazard pointers.
//
// A thread that has used a published entry keeps a pointer to it in its fast slot
// (thread_cache.hpp), which it may follow later without any lock. So each slot is also a hazard
// pointer: an entry a slot points at is kept (recycled as an entry of a later incarnation, or on
// the deferred list here) until no slot points at it. Deleting a published entry is rare (a
// thread's recycle cache overflowing, thread exit, a destroyed backend), so a mutex and a scan
// of the slots is fine there; the fast paths never touch this.
#pragma once

#include <atomic>
#include <mutex>
#include <vector>

#include "entry.hpp"

namespace keylock::local {

class Reclaimer {
public:
    struct Slot {
        std::atomic<Entry*> hazard{nullptr};
        /// A reference the thread kept when it released a shared entry's last one (see
        /// LocalBackend::defer_release). Written by its thread; taken (exchanged for null) by
        /// its thread or by drain().
        std::atomic<Entry*> deferred{nullptr};
        // The list of registered slots, under the mutex. Hand-linked, not a Boost.Intrusive
        // hook: a slot is part of a constinit thread-local, and the hooks' constructors are
        // not constexpr.
        Slot* prev = nullptr;
        Slot* next = nullptr;
    };

    /// The one instance, never destroyed: thread exits may still call it.
    static Reclaimer& get();

    void add(Slot* slot);
    void remove(Slot* slot) noexcept;
    /// Deletes `e` (a published entry, unlinked, its incarnation retired) now or, if a slot
    /// still points at it, at a later call.
    void dispose(Entry* e) noexcept;
    /// Takes every thread's deferred reference and passes each to `drop` (outside the mutex:
    /// dropping one may free an entry, which takes a shard mutex and may come back here).
    void drain(void (*drop)(Entry*) noexcept) noexcept;

private:
    Reclaimer() = default;

    bool hazardous(Entry* e) const noexcept;
    void collect() noexcept;

    std::mutex mu_;
    Slot* slots_ = nullptr;
    std::vector<Entry*> deferred_;
};

/// Returns an entry that nothing refers to any more (unlinked, its incarnation retired) to
/// the allocator, once that is safe.
inline void dispose(Entry* e) noexcept {
    if (e->published) {
        Reclaimer::get().dispose(e);
    } else {
        delete e;
    }
}

}  // namespace keylock::local
