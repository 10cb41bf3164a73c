-- correct.lua: `creditgate reconcile --apply`'s correction of one workspace, in one step:
-- balances moved to what the store says, and every ledger entry that changed a live
-- balance marked applied (meter/usage/reconcile.py).
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  JSON {"fix": [[key suffix, field, observed, delta]], "grants": [reference]},
--          every value a string: the key is P .. suffix (":ws", ":a:<app>", or
--          ":lu:<product>:<period>" with field ""), observed the value the comparison
--          read ("" when the key was missing), delta what to add.
-- Returns 1 corrected; 0 nothing written: a balance moved since it was read.
--
-- The balances are corrected to what the ledger says, so every grant and payment given
-- back is in them now: its marker "g:<reference>" (and the separate key of earlier
-- versions, as grant.lua writes it) is set with the correction, and the hash marked
-- ("gm"). Without it the projection check, or the provider redelivering a refund, would
-- apply that entry a second time.

local P = KEYS[1]
local doc = cjson.decode(ARGV[1])
for _, f in ipairs(doc.fix) do
  local key, field, observed = P .. f[1], f[2], f[3]
  local cur
  if field == '' then
    cur = redis.call('GET', key) or '0'
  else
    cur = redis.call('HGET', key, field)
    if not cur then cur = (redis.call('EXISTS', key) == 1) and '0' or '' end
  end
  if cur ~= observed then return 0 end
end
for _, f in ipairs(doc.fix) do
  if f[2] == '' then
    redis.call('INCRBY', P .. f[1], f[4])
  else
    redis.call('HINCRBY', P .. f[1], f[2], f[4])
  end
end
local wsk = P .. ':ws'
-- (A hash without "type" is no workspace: rebuild.lua replaces it and writes its markers.)
if redis.call('HEXISTS', wsk, 'type') == 0 then return 1 end
for _, ref in ipairs(doc.grants) do
  redis.call('HSET', wsk, 'g:' .. ref, '1')
  redis.call('SET', P .. ':g:' .. ref, '1')
end
redis.call('HSET', wsk, 'gm', '1')
return 1
