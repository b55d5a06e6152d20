// SPDX-License-Identifier: BSL-1.0
// A shard of the local backend's table: its mutex, its chained hash table of entries, its
// fencing counter and statistics, and the entries kept warm for idle_ttl or counted against
// max_keys. Also ShardLock, the shard mutex held together with what must happen after it.
//
// * A shard's first cache line holds all that an uncontended lock + unlock of a fresh key
//   touches: a 4-byte spin-then-sleep mutex, the table size, the fencing counter and a few
//   inline hash buckets. The shard mutex guards the table and the waiter queues, never a key's
//   lock while it is waited for or held, so keys of one shard do not wait on each other.
// * When an entry's count reaches zero it is unlinked and recycled at once (into the freeing
//   thread's cache), or, with `idle_ttl`, parked idle and freed later by a sweep of the table.
//   Nothing frees an entry with references: no expiry or eviction can drop a held or awaited
//   lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <new>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>

#include "entry.hpp"
#include "reclaimer.hpp"
#include "shard_mutex.hpp"
#include "thread_cache.hpp"

namespace keylock::local {

/// max_keys: the number of entries in all shards, counted only when there is a bound.
class KeyBudget {
public:
    explicit KeyBudget(std::size_t max_keys) noexcept : max_(max_keys) {}

    bool bounded() const noexcept { return max_ != 0; }
    /// Counts one more entry if that stays within the bound.
    bool try_take() noexcept {
        std::size_t n = total_.load(std::memory_order_relaxed);
        while (n < max_) {
            if (total_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
        }
        return false;
    }
    /// Counts one entry fewer (if entries are counted).
    void give_back() noexcept {
        if (max_ != 0) total_.fetch_sub(1, std::memory_order_relaxed);
    }

private:
    const std::size_t max_;
    std::atomic<std::size_t> total_{0};
};

constexpr std::uint32_t kInlineBuckets = 4;

struct alignas(64) Shard {
    // First cache line: everything an uncontended lock + unlock of a fresh key touches.
    ShardMutex mu;
    std::uint32_t size = 0;
    std::uint32_t mask = kInlineBuckets - 1;
    std::uint32_t hot = 0;  // (hash | 1) of the last shared published entry freed, or 0
    Entry** buckets = inline_buckets;
    std::uint64_t fence = 0;  // fencing counter of unpublished entries; see acquisitions()
    Entry* inline_buckets[kInlineBuckets] = {};
    // Second line: counters of the slow paths.
    std::uint64_t contended = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t cancellations = 0;
    std::uint64_t waiting = 0;
    std::uint64_t idle = 0;      // entries kept warm now
    std::uint64_t folded = 0;    // acquisitions of freed published entries not counted in `fence`
    Entry* published = nullptr;  // live published entries
    bool closed = false;         // the registry is gone: free entries at once, count them down

    Shard() = default;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard() {
        for (std::uint32_t i = 0; i <= mask; ++i) {
            for (Entry* e = buckets[i]; e != nullptr;) {
                Entry* next = e->chain;
                e->word.store(word::freed(e->load()), std::memory_order_release);
                dispose(e);
                e = next;
            }
        }
        if (buckets != inline_buckets) delete[] buckets;
    }

    /// Every acquisition in this shard so far (under the mutex).
    std::uint64_t acquisitions() const noexcept {
        std::uint64_t n = fence + folded;
        for (const Entry* e = published; e != nullptr; e = e->pub_next) {
            n += e->fence.load(std::memory_order_relaxed) - e->fence_base;
        }
        return n;
    }

    /// The entry of `key`, made if there is none (and max_keys allows it; else null with `ec`
    /// set). `index` is this shard's, `owner` the backend (for an entry published at once).
    [[gnu::always_inline]] Entry* find_or_insert(std::string_view key, std::uint64_t hash, std::uint16_t index,
                                                 void* owner, KeyBudget& budget, EntryCache& cache,
                                                 std::error_code& ec) {
        if (Entry* e = find(key, hash)) {
            if (e->idle) {
                e->idle = false;
                --idle;
            }
            return e;
        }
        if (budget.bounded() && !reserve(budget, cache)) {
            ec = errc::too_many_keys;
            return nullptr;
        }
        try {
            Entry* e = insert(key, hash, index, cache);
            if (hot == (e->hash | 1)) {
                // Published, and marked hot: its first release lingers for the other threads of
                // the burst instead of freeing it under them. If none comes, kShared stays
                // clear and the next entry of the key starts plain: a key one thread now uses
                // alone pays one linger, not one per unlock.
                hot = 0;
                publish(e, owner);
                e->word.store(e->load() | word::kHot, std::memory_order_release);
            }
            return e;
        } catch (const std::bad_alloc&) {
            budget.give_back();
            throw;
        }
    }

    /// Takes `e`'s lock for a new holder if it is free (and, with `fair`, nobody is queued);
    /// `ref` is what the holder adds to the count. Returns the fencing token, or 0.
    std::uint64_t take(Entry* e, bool fair, std::uint64_t ref = word::kRef) noexcept {
        std::uint64_t w = e->load();
        do {
            if ((w & word::kHeld) != 0 || (fair && (w & word::kQueued) != 0)) return 0;
        } while (!e->replace(w, word::add(w, ref + word::kHeld)));
        return next_token(e, w);
    }

    /// The next fencing token of a lock just taken (by its holder, under the mutex); `w` is the
    /// entry's word as the holder found it.
    std::uint64_t next_token(Entry* e, std::uint64_t w) noexcept {
        return (w & word::kPublished) == 0 ? ++fence : next_entry_token(e);
    }

    /// Makes `e` published: from now on its word changes only by CAS, and its tokens come from
    /// its own counter, starting where the shard's is.
    void publish(Entry* e, void* owner) noexcept {
        e->owner = owner;
        e->fence.store(fence, std::memory_order_relaxed);
        e->fence_base = fence;
        e->published = true;
        e->pub_prev = nullptr;
        e->pub_next = published;
        if (published != nullptr) published->pub_prev = e;
        published = e;
        e->word.store(e->load() | word::kPublished, std::memory_order_release);
    }

    /// Keeps an unreferenced entry in the table until `until` (idle_ttl).
    void park(Entry* e, Deadline until) noexcept {
        e->idle = true;
        e->idle_until = until;
        ++idle;
    }

    /// Unlinks and recycles an entry whose word has just been retired.
    void free(Entry* e, KeyBudget& budget, EntryCache& cache) noexcept {
        if (e->idle) {
            e->idle = false;
            --idle;
        }
        erase(e, cache);
        budget.give_back();
    }

    /// Frees the idle entries whose time is up (all of them for Deadline::max()). An idle
    /// published entry may have been taken again by a fast path: it is then just no longer
    /// idle. A scan of the whole table, but a rare one (a few times per idle_ttl); in exchange,
    /// reusing a warm entry costs nothing.
    void expire_idle(Deadline now, KeyBudget& budget, EntryCache& cache) noexcept {
        if (idle == 0) return;
        std::vector<Entry*> expired;
        for (std::uint32_t i = 0; i <= mask; ++i) {
            for (Entry* e = buckets[i]; e != nullptr; e = e->chain) {
                if (e->idle && (now == Deadline::max() || e->idle_until <= now)) {
                    try {
                        expired.push_back(e);
                    } catch (const std::bad_alloc&) {
                        break;  // the next sweep gets the rest
                    }
                }
            }
        }
        for (Entry* e : expired) {
            std::uint64_t w = e->load();
            bool in_use = false;
            do {
                if ((w & (word::kRefMask | word::kHeld)) != 0) {
                    in_use = true;
                    break;
                }
            } while (!e->replace(w, word::freed(w)));
            e->idle = false;
            --idle;
            if (in_use) continue;
            erase(e, cache);
            budget.give_back();
        }
    }

    /// The entry of `key`, if there is one (for inspect).
    Entry* find(std::string_view key, std::uint64_t hash) const noexcept {
        const auto h = static_cast<std::uint32_t>(hash);
        for (Entry* e = buckets[h & mask]; e != nullptr; e = e->chain) {
            if (e->hash == h && e->key == key) return e;
        }
        return nullptr;
    }

private:
    /// Counts one more entry against max_keys, evicting this shard's idle entries if needed.
    bool reserve(KeyBudget& budget, EntryCache& cache) noexcept {
        for (;;) {
            if (budget.try_take()) return true;
            if (idle == 0) return false;
            expire_idle(Deadline::max(), budget, cache);
        }
    }

    [[gnu::always_inline]] Entry* insert(std::string_view key, std::uint64_t hash, std::uint16_t index,
                                         EntryCache& cache) {
        if (size + 1 > mask + 1) rehash((mask + 1) * 2);
        Entry* e = cache.get();
        try {
            e->key.assign(key);
        } catch (...) {
            cache.put(e);
            throw;
        }
        e->hash = static_cast<std::uint32_t>(hash);
        e->shard = index;
        Entry*& bucket = buckets[e->hash & mask];
        e->chain = bucket;
        bucket = e;
        ++size;
        return e;
    }

    /// Unlinks an entry whose word has just been retired, and recycles it.
    void erase(Entry* e, EntryCache& cache) noexcept {
        Entry** link = &buckets[e->hash & mask];
        while (*link != e) link = &(*link)->chain;
        *link = e->chain;
        --size;
        if (e->pub_prev != nullptr || published == e) {
            (e->pub_prev ? e->pub_prev->pub_next : published) = e->pub_next;
            if (e->pub_next != nullptr) e->pub_next->pub_prev = e->pub_prev;
            e->pub_prev = e->pub_next = nullptr;
            const std::uint64_t last = e->fence.load(std::memory_order_relaxed);
            const std::uint64_t floor = std::max(fence, last);
            folded += (last - e->fence_base) - (floor - fence);
            fence = floor;
        }
        cache.put(e);
        if (mask + 1 > kInlineBuckets && size * 8 < mask + 1) {
            try {
                rehash((mask + 1) / 2);
            } catch (const std::bad_alloc&) {
                // Keep the larger table; it is still correct.
            }
        }
    }

    void rehash(std::uint32_t count) {
        Entry** fresh = count <= kInlineBuckets ? nullptr : new Entry*[count]();
        Entry* all = nullptr;  // unlink everything first: the inline array may be both source and target
        for (std::uint32_t i = 0; i <= mask; ++i) {
            for (Entry* e = buckets[i]; e != nullptr;) {
                Entry* next = e->chain;
                e->chain = all;
                all = e;
                e = next;
            }
        }
        if (buckets != inline_buckets) delete[] buckets;
        if (fresh == nullptr) {
            std::fill(std::begin(inline_buckets), std::end(inline_buckets), nullptr);
            fresh = inline_buckets;
        }
        buckets = fresh;
        mask = count - 1;
        while (all != nullptr) {
            Entry* e = std::exchange(all, all->chain);
            Entry*& bucket = buckets[e->hash & mask];
            e->chain = bucket;
            bucket = e;
        }
    }
};

/// The shard lock, plus the work that must happen after it is dropped: waking a sync waiter,
/// completing async waiters, and deleting a closed backend whose last entry just went.
class ShardLock {
public:
    ShardLock(detail::Backend* backend, Shard& shard) : backend_(backend), mu_(shard.mu) { mu_.lock(); }
    ShardLock(const ShardLock&) = delete;
    ShardLock& operator=(const ShardLock&) = delete;
    ~ShardLock() {
        mu_.unlock();
        if (pending_) [[unlikely]]
            finish();
    }

    /// The mutex, for a waiter that drops it to sleep (and takes it again before it returns).
    ShardMutex& mutex() noexcept { return mu_; }
    /// Drops the mutex to sleep, doing first what was queued for after it (so that waiters
    /// granted meanwhile do not wait for this one's sleep to end). Take it again with mutex().
    void unlock_to_sleep() noexcept {
        mu_.unlock();
        if (pending_) {
            finish();
            pending_ = false;
            wakes_ = count_ = 0;
        }
    }
    /// Completes `w` once the shard mutex is dropped (at most two per lock: a cancelled waiter
    /// and the one the lock passes to).
    void complete_after(detail::AsyncWaiter* w, errc error, detail::Acquired a) noexcept {
        assert(count_ < 2);
        done_[count_++] = {w, error, a.hold, a.fence};
        pending_ = true;
    }
    void delete_backend_after() noexcept { delete_backend_ = pending_ = true; }
    /// Sets a sync waiter's signal now and makes the wake-up call once the shard mutex is
    /// dropped, so that the woken thread does not find the mutex still held by its waker.
    /// (Beyond the few a grant of several shared holders needs, the wake-up is made at once.)
    void wake_after(Waiter* w) noexcept {
        auto& signal = static_cast<SyncWaiter*>(w)->signal;
        signal.store(1, std::memory_order_release);
        if (wakes_ == kWakes) {
            detail::wake_one(signal);
            return;
        }
        wake_[wakes_++] = &signal;
        pending_ = true;
    }
    /// Completes an async waiter granted a shared, upgrade or permit hold (its result set,
    /// `granted` true, out of its entry's queue) once the shard mutex is dropped. Any number:
    /// they are linked through their queue hook, which nothing else touches once granted.
    void grant_after(Waiter* w) noexcept {
        granted_.push_back(*w);
        pending_ = true;
    }

private:
    struct Completion {  // trivial: nothing is initialised on the fast path
        detail::AsyncWaiter* waiter;
        errc error;  // errc{} for success
        detail::Hold* hold;
        std::uint64_t fence;
    };

    /// The work queued for after the mutex is dropped.
    [[gnu::noinline]] void finish() noexcept {
        for (int i = 0; i < wakes_; ++i) detail::wake_one(*wake_[i]);
        for (int i = 0; i < count_; ++i) {
            const Completion& c = done_[i];
            c.waiter->complete(c.error == errc{} ? std::error_code() : make_error_code(c.error), {c.hold, c.fence});
        }
        while (!granted_.empty()) {
            Waiter& w = granted_.front();
            granted_.pop_front();  // before complete(), which may free the waiter's memory
            w.async->complete({}, {w.result, w.fence});
        }
        if (delete_backend_) delete backend_;
    }

    detail::Backend* backend_;
    ShardMutex& mu_;
    static constexpr int kWakes = 4;
    bool pending_ = false;  // any of the below is set
    int wakes_ = 0;
    std::atomic<std::uint32_t>* wake_[kWakes];  // the first wakes_ are set
    int count_ = 0;
    bool delete_backend_ = false;
    Completion done_[2];  // the first count_ are set
    WaitQueue granted_;   // async modal grants
};

}  // namespace keylock::local
