// SPDX-License-Identifier: BSL-1.0
// keylock/options.hpp — what every backend reports: one key's lock as seen from outside
// (LockInfo) and a registry's counters (Stats).
//
// Each backend's own options live with it: LocalOptions in <keylock/local.hpp>, RedisOptions in
// <keylock/redis.hpp>; docs/configuration.md lists them all.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace keylock {

/// How a lock is held (Guard::mode()). Per key, any number of `shared` holders, at most one of
/// them with `upgrade` ownership (which can become exclusive without letting go); or one
/// `exclusive` holder. `permits` are a semaphore's: n of a limit, compatible only with other
/// permits of the same limit. docs/semantics.md, "Modes".
enum class LockMode : std::uint8_t { exclusive, shared, upgrade, permits };

/// One key's lock as the backend sees it now (KeyedLockRegistry::inspect, `keylock status`).
struct LockInfo {
    bool held = false;                  ///< someone holds the key now
    std::uint64_t fencing_token = 0;    ///< the holder's fencing token (0 if it cannot be known)
    std::chrono::milliseconds ttl{-1};  ///< the holder's remaining lease; -1: no lease
    /// How it is held: exclusive; shared (readers, and perhaps an upgrader); upgrade (an
    /// upgrader alone); permits. Meaningful when `held`.
    LockMode mode = LockMode::exclusive;
    std::uint32_t holders = 0;  ///< holds now: 1 exclusive; readers + upgrader; permit holds
    bool upgrader = false;      ///< shared: an upgrade holder is among the holders
    std::uint32_t permits = 0;  ///< permits: in use now
    std::uint32_t limit = 0;    ///< permits: the key's limit
};

/// A snapshot of a registry's counters. Counters are exact but read shard by shard, so a
/// snapshot taken while other threads work need not be one instant's state.
struct Stats {
    std::uint64_t entries = 0;        ///< per-key entries in memory now (held, awaited, pinned or warm)
    std::uint64_t acquisitions = 0;   ///< locks granted since the registry was made
    std::uint64_t contended = 0;      ///< of those, how many had to wait
    std::uint64_t timeouts = 0;       ///< attempts that ended at their deadline (try_lock included)
    std::uint64_t cancellations = 0;  ///< waits ended by a stop token or an async cancellation
    std::uint64_t waiting = 0;        ///< threads and async operations waiting now
    /// Holds whose lease was found lost: by the watchdog while held, or by their release
    /// (`not_owner`, also when nobody saw it: a destructor's or `KeyMutex::unlock()`'s release).
    /// Always 0 for `local://`, whose locks cannot be lost.
    std::uint64_t lost = 0;
};

}  // namespace keylock
