-- rebuild.lua: a workspace Redis lost, rebuilt from the store in one step, or refused.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  JSON {"ws": {field: value}, "apps": [{"id": app, "fields": {field: value}}],
--          "grants": [reference], "lu": [["<product>:<period>", units]]}, every value a
--          string: the workspace hash whole (configuration, balances = the ledger minus the
--          usage the store holds, alert flags, "gm" and a "g:<reference>" per grant), each
--          app hash whole (configuration, "app" balance, channel secrets); "" only asks.
-- ARGV[2]  P:acks (claims acked, ack.lua) as returned by an asking call before the caller
--          read the store
-- Returns 1 rebuilt; 0 the workspace is there (nothing written: another rebuild won, or
-- nothing was lost); -1 refused: Redis still holds charges or events of the workspace not
-- yet in the store (aggregates P:agi, events P:ev, or a claim of either in P:cl), so
-- balances from the store alone would be wrong: the flusher moves them to the store, or
-- `creditgate reconcile --apply` counts them. (Billing-session records, P:sri, carry no
-- charge of their own: the aggregates hold every amount.) -2: a claim was acked since
-- ARGV[2], so the store read may lack its batch, leaving no claim to see: read it again.
-- Asking (ARGV[1] ""): 0, -1 as above, else {P:acks} to pass as ARGV[2] after the read.
--
-- Admission refuses every message of a workspace without its hash, so nothing is charged
-- between the caller's reading of the store and this script; one script, so two rebuilds
-- (an owner's PATCH, the periodic check of each replica) never add twice.

local P = KEYS[1]
local wsk = P .. ':ws'
if redis.call('HEXISTS', wsk, 'type') == 1 then return 0 end
if redis.call('EXISTS', P .. ':agi') == 1 or redis.call('EXISTS', P .. ':ev') == 1 then
  return -1
end
for _, claim in ipairs(redis.call('HKEYS', P .. ':cl')) do
  local kind = string.sub(claim, 1, 3)
  if kind == 'ag:' or kind == 'ev:' then return -1 end
end
local acks = redis.call('GET', P .. ':acks') or '0'
if ARGV[1] == '' then return {acks} end
if acks ~= ARGV[2] then return -2 end
local doc = cjson.decode(ARGV[1])
local function hset_all(key, fields)
  local flat = {}
  for f, v in pairs(fields) do
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  if #flat > 0 then redis.call('HSET', key, unpack(flat)) end
end
for _, a in ipairs(doc.apps) do
  local ak = P .. ':a:' .. a.id
  -- A version above any before, so every worker's cache takes the new configuration.
  local v = tonumber(redis.call('HGET', ak, 'v') or '0') + 1
  redis.call('DEL', ak)
  hset_all(ak, a.fields)
  redis.call('HSET', ak, 'v', v)
  redis.call('SADD', P .. ':apps', a.id)
end
-- A partial hash (e.g. a refund's increments after the loss) is replaced whole: the
-- refund's usage is in the store, so the balances below already hold it.
redis.call('DEL', wsk)
hset_all(wsk, doc.ws)
-- Claim records (claim.lua): a new workspace's claims are all recorded from the start;
-- after a loss every batch the store holds counts as known (no usage of it is left here).
redis.call('ZADD', P .. ':fl', 'NX', doc.ws.seq or '0', '~')
for _, ref in ipairs(doc.grants) do
  redis.call('HSET', wsk, 'g:' .. ref, '1')
  redis.call('SET', P .. ':g:' .. ref, '1')
end
for _, lu in ipairs(doc.lu) do
  redis.call('SET', P .. ':lu:' .. lu[1], lu[2], 'NX')
end
return 1
