-- reverse.lua: take paid funds back from a workspace's live balances (a payment refunded
-- or disputed at the provider, meter/store/reversals.py), idempotent by reference.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  reference (unique per workspace; the reversal's ledger reference)
-- ARGV[2]  amount taken back (micro-dollars, > 0)
-- ARGV[3]  app id for funds tied to one app (its "app" balance and the workspace's
--          "apps" sum), "" for the shared "pool"
-- ARGV[4]  now (ms), optional: when given and the reversal takes the paid total ("pool" +
--          "apps") from above zero to zero or below, "paid_balance.zero" is announced
--          (as admit.lua announces it; the id as grant.lua makes one)
-- Returns 1 when applied, 0 when the reference was already applied,
-- -1 unknown workspace (or one lost and not rebuilt yet), -2 unknown app.
--
-- The balance may go below zero: funds already spent are not taken back from anywhere
-- else (never from free credits); admission then refuses what the app can no longer pay
-- for (admit_rules.lua counts a negative balance against the others, and takes nothing
-- from it). The marker is grant.lua's: the field "g:<reference>" of the workspace hash,
-- written with the debit (rebuild.lua and reconcile mark reversals like grants). No app
-- is reactivated and no alert flag is reset: money left, it did not arrive.

local P = KEYS[1]
local ref, amount, app = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local wsk = P .. ':ws'
-- A leftover of a lost workspace (no "type") is replaced whole by rebuild.lua, which
-- reads this reversal from the store: refused here, retried once it is rebuilt.
if redis.call('HEXISTS', wsk, 'type') == 0 then return -1 end
if app ~= '' and redis.call('EXISTS', P .. ':a:' .. app) == 0 then return -2 end
local mark = 'g:' .. ref
if redis.call('HEXISTS', wsk, mark) == 1 then return 0 end
redis.call('HSET', wsk, mark, '1')
local w = redis.call('HMGET', wsk, 'pool', 'apps')
local before = tonumber(w[1] or '0') + tonumber(w[2] or '0')
if app ~= '' then
  redis.call('HINCRBY', P .. ':a:' .. app, 'app', -amount)
  redis.call('HINCRBY', wsk, 'apps', -amount)
else
  redis.call('HINCRBY', wsk, 'pool', -amount)
end
local now = tonumber(ARGV[4] or '')
if now and before > 0 and before - amount <= 0 then
  local seq = math.max(tonumber(redis.call('HGET', wsk, 'seq') or '0') + 1, now * 1000)
  redis.call('HSET', wsk, 'seq', string.format('%d', seq))
  redis.call('RPUSH', P .. ':ev', cjson.encode({id = 'e' .. string.format('%d', seq),
    type = 'paid_balance.zero', at = now}))
end
return 1
