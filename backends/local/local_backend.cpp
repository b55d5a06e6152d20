// The local backend. Design notes (docs/design.md has the longer version):
//
// * The table is split into shards. A shard's first cache line holds all that an uncontended
//   lock + unlock of a fresh key touches: a 4-byte spin-then-sleep mutex, the table size, a
//   fencing counter and a few inline hash buckets. The shard mutex guards the table and the
//   waiter queues, never a key's lock while it is waited for or held, so keys of one shard do
//   not wait on each other.
// * Each entry has one atomic word: held bit, queue bits, reference count (holder + waiters +
//   pins) and an incarnation number that changes whenever the entry is freed. While nothing
//   else refers to an entry its word is changed only under the shard mutex, with plain stores.
//   An entry that turns out to be shared (found referenced by another thread, or pinned by
//   obtain()) is *published*: from then on its word is changed only by compare-and-swap, and a
//   thread that has used it keeps a pointer to it in a thread-local slot. The next lock of that
//   key by that thread is then one compare-and-swap on the word, and an unlock that leaves the
//   entry referenced another one, without the shard mutex: a hot key costs what a mutex costs.
// * The incarnation in the word makes a stale slot harmless (its compare-and-swap fails), and a
//   published entry's memory is not returned to the allocator while any slot points at it
//   (hazard pointers, checked only when such an entry is deleted, which is rare: entries are
//   recycled through a per-thread cache).
// * When the count reaches zero the entry is unlinked and recycled at once, or, with
//   `idle_ttl`, marked idle and freed later by a sweeper that scans the table. Nothing frees an
//   entry with references: no expiry or eviction can drop a held or awaited lock.
// * Fencing tokens come from a per-shard counter; a published entry counts on from the shard's
//   value in its own word-adjacent counter and folds it back into the shard when it is freed. A
//   key always maps to one shard and neither counter goes back, so a key's tokens strictly
//   increase even though its entry is freed between uses.
// * Waiters queue FIFO on their entry. Each sync waiter sleeps on its own futex word, so a
//   release wakes exactly one thread. With `fair`, release hands the lock straight to the first
//   waiter; otherwise it frees the lock and wakes the first waiter, and a thread arriving
//   meanwhile may take it (as with std::mutex). Async waiters are always handed the lock
//   directly, since they cannot retry by themselves. A release must go through the shard
//   mutex exactly when the word's "slow release" bit says the queue's head needs it.
// * The last registry handle calls close(). If guards, waiters or pins still exist the backend
//   stays alive, counts them down, and the one that frees the last entry deletes it.
#include "local_backend.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keylock/error.hpp>

#include "../../src/futex.hpp"


namespace keylock::local {
namespace {

using detail::Acquired;
using detail::AsyncWaiter;
using detail::Clock;
using detail::Deadline;
using detail::WaitNode;
using detail::wait_on;
using detail::wake_one;

/// A spin-wait hint to the CPU.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

/// A 4-byte mutex for the shard's short critical sections: spins briefly, then sleeps on the
/// word (std::atomic::wait). It fits in the shard's hot cache line beside what it guards, and
/// does not put a thread to sleep for a wait of a few dozen nanoseconds.
class ShardMutex {
public:
    static constexpr int kSpins = 16;  // a few hundred ns: about a shard's critical section

    void lock() noexcept {
        std::uint32_t expected = 0;
        if (state_.compare_exchange_weak(expected, 1, std::memory_order_acquire, std::memory_order_relaxed)) {
            return;
        }
        lock_slow();
    }
    bool try_lock() noexcept {
        std::uint32_t expected = 0;
        return state_.compare_exchange_strong(expected, 1, std::memory_order_acquire, std::memory_order_relaxed);
    }
    void unlock() noexcept {
        if (state_.exchange(0, std::memory_order_release) == 2) wake_one(state_);
    }

private:
    void lock_slow() noexcept {
        std::uint32_t target = 1;
        for (;;) {
            for (int i = 0; i < kSpins; ++i) {
                cpu_relax();
                std::uint32_t expected = 0;
                if (state_.load(std::memory_order_relaxed) == 0 &&
                    state_.compare_exchange_weak(expected, target, std::memory_order_acquire,
                                                 std::memory_order_relaxed)) {
                    return;
                }
            }
            // 2 = locked with (possible) sleepers: unlock() then wakes one.
            if (state_.exchange(2, std::memory_order_acquire) == 0) return;
            wait_on(state_, 2, Deadline::max());
            // Woken: spin again before sleeping again, since the holder is likely to be done
            // soon. Having slept, we may not be the only sleeper, so we lock as "2" to make our
            // own unlock wake the next one.
            target = 2;
        }
    }
    std::atomic<std::uint32_t> state_{0};
};

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

/// The first and the last sizeof(Word) bytes of n (sizeof(Word) <= n <= 2 sizeof(Word)) bytes:
/// two overlapping loads that cover them all.
template <class Word>
[[gnu::always_inline]] inline void load_ends(const char* p, std::size_t n, Word& first, Word& last) noexcept {
    std::memcpy(&first, p, sizeof(Word));
    std::memcpy(&last, p + n - sizeof(Word), sizeof(Word));
}

template <class Word>
[[gnu::always_inline]] inline void copy_ends(char* to, const char* from, std::size_t n) noexcept {
    Word first, last;
    load_ends(from, n, first, last);
    std::memcpy(to, &first, sizeof(Word));
    std::memcpy(to + n - sizeof(Word), &last, sizeof(Word));
}

template <class Word>
[[gnu::always_inline]] inline bool equal_ends(const char* a, const char* b, std::size_t n) noexcept {
    Word a1, a2, b1, b2;
    load_ends(a, n, a1, a2);
    load_ends(b, n, b1, b2);
    return ((a1 ^ b1) | (a2 ^ b2)) == 0;
}

/// Copies n <= 16 bytes without a call.
[[gnu::always_inline]] inline void copy_small(char* to, const char* from, std::size_t n) noexcept {
    if (n >= 8) {
        copy_ends<std::uint64_t>(to, from, n);
    } else if (n >= 4) {
        copy_ends<std::uint32_t>(to, from, n);
    } else {
        for (std::size_t i = 0; i < n; ++i) to[i] = from[i];
    }
}

/// Whether n bytes at a and b are equal; n <= 16 without a call.
[[gnu::always_inline]] inline bool equal_bytes(const char* a, const char* b, std::size_t n) noexcept {
    if (n > 16) return std::memcmp(a, b, n) == 0;
    if (n >= 8) return equal_ends<std::uint64_t>(a, b, n);
    if (n >= 4) return equal_ends<std::uint32_t>(a, b, n);
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

/// An entry's key: up to 16 bytes inline (most ids), longer ones on the heap. Cheaper to set
/// and compare than a std::string, and the same 32 bytes.
class EntryKey {
public:
    static constexpr std::size_t kInline = 16;

    EntryKey() = default;
    EntryKey(const EntryKey&) = delete;
    EntryKey& operator=(const EntryKey&) = delete;
    ~EntryKey() {
        if (data_ != inline_) delete[] data_;
    }

    std::string_view view() const noexcept { return {data_, size_}; }
    operator std::string_view() const noexcept { return view(); }
    std::size_t capacity() const noexcept { return capacity_; }
    bool operator==(std::string_view k) const noexcept {
        return k.size() == size_ && equal_bytes(data_, k.data(), k.size());
    }

    /// Sets the key; keeps a heap buffer that is large enough.
    [[gnu::always_inline]] void assign(std::string_view k) {
        if (k.size() <= capacity_) [[likely]] {
            if (k.size() <= kInline && data_ == inline_) {
                copy_small(inline_, k.data(), k.size());
            } else {
                std::memcpy(data_, k.data(), k.size());
            }
        } else {
            grow(k.size());
            std::memcpy(data_, k.data(), k.size());
        }
        size_ = static_cast<std::uint32_t>(k.size());
    }

private:
    void grow(std::size_t n) {
        char* fresh = new char[n];  // may throw: the key is then unchanged
        if (data_ != inline_) delete[] data_;
        data_ = fresh;
        capacity_ = static_cast<std::uint32_t>(n);
    }

    char* data_ = inline_;
    std::uint32_t size_ = 0;
    std::uint32_t capacity_ = kInline;
    char inline_[kInline];
};

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
    WaitNode* head = nullptr;  // FIFO queue of waiters
    WaitNode* tail = nullptr;
    Deadline idle_until{};
    std::uint64_t fence_base = 0;  // the shard's counter when the entry was published
    Entry* pub_prev = nullptr;     // the shard's list of published entries (for stats)
    Entry* pub_next = nullptr;
    void* owner = nullptr;  // published entries: the LocalBackend (for a deferred reference)

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
};

/// The next fencing token of a published entry, issued by its new holder: only the holder writes
/// `fence`, and the word's acquire/release orders the holders.
std::uint64_t next_entry_token(Entry* e) noexcept {
    const std::uint64_t token = e->fence.load(std::memory_order_relaxed) + 1;
    e->fence.store(token, std::memory_order_relaxed);
    return token;
}

/// Tries to take a published entry's lock without the shard mutex: one compare-and-swap, which
/// fails if the entry is held, has been freed since `incarnation` was read, or (fair) has
/// waiters. Returns the fencing token, or 0 (then `w` is the word last seen).
std::uint64_t fast_take(Entry* e, std::uint64_t incarnation, bool fair, std::uint64_t& w) noexcept {
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
/// taken, the limit was reached, or (fair) others queue (we keep the reference).
std::uint64_t spin_joined(Entry* e, bool fair, std::uint64_t w, const SpinLimit& limit) noexcept {
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
std::uint64_t spin_take(Entry* e, std::uint64_t incarnation, bool fair, const SpinLimit& limit, bool& joined) noexcept {
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
bool fast_release(Entry* e) noexcept {
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
bool fast_unref(Entry* e) noexcept {
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
bool linger_release(Entry* e, bool& released) noexcept {
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

/// Where published entries' memory is returned to the allocator. Each thread's fast slot is a
/// hazard pointer: an entry a slot points at is kept (as a recycled entry of a later
/// incarnation, or on the deferred list here) until no slot points at it. Deleting a published
/// entry is rare (a thread's recycle cache overflowing, thread exit, a destroyed backend), so
/// a mutex and a scan of the slots is fine there; the fast paths never touch this.
class Reclaimer {
public:
    struct Slot {
        std::atomic<Entry*> hazard{nullptr};
        /// A reference the thread kept when it released a shared entry's last one (see
        /// LocalBackend::defer_release). Written by its thread; taken (exchanged for null) by
        /// its thread or by drain().
        std::atomic<Entry*> deferred{nullptr};
        Slot* prev = nullptr;
        Slot* next = nullptr;
    };

    static Reclaimer& get() {
        static auto* instance = new Reclaimer;  // never destroyed: thread exits may still call it
        return *instance;
    }

    void add(Slot* slot) {
        std::lock_guard lk(mu_);
        slot->next = slots_;
        if (slots_ != nullptr) slots_->prev = slot;
        slots_ = slot;
    }
    void remove(Slot* slot) noexcept {
        std::lock_guard lk(mu_);
        (slot->prev ? slot->prev->next : slots_) = slot->next;
        if (slot->next != nullptr) slot->next->prev = slot->prev;
        slot->prev = slot->next = nullptr;
        collect();
    }
    /// Deletes `e` (a published entry, unlinked, its incarnation retired) now or, if a slot
    /// still points at it, at a later call.
    void dispose(Entry* e) noexcept {
        std::lock_guard lk(mu_);
        try {
            deferred_.push_back(e);
        } catch (const std::bad_alloc&) {
            if (!hazardous(e)) delete e;
            return;  // else leaked rather than freed under a reader: never happens in practice
        }
        collect();
    }

    /// Takes every thread's deferred reference and passes each to `drop` (outside the mutex:
    /// dropping one may free an entry, which takes a shard mutex and may come back here).
    template <class Drop>
    void drain(Drop drop) noexcept {
        for (bool more = true; more;) {
            Entry* batch[64];
            std::size_t n = 0;
            more = false;
            {
                std::lock_guard lk(mu_);
                for (Slot* s = slots_; s != nullptr; s = s->next) {
                    if (s->deferred.load(std::memory_order_relaxed) == nullptr) continue;
                    if (n == std::size(batch)) {
                        more = true;
                        break;
                    }
                    if (Entry* e = s->deferred.exchange(nullptr, std::memory_order_seq_cst)) batch[n++] = e;
                }
            }
            for (std::size_t i = 0; i < n; ++i) drop(batch[i]);
        }
    }

private:
    bool hazardous(Entry* e) const noexcept {
        for (Slot* s = slots_; s != nullptr; s = s->next) {
            if (s->hazard.load(std::memory_order_acquire) == e) return true;
        }
        return false;
    }
    void collect() noexcept {
        std::erase_if(deferred_, [this](Entry* e) {
            if (hazardous(e)) return false;
            delete e;
            return true;
        });
    }

    std::mutex mu_;
    Slot* slots_ = nullptr;
    std::vector<Entry*> deferred_;
};

void dispose(Entry* e) noexcept {
    if (e->published) {
        Reclaimer::get().dispose(e);
    } else {
        delete e;
    }
}

/// The last published entry this thread locked through a registry, by key: the next lock of
/// the same key skips the hash table. Plain data, so that reaching it costs no thread-local
/// initialisation check; ThreadExit unregisters it when the thread exits.
struct FastSlot {
    static constexpr std::size_t kMaxKey = 64;  // longer keys are not remembered

    Reclaimer::Slot hazard;  // == entry once registered
    const void* backend = nullptr;
    std::uint64_t hash = 0;
    Entry* entry = nullptr;
    std::uint64_t incarnation = 0;
    std::uint32_t key_size = 0;
    bool registered = false;
    bool dead = false;  // the thread is exiting: remember nothing more
    char key[kMaxKey];

    /// The entry and incarnation remembered for `key` in `b`, or null.
    Entry* find(const void* b, std::uint64_t h, std::string_view k, std::uint64_t& inc) const noexcept {
        if (backend != b || hash != h || key_size != k.size() || !equal_bytes(key, k.data(), k.size())) {
            return nullptr;
        }
        inc = incarnation;
        return entry;
    }
    void remember(const void* b, std::uint64_t h, std::string_view k, Entry* e) noexcept;
};

constinit thread_local FastSlot fast_slot{};

/// Drops a deferred reference to `e` (whose backend it keeps alive). Defined after LocalBackend.
void drop_deferred(Entry* e) noexcept;

/// Recycled entries, per thread: the entry a thread frees is the one it most likely allocates
/// next, still in its own cache. Bounded, and freed when the thread exits (ThreadExit). Plain
/// data, like FastSlot.
struct EntryCache {
    static constexpr int kCap = 16;

    Entry* head = nullptr;
    int count = 0;
    bool owned = false;  // ThreadExit will empty it
    bool dead = false;   // the thread is exiting: cache nothing more

    Entry* get() {
        if (head == nullptr) return new Entry;
        --count;
        return std::exchange(head, head->chain);
    }
    /// Takes a freed entry (its word already retired to the next incarnation).
    void put(Entry* e) noexcept;
};

constinit thread_local EntryCache entry_cache{};

/// Runs a thread's clean-up at its exit, in this order: drop its deferred reference (which may
/// free an entry into its cache), unregister its slot, then empty its cache. One object, so
/// the order does not depend on which thread-local was touched first.
struct ThreadExit {
    ThreadExit() = default;
    ThreadExit(const ThreadExit&) = delete;
    ThreadExit& operator=(const ThreadExit&) = delete;
    ~ThreadExit() {
        FastSlot& slot = fast_slot;
        slot.dead = true;
        slot.backend = nullptr;
        if (Entry* e = slot.hazard.deferred.exchange(nullptr, std::memory_order_seq_cst)) drop_deferred(e);
        if (slot.registered) Reclaimer::get().remove(&slot.hazard);
        slot.registered = false;
        EntryCache& cache = entry_cache;
        cache.dead = true;
        while (cache.head != nullptr) dispose(std::exchange(cache.head, cache.head->chain));
        cache.count = 0;
    }
    void touch() noexcept {}
};

thread_local ThreadExit thread_exit;

void EntryCache::put(Entry* e) noexcept {
    if (!owned) [[unlikely]] {
        thread_exit.touch();  // constructs it, so that its destructor runs at thread exit
        owned = true;
    }
    if (count >= kCap || dead || e->key.capacity() > 64) {
        dispose(e);
        return;
    }
    e->chain = head;
    e->head = e->tail = nullptr;
    e->idle = false;
    head = e;
    ++count;
}

/// A blocked lock() call. `signal` is set to 1 by whoever wants it to look again (a release,
/// a grant, a stop request); the waiter clears it under the shard mutex before each look, so
/// no signal between that look and its sleep is lost.
struct SyncWaiter final : WaitNode {
    std::atomic<std::uint32_t> signal{0};
};

/// Remembers `e` (which the caller holds a reference to, so it is not being freed).
void FastSlot::remember(const void* b, std::uint64_t h, std::string_view k, Entry* e) noexcept {
    if (dead || k.size() > kMaxKey) return;
    if (!registered) {
        thread_exit.touch();  // constructs it, so that its destructor runs at thread exit
        try {
            Reclaimer::get().add(&hazard);
        } catch (const std::bad_alloc&) {
            return;
        }
        registered = true;
    }
    // The hazard is published while we hold a reference: the entry cannot be freed (let alone
    // deleted) before our release, which happens after this store.
    hazard.hazard.store(e, std::memory_order_release);
    backend = b;
    hash = h;
    entry = e;
    incarnation = e->load() & word::kIncMask;
    key_size = static_cast<std::uint32_t>(k.size());
    std::memcpy(key, k.data(), k.size());
}

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

    Entry* find(std::string_view key, std::uint64_t hash) const noexcept {
        const auto h = static_cast<std::uint32_t>(hash);
        for (Entry* e = buckets[h & mask]; e != nullptr; e = e->chain) {
            if (e->hash == h && e->key == key) return e;
        }
        return nullptr;
    }

    [[gnu::always_inline]] Entry* insert(std::string_view key, std::uint64_t hash, std::uint16_t index) {
        if (size + 1 > mask + 1) rehash((mask + 1) * 2);
        Entry* e = entry_cache.get();
        try {
            e->key.assign(key);
        } catch (...) {
            entry_cache.put(e);
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

    /// Unlinks an entry whose word has just been retired, and recycles it.
    void erase(Entry* e) noexcept {
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
        entry_cache.put(e);
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

void enqueue(Entry* e, WaitNode* w) noexcept {
    w->entry = e;
    w->next = nullptr;
    w->prev = e->tail;
    (e->tail ? e->tail->next : e->head) = w;
    e->tail = w;
    w->queued = true;
}

void dequeue(Entry* e, WaitNode* w) noexcept {
    (w->prev ? w->prev->next : e->head) = w->next;
    (w->next ? w->next->prev : e->tail) = w->prev;
    w->prev = w->next = nullptr;
    w->queued = false;
}

/// A seeded 64-bit hash of a key (keys may come from the network: the seed, random per
/// registry, keeps anyone from choosing keys that all land in one bucket).
std::uint64_t hash_bytes(std::string_view key, std::uint64_t seed) noexcept {
    __extension__ using u128 = unsigned __int128;
    auto mix = [](std::uint64_t a, std::uint64_t b) {
        const u128 r = static_cast<u128>(a) * b;
        return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
    };
    constexpr std::uint64_t k1 = 0xa0761d6478bd642fULL, k2 = 0xe7037ed1a0b428dbULL;
    const char* p = key.data();
    std::size_t n = key.size();
    std::uint64_t h = seed ^ mix(n ^ k1, k2);
    while (n >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        h = mix(h ^ w, k1);
        p += 8;
        n -= 8;
    }
    // The last 0-7 bytes, without a variable-length memcpy call: two overlapping 4-byte
    // loads, or the first, middle and last byte.
    std::uint64_t tail = 0;
    if (n >= 4) {
        std::uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        tail = (static_cast<std::uint64_t>(hi) << 32) | lo;
    } else if (n > 0) {
        const auto* u = reinterpret_cast<const unsigned char*>(p);
        tail = (static_cast<std::uint64_t>(u[0]) << 16) | (static_cast<std::uint64_t>(u[n / 2]) << 8) | u[n - 1];
    }
    h = mix(h ^ tail ^ (static_cast<std::uint64_t>(n) << 56), k2);
    return mix(h, k1);
}

class LocalBackend;

/// The shard lock, plus the work that must happen after it is dropped: waking a sync waiter,
/// completing async waiters, and deleting a closed backend whose last entry just went.
class ShardLock {
public:
    ShardLock(LocalBackend* backend, Shard& shard) : backend_(backend), mu_(shard.mu) { mu_.lock(); }
    ShardLock(const ShardLock&) = delete;
    ShardLock& operator=(const ShardLock&) = delete;
    ~ShardLock() {
        mu_.unlock();
        if (pending_) [[unlikely]]
            finish();
    }

    /// The mutex, for a waiter that drops it to sleep (and takes it again before it returns).
    ShardMutex& mutex() noexcept { return mu_; }
    /// Completes `w` once the shard mutex is dropped (at most two per lock: a cancelled waiter
    /// and the one the lock passes to).
    void complete_after(AsyncWaiter* w, errc error, Acquired a) noexcept {
        assert(count_ < 2);
        done_[count_++] = {w, error, a.hold, a.fence};
        pending_ = true;
    }
    void delete_backend_after() noexcept { delete_backend_ = pending_ = true; }
    /// Sets a sync waiter's signal now and makes the wake-up call once the shard mutex is
    /// dropped, so that the woken thread does not find the mutex still held by its waker.
    void wake_after(WaitNode* w) noexcept {
        auto& signal = static_cast<SyncWaiter*>(w)->signal;
        signal.store(1, std::memory_order_release);
        assert(wake_ == nullptr);
        wake_ = &signal;
        pending_ = true;
    }

private:
    struct Completion {  // trivial: nothing is initialised on the fast path
        AsyncWaiter* waiter;
        errc error;  // errc{} for success
        detail::Hold* hold;
        std::uint64_t fence;
    };
    /// The work queued for after the mutex is dropped.
    [[gnu::noinline]] void finish() noexcept;

    LocalBackend* backend_;
    ShardMutex& mu_;
    bool pending_ = false;  // any of the below is set
    std::atomic<std::uint32_t>* wake_ = nullptr;
    int count_ = 0;
    bool delete_backend_ = false;
    Completion done_[2];  // the first count_ are set
};

class LocalBackend final : public detail::Backend {
public:
    explicit LocalBackend(const RegistryOptions& options)
        : options_(options),
          shard_bits_(static_cast<unsigned>(std::countr_zero(options.shards))),
          seed_(std::random_device{}() * 0x9e3779b97f4a7c15ULL ^ reinterpret_cast<std::uintptr_t>(this)),
          shards_(std::make_unique<Shard[]>(options.shards)) {
        if (options_.idle_ttl.count() > 0) {
            sweeper_ = std::jthread([this](const std::stop_token& stop) { sweep_loop(stop); });
        }
    }

    ~LocalBackend() override = default;

    Acquired acquire(std::string_view key, detail::Pin* pin, Deadline deadline, const std::stop_token& stop,
                     std::error_code& ec) override {
        const SpinLimit limit{deadline, stop};
        if (pin != nullptr) {
            auto* e = static_cast<Entry*>(pin);  // published, and kept alive by the pin
            bool joined = false;
            if (const std::uint64_t token = spin_take(e, e->load() & word::kIncMask, options_.fair, limit, joined)) {
                return {e, token};
            }
            return acquire_slow(shards_[e->shard], e, joined, {}, 0, deadline, stop, ec);
        }
        if (key.empty() || key.size() > options_.max_key_bytes) [[unlikely]] {
            ec = check_key(key);
            return {};
        }
        const std::uint64_t hash = hash_bytes(key, seed_);
        {
            std::uint64_t incarnation = 0;
            if (Entry* e = fast_slot.find(this, hash, key, incarnation)) {
                bool joined = false;
                std::uint64_t token = 0;
                auto& deferred = fast_slot.hazard.deferred;
                if (deferred.load(std::memory_order_relaxed) == e &&
                    deferred.exchange(nullptr, std::memory_order_acquire) == e) {
                    // We kept a reference at our last release (unless drain() took it just
                    // now), so the entry is alive. It is our key's only if the incarnation is
                    // still the one the slot saw: the slot may be older than the reference
                    // (kept through a pin, or a key too long to remember) and the memory
                    // recycled for another key since.
                    const std::uint64_t w = e->word.load(std::memory_order_relaxed);
                    if ((w & word::kIncMask) == incarnation) {
                        joined = true;
                        token = spin_joined(e, options_.fair, w, limit);
                    } else {
                        unref(e);
                    }
                } else {
                    token = spin_take(e, incarnation, options_.fair, limit, joined);
                }
                if (token != 0) return {e, token};
                // Having joined, we keep the entry alive: no need to look it up.
                if (joined) return acquire_slow(shards_[e->shard], e, true, {}, 0, deadline, stop, ec);
            }
        }
        Entry* spinner = nullptr;
        Acquired a = acquire_slow(shards_[shard_of(hash)], nullptr, false, key, hash, deadline, stop, ec, &spinner);
        if (spinner != nullptr) {
            // Joined a published entry that is held: spin outside the lock.
            fast_slot.remember(this, hash, key, spinner);
            if (const std::uint64_t token = spin_joined(spinner, options_.fair, spinner->load(), limit)) {
                return {spinner, token};
            }
            return acquire_slow(shards_[spinner->shard], spinner, true, {}, 0, deadline, stop, ec);
        }
        if (a.hold != nullptr) {
            auto* e = static_cast<Entry*>(a.hold);
            if ((e->load() & word::kPublished) != 0) fast_slot.remember(this, hash, key, e);
        }
        return a;
    }

    void async_acquire(std::string_view key, AsyncWaiter* w) override {
        if (std::error_code ec = check_key(key)) {
            w->complete(ec, {});
            return;
        }
        const std::uint64_t hash = hash_bytes(key, seed_);
        Shard& s = shards_[shard_of(hash)];
        ShardLock guard(this, s);
        std::error_code ec;
        Entry* e = find_or_insert(s, key, hash, ec);
        if (e == nullptr) {
            guard.complete_after(w, static_cast<errc>(ec.value()), {});
            return;
        }
        if (const std::uint64_t token = take(s, e)) {
            guard.complete_after(w, errc{}, {e, token});
            return;
        }
        w->shard = e->shard;
        enqueue(e, w);
        ++s.waiting;
        if ((add_waiter_ref(e) & word::kHeld) == 0) dispatch(s, e, guard);  // released meanwhile
    }

    void cancel(AsyncWaiter* w) noexcept override {
        Shard& s = shards_[w->shard];
        ShardLock guard(this, s);
        if (!w->queued) return;  // completed already, or never queued
        auto* e = static_cast<Entry*>(w->entry);
        dequeue(e, w);
        --s.waiting;
        ++s.cancellations;
        guard.complete_after(w, errc::cancelled, {});
        leave_queue(s, e, guard);
    }

    void release(detail::Hold* hold, std::error_code& ec) noexcept override {
        if (ec) ec.clear();
        auto* e = static_cast<Entry*>(hold);
        assert((e->load() & word::kHeld) != 0);
        if (fast_release(e)) return;
        if (defer_ && defer_release(e)) return;
        bool released = false;
        if (!defer_ && linger_release(e, released)) return;
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        const std::uint64_t w = drop(s, e, released ? word::kRef : word::kRef + word::kHeld, guard);
        if ((w & word::kQueued) != 0 && (w & word::kHeld) == 0) dispatch(s, e, guard);
    }

    void release_unobserved(detail::Hold* hold) noexcept override {
        std::error_code ignored;
        release(hold, ignored);  // (final class: a direct call)
    }

    std::string_view key(const detail::Hold* hold) const noexcept override {
        return static_cast<const Entry*>(hold)->key;
    }
    bool lost(const detail::Hold*) const noexcept override { return false; }

    detail::Pin* pin(std::string_view key) override {
        std::error_code ec = check_key(key);
        if (!ec) {
            const std::uint64_t hash = hash_bytes(key, seed_);
            Shard& s = shards_[shard_of(hash)];
            ShardLock guard(this, s);
            if (Entry* e = find_or_insert(s, key, hash, ec)) {
                if ((e->load() & word::kPublished) == 0) s.publish(e, this);
                add_ref(e);
                return e;
            }
        }
        detail::throw_error(ec, key, "obtain");
    }
    void unpin(detail::Pin* pin) noexcept override {
        auto* e = static_cast<Entry*>(pin);
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        drop(s, e, word::kRef, guard);
    }
    std::string_view key(const detail::Pin* pin) const noexcept override { return static_cast<const Entry*>(pin)->key; }

    Stats stats() const override {
        // Threads' deferred references are not uses: drop them, so that `entries` counts the
        // entries really in use (and returns to 0 when nothing is).
        if (defer_) Reclaimer::get().drain(drop_deferred);
        Stats st;
        for (std::size_t i = 0; i < options_.shards; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lk(s.mu);
            st.entries += s.size;
            st.acquisitions += s.acquisitions();
            st.contended += s.contended;
            st.timeouts += s.timeouts;
            st.cancellations += s.cancellations;
            st.waiting += s.waiting;
        }
        return st;
    }

    std::string describe() const override { return options_.to_url(); }

    void close() noexcept override {
        if (sweeper_.joinable()) {
            sweeper_.request_stop();
            sweeper_.join();
        }
        // Shard by shard (one mutex at a time): drop idle entries, mark the shard closed and
        // add its live entries to `orphans_`. Each later free in a closed shard takes one off.
        // The extra 1 held during the walk keeps an early free from reaching zero.
        orphans_.fetch_add(1, std::memory_order_relaxed);
        // Seq_cst, against defer_release(): either it sees closed_ and drops the reference it
        // kept, or the drain below finds it.
        closed_.store(true, std::memory_order_seq_cst);
        if (defer_) Reclaimer::get().drain(drop_deferred);
        for (std::size_t i = 0; i < options_.shards; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lk(s.mu);
            expire_idle(s, Deadline::max());
            s.closed = true;
            orphans_.fetch_add(s.size, std::memory_order_relaxed);
        }
        if (orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Drops a reference (not the lock), freeing the entry if it was the last.
    void unref(Entry* e) noexcept {
        if (fast_unref(e)) return;
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        leave_queue(s, e, guard);
    }

private:
    friend class ShardLock;

    /// The release of the last reference of an entry that is being shared: releases the lock
    /// but keeps the reference, in this thread's slot, instead of freeing the entry. In a burst
    /// of locks on one key, the other threads are usually just between an unlock and their
    /// next lock, and would otherwise find the entry gone and have to re-create it under the
    /// shard mutex. The thread uses the reference for its next lock of the key; it is dropped
    /// when the thread defers another one, exits, or at stats() and close() (drain). So each
    /// thread keeps at most one entry alive this way. Not used with max_keys, whose bound must
    /// not depend on what other threads did last.
    bool defer_release(Entry* e) noexcept {
        std::uint64_t w = e->word.load(std::memory_order_relaxed);
        FastSlot& slot = fast_slot;
        do {
            if ((w & (word::kPublished | word::kSlowRelease)) != word::kPublished ||
                (w & (word::kShared | word::kHot)) == 0 || word::refs(w) != 1 ||
                !slot.registered) {  // (no slot for drain() to find)
                return false;
            }
            // Acquire as well: the entry may have been published after we took it (under the
            // shard mutex, by another thread), and dropping the reference later reads `owner`.
        } while (
            !e->word.compare_exchange_weak(w, w - word::kHeld, std::memory_order_acq_rel, std::memory_order_relaxed));
        Entry* old = slot.hazard.deferred.exchange(e, std::memory_order_seq_cst);
        if (closed_.load(std::memory_order_seq_cst)) {
            // close() has begun and may have drained already: drop it ourselves.
            if (Entry* mine = slot.hazard.deferred.exchange(nullptr, std::memory_order_seq_cst)) unref(mine);
        }
        if (old != nullptr) drop_deferred(old);
        return true;
    }

    std::error_code check_key(std::string_view key) const noexcept {
        if (key.empty()) return errc::invalid_key;
        if (key.size() > options_.max_key_bytes) return errc::key_too_long;
        return {};
    }
    std::size_t shard_of(std::uint64_t hash) const noexcept {
        // Buckets use the low bits; shards use the high ones.
        return shard_bits_ == 0 ? 0 : static_cast<std::size_t>(hash >> (64 - shard_bits_));
    }

    /// The locked part of acquire: `e` is a pinned or joined entry, or null to look `key` up;
    /// `has_ref` says the caller already counts a reference to `e` (a spinner that joined).
    /// With `spinner` given, a published entry that is held with nobody queued is not waited
    /// for here: the caller gets it in *spinner, with a reference, to spin on unlocked. (That
    /// point is reached only with time left and no stop requested: the checks just before it
    /// are the spin limit's.)
    [[gnu::always_inline]] Acquired acquire_slow(Shard& s, Entry* e, bool has_ref, std::string_view key,
                                                 std::uint64_t hash, Deadline deadline, const std::stop_token& stop,
                                                 std::error_code& ec, Entry** spinner = nullptr) {
        ShardLock guard(this, s);
        if (e == nullptr) {
            e = find_or_insert(s, key, hash, ec);
            if (e == nullptr) return {};
            // Referenced by someone else (a holder, a waiter, a pin): a key in use by several
            // threads. Publish it, so that the next locks of these threads skip this mutex.
            const std::uint64_t w = e->load();
            if ((w & word::kPublished) == 0 && word::refs(w) != 0) s.publish(e, this);
        }
        const std::uint64_t ref = has_ref ? 0 : word::kRef;  // what taking or queueing adds
        if (const std::uint64_t token = take(s, e, ref)) return {e, token};
        return acquire_held(s, e, ref, deadline, stop, guard, ec, spinner);
    }

    /// The rest of acquire_slow, when the lock was taken: time out, stop, spin or queue. Out
    /// of line, so that the uncontended path above is short.
    [[gnu::noinline]] Acquired acquire_held(Shard& s, Entry* e, std::uint64_t ref, Deadline deadline,
                                            const std::stop_token& stop, ShardLock& guard, std::error_code& ec,
                                            Entry** spinner) {
        if (deadline != Deadline::max() && deadline <= Clock::now()) {
            ++s.timeouts;
            ec = errc::timeout;
            drop(s, e, word::kRef - ref, guard);
            return {};
        }
        if (stop.stop_requested()) {
            ++s.cancellations;
            ec = errc::cancelled;
            drop(s, e, word::kRef - ref, guard);
            return {};
        }
        const std::uint64_t w = e->load();
        if (spinner != nullptr && (w & word::kPublished) != 0 && (!options_.fair || (w & word::kQueued) == 0)) {
            add_ref(e);
            *spinner = e;
            return {};
        }
        return wait(s, e, ref, deadline, stop, guard, ec);
    }

    [[gnu::always_inline]] Entry* find_or_insert(Shard& s, std::string_view key, std::uint64_t hash,
                                                 std::error_code& ec) {
        if (Entry* e = s.find(key, hash)) {
            if (e->idle) {
                e->idle = false;
                --s.idle;
            }
            return e;
        }
        if (options_.max_keys != 0 && !reserve_slot(s)) {
            ec = errc::too_many_keys;
            return nullptr;
        }
        try {
            Entry* e = s.insert(key, hash, static_cast<std::uint16_t>(&s - shards_.get()));
            if (s.hot == (e->hash | 1)) {
                // Published, and marked hot: its first release lingers for the other threads of
                // the burst instead of freeing it under them. If none comes, kShared stays
                // clear and the next entry of the key starts plain: a key one thread now uses
                // alone pays one linger, not one per unlock.
                s.hot = 0;
                s.publish(e, this);
                e->word.store(e->load() | word::kHot, std::memory_order_release);
            }
            return e;
        } catch (const std::bad_alloc&) {
            if (options_.max_keys != 0) total_.fetch_sub(1, std::memory_order_relaxed);
            throw;
        }
    }

    /// Counts one more entry against max_keys, evicting this shard's idle entries if needed.
    bool reserve_slot(Shard& s) noexcept {
        for (;;) {
            std::size_t n = total_.load(std::memory_order_relaxed);
            if (n < options_.max_keys) {
                if (total_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
                continue;
            }
            if (s.idle == 0) return false;
            expire_idle(s, Deadline::max());
        }
    }

    /// The next fencing token of a lock just taken (by its holder, under the shard mutex).
    static std::uint64_t next_token(Shard& s, Entry* e, std::uint64_t w) noexcept {
        return (w & word::kPublished) == 0 ? ++s.fence : next_entry_token(e);
    }

    /// Takes the lock for a new holder if it is free (and, with `fair`, nobody is queued).
    /// Returns the token, or 0.
    std::uint64_t take(Shard& s, Entry* e, std::uint64_t ref = word::kRef) noexcept {
        std::uint64_t w = e->load();
        do {
            if ((w & word::kHeld) != 0 || (options_.fair && (w & word::kQueued) != 0)) return 0;
        } while (!e->replace(w, word::add(w, ref + word::kHeld)));
        return next_token(s, e, w);
    }

    static void add_ref(Entry* e) noexcept {
        std::uint64_t w = e->load();
        while (!e->replace(w, word::add(w, word::kRef))) {
        }
    }

    /// The queue bits the word should carry for the entry's queue as it is now.
    std::uint64_t queue_bits(const Entry* e) const noexcept {
        const WaitNode* h = e->head;
        if (h == nullptr) return 0;
        return word::kQueued | (options_.fair || h->is_async || !h->woken ? word::kSlowRelease : 0);
    }

    /// A waiter was just enqueued: counts its reference and sets the queue bits, after which
    /// every release comes through the shard mutex. Returns the new word: if the lock was
    /// released by a fast path just before, it is free now and the caller must look again.
    std::uint64_t add_waiter_ref(Entry* e, std::uint64_t ref = word::kRef) noexcept {
        const std::uint64_t bits = queue_bits(e);
        std::uint64_t w = e->load();
        std::uint64_t next = 0;
        do {
            next = word::add((w & ~(word::kQueued | word::kSlowRelease)) | bits, ref);
        } while (!e->replace(w, next));
        return next;
    }

    /// Re-derives the queue bits after the queue changed without a reference going.
    void sync_queue_bits(Entry* e) noexcept {
        const std::uint64_t bits = queue_bits(e);
        std::uint64_t w = e->load();
        while (!e->replace(w, (w & ~(word::kQueued | word::kSlowRelease)) | bits)) {
        }
    }

    /// Drops `delta` (references, plus kHeld for a release) from the word, re-deriving the queue
    /// bits; frees the entry if nothing refers to it any more, or parks it for idle_ttl.
    /// Returns the new word (a freed entry's is 0 apart from the incarnation). A freed entry
    /// that several threads held references to at once is remembered as the shard's hot key.
    [[gnu::always_inline]] std::uint64_t drop(Shard& s, Entry* e, std::uint64_t delta, ShardLock& guard) noexcept {
        const bool keep = options_.idle_ttl.count() > 0 && !s.closed;
        std::uint64_t w = e->load();
        // The queue bits are re-derived from the queue (on the entry's second line) only if
        // the word says there is one: under the shard mutex, only we change the queue.
        const std::uint64_t bits = (w & word::kQueued) != 0 ? queue_bits(e) : 0;
        std::uint64_t next = 0;
        do {
            next = ((w - delta) & ~(word::kQueued | word::kSlowRelease)) | bits;
            if ((next & (word::kRefMask | word::kHeld)) == 0) {
                // Unreferenced: freed, or parked for idle_ttl with its sharing episode over.
                next = keep ? next & ~(word::kShared | word::kHot) : word::freed(w);
            }
        } while (!e->replace(w, next));
        if ((next & word::kIncMask) != (w & word::kIncMask)) {
            // A key that several threads used at once is likely to be back at once: its next
            // entry is published from the start, so that they find each other without
            // having to meet in this mutex first.
            if ((w & (word::kPublished | word::kShared)) == (word::kPublished | word::kShared)) {
                s.hot = e->hash | 1;
            }
            free_entry(s, e, guard);
        } else if (keep && (next & (word::kRefMask | word::kHeld)) == 0 && !e->idle) {
            e->idle = true;
            e->idle_until = Clock::now() + options_.idle_ttl;
            ++s.idle;
        }
        return next;
    }

    /// A waiter was dequeued without taking the lock (timeout, stop, cancel): drop its
    /// reference, and if the lock is free, pass the wake-up it may have consumed on.
    void leave_queue(Shard& s, Entry* e, ShardLock& guard) noexcept {
        const std::uint64_t w = drop(s, e, word::kRef, guard);
        if ((w & word::kQueued) != 0 && (w & word::kHeld) == 0) dispatch(s, e, guard);
    }

    /// The entry may be free and has waiters: hand it on according to the fairness policy.
    void dispatch(Shard& s, Entry* e, ShardLock& guard) noexcept {
        WaitNode* w = e->head;
        if (w == nullptr) return;
        if (options_.fair || w->is_async) {
            // Hand over: the waiter's reference becomes the holder's. Fails only if an unfair
            // barger took the lock meanwhile; its release will come back here.
            std::uint64_t x = e->load();
            do {
                if ((x & word::kHeld) != 0) return;
            } while (!e->replace(x, x + word::kHeld));
            dequeue(e, w);
            --s.waiting;
            ++s.contended;
            w->granted = true;
            w->fence = next_token(s, e, x);
            sync_queue_bits(e);
            if (w->is_async) {
                guard.complete_after(static_cast<AsyncWaiter*>(w), errc{}, {e, w->fence});
            } else {
                guard.wake_after(w);
            }
        } else if (!w->woken) {
            w->woken = true;
            sync_queue_bits(e);
            guard.wake_after(w);
        }
    }

    /// Before a woken waiter sleeps again: sets the bit that makes the next release wake it,
    /// unless the lock is free already (then the waiter takes it instead of sleeping).
    static bool arm(Entry* e) noexcept {
        std::uint64_t w = e->load();
        do {
            if ((w & word::kHeld) == 0) return false;
        } while (!e->replace(w, w | word::kSlowRelease));
        return true;
    }

    Acquired wait(Shard& s, Entry* e, std::uint64_t ref, Deadline deadline, const std::stop_token& stop,
                  ShardLock& guard, std::error_code& ec) {
        SyncWaiter w;
        w.shard = e->shard;
        enqueue(e, &w);
        ++s.waiting;
        add_waiter_ref(e, ref);

        // A stop only has to wake the waiter: the signal keeps the wake-up even if it comes
        // before the waiter sleeps, and the loop below re-checks everything under the lock.
        auto on_stop = [&w] {
            w.signal.store(1, std::memory_order_release);
            wake_one(w.signal);
        };
        std::stop_callback<decltype(on_stop)> stop_cb(stop, on_stop);  // inert if stop is impossible

        ShardMutex& lk = guard.mutex();
        Acquired result;
        bool may_spin = false;  // the caller has just spun (or could not)
        for (;;) {
            // An exchange, not a store: it reads a stop callback's signal if that came first,
            // so the stop check below then sees the request.
            (void)w.signal.exchange(0, std::memory_order_acquire);
            if (w.granted) {
                result = {e, w.fence};
                break;
            }
            if (!options_.fair || e->head == &w) {
                // Take the lock if it is free (with `fair`, only at the head of the queue; the
                // lock can be free with waiters only if a fast release came just before we
                // queued): our queue reference becomes the holder's.
                std::uint64_t x = e->load();
                bool taken = false;
                while ((x & word::kHeld) == 0) {
                    if (e->replace(x, x + word::kHeld)) {
                        taken = true;
                        break;
                    }
                }
                if (taken) {
                    dequeue(e, &w);
                    --s.waiting;
                    ++s.contended;
                    sync_queue_bits(e);
                    result = {e, next_token(s, e, x)};
                    break;
                }
            }
            if (stop.stop_requested()) {
                ec = errc::cancelled;
                ++s.cancellations;
                break;
            }
            if (deadline != Deadline::max() && Clock::now() >= deadline) {
                ec = errc::timeout;
                ++s.timeouts;
                break;
            }
            if (!options_.fair && may_spin && (e->load() & word::kPublished) != 0) {
                // Awake: spin like a new arrival would, before sleeping again. Marked woken,
                // we need no wake-up, so releases meanwhile stay on their fast path.
                may_spin = false;
                w.woken = true;
                sync_queue_bits(e);
                lk.unlock();
                const std::uint64_t token = spin_joined(e, false, e->load(), SpinLimit{deadline, stop});
                lk.lock();
                if (token != 0) {
                    dequeue(e, &w);
                    --s.waiting;
                    ++s.contended;
                    sync_queue_bits(e);
                    result = {e, token};
                    break;
                }
                continue;  // look again: granted, stopped, timed out?
            }
            if (!options_.fair) {
                w.woken = false;
                if (e->head == &w && !arm(e)) continue;  // freed meanwhile: take it
                sync_queue_bits(e);
            }
            may_spin = true;  // after the next wake-up
            lk.unlock();
            while (w.signal.load(std::memory_order_acquire) == 0 &&
                   (deadline == Deadline::max() || Clock::now() < deadline)) {
                wait_on(w.signal, 0, deadline);
            }
            lk.lock();
        }
        if (result.hold == nullptr) {
            dequeue(e, &w);
            --s.waiting;
            leave_queue(s, e, guard);
        }
        // Wakers touch `w` only under the shard mutex, which we hold; the stop callback goes
        // before `w` does (members and locals are destroyed in reverse order).
        return result;
    }

    /// Unlinks and recycles an entry whose word drop() has just retired.
    void free_entry(Shard& s, Entry* e, ShardLock& guard) noexcept {
        if (e->idle) {
            e->idle = false;
            --s.idle;
        }
        s.erase(e);
        if (options_.max_keys != 0) total_.fetch_sub(1, std::memory_order_relaxed);
        // closed_ is set before any shard is marked closed (and read under the shard mutex),
        // so it only spares reading the shard's second line while the registry is open.
        if (closed_.load(std::memory_order_relaxed) && s.closed &&
            orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            guard.delete_backend_after();
        }
    }

    /// Frees the shard's idle entries whose time is up (all of them for Deadline::max()). An
    /// idle published entry may have been taken again by a fast path: it is then just no
    /// longer idle.
    void expire_idle(Shard& s, Deadline now) noexcept {
        if (s.idle == 0) return;
        std::vector<Entry*> expired;
        for (std::uint32_t i = 0; i <= s.mask; ++i) {
            for (Entry* e = s.buckets[i]; e != nullptr; e = e->chain) {
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
            if (in_use) {
                e->idle = false;
                --s.idle;
                continue;
            }
            e->idle = false;
            --s.idle;
            s.erase(e);
            if (options_.max_keys != 0) total_.fetch_sub(1, std::memory_order_relaxed);
        }
    }

    /// Frees idle entries a few times per idle_ttl, scanning each shard's table. A scan is
    /// linear in the entries but runs rarely; in exchange, reusing a warm entry costs nothing.
    void sweep_loop(const std::stop_token& stop) {
        const auto period = std::max<std::chrono::milliseconds>(options_.idle_ttl / 4, std::chrono::milliseconds(1));
        std::mutex mu;
        std::condition_variable_any cv;
        std::unique_lock lk(mu);
        while (!cv.wait_for(lk, stop, period, [] { return false; }) && !stop.stop_requested()) {
            const auto now = Clock::now();
            for (std::size_t i = 0; i < options_.shards; ++i) {
                std::lock_guard shard_lock(shards_[i].mu);
                expire_idle(shards_[i], now);
            }
        }
    }

    const RegistryOptions options_;
    const unsigned shard_bits_;
    const std::uint64_t seed_;
    std::unique_ptr<Shard[]> shards_;
    std::atomic<std::size_t> total_{0};          // entries, maintained only when max_keys is set
    std::atomic<std::size_t> orphans_{0};        // entries still referenced after close()
    std::atomic<bool> closed_{false};            // close() has begun
    const bool defer_ = options_.max_keys == 0;  // releases may keep a deferred reference
    std::jthread sweeper_;
};

void drop_deferred(Entry* e) noexcept { static_cast<LocalBackend*>(e->owner)->unref(e); }

void ShardLock::finish() noexcept {
    if (wake_ != nullptr) wake_one(*wake_);
    for (int i = 0; i < count_; ++i) {
        const Completion& c = done_[i];
        c.waiter->complete(c.error == errc{} ? std::error_code() : make_error_code(c.error), {c.hold, c.fence});
    }
    if (delete_backend_) delete backend_;
}

}  // namespace

std::shared_ptr<detail::Backend> make_backend(const RegistryOptions& options) {
    if (options.shards == 0 || (options.shards & (options.shards - 1)) != 0 || options.shards > (1u << 16)) {
        throw Error(errc::invalid_option, "keylock: option 'shards' must be a power of two from 1 to 65536");
    }
    if (options.max_key_bytes == 0) {
        throw Error(errc::invalid_option, "keylock: option 'max_key_bytes' must be at least 1");
    }
    return std::shared_ptr<detail::Backend>(new LocalBackend(options), [](detail::Backend* b) { b->close(); });
}

}  // namespace keylock::local
