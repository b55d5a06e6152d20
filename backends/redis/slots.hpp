// SPDX-License-Identifier: BSL-1.0
// Redis Cluster hash slots, and one short hash tag per slot.
//
// The lock script keeps a fencing counter per slot rather than per key: its key is named
// `{tag}...` with the tag of the lock key's slot, so the counter always lives in the same slot
// as the lock key. A script may only touch keys of one slot in Redis Cluster, so this keeps
// the script Cluster-safe, and the number of counters is bounded by 16384 however many keys
// are ever locked.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace keylock::redis {

/// Number of hash slots in Redis Cluster.
inline constexpr std::uint16_t slot_count = 16384;

/// The slot of `key`, exactly as Redis Cluster computes it (`CLUSTER KEYSLOT`): CRC16 (XMODEM)
/// of the key modulo 16384, or of its hash tag, the bytes between the first '{' and the first
/// '}' after it, if there is at least one such byte. Binary-safe.
std::uint16_t key_slot(std::string_view key) noexcept;

/// A tag of characters [0-9a-z] such that `key_slot("{" + tag + "}" + anything) == slot`: the
/// shortest such string, and of those the first in ASCII order (4 characters at most). The
/// table of all 16384 tags is built on first use (a few ms, ~110 KB, thread-safe); a failure
/// to allocate it terminates. Returns an empty view if `slot >= slot_count`.
std::string_view slot_tag(std::uint16_t slot) noexcept;

/// The key of the fencing counter of `lock_key`'s slot: `<prefix>fence:{<tag>}`. Under the
/// prefix, like every key and channel of ours (see scripts.hpp); the tag puts it in the lock
/// key's slot (the prefix has no hash tag of its own: config_rules.cpp refuses '{' and '}' in it).
std::string fence_key_of(std::string_view prefix, std::string_view lock_key);

}  // namespace keylock::redis
