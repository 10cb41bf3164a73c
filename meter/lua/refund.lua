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
-- A charge's list starts with where it was counted, "@<aggregate bucket>[:<period>]"
-- (admit_full.lua): its aggregates and enterprise usage are reversed there, not where the
-- refund happens (a record of an earlier version has none: reversed where it happens);
-- a keyed in-session message's with "@<bucket>" (un-counted there, refund_counts.lua).
--
-- Billing sessions: a charge that opened one stands while another message of it counts
-- as served. A message admitted inside a paid session without a charge that fails is
-- reported too and no longer counts ("un-counted"): without a channel key it keeps no
-- record, so the gateway names its session (ARGV[9..11]) and a mark P:uc:<app>:<token>
-- counts its failure once; a keyed one is un-counted (its record deleted) once every
-- delivery listed in its record failed. An opener kept because of such messages is noted
-- in P:rp:<bsid> (its record id, while the record lives): the failure that leaves it
-- alone gives its charge back, if all its deliveries failed. In any order of failures
-- the charge goes back once (its record is deleted in the same script), and only when
-- nothing of the session was or may still be served. Not un-counted (the charge stands):
-- a failure known to Redis only as a void (ambiguous 503, deferred report), or one after
-- the session's entry left the buckets looked at. Likewise a charge that opened a session
-- is given back only while the session's entry is found and shows nothing else served:
-- a failure reported once the entry left the buckets looked at (from about IDLE + BLOCK
-- after it: a late redelivery of the key, a deferred void, within the record's
-- idempotency window) leaves the charge standing, whether or not the block was used.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  now (ms)     ARGV[2] app id     ARGV[3] record id ("k:<ch>\t<user>\t<key>" or
--          "t:<token>", see admit.lua)
-- ARGV[4]  the failed delivery's token, or "" for the sweeper: the original failed when
--          its charge is still reserved (never confirmed as forwarded)
-- ARGV[5]  flush bucket (s)   ARGV[6] enterprise billing period id
-- ARGV[7]  session block (ms)   ARGV[8] conversation idle end (ms)
-- ARGV[9]  (optional) the billing session the failed delivery was admitted in without a
--          charge, or "": then ARGV[10] its channel and ARGV[11] its channel user
-- ARGV[12] (optional) the failed delivery's admission time (ms; refund_counts.lua)
-- ARGV[13] (optional) MAX_USAGE_FIELDS (refund_counts.lua reverse_agg)
-- Returns {refunded (0|1), free, app, pool, invoiced} (amounts given back: of the session's
-- opener when an un-counted message's failure gave that back). Not refunded: no such
-- record, a token that is no delivery of it (or whose failure already counted), nothing
-- charged, a delivery other than the last to fail (its failure is recorded), or a charge
-- that opened a billing session other messages were then served in (it was used; the
-- reservation is settled), whether or not the conversation has since gone on into a
-- later block, or whose session's entry is no longer found (it may have been used).
-- The charge is read from its record P:i:<app>:<name> (see admit.lua; lib_records.lua
-- names it, and finds one an earlier version wrote). A failure of the original also
-- settles its reservation in P:rsv (one member per record: "<app>:<rid>"); redeliveries
-- are never reserved.

local P = KEYS[1]
local now, app_id, key, token = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local FB, PERIOD = tonumber(ARGV[5]), ARGV[6]
local BLOCK, IDLE = tonumber(ARGV[7]), tonumber(ARGV[8])
local IN_BSID, IN_CH, IN_USER = ARGV[9] or '', ARGV[10] or '', ARGV[11] or ''
local NONE = {0, 0, 0, 0, 0}

-- #include lib_sessions.lua
-- #include lib_records.lua
-- #include refund_free.lua
-- #include refund_counts.lua

-- The entry of billing session bsid of conversation fld ("app\tchannel\tuser"), wherever
-- it is (lib_sessions.lua): the conversation's newest entry (field fld in the newest bucket
-- that has it), an older block's (field fld in an earlier bucket), or one displaced in its
-- bucket (field fld .. "\t" .. bsid). Returns the entry, its bucket, its hash field and
-- whether it is the conversation's newest; nil when none is found.
local function entry_of(fld, bsid)
  local alt, newest = fld .. '\t' .. bsid, true
  for b = SR_NEW, SR_OLD, -SB do
    local r = redis.call('HMGET', sr_key(b), fld, alt)
    if r[1] then
      if string.match(r[1], '^%d+,%d+,%d+,([^,]+),') == bsid then return r[1], b, fld, newest end
      newest = false
    end
    if r[2] then return r[2], b, alt, false end
  end
end

-- The record's 12 fields (head), then the list of deliveries after the original, if any.
local RECORD_RE = '^(([^\t]*)\t(%d+)\t%w*\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t'
  .. '([^\t]*)\t([^\t]*)\t([^\t]*))\t?(.*)$'
local function parse(rec)
  local head, tok, cnt, units, bsid, free, app, pool, inv, ch, unit, user, list =
    string.match(rec, RECORD_RE)
  if not head then return nil end
  return {head = head, tok = tok, cnt = tonumber(cnt), units = units, bsid = bsid,
    free = tonumber(free), app = tonumber(app), pool = tonumber(pool), inv = tonumber(inv),
    ch = ch, unit = unit, user = user, list = list,
    -- Where the charge was counted (admit_full.lua record()): none in a record of an
    -- earlier version, whose charge is then reversed where the refund happens.
    at = string.match(list, '^@(%d+)'), period = string.match(list, '^@%d+:(%w+)')}
end
local function msgs_of(entry) return tonumber(string.match(entry, '^%d+,%d+,%d+,[^,]+,(%d+),')) end
local function pending_key(bsid) return P .. ':rp:' .. bsid end

-- Give the charge of record r (stored under ik, reserved as member) back: balances, usage,
-- its billing session (entry e of bucket b, hash field hf, newest: see entry_of) and the
-- aggregates. Returns the reply.
local function give_back(ik, member, r, e, b, hf, newest)
  redis.call('DEL', ik)
  redis.call('ZREM', P .. ':rsv', member)
  if r.bsid ~= '' then redis.call('DEL', pending_key(r.bsid)) end
  local free, app, pool, inv = r.free, r.app, r.pool, r.inv
  local wsk = P .. ':ws'
  local product = redis.call('HGET', P .. ':a:' .. app_id, 'product') or ''
  -- Free credits: spendable again, or lapsed (refund_free.lua).
  if free > 0 then free_back(wsk, free) end
  if app > 0 then
    redis.call('HINCRBY', P .. ':a:' .. app_id, 'app', app)
    redis.call('HINCRBY', wsk, 'apps', app)
  end
  if pool > 0 then redis.call('HINCRBY', wsk, 'pool', pool) end
  if inv > 0 then
    local uk = P .. ':lu:' .. product .. ':' .. (r.period or PERIOD)
    if tonumber(redis.call('GET', uk) or '0') > 0 then redis.call('DECR', uk) end
  end

  -- The billing session this message opened is undone. As the conversation's newest entry
  -- it goes back to the blocks before it (the next message opens the block again), or away
  -- with the conversation it began; an older block's entry (the conversation went on into
  -- a later block) is only a record, and goes.
  if e then
    local cs, dl, blocks, s1, msgs, amount, prod = string.match(e, ENTRY_RE)
    blocks, msgs = tonumber(blocks) - 1, tonumber(msgs) - 1
    local sk = sr_key(b)
    if not newest or (blocks <= 0 and msgs <= 0) then
      redis.call('HDEL', sk, hf)
    else
      -- The conversation's state: no message, so never flushed as a session (batches.py),
      -- nor kept when the block opens again (admit_rules.lua write_session).
      amount = math.max(0, tonumber(amount) - free - app - pool - inv)
      redis.call('HSET', sk, hf, string.format('%s,%s,%d,%s,%d,%d,%s', cs, dl, blocks, s1,
        msgs, amount, prod))
    end
    -- A forced flush copied this open bucket (P:fl has its claim) after the session
    -- opened: the store holds the charge. A snapshot of nothing charged, displaced
    -- (admissions never read it), is flushed over that copy.
    local copied = redis.call('ZSCORE', P .. ':fl', 'sr:' .. D(b))
    local opened = tonumber(string.match(prod, ',(%d+)$') or '0')
    if copied and opened * 1000 <= tonumber(copied) then
      local alt = hf
      if string.sub(hf, -#s1 - 1) ~= '\t' .. s1 then alt = hf .. '\t' .. s1 end
      redis.call('HSET', sk, alt, string.format('%s,%s,%d,%s,0,0,%s', cs, dl, blocks + 1,
        s1, prod))
    end
  end

  -- The aggregates take the reversal in the bucket the charge was counted in (a record of
  -- an earlier version: the current one), so sums stay exact and every period's too. A
  -- bucket flushed since is live again (indexed below) and flushed again: the store adds.
  local bucket = r.at and tonumber(r.at) or math.floor(now / 1000 / FB) * FB
  local agk = P .. ':ag:' .. D(bucket)
  local fk = app_id .. '\t' .. r.ch .. '\t' .. product .. '\t' .. r.unit .. '\t' -- agg_field
  reverse_agg(agk, fk, app_id .. '\t(overflow)\t' .. product .. '\t' .. r.unit .. '\t',
    {f = free, a = app, p = pool, i = inv})
  redis.call('ZADD', P .. ':agi', bucket, bucket)
  return {1, free, app, pool, inv}
end

-- A message admitted inside billing session bsid of conversation fld without a charge
-- was not served: it no longer counts in the session's messages. When that leaves only
-- the opener, whose charge was kept because of it (P:rp:<bsid>, below) and all of whose
-- deliveries have failed, the opener's charge is given back now. counted: message_back.
local function uncount(fld, bsid, ch, counted)
  local e, b, hf, newest = entry_of(fld, bsid)
  if not e then return NONE end
  local cs, dl, blocks, s1, msgs, amount, prod = string.match(e, ENTRY_RE)
  msgs = tonumber(msgs) - 1
  if msgs < 0 then return NONE end
  e = string.format('%s,%s,%s,%s,%d,%s,%s', cs, dl, blocks, s1, msgs, amount, prod)
  redis.call('HSET', sr_key(b), hf, e)
  message_back(ch, counted)
  if msgs ~= 1 then return NONE end
  local pk = pending_key(bsid)
  local orid = redis.call('GET', pk)
  if not orid then return NONE end
  redis.call('DEL', pk)
  local oik, oold = record_keys(app_id, orid)
  local rec = redis.call('GET', oik)
  if not rec and oold then
    oik = oold
    rec = redis.call('GET', oik)
  end
  local r = rec and parse(rec)
  if not r or r.units == '0' or r.bsid ~= bsid then return NONE end
  local failed = 0
  for x in string.gmatch(r.list, '[^,]+') do
    if string.sub(x, 1, 1) == '-' then failed = failed + 1 end
  end
  -- A delivery admitted again since (its "-" taken back) may be served: its own failure
  -- will come here through its record (the session check then finds only the opener).
  if failed < r.cnt then return NONE end
  return give_back(oik, app_id .. ':' .. orid, r, e, b, hf, newest)
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
  -- A message without a channel key admitted inside a paid session keeps no record: its
  -- failure un-counts it, once per attempt (the mark P:uc:<app>:<token> outlives every
  -- bucket the session's entry can be found in).
  if token ~= '' and IN_BSID ~= '' and string.sub(key, 1, 2) == 't:'
    and redis.call('SET', P .. ':uc:' .. app_id .. ':' .. token, '1', 'NX', 'PX',
      2 * BLOCK + IDLE + 60000) then
    return uncount(app_id .. '\t' .. IN_CH .. '\t' .. IN_USER, IN_BSID, IN_CH)
  end
  return NONE
end
local r = parse(rec)
if token == '' then
  -- The sweeper: only a charge still reserved is refunded (the ZREM is the decision).
  if redis.call('ZREM', rsv, member) == 0 then return NONE end
  token = r and r.tok
end
-- Nothing charged nor counted in a billing session: nothing to reverse.
if not r or (r.units == '0' and r.bsid == '') then return NONE end
local tok = r.tok

-- Which delivery failed, and how many have failed now (this one included)?
local known, failed, entries = token == tok, 1, {}
for e in string.gmatch(r.list, '[^,]+') do
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
if failed < r.cnt then
  -- Another delivery was or may still be served: the charge stands.
  redis.call('SET', ik, r.head .. '\t' .. table.concat(entries, ','), 'KEEPTTL')
  return NONE
end

if r.units == '0' then
  -- A keyed message inside a paid session, every delivery of it failed: it un-counts
  -- itself once (its record goes: a later delivery is a new message).
  redis.call('DEL', ik)
  local ch, user = string.match(key, '^k:([^\t]*)\t([^\t]*)\t')
  if not ch then return NONE end
  return uncount(app_id .. '\t' .. ch .. '\t' .. user, r.bsid, ch, r.at)
end

-- A charge that opened a billing session other messages were then served in was used:
-- it stands (else a client could open a session, ride it, and fail the opener for free).
-- The session's entry is looked up by its id wherever it is: once the conversation's next
-- block opened, it is no longer the conversation's newest entry (see entry_of). Messages
-- of the session that failed un-count themselves (uncount): the opener's id is kept in
-- P:rp:<bsid> (as long as its record) so that the last of them gives the charge back.
-- A session entry that cannot be found (older than the buckets looked at: a delivery or
-- a void reported long after the block, up to the record's idempotency window) cannot
-- show that nothing else was served: the charge stands.
local e, b, hf, newest
if r.bsid ~= '' then
  e, b, hf, newest = entry_of(app_id .. '\t' .. r.ch .. '\t' .. r.user, r.bsid)
  if not e then
    redis.call('SET', ik, r.head .. '\t' .. table.concat(entries, ','), 'KEEPTTL')
    return NONE
  end
  if msgs_of(e) > 1 then
    redis.call('SET', ik, r.head .. '\t' .. table.concat(entries, ','), 'KEEPTTL')
    redis.call('SET', pending_key(r.bsid), key, 'PX', math.max(1, redis.call('PTTL', ik)))
    return NONE
  end
end
return give_back(ik, member, r, e, b, hf, newest)
