// SPDX-License-Identifier: BSL-1.0
// The counters of keylock::Stats as a backend keeps them: what each end of a wait counts as is
// decided here, once. (The local backend keeps its own per-shard counts instead, read off its
// fencing counters at no cost on the fast path; docs/design.md says why.)
#pragma once

#include <atomic>
#include <cstdint>
#include <system_error>

#include <keylock/error.hpp>
#include <keylock/options.hpp>

namespace keylock::detail {

class Tally {
public:
    /// A wait (sync or async) begins.
    void began() noexcept { waiting_.fetch_add(1, std::memory_order_relaxed); }

    /// It ended with `ec`; `waited`: it could not be granted at once.
    void ended(std::error_code ec, bool waited) noexcept {
        waiting_.fetch_sub(1, std::memory_order_relaxed);
        if (!ec) {
            acquisitions_.fetch_add(1, std::memory_order_relaxed);
            if (waited) contended_.fetch_add(1, std::memory_order_relaxed);
        } else if (ec == errc::timeout) {
            timeouts_.fetch_add(1, std::memory_order_relaxed);
        } else if (ec == errc::cancelled) {
            cancellations_.fetch_add(1, std::memory_order_relaxed);
        }
    }

    /// The counters, and `entries` (the backend's per-key entries in memory now).
    Stats snapshot(std::uint64_t entries) const noexcept {
        Stats s;
        s.entries = entries;
        s.acquisitions = acquisitions_.load(std::memory_order_relaxed);
        s.contended = contended_.load(std::memory_order_relaxed);
        s.timeouts = timeouts_.load(std::memory_order_relaxed);
        s.cancellations = cancellations_.load(std::memory_order_relaxed);
        s.waiting = waiting_.load(std::memory_order_relaxed);
        return s;
    }

private:
    std::atomic<std::uint64_t> acquisitions_{0}, contended_{0}, timeouts_{0}, cancellations_{0}, waiting_{0};
};

}  // namespace keylock::detail
