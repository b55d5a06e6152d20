// SPDX-License-Identifier: BSL-1.0
// Sleeping on a 32-bit word until another thread changes it: the one way keylock's backends
// park a thread that waits for a lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include <keylock/detail/backend.hpp>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ctime>
#endif

namespace keylock::detail {

/// Sleeps while `word` holds `expected`, until woken or `deadline`; may return spuriously.
/// On Linux this is a bare futex wait: std::atomic::wait and std::counting_semaphore spin and
/// call sched_yield first, which on a 2-vCPU guest costs more than it saves and keeps a waiter
/// on the CPU beside the thread it waits for.
inline void wait_on(std::atomic<std::uint32_t>& word, std::uint32_t expected, Deadline deadline) noexcept {
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
inline void wake_one(std::atomic<std::uint32_t>& word) noexcept {
#if defined(__linux__)
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#else
    word.notify_one();
#endif
}

/// A one-shot event for one waiting thread: set() once, wait() until it is. The setter wakes
/// the waiter only if it is asleep, and never touches the event after its store, so the waiter
/// may destroy it as soon as wait() returns.
class Event {
public:
    void set() noexcept {
        if (state_.exchange(kSet, std::memory_order_acq_rel) == kAsleep) wake_one(state_);
    }
    void wait() noexcept {
        for (;;) {
            std::uint32_t s = state_.load(std::memory_order_acquire);
            if (s == kSet) return;
            if (s == kIdle && !state_.compare_exchange_weak(s, kAsleep, std::memory_order_acq_rel)) continue;
            wait_on(state_, kAsleep, Deadline::max());
        }
    }

private:
    static constexpr std::uint32_t kIdle = 0, kSet = 1, kAsleep = 2;
    std::atomic<std::uint32_t> state_{kIdle};
};

}  // namespace keylock::detail
