// SPDX-License-Identifier: BSL-1.0
// The Lua scripts of the Redis lock protocol. Each runs atomically on the server, so a
// check of the owner token and the change it guards cannot be separated by another client.
//
// Keys: KEYS[1] is the lock key (`<prefix><key>`), KEYS[2] (acquire, transfer) the fencing
// counter of the lock key's hash slot (`{<tag>}<prefix>fence`, same slot: see slots.hpp).
#pragma once

#include <string>
#include <string_view>

namespace keylock::redis::scripts {

// The next fencing token from the slot's counter KEYS[2] (shared by acquire and transfer).
//
// The counter starts from the server's clock in microseconds rather than from 1, so a counter
// lost with a restart of a Redis without persistence comes back larger than every token it
// issued before, as long as its slot averaged fewer than one acquisition per microsecond
// since the counter was made (and the server's clock did not step back).
inline constexpr const char* next_fence = R"lua(
local function next_fence()
  local fence = redis.call('INCR', KEYS[2])
  if fence == 1 then
    local t = redis.call('TIME')
    fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[2], fence)
  end
  return fence
end
)lua";

// The lock key's value is `<fencing token>:<owner token>`, so that an operator (or `keylock
// status`) can read who holds it. The fencing token is formatted with %d: Lua 5.1's own number
// formatting (`..`) would print a 16-digit token in exponent notation.

// ARGV[1] owner token, ARGV[2] lease in ms. Returns {1, fencing token} when acquired (the value
// is then `<fencing token>:<owner token>`), else {0, remaining lease in ms (-1: no expiry,
// -2: gone meanwhile)}, or a WRONGTYPE error if the key is not a string (so no lock of ours or
// anyone's: waiting for it would never end).
inline std::string acquire_with_value(const char* value) {
    return std::string(next_fence) + R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then
  local fence = next_fence()
  redis.call('SET', KEYS[1], )lua" +
           value + R"lua(, 'PX', ARGV[2])
  return {1, fence}
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
return {0, redis.call('PTTL', KEYS[1])}
)lua";
}
inline const std::string acquire = acquire_with_value("string.format('%d', fence) .. ':' .. ARGV[1]");

// The same for a Redlock quorum, where each node has its own fencing counter: the value is the
// owner token alone, the same on every node, and the token the holder gets is made from the
// nodes' answers (see bump).
inline const std::string acquire_plain = acquire_with_value("ARGV[1]");

// KEYS[1] a fencing counter, ARGV[1] a fencing token issued from a quorum's counters: raises the
// counter to at least the token, so that every later token drawn from this counter is larger.
// Returns 1.
inline constexpr const char* bump = R"lua(
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if now == nil or now < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
)lua";

// A script whose `$PUBLISH` is written as `publish`: PUBLISH, or SPUBLISH for Redis Cluster
// (sharded pub/sub: only the slot's shard hears it; a PUBLISH would go to every node of the
// cluster).
inline std::string publishing(std::string_view script, std::string_view publish) {
    constexpr std::string_view placeholder = "$PUBLISH";
    std::string text(script);
    text.replace(text.find(placeholder), placeholder.size(), publish);
    return text;
}

// ARGV[1] the lock's value (`<fencing token>:<owner token>`), ARGV[2] the channel to wake
// waiters on. Deletes the lock only if the value is ours. Returns 1 if it was, else 0.
inline constexpr std::string_view release_script = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('$PUBLISH', ARGV[2], '')
  return 1
end
return 0
)lua";
inline const std::string release = publishing(release_script, "PUBLISH");
inline const std::string release_sharded = publishing(release_script, "SPUBLISH");

// ARGV[1] the lock's value, ARGV[2] lease in ms. Renews the lease only if the value is ours:
// 1, else 0.
inline constexpr const char* extend = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
)lua";

// ARGV[1] the lock's value, ARGV[2] a new owner token, ARGV[3] lease in ms. Hands a lock we
// hold to another waiter of this process in one round trip: a new fencing token and owner
// token, never free in between. Returns the new fencing token (the value is then `<it>:<new
// owner token>`), or 0 if the lock was not ours any more.
inline const std::string transfer = std::string(next_fence) + R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local fence = next_fence()
redis.call('SET', KEYS[1], string.format('%d', fence) .. ':' .. ARGV[2], 'PX', ARGV[3])
return fence
)lua";

// For operators. Returns {0} when the lock is free, else {1, its value, remaining lease in ms}.
inline constexpr const char* inspect = R"lua(
local value = redis.call('GET', KEYS[1])
if not value then
  return {0}
end
return {1, value, redis.call('PTTL', KEYS[1])}
)lua";

// For operators. Deletes the lock whoever holds it and wakes its waiters (ARGV[1] the channel).
// Returns 1 if there was a lock, else 0.
inline constexpr std::string_view force_release_script = R"lua(
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('$PUBLISH', ARGV[1], '')
  return 1
end
return 0
)lua";
inline const std::string force_release = publishing(force_release_script, "PUBLISH");
inline const std::string force_release_sharded = publishing(force_release_script, "SPUBLISH");

}  // namespace keylock::redis::scripts
