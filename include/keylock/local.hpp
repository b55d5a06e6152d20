// SPDX-License-Identifier: BSL-1.0
// keylock/local.hpp — the in-process backend, `local://`, configured in code. keylock::keylock
// links it by default, so `KeyedLockRegistry()` and `from_url("local://...")` need no more than
// that link; this header is for LocalOptions.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include <keylock/export.hpp>
#include <keylock/registry.hpp>

namespace keylock {

/// Options of a `local://` registry. Every member has the default a URL without that option
/// gets; `to_url()` gives the URL that configures the same registry.
struct KEYLOCK_API LocalOptions {
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
    /// different shards never touch the same mutex; a shard's mutex is held only to find, add or
    /// remove an entry, never while a key's lock is waited for or held.
    std::size_t shards = 128;

    /// The `local://` URL that gives these options (defaults are left out).
    std::string to_url() const;
    /// Member by member.
    friend bool operator==(const LocalOptions&, const LocalOptions&) = default;
};

/// The name LocalOptions had before the backends were separated; kept for existing code.
using RegistryOptions = LocalOptions;

/// A `local://` registry with the given options: the same as `KeyedLockRegistry(options)`.
/// Throws keylock::Error (`invalid_option`) when an option is out of range.
KEYLOCK_API KeyedLockRegistry local_registry(const LocalOptions& options = {});

}  // namespace keylock
