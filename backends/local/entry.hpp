// SPDX-License-Identifier: BSL-1.0
// A key's entry and its one atomic word, with everything that changes the word by itself: the
// lock-free fast paths of published entries and the queue-bit updates. What also needs the
// shard (taking a lock under its mutex, freeing) is in shard.hpp and local_backend.cpp.
//
// * The word holds the held bit, queue bits, a reference count (holder + waiters + spinners +
//   pins) and an incarnation number that changes whenever the entry is freed. While nothing
//   else refers to an entry its word is changed only under the shard mutex, with plain stores.
// * An entry that turns out to be shared (found referenced by another thread, or pinned by
//   obtain()) is *published*: from then on its word is changed only by compare-and-swap, and a
//   thread that has used it keeps a pointer to it in its fast slot (thread_cache.hpp). The next
//   lock of that key by that thread is then one compare-and-swap on the word, and an unlock
//   that leaves the entry referenced another one, without the shard mutex: a hot key costs
//   what a mutex costs. The incarnation in the word makes a stale slot harmless (its
//   compare-and-swap fails); reclaimer.hpp keeps a slot from pointing at freed memory.
// * A published entry issues its own fencing tokens, counting on from the shard's counter,
//   and folds its last one back into the shard's counter when it is freed (shard.hpp): a key
//   always maps to one shard and neither counter goes back, so a key's tokens strictly
//   increase even though its entry is freed between uses.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>

#include <keylock/detail/backend.hpp>

#include "entry_key.hpp"
#include "waiter.hpp"

namespace keylock::local {

using detail::Clock;
using detail::Deadline;

/// A spin-wait hint to the CPU.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

/// The bits of Entry::word.
namespace word {
constexpr std::uint64_t kHeld = 1;         // locked
constexpr std::uint64_t kQueued = 2;       // the waiter queue is not empty
constexpr std::uint64_t kSlowRelease = 4;  // the queue's head needs the releaser (a wake-up or a grant)
constexpr std::uint64_t kPublished = 8;    // changed only by CAS; fast paths may use it
constexpr std::uint64_t kShared = 16;      // two references at once since it was last unreferenced
constexpr std::uint64_t kHot = 32;         // its key was being shared when its last entry was freed
constexpr unsigned kRefShift = 6;
constexpr std::uint64_t kRef = std::uint64_t{1} << kRefShift;
constexpr std::uint64_t kRefMask = ((std::uint64_t{1} << 26) - 1) << kRefShift;
constexpr std::uint64_t kIncMask = ~((std::uint64_t{1} << 32) - 1);  // incarnation: high 32 bits
constexpr std::uint64_t kIncOne = std::uint64_t{1} << 32;

constexpr std::uint64_t refs(std::uint64_t w) noexcept { return (w & kRefMask) >> kRefShift; }
/// `w` plus `delta` (references, maybe kHeld), noting when another reference already exists.
constexpr std::uint64_t add(std::uint64_t w, std::uint64_t delta) noexcept {
    return (w + delta) | (refs(w) != 0 ? kShared : 0);
}
/// The word of a freed entry: the next incarnation, nothing else.
constexpr std::uint64_t freed(std::uint64_t w) noexcept { return (w & kIncMask) + kIncOne; }
}  // namespace word

struct Entry final : detail::Hold, detail::Pin {
    // First cache line: what lock and unlock touch.
    std::atomic<std::uint64_t> word{0};
    Entry* chain = nullptr;               // next in the hash bucket, or in a free list
    std::atomic<std::uint64_t> fence{0};  // published entries: the last fencing token issued
    std::uint32_t hash = 0;               // low half of the key's hash (the bucket index bits)
    std::uint16_t shard = 0;
    bool idle = false;       // kept warm by idle_ttl
    bool published = false;  // has been published: a thread's slot may point here (sticky)
    EntryKey key;
    // Second line: waiting and bookkeeping.
    WaitQueue queue;  // FIFO
    Deadline idle_until{};
    std::uint64_t fence_base = 0;  // the shard's counter when the entry was published
    Entry* pub_prev = nullptr;     // the shard's list of published entries (for stats)
    Entry* pub_next = nullptr;
    void* owner = nullptr;  // published entries: the LocalBackend (for a deferred reference)
    // Shared, upgrade and permit holds (modes.hpp), under the shard mutex. All zero while the
    // entry is unused or held exclusively; the word's kHeld is set while any is non-zero.
    std::uint32_t shared = 0;        // shared holders, the upgrade holder among them
    std::uint32_t used = 0;          // permits held
    std::uint32_t limit = 0;         // a semaphore's limit, while it has holders or waiters
    std::uint32_t permit_holds = 0;  // holds of permits (each of one or more of the `used`)
    bool upgrader = false;           // one of the shared holders has upgrade ownership

    Entry() = default;
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;
    ~Entry() = default;

    std::uint64_t load() const noexcept { return word.load(std::memory_order_acquire); }
    /// Replaces the word by `next` if it still is `expected` (always, for an unpublished
    /// entry: only the shard mutex's holder writes those).
    bool replace(std::uint64_t& expected, std::uint64_t next) noexcept {
        if ((expected & word::kPublished) == 0) {
            word.store(next, std::memory_order_release);
            return true;
        }
        return word.compare_exchange_weak(expected, next, std::memory_order_acq_rel, std::memory_order_acquire);
    }

    bool is_head(const Waiter* w) const noexcept { return !queue.empty() && &queue.front() == w; }
    void enqueue(Waiter* w) noexcept {
        w->entry = this;
        queue.push_back(*w);
    }
    void dequeue(Waiter* w) noexcept { queue.erase(queue.iterator_to(*w)); }
};

// ---- Under the shard mutex: the queue bits follow the queue ---------------------------------

/// The queue bits the word should carry for the entry's queue as it is now.
inline std::uint64_t queue_bits(const Entry* e, bool fair) noexcept {
    if (e->queue.empty()) return 0;
    const Waiter& h = e->queue.front();
    return word::kQueued | (fair || h.async != nullptr || !h.woken ? word::kSlowRelease : 0);
}

/// A waiter was just enqueued: counts its reference and sets the queue bits, after which
/// every release comes through the shard mutex. Returns the new word: if the lock was
/// released by a fast path just before, it is free now and the caller must look again.
inline std::uint64_t add_waiter_ref(Entry* e, bool fair, std::uint64_t ref = word::kRef) noexcept {
    const std::uint64_t bits = queue_bits(e, fair);
    std::uint64_t w = e->load();
    std::uint64_t next = 0;
    do {
        next = word::add((w & ~(word::kQueued | word::kSlowRelease)) | bits, ref);
    } while (!e->replace(w, next));
    return next;
}

/// Re-derives the queue bits after the queue changed without a reference going.
inline void sync_queue_bits(Entry* e, bool fair) noexcept {
    const std::uint64_t bits = queue_bits(e, fair);
    std::uint64_t w = e->load();
    while (!e->replace(w, (w & ~(word::kQueued | word::kSlowRelease)) | bits)) {
    }
}

inline void add_ref(Entry* e) noexcept {
    std::uint64_t w = e->load();
    while (!e->replace(w, word::add(w, word::kRef))) {
    }
}

/// Before a woken waiter sleeps again: sets the bit that makes the next release wake it,
/// unless the lock is free already (then the waiter takes it instead of sleeping).
inline bool arm(Entry* e) noexcept {
    std::uint64_t w = e->load();
    do {
        if ((w & word::kHeld) == 0) return false;
    } while (!e->replace(w, w | word::kSlowRelease));
    return true;
}

// ---- Without the shard mutex: published entries only ----------------------------------------

/// The next fencing token of a published entry, issued by its new holder: only the holder writes
/// `fence`, and the word's acquire/release orders the holders.
inline std::uint64_t next_entry_token(Entry* e) noexcept {
    const std::uint64_t token = e->fence.load(std::memory_order_relaxed) + 1;
    e->fence.store(token, std::memory_order_relaxed);
    return token;
}

/// Tries to take a published entry's lock without the shard mutex: one compare-and-swap, which
/// fails if the entry is held, has been freed since `incarnation` was read, or (fair) has
/// waiters. Returns the fencing token, or 0 (then `w` is the word last seen).
inline std::uint64_t fast_take(Entry* e, std::uint64_t incarnation, bool fair, std::uint64_t& w) noexcept {
    for (;;) {
        if ((w & (word::kIncMask | word::kPublished | word::kHeld)) != (incarnation | word::kPublished)) return 0;
        if (fair && (w & word::kQueued) != 0) return 0;
        if (word::refs(w) == word::refs(word::kRefMask)) return 0;  // would overflow: let the slow path refuse
        if (e->word.compare_exchange_weak(w, word::add(w, word::kRef + word::kHeld), std::memory_order_acquire,
                                          std::memory_order_relaxed)) {
            break;
        }
    }
    return next_entry_token(e);
}

/// How long a spinner may spin: not at all for a try, never past the deadline or a stop.
struct SpinLimit {
    Deadline deadline;
    const std::stop_token& stop;

    bool allows_spinning() const noexcept {
        return (deadline == Deadline::max() || deadline > Clock::now()) && !stop.stop_requested();
    }
    bool reached() const noexcept {
        return (deadline != Deadline::max() && Clock::now() >= deadline) || stop.stop_requested();
    }
};

/// Spins for the lock of a published entry we hold a reference to (a spinner's or a queued
/// waiter's), backing off exponentially to leave the holder its cache line. `w` is the word as
/// last seen. Returns the token (our reference is then the holder's), or 0 when the lock stayed
/// taken, the limit was reached, or (fair) others queue (we keep the reference). Out of line
/// (as spin_take): a call costs nothing beside a spin, and acquire's uncontended path stays short.
[[gnu::noinline]] inline std::uint64_t spin_joined(Entry* e, bool fair, std::uint64_t w,
                                                   const SpinLimit& limit) noexcept {
    constexpr int kRounds = 9;  // 1 + 2 + ... + 512 pauses: about 20 us here (a pause is ~19 ns on Zen 5)
    for (int round = 0;; ++round) {
        while ((w & word::kHeld) == 0 && (!fair || (w & word::kQueued) == 0)) {
            if (e->word.compare_exchange_weak(w, w + word::kHeld, std::memory_order_acquire,
                                              std::memory_order_relaxed)) {
                return next_entry_token(e);
            }
        }
        if (round == kRounds || (fair && (w & word::kQueued) != 0) || limit.reached()) return 0;
        for (int i = 0; i < (1 << round); ++i) cpu_relax();
        w = e->word.load(std::memory_order_relaxed);
    }
}

/// As fast_take, but if the entry is held by someone else, joins it as a spinner (one more
/// reference, so that the entry is not freed meanwhile) and spins for a while: a lock held for
/// a few dozen nanoseconds is usually free again long before queueing and sleeping would even
/// have started. Returns the token, or 0; then `joined` says whether we hold a reference.
[[gnu::noinline]] inline std::uint64_t spin_take(Entry* e, std::uint64_t incarnation, bool fair, const SpinLimit& limit,
                                                 bool& joined) noexcept {
    std::uint64_t w = e->word.load(std::memory_order_relaxed);
    if (const std::uint64_t token = fast_take(e, incarnation, fair, w)) return token;
    if (!limit.allows_spinning()) return 0;
    for (;;) {
        if ((w & (word::kIncMask | word::kPublished)) != (incarnation | word::kPublished) ||
            (fair && (w & word::kQueued) != 0) || word::refs(w) + 1 >= word::refs(word::kRefMask)) {
            return 0;  // freed, or (fair) others queue already: take the slow path
        }
        if ((w & word::kHeld) == 0) {
            if (const std::uint64_t token = fast_take(e, incarnation, fair, w)) return token;
            continue;
        }
        if (e->word.compare_exchange_weak(w, word::add(w, word::kRef), std::memory_order_relaxed,
                                          std::memory_order_relaxed)) {
            break;
        }
    }
    joined = true;
    return spin_joined(e, fair, word::add(w, word::kRef), limit);
}

/// Releases a published entry without the shard mutex if nobody in its queue needs the
/// releaser and the entry stays referenced (so that nothing has to be freed).
inline bool fast_release(Entry* e) noexcept {
    std::uint64_t w = e->word.load(std::memory_order_relaxed);
    for (;;) {
        if ((w & (word::kPublished | word::kSlowRelease)) != word::kPublished || word::refs(w) <= 1) return false;
        if (e->word.compare_exchange_weak(w, w - word::kRef - word::kHeld, std::memory_order_release,
                                          std::memory_order_relaxed)) {
            return true;
        }
    }
}

/// Drops a reference (not the lock) to a published entry without the shard mutex, unless it
/// is the last one (then the entry must be freed, under the mutex).
inline bool fast_unref(Entry* e) noexcept {
    std::uint64_t w = e->word.load(std::memory_order_relaxed);
    while (word::refs(w) > 1) {
        // Release: whoever frees the entry later must see all we did with it.
        if (e->word.compare_exchange_weak(w, w - word::kRef, std::memory_order_release, std::memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

/// The release of a published entry's last reference: releases the lock but keeps the
/// reference for a moment, in case another thread comes for the key (in a burst of locks on
/// one key, the other threads are often just between an unlock and their next lock). If one
/// does, the entry stays and our reference goes without the shard mutex. Returns false if the
/// lock was not released here; `released` says whether it was, keeping the reference.
inline bool linger_release(Entry* e, bool& released) noexcept {
    constexpr int kLinger = 128;  // pauses: a few microseconds
    std::uint64_t w = e->word.load(std::memory_order_relaxed);
    do {
        // Only while the key is being shared: a key one thread uses alone must not wait here.
        if ((w & (word::kPublished | word::kSlowRelease)) != word::kPublished ||
            (w & (word::kShared | word::kHot)) == 0 || word::refs(w) != 1) {
            return false;
        }
    } while (!e->word.compare_exchange_weak(w, w - word::kHeld, std::memory_order_release, std::memory_order_relaxed));
    released = true;
    for (int i = 0; i < kLinger; ++i) {
        cpu_relax();
        if (word::refs(e->word.load(std::memory_order_relaxed)) > 1) return fast_unref(e);
    }
    return false;
}

}  // namespace keylock::local
