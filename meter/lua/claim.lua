-- claim.lua: take one flush bucket (or the events list) out of the live keys, atomically.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"; every key below is derived from it (meter/redis_layer/keys.py):
--          P:ag:<b> | P:sr:<b> | P:ev (live), P:agi | P:sri (index), P:cl (claims),
--          P:c:<kind>:<b>:<gen> (claimed copy), P:lease:<kind>:<b>, P:ws (field seq).
-- ARGV[1]  kind: "ag" aggregates | "sr" billing-session records | "ev" events list
-- ARGV[2]  bucket start (s); "0" for the events list
-- ARGV[3]  lease (ms)
-- ARGV[4]  owner: the claiming flusher's token
-- ARGV[5]  "1" to keep the bucket in its index (claimed before it closed: writes may follow
--          into a fresh live hash, which then must still be found). An open billing-session
--          bucket is copied, not moved: admissions still read its conversations, and the
--          store keeps the newest snapshot of each session.
-- Returns {code, gen, items}
--   code 0: claimed now under a new gen; items = the claimed contents
--   code 1: re-taken: an unacked claim whose lease expired (or is ours), SAME gen, contents
--   code 2: busy: another flusher holds the lease of the outstanding claim (gen given)
--   code 3: nothing to claim (the bucket was dropped from the index)
--   items: a hash as flat field, value pairs; the events list as its entries

local P, kind, b = KEYS[1], ARGV[1], ARGV[2]
local lease_ms, owner, keep = tonumber(ARGV[3]), ARGV[4], ARGV[5] == '1'
local reg = P .. ':cl'
local field = kind .. ':' .. b
local lease = P .. ':lease:' .. kind .. ':' .. b

local function contents(key)
  if kind == 'ev' then return redis.call('LRANGE', key, 0, -1) end
  return redis.call('HGETALL', key)
end

local gen = redis.call('HGET', reg, field)
if gen then
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then return {2, tonumber(gen), {}} end
  redis.call('SET', lease, owner, 'PX', lease_ms)
  return {1, tonumber(gen), contents(P .. ':c:' .. field .. ':' .. gen)}
end

local live, index
if kind == 'ev' then
  live = P .. ':ev'
else
  live, index = P .. ':' .. kind .. ':' .. b, P .. ':' .. kind .. 'i'
end
if redis.call('EXISTS', live) == 0 then
  if index and not keep then redis.call('ZREM', index, b) end
  return {3, 0, {}}
end
-- As an integer string: Lua writes a number above 10^14 as "1.8e+15" (the id counter
-- starts at 10^15 and more after a rebuild), which is not the key the flusher acks.
gen = string.format('%d', redis.call('HINCRBY', P .. ':ws', 'seq', 1))
local ck = P .. ':c:' .. field .. ':' .. gen
if keep and kind == 'sr' then
  redis.call('COPY', live, ck)
else
  redis.call('RENAME', live, ck)
end
if index and not keep then redis.call('ZREM', index, b) end
redis.call('HSET', reg, field, gen)
redis.call('SET', lease, owner, 'PX', lease_ms)
return {0, tonumber(gen), contents(ck)}
