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
// channel the user may not use) leaves no lock state half done: a key of another type is read as
// nobody's lock; acquire checks the user's right to publish the release (`redis.acl_check_cmd`,
// Redis 7) before its first write; the others publish before they delete. (Redis itself checks
// the user's right to the keys a script is given before it runs.) A refused SET fails the acquire
// with Redis's own NOPERM after one write only, the fencing counter's INCR, which holds no lock
// state (a token skipped); checking SET too would cost every acquisition a second check.
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

// The next fencing token from the slot's counter KEYS[2] (`next_fence()`, for acquire and transfer)
// or from `counter` (`next_fence_of(counter)`, for lock_all's pairs of keys).
// A counter made here but refused its first SET (an ACL without `+set`) is deleted again before
// the error goes back, so that it never stays at 1.
//
// The counter starts from the server's clock in microseconds rather than from 1, so a counter
// lost with a restart of a Redis without persistence comes back larger than every token it
// issued before, as long as its slot averaged fewer than one acquisition per microsecond
// since the counter was made (and the server's clock did not step back).
inline constexpr const char* next_fence = R"lua(
local function next_fence_of(counter)
  local fence = redis.call('INCR', counter)
  if fence == 1 then
    local t = redis.call('TIME')
    fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local set = redis.pcall('SET', counter, fence)
    if type(set) == 'table' and set.err then
      redis.call('DEL', counter)
      error(set)
    end
  end
  return fence
end
local function next_fence()
  return next_fence_of(KEYS[2])
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

// The reader and writer of a sorted-set lock key, the data layout of shared and upgrade holds and
// of permits (mode_scripts.hpp describes it; docs/design.md too), shared by those scripts and by
// acquire, which meets such a key when an exclusive hold is asked for it. Meant to be pasted
// inside a block: its functions are made only when a script reaches it.
//
// `now_ms()`: the server's clock in ms (`TIME`). `survey(now)`: the key's live members (score
// above `now`) read, nothing written: `kind` 'lock' (`~kind:lock`), 'semaphore' (`~limit:<L>`,
// then `limit`) or nil (a sorted set that is not keylock's); `holders`, each {member, at (its
// expiry), mode ('s', 'u' or 'p<n>'), n (permits, else 1), fence, owner}; `intents`, each {owner,
// at}. `settle(now)`: after a change, prunes expired members and sets the key's expiry to its
// latest holder's or intent's (metadata excluded), or deletes the key if none is left.
// `zset_refused()`: a NOPERM reply if the user may not run a write these scripts make (Redis 7).
inline constexpr const char* lock_zset = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function survey(now)
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf', 'WITHSCORES')
  local s = {holders = {}, intents = {}}
  for i = 1, #live, 2 do
    local m, at = live[i], tonumber(live[i + 1])
    if m == '~kind:lock' then
      s.kind = 'lock'
    elseif string.sub(m, 1, 7) == '~limit:' then
      s.kind, s.limit = 'semaphore', tonumber(string.sub(m, 8))
    elseif string.sub(m, 1, 8) == '~intent:' then
      s.intents[#s.intents + 1] = {owner = string.sub(m, 9), at = at}
    else
      local mode, fence, owner = string.match(m, '^([sup]%d*):(%d+):(.+)$')
      if mode then
        local n = tonumber(string.sub(mode, 2)) or 1
        s.holders[#s.holders + 1] = {member = m, at = at, mode = mode, n = n, fence = tonumber(fence), owner = owner}
      end
    end
  end
  return s
end
local function settle(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
  local top = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if top[1] == nil then
    redis.call('DEL', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, tonumber(top[2]) - now)))
  end
end
local function zset_refused()
  return denied('ZADD', KEYS[1], '0', 'm') or denied('ZREM', KEYS[1], 'm')
    or denied('ZREMRANGEBYSCORE', KEYS[1], '0', '0') or denied('ZREVRANGEBYSCORE', KEYS[1], '0', '0')
    or denied('PEXPIRE', KEYS[1], '1') or denied('DEL', KEYS[1])
end
)lua";

// ARGV[1] owner token, ARGV[2] lease in ms. Returns {1, fencing token} when acquired (or found
// acquired by an earlier attempt with this owner token), else {0, remaining lease in ms (-1:
// no expiry)}, or a WRONGTYPE error if the key is neither a string nor keylock's sorted set (so
// no lock of ours or anyone's: waiting for it would never end), or NOPERM if the user may not run
// what the lock needs (the release's publication included, so that it is found before a lock is
// taken). On a sorted set of shared and upgrade holds (mode_scripts.hpp): {0, ms until the last
// live holder's lease ends} while one is live, recording (or renewing) the intent
// `~intent:<owner token>` for one lease, which keeps new shared and upgrade holders out; once none
// is, the hold as on a free key (other writers' intents go with the sorted set). On a semaphore's
// with live holders: a `KEYLOCK_MODE` error; with none, it is a free key.
//
// A free key costs three calls: the ACL check, the counter's INCR and `SET NX`. Only a key that
// exists is looked at further (its TYPE), so an attempt on a held key also takes a fencing token,
// which is skipped (tokens only promise to increase); the sorted set is read only after 'string'.
inline std::string acquire_with(const char* ours, const char* value) {
    return std::string(denied) + next_fence + ours + R"lua(
local refused = denied('$PUBLISH', KEYS[1], '')
if refused then
  return refused
end
local fence = next_fence()
if redis.call('SET', KEYS[1], )lua" +
           value + R"lua(, 'NX', 'PX', ARGV[2]) then
  return {1, fence}
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'string' then
  if kind == 'zset' then
)lua" + std::string(lock_zset) +
           R"lua(
    refused = zset_refused()
    if refused then
      return refused
    end
    local now = now_ms()
    local s = survey(now)
    if s.kind then
      local last = nil
      for _, h in ipairs(s.holders) do
        if last == nil or h.at > last then
          last = h.at
        end
      end
      if last == nil then
        redis.call('DEL', KEYS[1])
        redis.call('SET', KEYS[1], )lua" +
           value + R"lua(, 'PX', ARGV[2])
        return {1, fence}
      end
      if s.kind == 'semaphore' then
        return redis.error_reply('KEYLOCK_MODE the key is a semaphore (limit ' .. string.format('%d', s.limit) .. '), not a lock')
      end
      redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), '~intent:' .. ARGV[1])
      settle(now)
      return {0, last - now}
    end
  end
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
local held = ours(redis.call('GET', KEYS[1]))
if held then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, held}
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

// lock_all's fast path: several free keys at once, all or none. KEYS are pairs: KEYS[2i-1] a
// lock key, KEYS[2i] the fencing counter of its slot (on Cluster every key of one script is of
// one slot, so every pair names the same counter); ARGV[1] the owner token of the attempt,
// ARGV[2] lease in ms. First the release's publication is checked for every key, then every key
// is read, nothing written: a key that exists and is not ours under ARGV[1] (held by anyone, of
// another type, a sorted set of shared holds) makes it return {0, i} (i the index of the pair),
// having written nothing. Else it takes every key as acquire does a free one (a fencing token of
// its own from its slot's counter, in the order of the pairs, and `SET PX`), or renews a key
// found ours already (an earlier attempt of this owner token), and returns {1, fence of pair
// 1, fence of pair 2, ...}. The new tokens increase in the order of the pairs even across
// counters: a counter behind the token just issued is raised past it (counters only go up). An error midway (a refused
// SET) may leave some keys taken under ARGV[1]: the backend then gives back every key of the attempt (the abandon
// script).
inline const std::string acquire_all_script = std::string(denied) + next_fence + ours_fenced + R"lua(
local n = #KEYS / 2
for i = 1, n do
  local refused = denied('$PUBLISH', KEYS[2 * i - 1], '')
  if refused then
    return refused
  end
end
local fences = {}
for i = 1, n do
  local value = redis.pcall('GET', KEYS[2 * i - 1])
  if value then
    local held = type(value) == 'string' and ours(value)
    if not held then
      return {0, i}
    end
    fences[i] = held
  end
end
local out = {1}
local last = 0
for i = 1, n do
  local key = KEYS[2 * i - 1]
  if fences[i] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    local fence = next_fence_of(KEYS[2 * i])
    if fence <= last then
      fence = last + 1
      redis.call('SET', KEYS[2 * i], string.format('%d', fence))
    end
    fences[i] = fence
    redis.call('SET', key, string.format('%d', fence) .. ':' .. ARGV[1], 'PX', ARGV[2])
  end
  last = fences[i]
  out[i + 1] = fences[i]
end
return out
)lua";
inline const std::string acquire_all = publishing(acquire_all_script, "PUBLISH");
inline const std::string acquire_all_sharded = publishing(acquire_all_script, "SPUBLISH");

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
