// keylock/options.hpp — the configuration of a registry and the statistics it reports.
//
// A registry is configured by a URL (`local://?idle_ttl=30s&max_keys=100000`), by the
// environment (`KEYLOCK_URL`), or in code with `RegistryOptions`. The URL form and the struct
// carry the same options; docs/configuration.md lists them all.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace keylock {

/// Options of a `local://` registry. Every member has the default a URL without that option
/// gets; `to_url()` gives the URL that configures the same registry.
struct RegistryOptions {
    /// How long an idle entry (no guard, waiter or handle) stays in memory before it is freed.
    /// Zero (the default) frees it as soon as its last reference goes (a thread may keep the
    /// last shared key it released for its next lock; see docs/semantics.md). A warm entry makes
    /// the next lock of its key cheaper; it is still counted in `Stats::entries`.
    std::chrono::milliseconds idle_ttl{0};
    /// The most per-key entries in memory at once; an acquisition that needs one more fails
    /// with `errc::too_many_keys`. Zero means no limit.
    std::size_t max_keys = 0;
    /// The longest key accepted, in bytes; longer keys fail with `errc::key_too_long`.
    std::size_t max_key_bytes = 1024;
    /// true: a released key goes to its waiters strictly first come, first served.
    /// false (default): a released key wakes its first waiter, but a thread arriving at that
    /// moment may take it first (like std::mutex), which is much faster under contention.
    bool fair = false;
    /// The number of independently locked shards of the entry table (a power of two). Keys in
    /// different shards never touch the same mutex; a shard's mutex is held only for a few
    /// hundred nanoseconds of bookkeeping, never while a key's lock is waited for or held.
    std::size_t shards = 128;

    /// The `local://` URL that gives these options (defaults are left out).
    std::string to_url() const;
    friend bool operator==(const RegistryOptions&, const RegistryOptions&) = default;
};

/// One key's lock as the backend sees it now (KeyedLockRegistry::inspect, `keylock status`).
struct LockInfo {
    bool held = false;                  ///< someone holds the key now
    std::uint64_t fencing_token = 0;    ///< the holder's fencing token (0 if it cannot be known)
    std::chrono::milliseconds ttl{-1};  ///< the holder's remaining lease; -1: no lease
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
