// SPDX-License-Identifier: BSL-1.0
// The Lua scripts of the Redis lock protocol. Each runs atomically on the server, so a
// check of the owner token and the change it guards cannot be separated by another client.
//
// Keys: KEYS[1] is the lock key (`<prefix><key>`), also the channel its releases are published
// on; KEYS[2] (acquire, transfer) the fencing counter of the lock key's hash slot
// (`<prefix>fence:{<tag>}`, same slot: see slots.hpp). Every key and channel lives under the
// prefix, so an ACL limited to `~<prefix>*` and `&<prefix>*` allows all of them.
//
// Every script decides before it writes, so that an error (a key of another type, a command or
// channel the user may not use) leaves nothing half done: a key of another type is read as
// nobody's lock; acquire checks the user's right to publish the release and to set the lock
// (`redis.acl_check_cmd`, Redis 7) before its first write; the others publish before they
// delete. (Redis itself checks the user's right to the keys a script is given before it runs.)
#pragma once

#include <string>
#include <string_view>

namespace keylock::redis::scripts {

// `denied(command, key or channel, ...)`: nil if the user may run the command on it, else a
// NOPERM error reply naming both. Servers before Redis 7 have no redis.acl_check_cmd: there it
// is nil.
inline constexpr const char* denied = R"lua(
local function denied(...)
  if redis.acl_check_cmd == nil or redis.acl_check_cmd(...) then
    return nil
  end
  local what = {...}
  local kind = string.find(what[1], 'PUBLISH', 1, true) and 'channel ' or 'key '
  return redis.error_reply('NOPERM keylock: this user may not run ' .. what[1] .. ' on ' .. kind .. what[2])
end
)lua";

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

// A script whose `$PUBLISH` is written as `publish`: PUBLISH, or SPUBLISH for Redis Cluster
// (sharded pub/sub: only the slot's shard hears it; a PUBLISH would go to every node of the
// cluster).
inline std::string publishing(std::string_view script, std::string_view publish) {
    constexpr std::string_view placeholder = "$PUBLISH";
    std::string text(script);
    for (auto at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at))
        text.replace(at, placeholder.size(), publish);
    return text;
}

// The lock key's value is `<fencing token>:<owner token>`, so that an operator (or `keylock
// status`) can read who holds it. The fencing token is formatted with %d: Lua 5.1's own number
// formatting (`..`) would print a 16-digit token in exponent notation.
//
// An owner token belongs to one request of one process, and every retry of that request sends
// the same token: when an attempt ran but its answer was lost (a timeout, a broken
// connection), the retry finds the lock under its own token and takes it (renewing the lease),
// rather than waiting out a lease that nobody owns.

// `ours(value)`: the fencing token of a lock value made for owner token ARGV[1], else nil.
inline constexpr const char* ours_fenced = R"lua(
local function ours(value)
  local n = #ARGV[1]
  if #value > n + 1 and string.sub(value, -n - 1) == ':' .. ARGV[1] then
    return tonumber(string.sub(value, 1, -n - 2))
  end
  return nil
end
)lua";
// The same for a Redlock quorum, whose values are the owner token alone: a new fencing token
// from this node's counter.
inline constexpr const char* ours_plain = R"lua(
local function ours(value)
  if value == ARGV[1] then
    return next_fence()
  end
  return nil
end
)lua";

// ARGV[1] owner token, ARGV[2] lease in ms. Returns {1, fencing token} when acquired (or found
// acquired by an earlier attempt with this owner token), else {0, remaining lease in ms (-1:
// no expiry)}, or a WRONGTYPE error if the key is not a string (so no lock of ours or anyone's:
// waiting for it would never end), or NOPERM if the user may not run what the lock needs (the
// release's publication included, so that it is found before a lock is taken).
inline std::string acquire_with(const char* ours, const char* value) {
    return std::string(denied) + next_fence + ours + R"lua(
local refused = denied('$PUBLISH', KEYS[1], '') or denied('SET', KEYS[1], '0', 'PX', '1')
if refused then
  return refused
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  local fence = next_fence()
  redis.call('SET', KEYS[1], )lua" +
           value + R"lua(, 'PX', ARGV[2])
  return {1, fence}
end
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
local fence = ours(redis.call('GET', KEYS[1]))
if fence then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence}
end
return {0, redis.call('PTTL', KEYS[1])}
)lua";
}
inline const std::string acquire =
    publishing(acquire_with(ours_fenced, "string.format('%d', fence) .. ':' .. ARGV[1]"), "PUBLISH");
inline const std::string acquire_sharded =
    publishing(acquire_with(ours_fenced, "string.format('%d', fence) .. ':' .. ARGV[1]"), "SPUBLISH");

// The same for a Redlock quorum, where each node has its own fencing counter: the value is the
// owner token alone, the same on every node, and the token the holder gets is made from the
// nodes' answers (see bump).
inline const std::string acquire_plain = publishing(acquire_with(ours_plain, "ARGV[1]"), "PUBLISH");

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

// `holds(value)`: whether the lock key holds `value` (a key of another type is nobody's lock,
// not an error: redis.pcall returns GET's WRONGTYPE error as a table).
inline constexpr const char* holds = R"lua(
local function holds(value)
  return redis.pcall('GET', KEYS[1]) == value
end
)lua";

// ARGV[1] the lock's value (`<fencing token>:<owner token>`), ARGV[2] the channel to wake
// waiters on. Deletes the lock only if the value is ours. Returns 1 if it was, else 0.
// Publishes before it deletes: no client runs between the two, and a refused PUBLISH then
// leaves the lock as it was.
inline const std::string release_script = std::string(holds) + R"lua(
if holds(ARGV[1]) then
  redis.call('$PUBLISH', ARGV[2], '')
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
)lua";
inline const std::string release = publishing(release_script, "PUBLISH");
inline const std::string release_sharded = publishing(release_script, "SPUBLISH");

// ARGV[1] an owner token, ARGV[2] the channel. Gives back a lock taken for an owner token whose
// attempt's answer never came and that no attempt will retry: deletes the lock if its value
// was made for that token (`<fencing token>:<token>`, or the token alone). Returns 1 if it
// was, else 0.
inline const std::string abandon_script = std::string(ours_fenced) + R"lua(
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'string' and (value == ARGV[1] or ours(value)) then
  redis.call('$PUBLISH', ARGV[2], '')
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
)lua";
inline const std::string abandon = publishing(abandon_script, "PUBLISH");
inline const std::string abandon_sharded = publishing(abandon_script, "SPUBLISH");

// ARGV[1] the lock's value, ARGV[2] lease in ms. Renews the lease only if the value is ours:
// 1, else 0.
inline const std::string extend = std::string(holds) + R"lua(
if holds(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
)lua";

// ARGV[1] the lock's value, ARGV[2] a new owner token, ARGV[3] lease in ms. Hands a lock we
// hold to another waiter of this process in one round trip: a new fencing token and owner
// token, never free in between. Returns the new fencing token (the value is then `<it>:<new
// owner token>`), or 0 if the lock was not ours any more.
inline const std::string transfer = std::string(next_fence) + holds + R"lua(
if not holds(ARGV[1]) then
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
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('$PUBLISH', ARGV[1], '')
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
)lua";
inline const std::string force_release = publishing(force_release_script, "PUBLISH");
inline const std::string force_release_sharded = publishing(force_release_script, "SPUBLISH");

}  // namespace keylock::redis::scripts
