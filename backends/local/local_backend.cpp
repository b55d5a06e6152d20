// The local backend. Design notes (docs/design.md has the longer version):
//
// * The table is split into shards. A shard's first cache line holds all that an uncontended
//   lock + unlock touches: a 4-byte spin-then-sleep mutex, the table size, a fencing counter
//   and a few inline hash buckets. The shard mutex guards bookkeeping only, never a key's lock
//   while it is waited for or held, so keys of one shard do not wait on each other.
// * An entry counts its references (holder + waiters + pins). When that count reaches zero the
//   entry is unlinked and recycled into a small per-thread cache at once, or, with `idle_ttl`,
//   marked idle and freed later by a sweeper that scans the table. Nothing frees an entry with
//   references: no expiry or eviction can drop a held or awaited lock.
// * Fencing tokens come from a per-shard counter. A key always maps to one shard and the
//   counter never goes back, so a key's tokens strictly increase even though its entry (and any
//   per-key state) is freed between uses.
// * Waiters queue FIFO on their entry. Each sync waiter sleeps on its own semaphore, so a
//   release wakes exactly one thread. With `fair`, release hands the lock straight to the first
//   waiter; otherwise it frees the lock and wakes the first waiter, and a thread arriving
//   meanwhile may take it (as with std::mutex). Async waiters are always handed the lock
//   directly, since they cannot retry by themselves.
// * The last registry handle calls close(). If guards, waiters or pins still exist the backend
//   stays alive, counts them down, and the one that frees the last entry deletes it.
#include "local_backend.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <random>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keylock/error.hpp>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#endif

namespace keylock::local {
namespace {

using detail::Acquired;
using detail::AsyncWaiter;
using detail::Clock;
using detail::Deadline;
using detail::WaitNode;

/// Sleeps while `word` holds `expected`, until woken or `deadline`; may return spuriously.
/// On Linux this is a bare futex wait: std::atomic::wait and std::counting_semaphore spin and
/// call sched_yield first, which on a 2-vCPU guest costs more than it saves and keeps a waiter
/// on the CPU beside the thread it waits for.
void wait_on(std::atomic<std::uint32_t>& word, std::uint32_t expected, Deadline deadline) noexcept {
#if defined(__linux__)
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    auto* addr = reinterpret_cast<std::uint32_t*>(&word);
    if (deadline == Deadline::max()) {
        ::syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
        return;
    }
    // steady_clock is CLOCK_MONOTONIC, the clock of FUTEX_WAIT_BITSET's absolute timeout.
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    if (ns <= 0) return;
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    ::syscall(SYS_futex, addr, FUTEX_WAIT_BITSET_PRIVATE, expected, &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
#else
    if (deadline == Deadline::max()) {
        word.wait(expected, std::memory_order_relaxed);
    } else if (word.load(std::memory_order_relaxed) == expected && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::min<Clock::duration>(deadline - Clock::now(), std::chrono::milliseconds(1)));
    }
#endif
}

/// Wakes one thread sleeping in wait_on(word). The word's memory may already be gone (the
/// woken thread may have seen the new value and returned): the address is only a key for the
/// kernel, never dereferenced, as with glibc's mutex unlock.
void wake_one(std::atomic<std::uint32_t>& word) noexcept {
#if defined(__linux__)
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#else
    word.notify_one();
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
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }
    void lock_slow() noexcept {
        std::uint32_t target = 1;
        for (;;) {
            for (int i = 0; i < kSpins; ++i) {
                pause();
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

struct Entry final : detail::Hold, detail::Pin {
    // First cache line: what lock and unlock touch.
    Entry* chain = nullptr;       // next in the hash bucket, or in a free list
    std::uint64_t hash = 0;
    WaitNode* head = nullptr;     // FIFO queue of waiters
    std::uint32_t refs = 0;       // holder + waiters + pins
    std::uint16_t shard = 0;
    bool held = false;
    bool idle = false;            // kept warm by idle_ttl
    std::string key;
    // Second line: waiting and idle bookkeeping.
    WaitNode* tail = nullptr;
    Deadline idle_until{};
};

/// A blocked lock() call. `signal` is set to 1 by whoever wants it to look again (a release,
/// a grant, a stop request); the waiter clears it under the shard mutex before each look, so
/// no signal between that look and its sleep is lost.
struct SyncWaiter final : WaitNode {
    std::atomic<std::uint32_t> signal{0};
};

/// Recycled entries, per thread: the entry a thread frees is the one it most likely allocates
/// next, still in its own cache. Bounded, and freed when the thread exits.
class EntryCache {
public:
    EntryCache() = default;
    EntryCache(const EntryCache&) = delete;
    EntryCache& operator=(const EntryCache&) = delete;
    ~EntryCache() {
        while (head_ != nullptr) delete std::exchange(head_, head_->chain);
    }
    Entry* get() {
        if (head_ == nullptr) return new Entry;
        --count_;
        return std::exchange(head_, head_->chain);
    }
    void put(Entry* e) noexcept {
        if (count_ >= kCap || e->key.capacity() > 64) {
            delete e;
            return;
        }
        e->chain = head_;
        e->head = e->tail = nullptr;
        e->idle = false;
        head_ = e;
        ++count_;
    }

private:
    static constexpr int kCap = 16;
    Entry* head_ = nullptr;
    int count_ = 0;
};

thread_local EntryCache entry_cache;

constexpr std::uint32_t kInlineBuckets = 4;

struct alignas(64) Shard {
    // First cache line: everything an uncontended lock + unlock touches.
    ShardMutex mu;
    std::uint32_t size = 0;
    std::uint32_t mask = kInlineBuckets - 1;
    bool closed = false;          // the registry is gone: free entries at once, count them down
    Entry** buckets = inline_buckets;
    std::uint64_t fence = 0;      // also the number of acquisitions in this shard
    Entry* inline_buckets[kInlineBuckets] = {};
    // Second line: counters of the slow paths.
    std::uint64_t contended = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t cancellations = 0;
    std::uint64_t waiting = 0;
    std::uint64_t idle = 0;       // entries kept warm now

    Shard() = default;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard() {
        for (std::uint32_t i = 0; i <= mask; ++i) {
            for (Entry* e = buckets[i]; e != nullptr;) delete std::exchange(e, e->chain);
        }
        if (buckets != inline_buckets) delete[] buckets;
    }

    Entry* find(std::string_view key, std::uint64_t hash) const noexcept {
        for (Entry* e = buckets[hash & mask]; e != nullptr; e = e->chain) {
            if (e->hash == hash && e->key == key) return e;
        }
        return nullptr;
    }

    Entry* insert(std::string_view key, std::uint64_t hash, std::uint16_t index) {
        if (size + 1 > mask + 1) rehash((mask + 1) * 2);
        Entry* e = entry_cache.get();
        try {
            e->key.assign(key);
        } catch (...) {
            entry_cache.put(e);
            throw;
        }
        e->hash = hash;
        e->shard = index;
        Entry*& bucket = buckets[hash & mask];
        e->chain = bucket;
        bucket = e;
        ++size;
        return e;
    }

    void erase(Entry* e) noexcept {
        Entry** link = &buckets[e->hash & mask];
        while (*link != e) link = &(*link)->chain;
        *link = e->chain;
        --size;
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
    std::uint64_t tail = 0;
    std::memcpy(&tail, p, n);
    h = mix(h ^ tail ^ (static_cast<std::uint64_t>(n) << 56), k2);
    return mix(h, k1);
}

class LocalBackend;

/// The shard lock, plus the work that must happen after it is dropped: completing async
/// waiters, and deleting a closed backend whose last entry just went.
class ShardLock {
public:
    ShardLock(LocalBackend* backend, Shard& shard) : backend_(backend), lock_(shard.mu) {}
    ShardLock(const ShardLock&) = delete;
    ShardLock& operator=(const ShardLock&) = delete;
    ~ShardLock();

    std::unique_lock<ShardMutex>& lock() noexcept { return lock_; }
    /// Completes `w` once the shard mutex is dropped (at most two per lock: a cancelled waiter
    /// and the one the lock passes to).
    void complete_after(AsyncWaiter* w, errc error, Acquired a) noexcept {
        assert(count_ < 2);
        done_[count_++] = {w, error, a.hold, a.fence};
    }
    void delete_backend_after() noexcept { delete_backend_ = true; }
    /// Sets a sync waiter's signal now and makes the wake-up call once the shard mutex is
    /// dropped, so that the woken thread does not find the mutex still held by its waker.
    void wake_after(WaitNode* w) noexcept {
        auto& signal = static_cast<SyncWaiter*>(w)->signal;
        signal.store(1, std::memory_order_release);
        assert(wake_ == nullptr);
        wake_ = &signal;
    }

private:
    struct Completion {  // trivial: nothing is initialised on the fast path
        AsyncWaiter* waiter;
        errc error;  // errc{} for success
        detail::Hold* hold;
        std::uint64_t fence;
    };
    LocalBackend* backend_;
    std::unique_lock<ShardMutex> lock_;
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
            sweeper_ = std::jthread([this](std::stop_token stop) { sweep_loop(stop); });
        }
    }

    ~LocalBackend() override = default;

    Acquired acquire(std::string_view key, detail::Pin* pin, Deadline deadline,
                     const std::stop_token& stop, std::error_code& ec) override {
        Entry* e = nullptr;
        std::uint64_t hash = 0;
        if (pin != nullptr) {
            e = static_cast<Entry*>(pin);
        } else {
            if (ec = check_key(key); ec) return {};
            hash = hash_bytes(key, seed_);
        }
        Shard& s = pin ? shards_[e->shard] : shards_[shard_of(hash)];
        ShardLock guard(this, s);
        if (e == nullptr) {
            e = find_or_insert(s, key, hash, ec);
            if (e == nullptr) return {};
        }
        if (!e->held && (!options_.fair || e->head == nullptr)) return take(s, e, false);
        if (deadline != Deadline::max() && deadline <= Clock::now()) {
            ++s.timeouts;
            ec = errc::timeout;
            release_ref(s, e, guard);
            return {};
        }
        if (stop.stop_requested()) {
            ++s.cancellations;
            ec = errc::cancelled;
            release_ref(s, e, guard);
            return {};
        }
        return wait(s, e, deadline, stop, guard, ec);
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
        if (!e->held && (!options_.fair || e->head == nullptr)) {
            guard.complete_after(w, errc{}, take(s, e, false));
            return;
        }
        w->shard = e->shard;
        enqueue(e, w);
        ++e->refs;
        ++s.waiting;
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
        --e->refs;
        if (!e->held) dispatch(s, e, guard);
        release_ref(s, e, guard);
    }

    void release(detail::Hold* hold, std::error_code& ec) noexcept override {
        ec.clear();
        auto* e = static_cast<Entry*>(hold);
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        assert(e->held);
        e->held = false;
        --e->refs;
        if (e->head != nullptr) {
            dispatch(s, e, guard);
        } else {
            release_ref(s, e, guard);
        }
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
                ++e->refs;
                return e;
            }
        }
        detail::throw_error(ec, key, "obtain");
    }
    void unpin(detail::Pin* pin) noexcept override {
        auto* e = static_cast<Entry*>(pin);
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        --e->refs;
        release_ref(s, e, guard);
    }
    std::string_view key(const detail::Pin* pin) const noexcept override {
        return static_cast<const Entry*>(pin)->key;
    }

    Stats stats() const override {
        Stats st;
        for (std::size_t i = 0; i < options_.shards; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lk(s.mu);
            st.entries += s.size;
            st.acquisitions += s.fence;
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
        for (std::size_t i = 0; i < options_.shards; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lk(s.mu);
            expire_idle(s, Deadline::max());
            s.closed = true;
            orphans_.fetch_add(s.size, std::memory_order_relaxed);
        }
        if (orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

private:
    friend class ShardLock;

    std::error_code check_key(std::string_view key) const noexcept {
        if (key.empty()) return errc::invalid_key;
        if (key.size() > options_.max_key_bytes) return errc::key_too_long;
        return {};
    }
    std::size_t shard_of(std::uint64_t hash) const noexcept {
        // Buckets use the low bits; shards use the high ones.
        return shard_bits_ == 0 ? 0 : static_cast<std::size_t>(hash >> (64 - shard_bits_));
    }

    Entry* find_or_insert(Shard& s, std::string_view key, std::uint64_t hash, std::error_code& ec) {
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
            return s.insert(key, hash, static_cast<std::uint16_t>(&s - shards_.get()));
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

    Acquired take(Shard& s, Entry* e, bool waited) noexcept {
        e->held = true;
        ++e->refs;
        if (waited) ++s.contended;
        return {e, ++s.fence};
    }

    /// The entry is free and may have waiters: hand it on according to the fairness policy.
    void dispatch(Shard& s, Entry* e, ShardLock& guard) noexcept {
        WaitNode* w = e->head;
        if (w == nullptr) return;
        if (options_.fair || w->is_async) {
            dequeue(e, w);
            --s.waiting;
            e->held = true;  // the waiter's reference becomes the holder's
            ++s.contended;
            w->granted = true;
            w->fence = ++s.fence;
            if (w->is_async) {
                guard.complete_after(static_cast<AsyncWaiter*>(w), errc{}, {e, w->fence});
            } else {
                guard.wake_after(w);
            }
        } else if (!w->woken) {
            w->woken = true;
            guard.wake_after(w);
        }
    }

    Acquired wait(Shard& s, Entry* e, Deadline deadline, const std::stop_token& stop,
                  ShardLock& guard, std::error_code& ec) {
        SyncWaiter w;
        w.shard = e->shard;
        enqueue(e, &w);
        ++e->refs;
        ++s.waiting;

        // A stop only has to wake the waiter: the signal keeps the wake-up even if it comes
        // before the waiter sleeps, and the loop below re-checks everything under the lock.
        auto on_stop = [&w] {
            w.signal.store(1, std::memory_order_release);
            wake_one(w.signal);
        };
        std::stop_callback<decltype(on_stop)> stop_cb(stop, on_stop);  // inert if stop is impossible

        auto& lk = guard.lock();
        Acquired result;
        for (;;) {
            // An exchange, not a store: it reads a stop callback's signal if that came first,
            // so the stop check below then sees the request.
            (void)w.signal.exchange(0, std::memory_order_acquire);
            if (w.granted) {
                result = {e, w.fence};
                break;
            }
            if (!e->held && !options_.fair) {
                dequeue(e, &w);
                --s.waiting;
                --e->refs;  // take() counts the holder's reference
                result = take(s, e, true);
                break;
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
            w.woken = false;
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
            --e->refs;
            if (!e->held) dispatch(s, e, guard);  // pass on a wake-up we may have consumed
            release_ref(s, e, guard);
        }
        // Wakers touch `w` only under the shard mutex, which we hold; the stop callback goes
        // before `w` does (members and locals are destroyed in reverse order).
        return result;
    }

    /// Called after a reference to `e` went: frees or parks the entry if nothing refers to it.
    void release_ref(Shard& s, Entry* e, ShardLock& guard) noexcept {
        if (e->refs != 0 || e->held) return;
        if (options_.idle_ttl.count() > 0 && !s.closed) {
            e->idle = true;
            e->idle_until = Clock::now() + options_.idle_ttl;
            ++s.idle;
            return;
        }
        free_entry(s, e);
        if (s.closed && orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            guard.delete_backend_after();
        }
    }

    void free_entry(Shard& s, Entry* e) noexcept {
        if (e->idle) {
            e->idle = false;
            --s.idle;
        }
        s.erase(e);
        if (options_.max_keys != 0) total_.fetch_sub(1, std::memory_order_relaxed);
    }

    /// Frees the shard's idle entries whose time is up (all of them for Deadline::max()).
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
        for (Entry* e : expired) free_entry(s, e);
    }

    /// Frees idle entries a few times per idle_ttl, scanning each shard's table. A scan is
    /// linear in the entries but runs rarely; in exchange, reusing a warm entry costs nothing.
    void sweep_loop(const std::stop_token& stop) {
        const auto period = std::max<std::chrono::milliseconds>(options_.idle_ttl / 4,
                                                                std::chrono::milliseconds(1));
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
    std::atomic<std::size_t> total_{0};    // entries, maintained only when max_keys is set
    std::atomic<std::size_t> orphans_{0};  // entries still referenced after close()
    std::jthread sweeper_;
};

ShardLock::~ShardLock() {
    lock_.unlock();
    if (wake_ != nullptr) wake_one(*wake_);
    for (int i = 0; i < count_; ++i) {
        const Completion& c = done_[i];
        c.waiter->complete(c.error == errc{} ? std::error_code() : make_error_code(c.error), {c.hold, c.fence});
    }
    if (delete_backend_) delete backend_;
}

}  // namespace

std::shared_ptr<detail::Backend> make_backend(const RegistryOptions& options) {
    if (options.shards == 0 || (options.shards & (options.shards - 1)) != 0 ||
        options.shards > (1u << 16)) {
        throw Error(errc::invalid_option, "keylock: option 'shards' must be a power of two from 1 to 65536");
    }
    if (options.max_key_bytes == 0) {
        throw Error(errc::invalid_option, "keylock: option 'max_key_bytes' must be at least 1");
    }
    return std::shared_ptr<detail::Backend>(new LocalBackend(options),
                                            [](detail::Backend* b) { b->close(); });
}

}  // namespace keylock::local
