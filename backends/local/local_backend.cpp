// The local backend. Design notes (docs/design.md has the longer version):
//
// * The table is split into shards, each a cache-line-aligned mutex, an intrusive chained hash
//   table, a small free list of recycled entries and its counters. A shard mutex is held only
//   for bookkeeping, never while a key's lock is waited for or held, so a shard's keys do not
//   wait on each other.
// * An entry counts its references (holder + waiters + pins). When that count reaches zero the
//   entry is unlinked and recycled at once, or parked on the shard's idle list for `idle_ttl`.
//   Nothing frees an entry with references: no cache expiry can drop a held or awaited lock.
// * Fencing tokens come from a per-shard counter. A key always maps to one shard and the
//   counter never goes back, so a key's tokens strictly increase even though its entry (and any
//   per-key state) is freed between uses.
// * Waiters queue FIFO on their entry. Each sync waiter sleeps on its own condition variable
//   (paired with the shard mutex), so a release wakes exactly one thread. With `fair`, release
//   hands the lock straight to the first waiter; otherwise it frees the lock and wakes the
//   first waiter, and a thread arriving meanwhile may take it (as with std::mutex), which
//   keeps a hot key's throughput close to a bare mutex. Async waiters are always handed the
//   lock directly, since they cannot retry by themselves.
// * The last registry handle calls close(). If guards, waiters or pins still exist the backend
//   stays alive, counts them down, and the one that frees the last entry deletes it.
#include "local_backend.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <condition_variable>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keylock/error.hpp>

namespace keylock::local {
namespace {

using detail::Acquired;
using detail::AsyncWaiter;
using detail::Clock;
using detail::Deadline;
using detail::WaitNode;

struct Entry final : detail::Hold, detail::Pin {
    Entry* chain = nullptr;       // next in the hash bucket
    std::size_t hash = 0;
    std::string key;
    std::uint32_t refs = 0;       // holder + waiters + pins
    std::uint32_t shard = 0;
    bool held = false;
    bool idle = false;            // on the shard's idle list
    WaitNode* head = nullptr;     // FIFO queue of waiters
    WaitNode* tail = nullptr;
    Entry* idle_prev = nullptr;   // idle list, oldest first
    Entry* idle_next = nullptr;
    Deadline idle_until{};
};

struct SyncWaiter final : WaitNode {
    std::condition_variable cv;
};

constexpr std::size_t kMinBuckets = 8;
constexpr std::size_t kFreeListCap = 16;

struct alignas(64) Shard {
    std::mutex mu;
    std::vector<Entry*> buckets = std::vector<Entry*>(kMinBuckets, nullptr);
    std::size_t size = 0;
    Entry* free_list = nullptr;
    std::size_t free_count = 0;
    Entry* idle_head = nullptr;
    Entry* idle_tail = nullptr;
    std::uint64_t fence = 0;
    std::uint64_t acquisitions = 0;
    std::uint64_t contended = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t cancellations = 0;
    std::uint64_t waiting = 0;
    bool closed = false;  // the registry is gone: free entries at once, count them down

    Shard() = default;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard() {
        for (Entry* e : buckets) {
            while (e != nullptr) delete std::exchange(e, e->chain);
        }
        while (free_list != nullptr) delete std::exchange(free_list, free_list->chain);
    }

    Entry* find(std::string_view key, std::size_t hash) const noexcept {
        for (Entry* e = buckets[hash & (buckets.size() - 1)]; e != nullptr; e = e->chain) {
            if (e->hash == hash && e->key == key) return e;
        }
        return nullptr;
    }

    Entry* insert(std::string_view key, std::size_t hash, std::uint32_t index) {
        if (size + 1 > buckets.size()) rehash(buckets.size() * 2);
        Entry* e = free_list;
        if (e != nullptr) {
            free_list = e->chain;
            --free_count;
        } else {
            e = new Entry;
        }
        e->key.assign(key);
        e->hash = hash;
        e->shard = index;
        Entry*& bucket = buckets[hash & (buckets.size() - 1)];
        e->chain = bucket;
        bucket = e;
        ++size;
        return e;
    }

    void erase(Entry* e) noexcept {
        Entry** link = &buckets[e->hash & (buckets.size() - 1)];
        while (*link != e) link = &(*link)->chain;
        *link = e->chain;
        --size;
        if (free_count < kFreeListCap && e->key.capacity() <= 64) {
            e->chain = free_list;
            free_list = e;
            ++free_count;
        } else {
            delete e;
        }
        if (buckets.size() > kMinBuckets && size * 8 < buckets.size()) {
            try {
                rehash(buckets.size() / 2);
            } catch (const std::bad_alloc&) {
                // Keep the larger table; it is still correct.
            }
        }
    }

    void rehash(std::size_t count) {
        std::vector<Entry*> fresh(count, nullptr);
        for (Entry* e : buckets) {
            while (e != nullptr) {
                Entry* next = e->chain;
                Entry*& bucket = fresh[e->hash & (count - 1)];
                e->chain = bucket;
                bucket = e;
                e = next;
            }
        }
        buckets.swap(fresh);
    }

    void idle_push(Entry* e, Deadline until) noexcept {
        e->idle = true;
        e->idle_until = until;
        e->idle_next = nullptr;
        e->idle_prev = idle_tail;
        (idle_tail ? idle_tail->idle_next : idle_head) = e;
        idle_tail = e;
    }
    void idle_remove(Entry* e) noexcept {
        (e->idle_prev ? e->idle_prev->idle_next : idle_head) = e->idle_next;
        (e->idle_next ? e->idle_next->idle_prev : idle_tail) = e->idle_prev;
        e->idle = false;
        e->idle_prev = e->idle_next = nullptr;
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

class LocalBackend;

/// The shard lock, plus the work that must happen after it is dropped: completing an async
/// waiter, and deleting a closed backend whose last entry just went.
class ShardLock {
public:
    ShardLock(LocalBackend* backend, Shard& shard) : backend_(backend), lock_(shard.mu) {}
    ShardLock(const ShardLock&) = delete;
    ShardLock& operator=(const ShardLock&) = delete;
    ~ShardLock();

    std::unique_lock<std::mutex>& lock() noexcept { return lock_; }
    /// Completes `w` once the shard mutex is dropped (at most two per lock: a cancelled waiter
    /// and the one the lock passes to).
    void complete_after(AsyncWaiter* w, std::error_code ec, Acquired a) noexcept {
        assert(count_ < 2);
        done_[count_++] = {w, ec, a};
    }
    void delete_backend_after() noexcept { delete_backend_ = true; }

private:
    LocalBackend* backend_;
    std::unique_lock<std::mutex> lock_;
    struct Completion {
        AsyncWaiter* waiter = nullptr;
        std::error_code ec;
        Acquired acquired;
    };
    Completion done_[2];
    int count_ = 0;
    bool delete_backend_ = false;
};

class LocalBackend final : public detail::Backend {
public:
    explicit LocalBackend(const RegistryOptions& options)
        : options_(options),
          shard_bits_(static_cast<unsigned>(std::countr_zero(options.shards))),
          shards_(std::make_unique<Shard[]>(options.shards)) {
        if (options_.idle_ttl.count() > 0) {
            sweeper_ = std::jthread([this](std::stop_token stop) { sweep_loop(stop); });
        }
    }

    ~LocalBackend() override = default;

    Acquired acquire(std::string_view key, detail::Pin* pin, Deadline deadline,
                     const std::stop_token& stop, std::error_code& ec) override {
        Entry* e = nullptr;
        std::size_t hash = 0;
        if (pin != nullptr) {
            e = static_cast<Entry*>(pin);
        } else {
            if (ec = check_key(key); ec) return {};
            hash = hash_of(key);
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
        std::error_code ec = check_key(key);
        if (ec) {
            w->complete(ec, {});
            return;
        }
        const std::size_t hash = hash_of(key);
        Shard& s = shards_[shard_of(hash)];
        ShardLock guard(this, s);
        Entry* e = find_or_insert(s, key, hash, ec);
        if (e == nullptr) {
            guard.complete_after(w, ec, {});
            return;
        }
        if (!e->held && (!options_.fair || e->head == nullptr)) {
            guard.complete_after(w, {}, take(s, e, false));
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
            const std::size_t hash = hash_of(key);
            Shard& s = shards_[shard_of(hash)];
            ShardLock guard(this, s);
            if (Entry* e = find_or_insert(s, key, hash, ec)) {
                ++e->refs;
                return e;
            }
        }
        throw Error(ec, "keylock: obtain: " + ec.message());
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
            st.acquisitions += s.acquisitions;
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
            sweeper_cv_.notify_all();
            sweeper_.join();
        }
        // Shard by shard (one mutex at a time): drop idle entries, mark the shard closed and
        // add its live entries to `orphans_`. Each later free in a closed shard takes one off.
        // The extra 1 held during the walk keeps an early free from reaching zero.
        orphans_.fetch_add(1, std::memory_order_relaxed);
        for (std::size_t i = 0; i < options_.shards; ++i) {
            Shard& s = shards_[i];
            std::lock_guard lk(s.mu);
            while (s.idle_head != nullptr) free_entry(s, s.idle_head);
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
    static std::size_t hash_of(std::string_view key) noexcept { return std::hash<std::string_view>{}(key); }
    std::size_t shard_of(std::size_t hash) const noexcept {
        // Buckets use the low bits; shards use the high ones.
        return shard_bits_ == 0 ? 0 : hash >> (sizeof(std::size_t) * 8 - shard_bits_);
    }

    Entry* find_or_insert(Shard& s, std::string_view key, std::size_t hash, std::error_code& ec) {
        if (Entry* e = s.find(key, hash)) {
            if (e->idle) s.idle_remove(e);
            return e;
        }
        if (s.idle_head != nullptr) expire_idle(s, Clock::now());
        if (options_.max_keys != 0 && !reserve_slot(s)) {
            ec = errc::too_many_keys;
            return nullptr;
        }
        try {
            return s.insert(key, hash, static_cast<std::uint32_t>(&s - shards_.get()));
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
            if (s.idle_head == nullptr) return false;
            free_entry(s, s.idle_head);
        }
    }

    Acquired take(Shard& s, Entry* e, bool waited) noexcept {
        e->held = true;
        ++e->refs;
        ++s.acquisitions;
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
            ++s.acquisitions;
            ++s.contended;
            w->granted = true;
            w->fence = ++s.fence;
            if (w->is_async) {
                guard.complete_after(static_cast<AsyncWaiter*>(w), {}, {e, w->fence});
            } else {
                static_cast<SyncWaiter*>(w)->cv.notify_one();
            }
        } else if (!w->woken) {
            w->woken = true;
            static_cast<SyncWaiter*>(w)->cv.notify_one();
        }
    }

    Acquired wait(Shard& s, Entry* e, Deadline deadline, const std::stop_token& stop,
                  ShardLock& guard, std::error_code& ec) {
        SyncWaiter w;
        w.shard = e->shard;
        enqueue(e, &w);
        ++e->refs;
        ++s.waiting;

        // The stop callback takes the shard mutex before notifying, so a stop cannot slip in
        // between our check of stop_requested() and the wait. It is made and destroyed without
        // the shard mutex held, since it may run (or be running) on another thread.
        auto on_stop = [&s, &w] {
            std::lock_guard lk(s.mu);
            w.cv.notify_one();
        };
        std::optional<std::stop_callback<decltype(on_stop)>> stop_cb;
        auto& lk = guard.lock();
        if (stop.stop_possible()) {
            lk.unlock();
            stop_cb.emplace(stop, on_stop);
            lk.lock();
        }

        Acquired result;
        for (;;) {
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
            if (deadline == Deadline::max()) {
                w.cv.wait(lk);
            } else {
                w.cv.wait_until(lk, deadline);
            }
        }
        if (result.hold == nullptr) {
            dequeue(e, &w);
            --s.waiting;
            --e->refs;
            if (!e->held) dispatch(s, e, guard);  // pass on a wake-up we may have consumed
            release_ref(s, e, guard);
        }
        // Never the last reference of a closed backend (the caller holds a registry or a pin),
        // so the shard is still ours to lock here.
        if (stop_cb) {
            lk.unlock();
            stop_cb.reset();
            lk.lock();
        }
        return result;
    }

    /// Called after a reference to `e` went: frees or parks the entry if nothing refers to it.
    void release_ref(Shard& s, Entry* e, ShardLock& guard) noexcept {
        if (e->refs != 0 || e->held) return;
        if (options_.idle_ttl.count() > 0 && !s.closed) {
            if (!e->idle) s.idle_push(e, Clock::now() + options_.idle_ttl);
            return;
        }
        free_entry(s, e);
        if (s.closed && orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            guard.delete_backend_after();
        }
    }

    void free_entry(Shard& s, Entry* e) noexcept {
        if (e->idle) s.idle_remove(e);
        s.erase(e);
        if (options_.max_keys != 0) total_.fetch_sub(1, std::memory_order_relaxed);
    }

    void expire_idle(Shard& s, Deadline now) noexcept {
        while (s.idle_head != nullptr && s.idle_head->idle_until <= now) free_entry(s, s.idle_head);
    }

    void sweep_loop(const std::stop_token& stop) {
        const auto period = std::max<std::chrono::milliseconds>(options_.idle_ttl / 4,
                                                                std::chrono::milliseconds(1));
        std::mutex mu;
        std::unique_lock lk(mu);
        while (!stop.stop_requested()) {
            sweeper_cv_.wait_for(lk, stop, period, [] { return false; });
            const auto now = Clock::now();
            for (std::size_t i = 0; i < options_.shards; ++i) {
                std::lock_guard shard_lock(shards_[i].mu);
                expire_idle(shards_[i], now);
            }
        }
    }

    const RegistryOptions options_;
    const unsigned shard_bits_;
    std::unique_ptr<Shard[]> shards_;
    std::atomic<std::size_t> total_{0};    // entries, maintained only when max_keys is set
    std::atomic<std::size_t> orphans_{0};  // entries still referenced after close()
    std::condition_variable_any sweeper_cv_;
    std::jthread sweeper_;
};

ShardLock::~ShardLock() {
    lock_.unlock();
    for (int i = 0; i < count_; ++i) done_[i].waiter->complete(done_[i].ec, done_[i].acquired);
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
