// SPDX-License-Identifier: BSL-1.0
// The mutex of a shard of the local backend's table.
#pragma once

#include <atomic>
#include <cstdint>

#include "entry.hpp"
#include "src/futex.hpp"

namespace keylock::local {

/// A 4-byte mutex for the shard's short critical sections: spins briefly, then sleeps on the
/// word (a futex). It fits in the shard's hot cache line beside what it guards, and does not
/// put a thread to sleep for a wait of a few dozen nanoseconds.
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
        if (state_.exchange(0, std::memory_order_release) == 2) detail::wake_one(state_);
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
            detail::wait_on(state_, 2, Deadline::max());
            // Woken: spin again before sleeping again, since the holder is likely to be done
            // soon. Having slept, we may not be the only sleeper, so we lock as "2" to make our
            // own unlock wake the next one.
            target = 2;
        }
    }
    std::atomic<std::uint32_t> state_{0};
};

}  // namespace keylock::local
