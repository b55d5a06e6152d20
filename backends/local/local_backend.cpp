// SPDX-License-Identifier: BSL-1.0
// The local backend: acquire, release, async waits, cancel, pins and stats over the parts
// beside this file:
//
//   hash.hpp          the seeded key hash (high bits pick the shard, low bits the bucket)
//   entry.hpp         a key's entry, its atomic word and the lock-free fast paths on it
//   entry_key.hpp     the entry's key storage
//   waiter.hpp        the waiters queued on an entry (a Boost.Intrusive list)
//   shard.hpp         a shard: its mutex (shard_mutex.hpp), table, idle_ttl and max_keys
//   thread_cache.hpp  what each thread keeps: its fast slot and recycled entries
//   reclaimer.hpp     when a published entry's memory may be freed (hazard pointers)
//
// How it waits: waiter.hpp; the whole design, including how the backend outlives close() while
// locks are still held: docs/design.md, "The local backend". One translation unit (and
// reclaimer.cpp for the rare deletions), so that the fast paths inline across the parts.
#include "local_backend.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

#include <keylock/error.hpp>

#include "entry.hpp"
#include "hash.hpp"
#include "modes.hpp"
#include "reclaimer.hpp"
#include "shard.hpp"
#include "src/futex.hpp"
#include "thread_cache.hpp"
#include "waiter.hpp"

namespace keylock::local {
namespace {

using detail::Acquired;
using detail::AsyncWaiter;
using detail::Mode;
using detail::wait_on;
using detail::wake_one;

// This thread's fast slot and entry cache (thread_cache.hpp): constinit plain data, so that the
// fast paths reach them without an initialisation check, and internal to this file, so that
// the compiler may use the cheapest thread-local access.
constinit thread_local FastSlot fast_slot{};
constinit thread_local EntryCache entry_cache{};

/// Drops a deferred reference to `e` (whose backend it keeps alive). Defined after LocalBackend.
void drop_deferred(Entry* e) noexcept;

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
        cache.clear();
    }
    void touch() noexcept {}
};

thread_local ThreadExit thread_exit;

class LocalBackend final : public detail::Backend {
public:
    explicit LocalBackend(const LocalOptions& options)
        : Backend(options.max_key_bytes),
          options_(options),
          shard_bits_(static_cast<unsigned>(std::countr_zero(options.shards))),
          seed_(std::random_device{}() * 0x9e3779b97f4a7c15ULL ^ reinterpret_cast<std::uintptr_t>(this)),
          shards_(std::make_unique<Shard[]>(options.shards)) {
        if (options_.idle_ttl.count() > 0) {
            sweeper_ = std::jthread([this](const std::stop_token& stop) { sweep_loop(stop); });
        }
    }

    ~LocalBackend() override = default;

    Acquired acquire(const detail::Request& request, std::error_code& ec) override {
        if (request.mode != Mode::exclusive || request.from != nullptr) [[unlikely]]
            return acquire_modal(request, ec);
        const std::string_view key = request.key;
        const Deadline deadline = request.deadline;
        const std::stop_token& stop = request.stop;
        const SpinLimit limit{deadline, stop};
        if (detail::Pin* pin = request.pin) {
            auto* e = static_cast<Entry*>(pin);  // published, and kept alive by the pin
            bool joined = false;
            if (const std::uint64_t token = spin_take(e, e->load() & word::kIncMask, options_.fair, limit, joined)) {
                return {e, token};
            }
            return acquire_slow(shards_[e->shard], e, joined, {}, 0, deadline, stop, ec);
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

    void async_acquire(const detail::Request& request, AsyncWaiter* op) override {
        if (request.mode != Mode::exclusive || request.from != nullptr) return async_modal(request, op);
        const std::string_view key = request.key;
        Waiter* w = start_async(op);
        const std::uint64_t hash = hash_bytes(key, seed_);
        Shard& s = shards_[shard_of(hash)];
        ShardLock guard(this, s);
        std::error_code ec;
        Entry* e = find_or_insert(s, key, hash, ec);
        if (e == nullptr) {
            guard.complete_after(op, static_cast<errc>(ec.value()), {});
            return;
        }
        if (const std::uint64_t token = s.take(e, options_.fair)) {
            guard.complete_after(op, errc{}, {e, token});
            return;
        }
        if (e->limit != 0) {  // a semaphore's key
            guard.complete_after(op, errc::mode_conflict, {});
            return;
        }
        w->shard = e->shard;
        e->enqueue(w);
        ++s.waiting;
        if ((add_waiter_ref(e, options_.fair) & word::kHeld) == 0) dispatch(s, e, guard);  // released meanwhile
    }

    void cancel(AsyncWaiter* op) noexcept override {
        Waiter* w = async_record(op);
        Shard& s = shards_[w->shard];
        ShardLock guard(this, s);
        // Completed already, or never queued. (A granted waiter may still be linked, into the
        // list of completions its granter makes after the mutex: its hook is not ours to read.)
        if (w->granted || !w->queued()) return;
        Entry* e = w->entry;
        e->dequeue(w);
        --s.waiting;
        ++s.cancellations;
        if (w->mode == Mode::permits) delete static_cast<PermitHold*>(static_cast<void*>(w->result));
        guard.complete_after(op, errc::cancelled, {});
        leave_queue(s, e, guard, w->converting ? 0 : word::kRef);  // a conversion's reference is its hold's
    }

    void release(detail::Hold* hold, std::error_code* ec) noexcept override {
        if (ec != nullptr) ec->clear();  // in-process locks are never lost
        if (tag_of(hold) != kExclusiveTag) [[unlikely]]
            return release_modal(hold);
        auto* e = static_cast<Entry*>(hold);
        assert((e->load() & word::kHeld) != 0);
        if (fast_release(e)) return;
        if (defer_ && defer_release(e)) return;
        bool released = false;
        if (!defer_ && linger_release(e, released)) return;
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        const std::uint64_t w = drop(s, e, released ? word::kRef : word::kRef + word::kHeld, guard);
        if ((w & word::kQueued) != 0) dispatch(s, e, guard);
    }

    std::string_view key(const detail::Hold* hold) const noexcept override { return entry_of(hold)->key; }

    detail::Pin* pin(std::string_view key) override {
        std::error_code ec;
        {
            const std::uint64_t hash = hash_bytes(key, seed_);
            Shard& s = shards_[shard_of(hash)];
            ShardLock guard(this, s);
            if (Entry* e = find_or_insert(s, key, hash, ec)) {
                if ((e->load() & word::kPublished) == 0) s.publish(e, this);
                add_ref(e);
                return e;
            }
        }  // (the shard's lock is not held while the error is thrown)
        detail::throw_error(ec, key, "obtain");
    }
    void unpin(detail::Pin* pin) noexcept override {
        auto* e = static_cast<Entry*>(pin);
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        drop(s, e, word::kRef, guard);
    }
    std::string_view key(const detail::Pin* pin) const noexcept override { return static_cast<const Entry*>(pin)->key; }

    Stats snapshot() const override {
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

    /// The key's holders as they are now (modes.hpp: holders_of). No lease and no fencing
    /// token to show: an exclusive holder's token is kept by the holder alone.
    LockInfo inspect(std::string_view key, std::error_code& ec) override {
        ec.clear();
        const std::uint64_t hash = hash_bytes(key, seed_);
        Shard& s = shards_[shard_of(hash)];
        std::lock_guard lk(s.mu);
        const Entry* e = s.find(key, hash);
        return e == nullptr ? LockInfo{} : holders_of(e, (e->load() & word::kHeld) != 0);
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
            s.expire_idle(Deadline::max(), budget_, entry_cache);
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

    // ---- Shared, upgrade and permit holds, and conversions (modes.hpp) -----------------------

    /// The entry a modal request is for (the held one for a conversion, the pinned one, or
    /// null: the key's, to be looked up under the shard mutex), and its shard.
    Entry* modal_entry(const detail::Request& r, Shard*& shard) noexcept {
        if (r.from != nullptr || r.pin != nullptr) {
            Entry* e = r.from != nullptr ? entry_of(r.from) : static_cast<Entry*>(r.pin);
            shard = &shards_[e->shard];
            return e;
        }
        const std::uint64_t hash = hash_bytes(r.key, seed_);
        shard = &shards_[shard_of(hash)];
        return nullptr;
    }

    /// A modal request's first look, under the shard mutex: the grant, or a null hold with
    /// `err` set (an error) or clear (it must wait). A new request's reference is counted
    /// already; `record` is a permit request's PermitHold.
    static Acquired modal_try(Shard& s, Entry* e, const detail::Request& r, detail::Hold* record, errc& err) noexcept {
        std::uint64_t x = e->load();
        if (r.from != nullptr) {
            const HoldTag from = tag_of(r.from);
            if (!convertible(from, r.mode)) {
                err = errc::invalid_argument;
                return {};
            }
            if (!conversion_fits(e, from, r.mode)) return {};
            convert_counts(e, from, r.mode);
            return {hold_for(e, r.mode, record), s.next_token(e, x)};
        }
        if (const errc c = conflict(e, (x & word::kHeld) != 0, r.mode, r.limit); c != errc{}) {
            err = c;
            return {};
        }
        if (!e->queue.empty()) return {};  // behind those who wait
        do {
            if (!fits(e, (x & word::kHeld) != 0, r.mode, r.permits)) return {};
            if ((x & word::kHeld) != 0) break;
        } while (!e->replace(x, x + word::kHeld));
        add_holder(e, r.mode, r.permits, r.limit);
        return {hold_for(e, r.mode, record), s.next_token(e, e->load())};
    }

    /// Queues a modal waiter (a conversion at the front) and hands the key on if it can be had
    /// now (a fast release may have come just before).
    void modal_enqueue(Shard& s, Entry* e, const detail::Request& r, Waiter* w, ShardLock& guard) noexcept {
        w->shard = e->shard;
        w->mode = r.mode;
        w->permits = r.permits;
        w->converting = r.from != nullptr;
        w->from = r.from != nullptr ? tag_of(r.from) : 0;
        w->entry = e;
        if (w->converting) {
            e->queue.push_front(*w);
        } else {
            e->queue.push_back(*w);
        }
        ++s.waiting;
        add_waiter_ref(e, options_.fair, 0);  // the queue bits (the reference is counted)
        dispatch(s, e, guard);
    }

    Acquired acquire_modal(const detail::Request& r, std::error_code& ec) {
        std::unique_ptr<PermitHold> record;
        if (r.mode == Mode::permits && r.from == nullptr)
            record = std::make_unique<PermitHold>(PermitHold{nullptr, r.permits});
        auto* const rec = reinterpret_cast<detail::Hold*>(record.get());
        Shard* sp = nullptr;
        Entry* e = modal_entry(r, sp);
        Shard& s = *sp;
        ShardLock guard(this, s);
        if (e == nullptr) {
            e = find_or_insert(s, r.key, hash_bytes(r.key, seed_), ec);
            if (e == nullptr) return {};
        }
        if (r.from == nullptr) add_ref(e);
        const std::uint64_t ref = r.from == nullptr ? word::kRef : 0;  // what leaving gives back
        errc err{};
        if (const Acquired a = modal_try(s, e, r, rec, err); a.hold != nullptr) {
            (void)record.release();
            if (r.from != nullptr && !e->queue.empty()) dispatch(s, e, guard);  // a downgrade lets others in
            return a;
        }
        if (err == errc{} && r.deadline != Deadline::max() && r.deadline <= Clock::now()) {
            ++s.timeouts;
            err = errc::timeout;
        } else if (err == errc{} && r.stop.stop_requested()) {
            ++s.cancellations;
            err = errc::cancelled;
        }
        if (err != errc{}) {
            leave_queue(s, e, guard, ref);
            ec = err;
            return {};
        }

        SyncWaiter w;
        w.result = rec;
        modal_enqueue(s, e, r, &w, guard);
        auto on_stop = [&w] {
            w.signal.store(1, std::memory_order_release);
            wake_one(w.signal);
        };
        std::stop_callback<decltype(on_stop)> stop_cb(r.stop, on_stop);
        Acquired result;
        for (;;) {
            (void)w.signal.exchange(0, std::memory_order_acquire);
            if (w.granted) {
                result = {w.result, w.fence};
                (void)record.release();
                break;
            }
            if (r.stop.stop_requested()) {
                ec = errc::cancelled;
                ++s.cancellations;
                break;
            }
            if (r.deadline != Deadline::max() && Clock::now() >= r.deadline) {
                ec = errc::timeout;
                ++s.timeouts;
                break;
            }
            guard.unlock_to_sleep();
            while (w.signal.load(std::memory_order_acquire) == 0 &&
                   (r.deadline == Deadline::max() || Clock::now() < r.deadline)) {
                wait_on(w.signal, 0, r.deadline);
            }
            guard.mutex().lock();
        }
        if (result.hold == nullptr) {
            e->dequeue(&w);
            --s.waiting;
            leave_queue(s, e, guard, ref);
        }
        return result;
    }

    void async_modal(const detail::Request& r, AsyncWaiter* op) {
        std::unique_ptr<PermitHold> record;
        if (r.mode == Mode::permits && r.from == nullptr)
            record = std::make_unique<PermitHold>(PermitHold{nullptr, r.permits});
        auto* const rec = reinterpret_cast<detail::Hold*>(record.get());
        Waiter* w = start_async(op);
        Shard* sp = nullptr;
        std::error_code ec;
        Entry* e = modal_entry(r, sp);
        Shard& s = *sp;
        ShardLock guard(this, s);
        if (e == nullptr) {
            e = find_or_insert(s, r.key, hash_bytes(r.key, seed_), ec);
            if (e == nullptr) {
                guard.complete_after(op, static_cast<errc>(ec.value()), {});
                return;
            }
        }
        if (r.from == nullptr) add_ref(e);
        errc err{};
        if (const Acquired a = modal_try(s, e, r, rec, err); a.hold != nullptr) {
            (void)record.release();
            guard.complete_after(op, errc{}, a);
            if (r.from != nullptr && !e->queue.empty()) dispatch(s, e, guard);
            return;
        }
        if (err == errc{} && r.deadline != Deadline::max() && r.deadline <= Clock::now()) {
            ++s.timeouts;
            err = errc::timeout;
        }
        if (err != errc{}) {
            guard.complete_after(op, err, {});
            leave_queue(s, e, guard, r.from == nullptr ? word::kRef : 0);
            return;
        }
        w->result = rec;
        (void)record.release();  // the waiter's now: its grant or its cancel() takes it
        modal_enqueue(s, e, r, w, guard);
    }

    void release_modal(detail::Hold* hold) noexcept {
        const HoldTag tag = tag_of(hold);
        Entry* e = entry_of(hold);
        std::uint32_t permits = 0;
        if (tag == kPermitTag) {
            const auto* permit = static_cast<const PermitHold*>(untagged(hold));
            permits = permit->permits;
            delete permit;
        }
        Shard& s = shards_[e->shard];
        ShardLock guard(this, s);
        const bool last = remove_holder(e, tag, permits);
        const std::uint64_t w = drop(s, e, last ? word::kRef + word::kHeld : word::kRef, guard);
        if ((w & word::kQueued) != 0) dispatch(s, e, guard);
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
        if (const std::uint64_t token = s.take(e, options_.fair, ref)) return {e, token};
        return acquire_held(s, e, ref, deadline, stop, guard, ec, spinner);
    }

    /// The rest of acquire_slow, when the lock was taken: time out, stop, spin or queue. Out
    /// of line, so that the uncontended path above is short.
    [[gnu::noinline]] Acquired acquire_held(Shard& s, Entry* e, std::uint64_t ref, Deadline deadline,
                                            const std::stop_token& stop, ShardLock& guard, std::error_code& ec,
                                            Entry** spinner) {
        if (e->limit != 0) [[unlikely]] {  // a semaphore's key
            ec = errc::mode_conflict;
            drop(s, e, word::kRef - ref, guard);
            return {};
        }
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
        return s.find_or_insert(key, hash, static_cast<std::uint16_t>(&s - shards_.get()), this, budget_, entry_cache,
                                ec);
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
        const std::uint64_t bits = (w & word::kQueued) != 0 ? queue_bits(e, options_.fair) : 0;
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
            s.park(e, Clock::now() + options_.idle_ttl);
        }
        return next;
    }

    /// A waiter was dequeued without taking the lock (timeout, stop, cancel): drop its
    /// reference, and if the lock is free, pass the wake-up it may have consumed on.
    void leave_queue(Shard& s, Entry* e, ShardLock& guard, std::uint64_t ref = word::kRef) noexcept {
        if (e->shared == 0 && e->used == 0 && e->queue.empty()) e->limit = 0;  // a semaphore nobody uses
        const std::uint64_t w = drop(s, e, ref, guard);
        if ((w & word::kQueued) != 0) dispatch(s, e, guard);
    }

    /// The entry's holders changed and it has waiters: hand it on to those who can have it
    /// now (modes.hpp: conversions first, then in order while they fit).
    void dispatch(Shard& s, Entry* e, ShardLock& guard) noexcept {
        bool blocked = false;
        for (auto it = e->queue.begin(); it != e->queue.end() && it->converting;) {
            Waiter* w = &*it++;
            if (conversion_fits(e, static_cast<HoldTag>(w->from), w->mode)) {
                grant(s, e, w, guard);
            } else {
                blocked = true;
            }
        }
        if (blocked) return;  // new holders would only delay the conversion
        while (!e->queue.empty()) {
            Waiter* w = &e->queue.front();
            if (w->mode == Mode::exclusive) return dispatch_exclusive(s, e, w, guard);
            std::uint64_t x = e->load();
            do {
                if (!fits(e, (x & word::kHeld) != 0, w->mode, w->permits)) return;
                if ((x & word::kHeld) != 0) break;      // joins the holders there are
            } while (!e->replace(x, x + word::kHeld));  // a first holder: the waiter's reference is its
            add_holder(e, w->mode, w->permits, e->limit);
            grant(s, e, w, guard);
        }
    }

    /// Hands a modal waiter its hold (counted already, or made now for a conversion).
    void grant(Shard& s, Entry* e, Waiter* w, ShardLock& guard) noexcept {
        if (w->converting) convert_counts(e, static_cast<HoldTag>(w->from), w->mode);
        e->dequeue(w);
        --s.waiting;
        ++s.contended;
        w->granted = true;
        w->fence = s.next_token(e, e->load());
        w->result = hold_for(e, w->mode, w->result);
        sync_queue_bits(e, options_.fair);
        if (w->async != nullptr) {
            guard.grant_after(w);
        } else {
            guard.wake_after(w);
        }
    }

    /// An exclusive waiter first in line: if the key is free, hand it over or wake the waiter,
    /// according to the fairness policy.
    void dispatch_exclusive(Shard& s, Entry* e, Waiter* w, ShardLock& guard) noexcept {
        if ((e->load() & word::kHeld) != 0) return;  // its release will come back here
        if (options_.fair || w->async != nullptr) {
            // Hand over: the waiter's reference becomes the holder's. Fails only if an unfair
            // barger took the lock meanwhile; its release will come back here.
            std::uint64_t x = e->load();
            do {
                if ((x & word::kHeld) != 0) return;
            } while (!e->replace(x, x + word::kHeld));
            e->dequeue(w);
            --s.waiting;
            ++s.contended;
            w->granted = true;
            w->fence = s.next_token(e, x);
            sync_queue_bits(e, options_.fair);
            if (w->async != nullptr) {
                guard.complete_after(w->async, errc{}, {e, w->fence});
            } else {
                guard.wake_after(w);
            }
        } else if (!w->woken) {
            w->woken = true;
            sync_queue_bits(e, options_.fair);
            guard.wake_after(w);
        }
    }

    Acquired wait(Shard& s, Entry* e, std::uint64_t ref, Deadline deadline, const std::stop_token& stop,
                  ShardLock& guard, std::error_code& ec) {
        SyncWaiter w;
        w.shard = e->shard;
        e->enqueue(&w);
        ++s.waiting;
        add_waiter_ref(e, options_.fair, ref);

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
            if (!options_.fair || e->is_head(&w)) {
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
                    e->dequeue(&w);
                    --s.waiting;
                    ++s.contended;
                    sync_queue_bits(e, options_.fair);
                    result = {e, s.next_token(e, x)};
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
                sync_queue_bits(e, options_.fair);
                lk.unlock();
                const std::uint64_t token = spin_joined(e, false, e->load(), SpinLimit{deadline, stop});
                lk.lock();
                if (token != 0) {
                    e->dequeue(&w);
                    --s.waiting;
                    ++s.contended;
                    sync_queue_bits(e, options_.fair);
                    result = {e, token};
                    break;
                }
                continue;  // look again: granted, stopped, timed out?
            }
            if (!options_.fair) {
                w.woken = false;
                if (e->is_head(&w) && !arm(e)) continue;  // freed meanwhile: take it
                sync_queue_bits(e, options_.fair);
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
            e->dequeue(&w);
            --s.waiting;
            leave_queue(s, e, guard);
        }
        // Wakers touch `w` only under the shard mutex, which we hold; the stop callback goes
        // before `w` does (members and locals are destroyed in reverse order).
        return result;
    }

    /// Unlinks and recycles an entry whose word drop() has just retired.
    void free_entry(Shard& s, Entry* e, ShardLock& guard) noexcept {
        s.free(e, budget_, entry_cache);
        // closed_ is set before any shard is marked closed (and read under the shard mutex),
        // so it only spares reading the shard's second line while the registry is open.
        if (closed_.load(std::memory_order_relaxed) && s.closed &&
            orphans_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            guard.delete_backend_after();
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
                shards_[i].expire_idle(now, budget_, entry_cache);
            }
        }
    }

    const LocalOptions options_;
    const unsigned shard_bits_;
    const std::uint64_t seed_;
    std::unique_ptr<Shard[]> shards_;
    KeyBudget budget_{options_.max_keys};
    std::atomic<std::size_t> orphans_{0};        // entries still referenced after close()
    std::atomic<bool> closed_{false};            // close() has begun
    const bool defer_ = options_.max_keys == 0;  // releases may keep a deferred reference
    std::jthread sweeper_;
};

void drop_deferred(Entry* e) noexcept { static_cast<LocalBackend*>(e->owner)->unref(e); }

}  // namespace

void register_thread_exit() noexcept {
    thread_exit.touch();  // constructs it, so that its destructor runs at thread exit
}

std::shared_ptr<detail::Backend> make_backend(const LocalOptions& options) {
    if (options.shards == 0 || (options.shards & (options.shards - 1)) != 0 || options.shards > (1u << 16)) {
        throw Error(errc::invalid_option, "keylock: option 'shards' must be a power of two from 1 to 65536");
    }
    if (options.max_key_bytes == 0) {
        throw Error(errc::invalid_option, "keylock: option 'max_key_bytes' must be at least 1");
    }
    return std::shared_ptr<detail::Backend>(new LocalBackend(options), [](detail::Backend* b) { b->close(); });
}

}  // namespace keylock::local
