// SPDX-License-Identifier: BSL-1.0
// What each thread keeps for the local backend: the last published entry it locked by key (its
// fast slot, which is also its hazard pointer) and a few freed entries to recycle.
//
// Both are plain data, so that reaching them costs no thread-local initialisation check; the
// thread-local objects themselves are defined in local_backend.cpp, whose ThreadExit empties
// them when the thread exits.
#pragma once

#include <cassert>
#include <cstdint>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

#include "entry.hpp"
#include "reclaimer.hpp"

namespace keylock::local {

/// Makes sure this thread's ThreadExit runs when the thread exits (local_backend.cpp).
void register_thread_exit() noexcept;

/// The last published entry this thread locked through a registry, by key: the next lock of
/// the same key skips the hash table.
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

    /// Remembers `e` (which the caller holds a reference to, so it is not being freed). Out of
    /// line: it runs when a thread moves to another key, not on every lock.
    [[gnu::noinline]] void remember(const void* b, std::uint64_t h, std::string_view k, Entry* e) noexcept {
        if (dead || k.size() > kMaxKey) return;
        if (!registered) {
            register_thread_exit();
            try {
                Reclaimer::get().add(&hazard);
            } catch (const std::bad_alloc&) {
                return;
            }
            registered = true;
        }
        // The hazard is published while we hold a reference: the entry cannot be freed (let
        // alone deleted) before our release, which happens after this store.
        hazard.hazard.store(e, std::memory_order_release);
        backend = b;
        hash = h;
        entry = e;
        incarnation = e->load() & word::kIncMask;
        key_size = static_cast<std::uint32_t>(k.size());
        std::memcpy(key, k.data(), k.size());
    }
};

/// Recycled entries: the entry a thread frees is the one it most likely allocates next, still
/// in its own cache. Bounded, and freed when the thread exits.
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
    void put(Entry* e) noexcept {
        if (!owned) [[unlikely]] {
            register_thread_exit();
            owned = true;
        }
        if (count >= kCap || dead || e->key.capacity() > 64) {
            dispose(e);
            return;
        }
        assert(e->queue.empty());
        e->chain = head;
        e->idle = false;
        head = e;
        ++count;
    }

    /// Frees every cached entry (at thread exit).
    void clear() noexcept {
        while (head != nullptr) dispose(std::exchange(head, head->chain));
        count = 0;
    }
};

}  // namespace keylock::local
