-- grant.lua: add credit to a workspace's live balances, idempotent by reference.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  reference (unique per workspace; the ledger entry's reference)
-- ARGV[2]  kind: "free" (free-credit grant) | "funds" (paid top-up)
-- ARGV[3]  amount (micro-dollars, > 0)
-- ARGV[4]  app id for funds tied to one app (its "app" balance, and the workspace's "apps"
--          sum), "" for the shared "pool" (balance fields: meter/redis_layer/keys.py)
-- ARGV[5]  free-credit expiry (ms; kind "free" only)
-- ARGV[6]  low-balance threshold (micro-dollars), unless the workspace has its own (lowt)
-- ARGV[7]  now (ms): free credits already past their validity lapse (keyed as admit.lua
--          keys a lapse: event id and ledger reference of the store) before a new free
--          grant extends it (admit.lua lapses them lazily, so they may still be there)
-- Returns 1 when applied, 0 when the reference was already applied,
-- -1 unknown workspace (or one lost and not rebuilt yet), -2 unknown app.
--
-- The marker is the field "g:<reference>" of the workspace hash, written with the credit:
-- a marker cannot be lost while its balance stays (eviction takes whole keys). The
-- separate key P:g:<reference> of earlier versions counts as a marker too (and is moved
-- into the hash), and is still written, for replicas of an earlier version that read it.

local P = KEYS[1]
local ref, kind, amount, app = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local wsk = P .. ':ws'
-- The workspace whole, not a leftover of a lost one (a late increment makes a hash
-- without "type"): rebuild.lua replaces such a hash with what it read from the store, so
-- a credit made into it meanwhile would be gone, its marker kept. Refused, the caller
-- retries (the provider redelivers; projection checks repair grants) once it is rebuilt.
if redis.call('HEXISTS', wsk, 'type') == 0 then return -1 end
if app ~= '' and redis.call('EXISTS', P .. ':a:' .. app) == 0 then return -2 end
local mark, legacy = 'g:' .. ref, P .. ':g:' .. ref
if redis.call('HEXISTS', wsk, mark) == 1 then return 0 end
if redis.call('EXISTS', legacy) == 1 then
  redis.call('HSET', wsk, mark, '1')
  return 0
end
redis.call('HSET', wsk, mark, '1')
redis.call('SET', legacy, '1')

if kind == 'free' then
  local w = redis.call('HMGET', wsk, 'free', 'free_exp', 'free_granted', 'free_lapsed')
  local left, exp = tonumber(w[1] or '0'), tonumber(w[2] or '0')
  local now = tonumber(ARGV[7])
  if left > 0 and exp > 0 and now >= exp then
    -- The expiry's own key, as admit.lua gives it (a set that lapsed before: with the
    -- lapsed total before this lapse): the store lapses it once.
    local set = string.format('%d:%d', exp, tonumber(w[3] or '0'))
    local once = 'expiry:' .. set
    local before = redis.call('HINCRBY', wsk, 'lapsed', left) - left
    if w[4] == set then once = once .. ':' .. string.format('%d', before) end
    redis.call('HSET', wsk, 'free', '0')
    -- At least now x 1000, as admit.lua's ids: never an id a lost write gave.
    local seq = math.max(tonumber(redis.call('HGET', wsk, 'seq') or '0') + 1, now * 1000)
    redis.call('HSET', wsk, 'seq', string.format('%d', seq))
    redis.call('RPUSH', P .. ':ev', cjson.encode({id = 'e' .. string.format('%d', seq),
      type = 'free_credits.expired', at = now, amount = left, once = once}))
  end
  redis.call('HINCRBY', wsk, 'free', amount)
  redis.call('HINCRBY', wsk, 'free_granted', amount)
  local exp = tonumber(ARGV[5])
  if exp > tonumber(redis.call('HGET', wsk, 'free_exp') or '0') then
    redis.call('HSET', wsk, 'free_exp', ARGV[5])
  end
elseif app ~= '' then
  redis.call('HINCRBY', P .. ':a:' .. app, 'app', amount)
  redis.call('HINCRBY', wsk, 'apps', amount)
else
  redis.call('HINCRBY', wsk, 'pool', amount)
end

-- Money arrived: apps may serve again and the low-balance alert may fire anew.
for _, id in ipairs(redis.call('SMEMBERS', P .. ':apps')) do
  redis.call('HSET', P .. ':a:' .. id, 'inactive', '0')
end
local w = redis.call('HMGET', wsk, 'free', 'pool', 'apps')
local total = tonumber(w[1] or '0') + tonumber(w[2] or '0') + tonumber(w[3] or '0')
local low = tonumber(redis.call('HGET', wsk, 'lowt') or '') or tonumber(ARGV[6])
if total >= low then redis.call('HSET', wsk, 'low', '0') end
return 1
