-- refund.lua: one delivery of a charged message failed (the bot failed, an ambiguous
-- Redis timeout was answered 503, or the sweeper found the original never forwarded).
-- The charge is given back only when no delivery of the message was or may still be
-- served: every delivery the charge record counts has failed. Idempotent: each delivery's
-- failure counts once, and a refund deletes the record, so a second call finds nothing;
-- a stale call whose token is not a delivery of the record (the retry was charged afresh,
-- or the attempt never reached Redis) changes nothing.
--
-- Deliveries: a redelivery (same key, another token, admit_rules.lua) is charged nothing
-- and may be proxied while the original still waits on the bot; if either is served the
-- message was answered, so the charge stands. The record (see admit.lua) counts the
-- deliveries admitted (field 2) and lists, after its 12 fields, the redeliveries' tokens
-- and the failures: "T2,T3,-T1" (a "-" marks a failed delivery, the original's too). A
-- failure is one that the gateway reports (refund_on: connect, timeout, 5xx), the 503
-- of an ambiguous admission, or the sweeper's; a served delivery reports nothing and
-- keeps the charge, and so does one lost with its gateway (it may have been served).
-- A delivery admitted again after its failure counted (a settled debt) is outstanding
-- again: admit_full.lua takes its "-" back.
-- The charge is refunded when the failures listed reach the deliveries counted. A record
-- without the list (written before it existed, or never redelivered) counts only its
-- original when field 2 is 1; with more deliveries, whose tokens are unknown, it stands.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  now (ms)     ARGV[2] app id     ARGV[3] record id ("k:<ch>\t<user>\t<key>" or
--          "t:<token>", see admit.lua)
-- ARGV[4]  the failed delivery's token, or "" for the sweeper: the original failed when
--          its charge is still reserved (never confirmed as forwarded)
-- ARGV[5]  flush bucket (s)   ARGV[6] enterprise billing period id
-- ARGV[7]  session block (ms)   ARGV[8] conversation idle end (ms)
-- Returns {refunded (0|1), free, app, pool, invoiced} (amounts given back). Not refunded: no such
-- record, a token that is no delivery of it (or whose failure already counted), nothing
-- charged, a delivery other than the last to fail (its failure is recorded), or a charge
-- that opened a billing session other messages were then served in (it was used; the
-- reservation is settled), whether or not the conversation has since gone on into a
-- later block.
-- The charge is read from its record P:i:<app>:<name> (see admit.lua; lib_records.lua
-- names it, and finds one an earlier version wrote). A failure of the original also
-- settles its reservation in P:rsv (one member per record: "<app>:<rid>"); redeliveries
-- are never reserved.

local P = KEYS[1]
local now, app_id, key, token = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local FB, PERIOD = tonumber(ARGV[5]), ARGV[6]
local BLOCK, IDLE = tonumber(ARGV[7]), tonumber(ARGV[8])
local NONE = {0, 0, 0, 0, 0}

-- #include lib_sessions.lua
-- #include lib_records.lua

-- The entry of billing session bsid of conversation fld ("app\tchannel\tuser"), wherever
-- it is (lib_sessions.lua): the conversation's newest entry (field fld in the newest bucket
-- that has it), an older block's (field fld in an earlier bucket), or one displaced in its
-- bucket (field fld .. "\t" .. bsid). Returns the entry, its bucket, its hash field and
-- whether it is the conversation's newest; nil when none is found.
local function entry_of(fld, bsid)
  local alt, newest = fld .. '\t' .. bsid, true
  for i = 1, #SRB do
    local b = SRB[i]
    local r = redis.call('HMGET', sr_key(b), fld, alt)
    if r[1] then
      if string.match(r[1], '^%d+,%d+,%d+,([^,]+),') == bsid then return r[1], b, fld, newest end
      newest = false
    end
    if r[2] then return r[2], b, alt, false end
  end
end

local ik, old = record_keys(app_id, key)
local rsv, member = P .. ':rsv', app_id .. ':' .. key
local rec = redis.call('GET', ik)
if not rec and old then
  ik = old
  rec = redis.call('GET', ik)
end
if not rec then
  redis.call('ZREM', rsv, member)
  return NONE
end
-- The record's 12 fields (head), then the list of deliveries after the original, if any.
local head, tok, cnt, units, bsid, free, app, pool, inv, ch, unit, user, list = string.match(rec,
  '^(([^\t]*)\t(%d+)\t%w*\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t'
  .. '([^\t]*)\t([^\t]*)\t([^\t]*))\t?(.*)$')
if token == '' then
  -- The sweeper: only a charge still reserved is refunded (the ZREM is the decision).
  if redis.call('ZREM', rsv, member) == 0 then return NONE end
  token = tok
end
if not tok or units == '0' then return NONE end

-- Which delivery failed, and how many have failed now (this one included)?
local known, failed, entries = token == tok, 1, {}
for e in string.gmatch(list, '[^,]+') do
  if e == '-' .. token then return NONE end -- its failure counted already
  if e == token then
    known, e = true, '-' .. token
  elseif string.sub(e, 1, 1) == '-' then
    failed = failed + 1
  end
  entries[#entries + 1] = e
end
if not known then return NONE end
if token == tok then
  entries[#entries + 1] = '-' .. tok
  redis.call('ZREM', rsv, member) -- the original's outcome is known: nothing to sweep
end
if failed < tonumber(cnt) then
  -- Another delivery was or may still be served: the charge stands.
  redis.call('SET', ik, head .. '\t' .. table.concat(entries, ','), 'KEEPTTL')
  return NONE
end

-- A charge that opened a billing session other messages were then served in was used:
-- it stands (else a client could open a session, ride it, and fail the opener for free).
-- The session's entry is looked up by its id wherever it is: once the conversation's next
-- block opened, it is no longer the conversation's newest entry (see entry_of).
local sfld, sentry, sbucket, shf, snewest
if bsid ~= '' then
  sfld = app_id .. '\t' .. ch .. '\t' .. user
  sentry, sbucket, shf, snewest = entry_of(sfld, bsid)
  if sentry and tonumber(string.match(sentry, '^%d+,%d+,%d+,[^,]+,(%d+),')) > 1 then
    redis.call('SET', ik, head .. '\t' .. table.concat(entries, ','), 'KEEPTTL')
    return NONE
  end
end

redis.call('DEL', ik)
redis.call('ZREM', rsv, member)
free, app, pool, inv = tonumber(free), tonumber(app), tonumber(pool), tonumber(inv)

local wsk = P .. ':ws'
local product = redis.call('HGET', P .. ':a:' .. app_id, 'product') or ''
if free > 0 then
  -- Free credits that expired meanwhile come back as lapsed, not as spendable credit, and
  -- the lapse is an event like any other (the flusher writes its ledger "lapse" entry).
  local exp = tonumber(redis.call('HGET', wsk, 'free_exp') or '0')
  if now < exp then
    redis.call('HINCRBY', wsk, 'free', free)
  else
    redis.call('HINCRBY', wsk, 'lapsed', free)
    -- Event ids are at least now x 1000, as admit.lua's: a Redis that lost writes never
    -- hands one out again.
    local seq = math.max(tonumber(redis.call('HGET', wsk, 'seq') or '0'), now * 1000 - 1) + 1
    redis.call('HSET', wsk, 'seq', string.format('%d', seq))
    redis.call('RPUSH', P .. ':ev', cjson.encode({id = 'e' .. string.format('%d', seq),
      type = 'free_credits.expired', at = now, amount = free}))
  end
end
if app > 0 then
  redis.call('HINCRBY', P .. ':a:' .. app_id, 'app', app)
  redis.call('HINCRBY', wsk, 'apps', app)
end
if pool > 0 then redis.call('HINCRBY', wsk, 'pool', pool) end
if inv > 0 then
  local uk = P .. ':lu:' .. product .. ':' .. PERIOD
  if tonumber(redis.call('GET', uk) or '0') > 0 then redis.call('DECR', uk) end
end

-- The billing session this message opened is undone. As the conversation's newest entry it
-- goes back to the blocks before it (the next message opens the block again), or away
-- with the conversation it began; an older block's entry (the conversation went on into
-- a later block) is only a record, and goes.
if sentry then
  local cs, dl, blocks, s1, msgs, amount, prod = string.match(sentry, ENTRY_RE)
  blocks, msgs = tonumber(blocks) - 1, tonumber(msgs) - 1
  local sk = sr_key(sbucket)
  if not snewest or (blocks <= 0 and msgs <= 0) then
    redis.call('HDEL', sk, shf)
  else
    amount = math.max(0, tonumber(amount) - free - app - pool - inv)
    redis.call('HSET', sk, shf, string.format('%s,%s,%d,%s,%d,%d,%s', cs, dl, blocks, s1,
      msgs, amount, prod))
  end
end

-- Aggregates of the current bucket take the reversal, so sums stay exact.
local bucket = math.floor(now / 1000 / FB) * FB
local agk = P .. ':ag:' .. D(bucket)
local fk = app_id .. '\t' .. ch .. '\t' .. product .. '\t' .. unit .. '\t' -- keys.py agg_field
redis.call('HINCRBY', agk, fk .. 'n', -1)
redis.call('HINCRBY', agk, fk .. 'm', -1)
redis.call('HINCRBY', agk, fk .. 'x', 1)
if free > 0 then redis.call('HINCRBY', agk, fk .. 'f', -free) end
if app > 0 then redis.call('HINCRBY', agk, fk .. 'a', -app) end
if pool > 0 then redis.call('HINCRBY', agk, fk .. 'p', -pool) end
if inv > 0 then redis.call('HINCRBY', agk, fk .. 'i', -inv) end
redis.call('ZADD', P .. ':agi', bucket, bucket)
return {1, free, app, pool, inv}
