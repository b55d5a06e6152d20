// SPDX-License-Identifier: BSL-1.0
// How long a Redis lock counts as ours: the clock a lease is judged on, and the margin for the
// drift between that clock and the servers' clocks. One place for every topology.
#pragma once

#include <chrono>

#include <keylock/detail/backend.hpp>

namespace keylock::redis::lease {

/// The clock leases are judged on: CLOCK_BOOTTIME, which goes on counting while the machine
/// is suspended (a lease runs out on the server meanwhile), unlike the steady clock.
using Clock = detail::BootClock;

/// How much shorter than its lease a holder counts on its lock: the drift allowed between our
/// clock and the servers' (a server whose clock runs fast expires the key early), 1% of the
/// lease plus 2 ms, as the Redlock algorithm has it. The same on every topology.
constexpr std::chrono::milliseconds clock_drift(std::chrono::milliseconds lease) noexcept {
    return lease / 100 + std::chrono::milliseconds(2);
}

/// How long after its acquire or renewal was sent a lock counts as ours (leases are at least
/// 1 s, so this is positive).
constexpr std::chrono::milliseconds validity(std::chrono::milliseconds lease) noexcept {
    return lease - clock_drift(lease);
}

}  // namespace keylock::redis::lease
