-- claim.lua: take one flush bucket (or the events list) out of the live keys, atomically.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"; every key below is derived from it (meter/redis_layer/keys.py):
--          P:ag:<b> | P:sr:<b> | P:ev (live), P:agi | P:sri (index), P:cl (claims),
--          P:c:<kind>:<b>:<gen> (claimed copy), P:lease:<kind>:<b>, P:ws (field seq),
--          P:fl (claim records), P:clk (the known gen of each outstanding claim).
-- ARGV[1]  kind: "ag" aggregates | "sr" billing-session records | "ev" events list
-- ARGV[2]  bucket start (s); "0" for the events list
-- ARGV[3]  lease (ms)
-- ARGV[4]  owner: the claiming flusher's token
-- ARGV[5]  "1" to keep the bucket in its index (claimed before it closed: writes may follow
--          into a fresh live hash, which then must still be found). An open billing-session
--          bucket is copied, not moved: admissions still read its conversations, and the
--          store keeps the newest snapshot of each session.
-- ARGV[6]  now (ms, the flusher's clock): a new gen is at least now x 1000, so a Redis that
--          lost recent writes (failover, restart from an older file) never gives a gen again
-- ARGV[7]  records horizon (ms): claim records older than this are dropped
-- Returns {code, gen, items, known}
--   code 0: claimed now under a new gen; items = the claimed contents
--   code 1: re-taken: an unacked claim whose lease expired (or is ours), SAME gen, contents
--   code 2: busy: another flusher holds the lease of the outstanding claim (gen given)
--   code 3: nothing to claim (the bucket was dropped from the index)
--   items: a hash as flat field, value pairs; the events list as its entries
--   known: every batch of this bucket the store may hold with a gen above it was claimed
--          in a history this Redis lost (see meter/usage/claims.py); -1 unknown (a claim
--          taken by an earlier version)
--
-- P:fl is a sorted set: member "<kind>:<b>" scored with the gen of that bucket's newest
-- claim, and member "~" scored with the gen at or below which a bucket without a member
-- counts as known (0 from the workspace's creation; raised as old members are dropped).

local P, kind, b = KEYS[1], ARGV[1], ARGV[2]
local lease_ms, owner, keep = tonumber(ARGV[3]), ARGV[4], ARGV[5] == '1'
local now, horizon = tonumber(ARGV[6]), tonumber(ARGV[7])
local reg = P .. ':cl'
local field = kind .. ':' .. b
local lease = P .. ':lease:' .. kind .. ':' .. b
local D = function(x) return string.format('%d', x) end

local function contents(key)
  if kind == 'ev' then return redis.call('LRANGE', key, 0, -1) end
  return redis.call('HGETALL', key)
end

local gen = redis.call('HGET', reg, field)
if gen then
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then return {2, tonumber(gen), {}, '-1'} end
  redis.call('SET', lease, owner, 'PX', lease_ms)
  local known = redis.call('HGET', P .. ':clk', field) or '-1'
  return {1, tonumber(gen), contents(P .. ':c:' .. field .. ':' .. gen), known}
end

local live, index
if kind == 'ev' then
  live = P .. ':ev'
else
  live, index = P .. ':' .. kind .. ':' .. b, P .. ':' .. kind .. 'i'
end
if redis.call('EXISTS', live) == 0 then
  if index and not keep then redis.call('ZREM', index, b) end
  return {3, 0, {}, '-1'}
end
local wsk, fl = P .. ':ws', P .. ':fl'
local seq = tonumber(redis.call('HGET', wsk, 'seq') or '0')
local known = redis.call('ZSCORE', fl, field) or redis.call('ZSCORE', fl, '~')
if not known then
  -- A workspace an earlier version flushed: what it claimed so far is known.
  known = seq
  redis.call('ZADD', fl, known, '~')
end
known = D(tonumber(known))
-- As an integer string: Lua writes a number above 10^14 as "1.8e+15" (the id counter
-- starts at 10^15 and more after a rebuild), which is not the key the flusher acks.
gen = D(math.max(seq + 1, now * 1000))
redis.call('HSET', wsk, 'seq', gen)
local ck = P .. ':c:' .. field .. ':' .. gen
if keep and kind == 'sr' then
  redis.call('COPY', live, ck)
else
  redis.call('RENAME', live, ck)
end
if index and not keep then redis.call('ZREM', index, b) end
redis.call('HSET', reg, field, gen)
redis.call('HSET', P .. ':clk', field, known)
redis.call('SET', lease, owner, 'PX', lease_ms)
redis.call('ZADD', fl, gen, field)
local cut = D((now - horizon) * 1000)
redis.call('ZREMRANGEBYSCORE', fl, '-inf', '(' .. cut)
redis.call('ZADD', fl, 'GT', cut, '~')
return {0, tonumber(gen), contents(ck), known}
