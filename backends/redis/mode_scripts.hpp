// SPDX-License-Identifier: BSL-1.0
// The Lua scripts of shared, upgrade and counted (permit) holds on Redis (issue 16): the server
// side only; the exclusive lock's scripts are in scripts.hpp, whose pieces these reuse.
//
// Data layout: one Redis key per lock, KEYS[1] = `<prefix><key>` as for an exclusive hold
// (a string `<fence>:<owner>` with a PX lease). Shared and upgrade holds, and permits, are a
// sorted set at the same key, one member per holder, scored with its expiry in ms on the
// server's clock (`TIME`):
//
//   s:<fence>:<owner>       a shared holder
//   u:<fence>:<owner>       the upgrade holder (at most one)
//   p<n>:<fence>:<owner>    a holder of n permits
//   ~kind:lock              score +inf: the set holds shared/upgrade holds
//   ~limit:<L>              score +inf: the set holds permits, L of them (the first holder's limit)
//   ~intent:<owner>         score now + lease: a writer waits (an exclusive acquire, or a
//                           conversion to exclusive); while one lives, new shared and upgrade
//                           holders are refused, so a stream of readers cannot starve it
//
// Every script reads the live members (score above now) and decides before it writes. The key's
// PEXPIRE is at least its latest holder's or intent's expiry: the acquiring scripts only raise
// it; the others (and the exclusive acquire's intent) prune the expired members and set it to
// that expiry; a release that leaves no live holder and no live intent deletes the key. A sorted set with no live
// holder (and, for a lock, no live intent) is a free key, whatever its metadata says. Every grant and every conversion
// draws a new fencing token from the slot's counter KEYS[2], so tokens strictly increase across modes. What may let a
// waiter in is published on the channel (the lock key, given as an ARGV as in scripts.hpp), before the write. On Redis
// 7, the acquiring and converting scripts first check that the user may run every write they may make, and publish
// (NOPERM otherwise, nothing written); the others publish before they write, as release does.
//
// Owner tokens are as for exclusive holds: one per grant, the same for every retry of it, so a
// retried attempt whose answer was lost finds its hold and gets it back (renewed). A
// conversion's owner token should be the hold's own: then releasing the hold also drops the
// intent its conversion may have left, and two conversions that would wait for each other are
// found (KEYLOCK_DEADLOCK).
//
// Replies (RESP2; a Lua number is an integer reply):
//   acquire_shared, acquire_permits   {g, fence_1..fence_g[, ms]}: the first g of the requests
//                                     granted, in order; ms if the others wait (one request:
//                                     {1, fence} | {0, ms})           | error
//   release_member, extend_member     1 | 0
//   convert                           {1, fence, member or value} | {0, ms} | {-1} | error
//   drop_intent                       1 | 0
//   abandon_member                    members removed
//   inspect_modes                     {kind, limit, in use, {member, ms, ...}, {owner, ms, ...}}
// Error replies start with a code: KEYLOCK_MODE (a lock asked as a semaphore or the other way
// round), KEYLOCK_LIMIT (another limit than the holders'), KEYLOCK_PERMITS (n not in 1..limit),
// KEYLOCK_CONVERT (no such conversion), KEYLOCK_DEADLOCK, WRONGTYPE (a key that is not
// keylock's), NOPERM (the user's rights).
#pragma once

#include <string>

#include "scripts.hpp"

namespace keylock::redis::scripts {

// Pieces of the mode scripts. `member_of(mode, fence, owner)`: a holder's member.
// `create(kind_member, member, lease, now, kind)`: the key made a sorted set of its metadata and
// one holder (deleted first unless its TYPE was 'none': each call costs the server about 1 us).
// `later(a, b)`: the later of two expiries, `a` possibly nil. `look(now)`: the key's live members
// by name only (scores cost the server more to format than the rest of a call): `kind` 'lock',
// 'semaphore' (then `limit`) or nil (not keylock's), `holders` (their members) and `intents`
// (their members, `~intent:<owner>`). `reach(lease)`: raises the key's expiry to `lease` ms if it
// is shorter (never lowers it: a member written now expires last, unless another process's
// lease is longer). `regrant(holders, mode, owner, at)`: the fencing token of `owner`'s member of
// `mode` among `holders`, its expiry moved to `at` (a retried request finding the grant its lost
// answer carried), else nil. `store(add, renewed, lease, now)`: writes the new members `add`
// (score, member, ...) to an existing key, prunes the expired, and raises the key's expiry if
// anything was added or renewed.
inline constexpr const char* mode_pieces = R"lua(
local function member_of(mode, fence, owner)
  return mode .. ':' .. string.format('%d', fence) .. ':' .. owner
end
local function create(meta, member, lease, now, kind)
  if kind ~= 'none' then
    redis.call('DEL', KEYS[1])
  end
  redis.call('ZADD', KEYS[1], '+inf', meta, string.format('%d', now + lease), member)
  redis.call('PEXPIRE', KEYS[1], string.format('%d', lease))
end
local function later(a, b)
  if a == nil or b > a then
    return b
  end
  return a
end
local function look(now)
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
  local s = {holders = {}, intents = {}}
  for _, m in ipairs(live) do
    if string.byte(m, 1) ~= 126 then
      s.holders[#s.holders + 1] = m
    elseif m == '~kind:lock' then
      s.kind = 'lock'
    elseif string.sub(m, 1, 7) == '~limit:' then
      s.kind, s.limit = 'semaphore', tonumber(string.sub(m, 8))
    elseif string.sub(m, 1, 8) == '~intent:' then
      s.intents[#s.intents + 1] = m
    end
  end
  return s
end
local function reach(lease)
  if redis.call('PTTL', KEYS[1]) < lease then
    redis.call('PEXPIRE', KEYS[1], string.format('%d', lease))
  end
end
local function store(add, renewed, lease, now)
  if #add > 0 then
    redis.call('ZADD', KEYS[1], unpack(add))
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
  end
  if #add > 0 or renewed then
    reach(lease)
  end
end
local function regrant(holders, mode, owner, at)
  for _, m in ipairs(holders) do
    local f, o = string.match(m, '^' .. mode .. ':(%d+):(.+)$')
    if o == owner then
      redis.call('ZADD', KEYS[1], 'XX', at, m)
      return tonumber(f)
    end
  end
  return nil
end
)lua";

inline std::string mode_script(const char* body) {
    return std::string(denied) + next_fence + lock_zset + mode_pieces + body;
}

// KEYS[1] the lock key, KEYS[2] its fencing counter. ARGV[1] lease in ms, ARGV[2] 's' (shared)
// or 'u' (upgrade), then one pair per request, in the order they are to be served: its owner
// token, and '1' if an earlier attempt of it went unanswered (a hold of that owner may be there:
// found, it is renewed and granted again), else '0'. Grants the requests in order as far as they
// fit, and stops at the first that does not (none overtakes another): a request fits if the key
// is free, or a lock's sorted set with no live intent of another owner (and, for 'u', no other
// upgrade holder, one granted earlier in the same call included). Replies {g, fence_1, …,
// fence_g} when all g requests were granted, else {g, fence_1, …, fence_g, ms}: request g + 1
// and those after it wait, ms until the blocker's lease ends (the exclusive holder's, -1: no
// expiry; or the latest of the intents' and the upgrade holder's). So one request gets {1,
// fence} or {0, ms}. Request i's member is `<mode>:<fence_i>:<owner_i>`. Errors: KEYLOCK_MODE on
// a semaphore with live holders, WRONGTYPE on a key of another type, an `ERR keylock:` for a
// mode other than 's' or 'u' or no request.
//
// Only the live members' names are read (their scores only for a reply that waits), a holder's
// owner only for a retried request; a grant on a sorted set prunes the expired members, and the
// key's expiry is only ever raised here.
inline const std::string acquire_shared_script = mode_script(R"lua(
local refused = denied('$PUBLISH', KEYS[1], '') or zset_refused()
if refused then
  return refused
end
local lease, mode, count = tonumber(ARGV[1]), ARGV[2], (#ARGV - 2) / 2
if (mode ~= 's' and mode ~= 'u') or lease == nil or count < 1 or count ~= math.floor(count) then
  return redis.error_reply('ERR keylock: the mode is s or u, not ' .. tostring(mode) .. ', with a lease and ' ..
    'an owner token and a retry flag per request')
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  return {0, redis.call('PTTL', KEYS[1])}
end
if kind ~= 'none' and kind ~= 'zset' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
local now = now_ms()
local s = nil
if kind == 'zset' then
  s = look(now)
  if not s.kind then
    return redis.error_reply('WRONGTYPE the lock key holds a zset, not a lock')
  end
  if #s.holders == 0 and #s.intents == 0 then
    s = nil
  end
end
local at = string.format('%d', now + lease)
local out = {0}
if s == nil then
  local n = count
  if mode == 'u' then
    n = 1
  end
  local add = {'+inf', '~kind:lock'}
  for i = 1, n do
    local fence = next_fence()
    out[i + 1] = fence
    add[#add + 1] = at
    add[#add + 1] = member_of(mode, fence, ARGV[1 + 2 * i])
  end
  out[1] = n
  if kind ~= 'none' then
    redis.call('DEL', KEYS[1])
  end
  redis.call('ZADD', KEYS[1], unpack(add))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', lease))
  if n < count then
    out[#out + 1] = lease
  end
  return out
end
if s.kind == 'semaphore' then
  return redis.error_reply('KEYLOCK_MODE the key is a semaphore (limit ' .. string.format('%d', s.limit) .. '), not a lock')
end
local upgrader, upgrader_at = nil, nil
if mode == 'u' then
  for _, m in ipairs(s.holders) do
    if string.byte(m, 1) == 117 then
      upgrader = m
    end
  end
end
local add, wait, renewed = {}, nil, false
for i = 1, count do
  local owner, fence = ARGV[1 + 2 * i], nil
  if ARGV[2 + 2 * i] == '1' then
    fence = regrant(s.holders, mode, owner, at)
    renewed = renewed or fence ~= nil
  end
  if fence == nil then
    local blocked = nil
    for _, intent in ipairs(s.intents) do
      if string.sub(intent, 9) ~= owner then
        blocked = later(blocked, tonumber(redis.call('ZSCORE', KEYS[1], intent)))
      end
    end
    if upgrader then
      blocked = later(blocked, upgrader_at or tonumber(redis.call('ZSCORE', KEYS[1], upgrader)))
    end
    if blocked then
      wait = blocked - now
      break
    end
    fence = next_fence()
    local m = member_of(mode, fence, owner)
    add[#add + 1] = at
    add[#add + 1] = m
    if mode == 'u' then
      upgrader, upgrader_at = m, now + lease
    end
  end
  out[1] = i
  out[i + 1] = fence
end
store(add, renewed, lease, now)
if wait then
  out[#out + 1] = wait
end
return out
)lua");
inline const std::string acquire_shared = publishing(acquire_shared_script, "PUBLISH");
inline const std::string acquire_shared_sharded = publishing(acquire_shared_script, "SPUBLISH");

// KEYS[1] the lock key, KEYS[2] its fencing counter. ARGV[1] lease in ms, ARGV[2] the limit,
// then one triple per request, in the order they are to be served: its owner token, n (its
// permits), and '1' if an earlier attempt of it went unanswered (found, its hold is renewed and
// granted again), else '0'. Grants the requests in order as far as they fit, and stops at the
// first that does not (none overtakes another): they fit if the key is free (the limit is then
// this one's) or a semaphore of the same limit, and the live holders (those granted earlier in
// the same call included) hold at most limit - n. Replies {g, fence_1, …, fence_g} when all g
// were granted, else {g, fence_1, …, fence_g, ms until the earliest live holder's lease ends}.
// So one request gets {1, fence} or {0, ms}. Request i's member is `p<n_i>:<fence_i>:<owner_i>`.
// Errors (before anything is granted): KEYLOCK_PERMITS (an n or the limit not a whole number,
// the limit below 1, an n not from 1 to the limit, no request), KEYLOCK_LIMIT (the live
// holders' limit is another), KEYLOCK_MODE (an exclusive hold, or live shared holds),
// WRONGTYPE (a key of another type). Reads and writes as acquire_shared does.
inline const std::string acquire_permits_script = mode_script(R"lua(
local refused = denied('$PUBLISH', KEYS[1], '') or zset_refused()
if refused then
  return refused
end
local lease, limit, count = tonumber(ARGV[1]), tonumber(ARGV[2]), (#ARGV - 2) / 3
local ns = {}
local bad = lease == nil or limit == nil or limit ~= math.floor(limit) or limit < 1 or count < 1 or
  count ~= math.floor(count)
for i = 1, math.floor(count) do
  local n = tonumber(ARGV[1 + 3 * i])
  if n == nil or n ~= math.floor(n) or n < 1 or (limit ~= nil and n > limit) then
    bad = true
  end
  ns[i] = n
end
if bad then
  return redis.error_reply('KEYLOCK_PERMITS asked for ' .. tostring(ARGV[4]) .. ' permits of a limit of ' ..
    tostring(ARGV[2]) .. ': from 1 to the limit, which is at least 1')
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  return redis.error_reply('KEYLOCK_MODE the key is a lock, not a semaphore')
end
if kind ~= 'none' and kind ~= 'zset' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a semaphore')
end
local now = now_ms()
local s = nil
if kind == 'zset' then
  s = look(now)
  if not s.kind then
    return redis.error_reply('WRONGTYPE the lock key holds a zset, not a semaphore')
  end
  if #s.holders == 0 and #s.intents == 0 then
    s = nil
  end
end
local at = string.format('%d', now + lease)
local out, add, used, wait, renewed = {0}, {}, 0, nil, false
if s == nil then
  add = {'+inf', '~limit:' .. string.format('%d', limit)}
else
  if s.kind == 'lock' then
    return redis.error_reply('KEYLOCK_MODE the key is a lock, not a semaphore')
  end
  if s.limit ~= limit then
    return redis.error_reply('KEYLOCK_LIMIT the key is a semaphore of limit ' .. string.format('%d', s.limit) ..
      ', asked with limit ' .. string.format('%d', limit))
  end
  for _, m in ipairs(s.holders) do
    if string.byte(m, 3) == 58 then
      used = used + string.byte(m, 2) - 48  -- `p<digit>:`, without making a string
    else
      used = used + (tonumber(string.sub(m, 2, string.find(m, ':', 3, true) - 1)) or 1)
    end
  end
end
for i = 1, count do
  local owner, n, fence = ARGV[3 * i], ns[i], nil
  if s ~= nil and ARGV[2 + 3 * i] == '1' then
    fence = regrant(s.holders, 'p' .. string.format('%d', n), owner, at)
    renewed = renewed or fence ~= nil
  end
  if fence == nil then
    if used + n > limit then
      wait = lease
      if s ~= nil then
        local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf', 'WITHSCORES',
          'LIMIT', 0, 1)
        if first[2] ~= nil and tonumber(first[2]) < now + lease then
          wait = tonumber(first[2]) - now
        end
      end
      break
    end
    fence = next_fence()
    add[#add + 1] = at
    add[#add + 1] = member_of('p' .. string.format('%d', n), fence, owner)
    used = used + n
  end
  out[1] = i
  out[i + 1] = fence
end
if s == nil then
  if kind ~= 'none' then
    redis.call('DEL', KEYS[1])
  end
  redis.call('ZADD', KEYS[1], unpack(add))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', lease))
else
  store(add, renewed, lease, now)
end
if wait then
  out[#out + 1] = wait
end
return out
)lua");
inline const std::string acquire_permits = publishing(acquire_permits_script, "PUBLISH");
inline const std::string acquire_permits_sharded = publishing(acquire_permits_script, "SPUBLISH");

// `live_score(member)`: the member's expiry if it is a live member of the key's sorted set, else
// nil (a key of another type included: redis.pcall returns ZSCORE's WRONGTYPE as a table).
inline constexpr const char* live_score = R"lua(
local function live_score(member, now)
  local score = redis.pcall('ZSCORE', KEYS[1], member)
  if type(score) ~= 'string' or tonumber(score) <= now then
    return nil
  end
  return tonumber(score)
end
)lua";

// KEYS[1] the lock key. ARGV[1] a holder's member, ARGV[2] the channel. Removes the member if it
// is a live holder, with the intent its owner's conversion may have left, and publishes (before
// it writes). Returns 1 if it was, else 0 (expired, or never there: the hold was lost). The key
// goes, expired members and metadata with it, when no live holder and no live intent is left;
// else its expiry stays (at least its last member's: every other script raises it to theirs).
inline const std::string release_member_script = std::string(R"lua(
local member = ARGV[1]
if string.byte(member, 1) == 126 then
  return 0
end
local score = redis.pcall('ZSCORE', KEYS[1], member)
if type(score) ~= 'string' then
  return 0
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if tonumber(score) <= tonumber(now) then
  return 0
end
redis.call('$PUBLISH', ARGV[2], '')
local owner = string.match(member, '^[sup]%d*:%d+:(.+)$')
if owner then
  redis.call('ZREM', KEYS[1], member, '~intent:' .. owner)
else
  redis.call('ZREM', KEYS[1], member)
end
if redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '(+inf', 'LIMIT', 0, 1)[1] == nil then
  redis.call('DEL', KEYS[1])
end
return 1
)lua");
inline const std::string release_member = publishing(release_member_script, "PUBLISH");
inline const std::string release_member_sharded = publishing(release_member_script, "SPUBLISH");

// KEYS[1] the lock key. ARGV[1] a holder's member, ARGV[2] lease in ms. Renews the member's lease
// (and the key's expiry) if it is a live holder: 1, else 0.
inline const std::string extend_member = std::string(lock_zset) + live_score + R"lua(
local member = ARGV[1]
local now = now_ms()
if string.sub(member, 1, 1) == '~' or live_score(member, now) == nil then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + tonumber(ARGV[2])), member)
settle(now)
return 1
)lua";

// KEYS[1] the lock key, KEYS[2] its fencing counter. ARGV[1] the hold: a member `s:…`/`u:…`, or
// an exclusive hold's value `<fence>:<owner>`; ARGV[2] the owner token of the converted hold
// (best the hold's own, see above); ARGV[3] lease in ms; ARGV[4] the target 'x', 's' or 'u';
// ARGV[5] the channel. Every conversion draws a new fencing token.
//   u → x, s → x: when no other live holder is left: the key becomes the string
//     `<fence>:<owner>`. Else records the intent `~intent:<owner>` (one lease) and returns
//     {0, ms until the other holders' leases end}; an s → x while another holder's owner has an
//     intent too (both would wait for each other) is KEYLOCK_DEADLOCK, and a u → x that finds
//     such a shared holder wakes it (publishes) to be told so.
//   s → u: when no other live upgrade holder, else {0, ms until its lease ends}; intents do not
//     stop it (the holder is in already: a writer waits for it either way).
//   x → s, x → u, u → s: always; publishes (readers may come in).
//   s → u and u → s drop the intent the hold's owner may have left.
// Returns {1, fencing token, the new member or value}, {0, ms}, or {-1} if the hold is not there
// any more (lost) and no converted hold of the owner is either: one found (a retry whose answer
// was lost) is renewed and returned as {1, …}. Errors: KEYLOCK_CONVERT (permits, an unknown
// target, or the mode the hold has already), KEYLOCK_DEADLOCK, NOPERM.
inline const std::string convert_script = mode_script(R"lua(
local refused = denied('$PUBLISH', ARGV[5], '') or denied('SET', KEYS[1], '0', 'PX', '1') or zset_refused()
if refused then
  return refused
end
local source, owner, lease, target = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local from = string.match(source, '^([sup]%d*):%d+:.')
if from == nil then
  from = 'x'
end
if (target ~= 'x' and target ~= 's' and target ~= 'u') or target == from or (from ~= 'x' and from ~= 's' and from ~= 'u') then
  return redis.error_reply('KEYLOCK_CONVERT a hold of mode ' .. from .. ' cannot be converted to ' .. tostring(target))
end
local kind = redis.call('TYPE', KEYS[1]).ok
local now = now_ms()
local s = {holders = {}, intents = {}}
if kind == 'zset' then
  s = survey(now)
  if s.kind ~= 'lock' then
    s = {holders = {}, intents = {}}
  end
end
local mine = nil
if from == 'x' then
  mine = kind == 'string' and redis.call('GET', KEYS[1]) == source
else
  for _, h in ipairs(s.holders) do
    if h.member == source then
      mine = h
    end
  end
end
if not mine then
  if target == 'x' and kind == 'string' then
    local value = redis.call('GET', KEYS[1])
    local n = #owner
    if #value > n + 1 and string.sub(value, -n - 1) == ':' .. owner then
      redis.call('PEXPIRE', KEYS[1], string.format('%d', lease))
      return {1, tonumber(string.sub(value, 1, -n - 2)), value}
    end
  elseif target ~= 'x' then
    for _, h in ipairs(s.holders) do
      if h.mode == target and h.owner == owner then
        redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + lease), h.member)
        settle(now)
        return {1, h.fence, h.member}
      end
    end
  end
  return {-1}
end
if from == 'x' then
  local fence = next_fence()
  local member = member_of(target, fence, owner)
  redis.call('$PUBLISH', ARGV[5], '')
  create('~kind:lock', member, lease, now, kind)
  return {1, fence, member}
end
if target == 'x' then
  local others, intent = nil, {}
  for _, i in ipairs(s.intents) do
    intent[i.owner] = true
  end
  local converting = false
  for _, h in ipairs(s.holders) do
    if h.member ~= source then
      others = later(others, h.at)
      if intent[h.owner] then
        converting = true
      end
    end
  end
  if others == nil then
    local fence = next_fence()
    local value = string.format('%d', fence) .. ':' .. owner
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[1], value, 'PX', string.format('%d', lease))
    return {1, fence, value}
  end
  if converting and from == 's' then
    return redis.error_reply('KEYLOCK_DEADLOCK another holder of the key waits to be its writer: ' ..
      'a shared hold cannot wait for it (give the shared hold up, or take an upgrade hold)')
  end
  if converting then
    redis.call('$PUBLISH', ARGV[5], '')
  end
  redis.call('ZADD', KEYS[1], string.format('%d', now + lease), '~intent:' .. owner)
  settle(now)
  return {0, others - now}
end
if target == 'u' then
  local blocked = nil
  for _, h in ipairs(s.holders) do
    if h.mode == 'u' and h.member ~= source then
      blocked = later(blocked, h.at)
    end
  end
  if blocked then
    return {0, blocked - now}
  end
end
local fence = next_fence()
local member = member_of(target, fence, owner)
if target == 's' then
  redis.call('$PUBLISH', ARGV[5], '')
end
redis.call('ZREM', KEYS[1], source, '~intent:' .. mine.owner)
redis.call('ZADD', KEYS[1], string.format('%d', now + lease), member)
settle(now)
return {1, fence, member}
)lua");
inline const std::string convert = publishing(convert_script, "PUBLISH");
inline const std::string convert_sharded = publishing(convert_script, "SPUBLISH");

// KEYS[1] the lock key. ARGV[1] an owner token, ARGV[2] the channel. Removes the owner's live
// intent (a writer that gave up, or got its lock elsewhere) and publishes, so the readers it
// kept out look again. Returns 1 if there was one, else 0.
inline const std::string drop_intent_script = std::string(lock_zset) + live_score + R"lua(
local now = now_ms()
local intent = '~intent:' .. ARGV[1]
if live_score(intent, now) == nil then
  return 0
end
redis.call('$PUBLISH', ARGV[2], '')
redis.call('ZREM', KEYS[1], intent)
settle(now)
return 1
)lua";
inline const std::string drop_intent = publishing(drop_intent_script, "PUBLISH");
inline const std::string drop_intent_sharded = publishing(drop_intent_script, "SPUBLISH");

// KEYS[1] the lock key. ARGV[1] an owner token, ARGV[2] the channel. Gives back a shared, upgrade
// or permit hold taken for an owner token whose attempt's answer never came and that no attempt
// will retry: removes every live member of that owner (and its intent), publishing first.
// Returns how many members it removed.
inline const std::string abandon_member_script = std::string(lock_zset) + R"lua(
local now = now_ms()
local live = redis.pcall('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
if type(live) ~= 'table' or live.err then
  return 0
end
local gone = {}
for _, m in ipairs(live) do
  if string.match(m, '^[sup]%d*:%d+:(.+)$') == ARGV[1] then
    gone[#gone + 1] = m
  end
end
if #gone == 0 then
  return 0
end
redis.call('$PUBLISH', ARGV[2], '')
gone[#gone + 1] = '~intent:' .. ARGV[1]
redis.call('ZREM', KEYS[1], unpack(gone))
settle(now)
return #gone - 1
)lua";
inline const std::string abandon_member = publishing(abandon_member_script, "PUBLISH");
inline const std::string abandon_member_sharded = publishing(abandon_member_script, "SPUBLISH");

// For operators (`keylock status`), any key; writes nothing. Returns
// {kind, limit, in use, holders, intents}:
//   kind     'none', 'exclusive' (a string), 'shared' (a lock's sorted set), 'semaphore', or the
//            Redis type of a key that is not keylock's ('hash', 'zset', …)
//   limit    a semaphore's limit, else 0
//   in use   permits held (semaphore), live holders (shared), 1 (exclusive), else 0
//   holders  flat {member, remaining ms, …}: live members (`s:…`, `u:…`, `p<n>:…`), or for an
//            exclusive hold {its value, its PTTL}
//   intents  flat {owner token, remaining ms, …} of the writers waiting
inline const std::string inspect_modes = std::string(lock_zset) + R"lua(
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  return {'none', 0, 0, {}, {}}
end
if kind == 'string' then
  return {'exclusive', 0, 1, {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}, {}}
end
if kind ~= 'zset' then
  return {kind, 0, 0, {}, {}}
end
local now = now_ms()
local s = survey(now)
if not s.kind then
  return {'zset', 0, 0, {}, {}}
end
local holders, intents, used = {}, {}, 0
for _, h in ipairs(s.holders) do
  holders[#holders + 1] = h.member
  holders[#holders + 1] = h.at - now
  used = used + h.n
end
for _, i in ipairs(s.intents) do
  intents[#intents + 1] = i.owner
  intents[#intents + 1] = i.at - now
end
if s.kind == 'lock' then
  return {'shared', 0, #s.holders, holders, intents}
end
return {'semaphore', s.limit, used, holders, intents}
)lua";

}  // namespace keylock::redis::scripts
