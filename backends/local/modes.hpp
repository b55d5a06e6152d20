// SPDX-License-Identifier: BSL-1.0
// Shared, upgrade and permit holds of the local backend: how their holds are named, and when
// a request of each mode may be granted. Everything here runs under the entry's shard mutex.
//
// * Exclusive holds are the Entry itself, as before; the lock-free fast paths (entry.hpp) know
//   only them. A shared or upgrade hold is the Entry's address with a tag in its low bits, and
//   a permit hold a small record (the number of permits) with another tag: all holders of a
//   key share its one entry, each with a reference in the word.
// * While any shared, upgrade or permit hold exists, the word's kHeld bit is set, so the fast
//   paths see the key taken and an exclusive request queues. Modal holders change the counts
//   on the entry (Entry::shared, used, limit, upgrader) and release under the shard mutex.
// * Modal waiters are always handed the hold (like async ones): their wait needs the
//   releaser, so queue_bits keeps every release of the key on the shard mutex while one is
//   first in line.
// * Order: a request that finds waiters queues behind them, so a stream of readers cannot
//   starve a writer; conversions (upgrade to exclusive, shared to exclusive or upgrade) wait
//   at the front, ahead of every new request. A key's queue holds lock requests or permit
//   requests, never both: a request of the other kind fails with `mode_conflict` at once.
#pragma once

#include <cstdint>

#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>

#include "entry.hpp"
#include "waiter.hpp"

namespace keylock::local {

using detail::Mode;

/// The low bits of a hold pointer: what kind of hold it is.
enum HoldTag : std::uint8_t { kExclusiveTag = 0, kSharedTag = 1, kUpgradeTag = 2, kPermitTag = 3 };
constexpr std::uintptr_t kTagMask = 7;
static_assert(alignof(Entry) > kTagMask);

/// A hold of `permits` permits of `entry`'s semaphore.
struct alignas(8) PermitHold {
    Entry* entry;
    std::uint32_t permits;
};

inline HoldTag tag_of(const detail::Hold* hold) noexcept {
    return static_cast<HoldTag>(reinterpret_cast<std::uintptr_t>(hold) & kTagMask);
}
// The tag is added and taken off by byte offsets from the pointer itself (not by a round trip
// through an integer), so that the compiler keeps the pointer's provenance.
inline detail::Hold* tagged(const void* p, HoldTag tag) noexcept {
    return reinterpret_cast<detail::Hold*>(const_cast<char*>(static_cast<const char*>(p)) + tag);
}
inline const void* untagged(const detail::Hold* hold) noexcept {
    return reinterpret_cast<const char*>(hold) - tag_of(hold);
}
/// The entry of any hold.
inline Entry* entry_of(const detail::Hold* hold) noexcept {
    switch (tag_of(hold)) {
        case kExclusiveTag: return static_cast<Entry*>(const_cast<detail::Hold*>(hold));
        case kPermitTag: return static_cast<const PermitHold*>(untagged(hold))->entry;
        default: return static_cast<Entry*>(const_cast<void*>(untagged(hold)));
    }
}
inline HoldTag tag_for(Mode mode) noexcept {
    switch (mode) {
        case Mode::shared: return kSharedTag;
        case Mode::upgrade: return kUpgradeTag;
        case Mode::permits: return kPermitTag;
        case Mode::exclusive: break;
    }
    return kExclusiveTag;
}

/// The hold of a new holder of `mode`; for permits, `record` is its PermitHold (made before it
/// waited, as the waiter's `result`).
inline detail::Hold* hold_for(Entry* e, Mode mode, detail::Hold* record) noexcept {
    switch (mode) {
        case Mode::shared: return tagged(e, kSharedTag);
        case Mode::upgrade: return tagged(e, kUpgradeTag);
        case Mode::permits: {
            auto* permit = reinterpret_cast<PermitHold*>(record);
            permit->entry = e;
            return tagged(permit, kPermitTag);
        }
        case Mode::exclusive: break;
    }
    return e;
}

/// Whether a new request of `mode` cannot share the key with what holds or awaits it now:
/// `mode_conflict`, else 0. `held` is the word's kHeld bit.
inline errc conflict(const Entry* e, bool held, Mode mode, std::uint32_t limit) noexcept {
    if (mode == Mode::permits) {
        if (e->limit == 0) return held || !e->queue.empty() ? errc::mode_conflict : errc{};
        return e->limit != limit ? errc::mode_conflict : errc{};
    }
    return e->limit != 0 ? errc::mode_conflict : errc{};
}

/// Whether a conversion of a hold tagged `from` to `to` is one the local backend makes.
inline bool convertible(HoldTag from, Mode to) noexcept {
    switch (from) {
        case kExclusiveTag: return to == Mode::shared || to == Mode::upgrade;
        case kUpgradeTag: return to == Mode::exclusive || to == Mode::shared;
        case kSharedTag: return to == Mode::exclusive || to == Mode::upgrade;
        case kPermitTag: break;
    }
    return false;
}

/// Whether a conversion may be made now (by a holder of the key: kHeld is set).
inline bool conversion_fits(const Entry* e, HoldTag from, Mode to) noexcept {
    if (to == Mode::exclusive) return e->shared == 1 && (from == kUpgradeTag || !e->upgrader);
    if (from == kSharedTag && to == Mode::upgrade) return !e->upgrader;
    return true;  // the downgrades
}

/// Makes a conversion that fits (the fencing token is the caller's to draw).
inline void convert_counts(Entry* e, HoldTag from, Mode to) noexcept {
    if (from == kExclusiveTag) {
        e->shared = 1;
        e->upgrader = to == Mode::upgrade;
    } else if (to == Mode::exclusive) {
        e->shared = 0;
        e->upgrader = false;
    } else {
        e->upgrader = to == Mode::upgrade;  // shared -> upgrade, or upgrade -> shared
    }
}

/// Whether a new holder of `mode` (`permits` of them) fits beside the holders there are now
/// (`held`: the word's kHeld bit; with it clear, the key is free).
inline bool fits(const Entry* e, bool held, Mode mode, std::uint32_t permits) noexcept {
    if (!held) return true;
    switch (mode) {
        case Mode::shared: return e->shared > 0;
        case Mode::upgrade: return e->shared > 0 && !e->upgrader;
        case Mode::permits: return e->used > 0 && e->used + permits <= e->limit;
        case Mode::exclusive: break;
    }
    return false;
}

/// Counts a new holder that fits.
inline void add_holder(Entry* e, Mode mode, std::uint32_t permits, std::uint32_t limit) noexcept {
    switch (mode) {
        case Mode::shared: ++e->shared; break;
        case Mode::upgrade:
            ++e->shared;
            e->upgrader = true;
            break;
        case Mode::permits:
            e->used += permits;
            ++e->permit_holds;
            e->limit = limit;
            break;
        case Mode::exclusive: break;
    }
}

/// Takes a holder away; returns whether the key is now free of modal holders (then kHeld goes
/// with the holder's reference). A semaphore with nobody waiting forgets its limit.
inline bool remove_holder(Entry* e, HoldTag tag, std::uint32_t permits) noexcept {
    switch (tag) {
        case kUpgradeTag:
            e->upgrader = false;
            --e->shared;
            break;
        case kSharedTag: --e->shared; break;
        case kPermitTag:
            e->used -= permits;
            --e->permit_holds;
            break;
        case kExclusiveTag: break;
    }
    const bool free = e->shared == 0 && e->used == 0;
    if (free && e->queue.empty()) e->limit = 0;
    return free;
}

/// What inspect() reports of a held entry's holders (`held`: the word's kHeld bit).
inline LockInfo holders_of(const Entry* e, bool held) noexcept {
    LockInfo info;
    if (!held) return info;
    info.held = true;
    if (e->used > 0) {
        info.mode = Mode::permits;
        info.holders = e->permit_holds;
        info.permits = e->used;
        info.limit = e->limit;
    } else if (e->shared > 0) {
        info.mode = e->shared == 1 && e->upgrader ? Mode::upgrade : Mode::shared;
        info.holders = e->shared;
        info.upgrader = e->upgrader;
    } else {
        info.holders = 1;  // exclusive
    }
    return info;
}

}  // namespace keylock::local
