-- admit.lua: decide a batch of inbound messages for ONE workspace, atomically.
--
-- Assembled at load time (meter/redis_layer/scripts.py): each "-- #include <file>" line
-- below is replaced by that file of meter/lua, in order, into one chunk, so the fragments
-- share this file's locals. admit_batch.lua: the workspace, the per-batch caches and the
-- rolling windows; admit_rules.lua: the rules (status, credit, sessions, debit);
-- admit_full.lua: the full path of one admission (these two inside full_path(), made
-- by the loop below only when an admission needs them); admit_message.lua: one admission
-- (the short in-session path, else the full path).
--
-- KEYS[1]   workspace prefix "cg:{<ws>}". Every key touched is derived from it (see
--           meter/redis_layer/keys.py), so all share one hash slot and the script runs on
--           Redis Cluster. KEYS[2], never read: the slot guard (keys.py ws_keys).
-- ARGV[1]   now (ms)
-- ARGV[2]   session block (ms)            ARGV[3]  conversation idle end (ms)
-- ARGV[4]   idempotency window (ms)       ARGV[5]  flush bucket (s)
-- ARGV[6]   low-balance threshold (micro-dollars), unless the workspace has its own (lowt)
-- ARGV[7]   deduction order: "f" free first | "p" paid first
-- ARGV[8]   default per-minute limit      ARGV[9]  default per-hour limit
-- ARGV[10]  minute window (ms)            ARGV[11] hour window (ms)
-- ARGV[12]  enterprise billing period id (e.g. "202611")
-- ARGV[13]  refund window (ms): how long the charge record of a message without a
--           channel idempotency key is kept (long enough for the bot to answer)
-- ARGV[14]  deliveries honoured per idempotency key (the original included)
-- ARGV[15]  reservation window (ms): a charge not confirmed as forwarded within it is
--           refunded by the sweeper (the gateway died between charge and forward)
-- ARGV[16]  keyed records that took no money kept the whole idempotency window, per app
--           and window (past it such a record lives the refund window: free_ttl below)
-- ARGV[17]  the same for all of the workspace's apps together
-- ARGV[18]  the aggregate bucket's fields past which refusals pool (admit_batch.lua)
-- ARGV[19..] one admission each: "app\tchannel\tuser\tkey\ttoken\tkind\tdigest"
--           digest: the message's fingerprint (hex) or "": a redelivery whose digest
--           differs from the recorded one is another message under a reused key (code 8);
--           "<digest>L<legacy>": <digest> is recorded, and a record holding either is
--           this message's (legacy: the fingerprint the previous version recorded);
--           key: the channel's idempotency key or "". A key belongs to one app, channel
--           and channel user: the record id is "k:<channel>\t<user>\t<key>", else
--           "t:<token>";
--           token: unique per attempt, names the charge record a refund must match;
--           kind "m" (channel message, billed by the product's unit) or "n" (notification);
--           "M"/"N": the same, settled after a fail-open outage (ARGV[1] is then when it was
--           served): already served, so rate limits neither apply nor count it, and
--           neither suspension, licence, use_free nor credit refuse it (outside shadow
--           mode): what the balances cannot pay is owed, the pool taken below zero;
--           "c": a check (WebSocket upgrade): suspension, licence, the rate windows (read,
--           not counted) and credit for one more unit (none inside the user's paid
--           session), nothing charged, counted or recorded.
-- A charged admission (and any admitted one with a channel key) leaves the charge record
-- P:i:<app>:<name> = "token\tdeliveries\tdigest\tunits\tbsid\tfree\tapp\tpool\tinv\t
-- channel\tunit\tuser" (expiring with the idempotency or refund window): the duplicate
-- check for redeliveries and what refund.lua reverses. <name> is the rid, or a digest of
-- a long one (lib_records.lua). Only refund.lua reads channel, unit and user, and only
-- of a charge (units 1): a record of no unit leaves the three empty, a charge outside a
-- billing session (bsid "") the user (each up to 256 characters, and anyone may send
-- keyed messages inside a paid session for free). Those free keyed records are also
-- counted per app (free_ttl in admit_batch.lua), so their number is bounded too.
-- A charge (units 1) appends "\t@<aggregate bucket>" and, invoiced, ":<period>": where
-- refund.lua reverses it; a message inside a paid session (units 0, bsid) "\t@<bucket>":
-- where refund.lua un-counts it. A redelivery appends "\t<its token>" (",<token>" after a first
-- entry): the deliveries whose
-- failures refund.lua counts (marked "-" there) before it gives the charge back. A
-- charged, not yet settled one is also reserved in P:rsv ("<app>:<rid>" -> deadline ms)
-- until the gateway confirms that it was forwarded; the sweeper refunds what is still
-- reserved past its deadline.
-- A redelivery (same rid, another token) is charged nothing but still obeys suspension,
-- licence, credit and rate limits, and counts against them; past the delivery bound it
-- is refused (code 8).
-- Billing sessions: see lib_sessions.lua (one hash field per session, bucketed by block).
-- Returns a flat array, 3 entries per admission (meter/admission/decision.py from_reply):
--   status   code + 16 x flags
--   bsid     the billing session's id, or ""
--   amounts  0 when all are 0 (the common case), else
--            "units,free,app,pool,invoiced,retry_after_ms" (micro-dollars, ms; the wait
--            of code 4 is at most the window plus one bucket, whatever the clock skew;
--            an admitted settlement's last number is instead the part of its pool
--            amount owed: taken on credit, below the balance)
--   code: 0 admitted, 1 unknown_app, 2 app_suspended, 3 product_not_licensed,
--         4 rate_limited, 5 usage_limit_reached, 6 credits_exhausted, 7 free_credits_expired,
--         8 duplicate_delivery, 9 invalid (a malformed member; the others are decided)
--   flags: 1 duplicate (idempotency hit, nothing charged), 2 opened a billing session,
--          plus 8 x the code of a refusal shadow mode counted instead of applying it.
-- Shadow mode (app field "shadow" = 1): nothing is refused; a would-be refusal is counted
-- as aggregate field "<app>\t<ch>\t<product>\t<unit>\ts:<reason>"; what can be paid is charged,
-- a message without credit is served uncharged.
--
-- The common message, inside a billing session whose newest block is already paid (kind
-- "m", not in shadow mode), takes a short path (fast()): one HGET finds the session, one
-- HSET bumps its message count and last time; nothing is debited or reserved. Without a
-- channel key nothing is recorded, and the charge record is looked up only when the
-- message is stamped no later than the session's last message (only then can it be the
-- retry of the call that paid it); with a key, its record is looked up (a redelivery goes
-- the full path) and written.
-- Reads of the workspace, apps, rate windows and aggregates are cached for the batch and
-- written back once at the end: the script is atomic, so this equals writing as we go,
-- and it makes a batch of N admissions cost far fewer than N times the commands.
-- What a call costs whatever its batch (at moderate load batches are small): one HMGET
-- of the workspace; per app, one HMGET of the app, of its product and of each window
-- (t, o, n and the current bucket; a caller whose clock is behind the window's newest
-- bucket reads that bucket too, see admit_batch.lua); at the end, one HSET per window that counted
-- something, one HINCRBY per aggregate field that changed, a ZADD of the aggregate
-- bucket only when the call made its hash (see the write-back), and HSETs of the
-- workspace and apps only for balances that changed.

-- The arguments are integers as Python formats them. Each is converted where it is used,
-- and only if it is (most calls need few): a string is converted with "+ 0", one parse
-- where tonumber() makes two. The TTLs only ever go to Redis, as they came.
local P = KEYS[1]
local now = ARGV[1] + 0
local BLOCK, IDLE, IDEM_TTL = ARGV[2] + 0, ARGV[3] + 0, ARGV[4]
local FB = ARGV[5] + 0
local PAID_FIRST = ARGV[7] == 'p'
local PERIOD = ARGV[12]
local REFUND_TTL = ARGV[13]
-- How long the record of a fail-open settlement (kind M/N) lives (admit_message.lua):
-- max(IDEM_TTL, REFUND_TTL), made when first needed.
local SETTLED_TTL
-- What the admission being decided left owed (a settlement the balances could not pay,
-- admit_rules.lua debit()): its reply's retry slot.
local OWED = 0
local MAX_DELIVERIES, DEADLINE -- ARGV[14]; now + ARGV[15]: made when first needed
local FREE_KEYS, FREE_KEYS_WS -- ARGV[16], ARGV[17]: made when first needed
local AT -- "\t@<bucket>", where a charge record notes it was counted: made when first needed
local FIRST = 19
local NB = 60 -- buckets per rolling window
local bucket = math.floor(now / 1000 / FB) * FB

-- #include lib_sessions.lua
-- #include lib_records.lua
-- #include admit_batch.lua

-- The full path's functions are made when an admission first needs them, by the loop
-- below: until then admit_one returns such an admission (m, or for a check {c = true,
-- app_id, a, pr, sfld}) instead of deciding it, and the loop makes full_path() and runs it; later ones
-- admit_one runs itself, under the loop's one pcall (as before). A call whose
-- admissions all take the short path makes none of them, nor full_path itself: that
-- closure has dozens of upvalues, and made on every call it cost a call of one admission
-- on the short path some 8,000 instructions of redis-server (bench/lua_cost.py, batch
-- 1). Inside full_path() the functions reach the chunk's locals as upvalues of
-- full_path, which is cheaper than the chunk making them itself.
local full, check

-- #include admit_message.lua

for i = FIRST, #ARGV do
  -- One malformed member never fails the others' admissions: its error is its own.
  local mark = no
  local ok, todo = pcall(admit_one, ARGV[i])
  if ok and todo then
    if not full then
      local function full_path()
-- #include admit_rules.lua
-- #include admit_full.lua
        return full, check
      end
      full, check = full_path()
    end
    if todo.c then
      ok = pcall(check, todo.app_id, todo.a, todo.pr, todo.sfld)
    else
      ok = pcall(full, todo)
    end
  end
  if not ok then
    no = mark
    result(9, 0, 0, 0, 0, 0, 0, '', 0)
  end
end

-- Crossings, each announced once ------------------------------------------------------
if W0free > 0 and W.free == 0 then
  -- Each time the set runs out, once: "exhausted:<set>", then (a refund gave some back and
  -- they ran out again) "exhausted:<set>:<n>", n counted in free_exhausted ("<set>:<n>") in
  -- the workspace hash, so a Redis that lost a crossing does it again under the same n.
  local last, n = redis.call('HGET', wsk, 'free_exhausted') or '', 1
  FREE_SET = FREE_SET or D(W.free_exp) .. ':' .. D(FREE_GRANTED) -- as admit_batch.lua's
  if string.sub(last, 1, #FREE_SET + 1) == FREE_SET .. ':' then
    n = tonumber(string.sub(last, #FREE_SET + 2)) + 1
  end
  redis.call('HSET', wsk, 'free_exhausted', FREE_SET .. ':' .. D(n))
  local once = 'exhausted:' .. FREE_SET
  if n > 1 then once = once .. ':' .. D(n) end
  event('free_credits.exhausted', {once = once})
end
local paid_total = W.pool + W.apps
-- Zero or below: a payment given back (reverse.lua) may leave the paid total negative.
if W0pool + W0apps > 0 and paid_total <= 0 then event('paid_balance.zero', {}) end
local usable = (free_valid and W.free or 0) + paid_total
local debited = W.free ~= W0free or W.pool ~= W0pool or W.apps ~= W0apps
if debited and not W.low then
  local low = tonumber(wr[10] or '') or ARGV[6] + 0 -- the owner's own threshold, if set
  if usable < low then
    W.low = true
    event('balance.low', {balance = usable, threshold = low})
  end
end

-- Write back --------------------------------------------------------------------------
-- The workspace's balances that changed, in one HSET (a table made only then).
if debited or W.lapsed ~= W0lapsed or W.seq ~= W0seq or W.low ~= W0low then
  local wset = {}
  if W.free ~= W0free or W.lapsed ~= W0lapsed then
    wset[#wset + 1] = 'free'; wset[#wset + 1] = D(W.free)
    wset[#wset + 1] = 'lapsed'; wset[#wset + 1] = D(W.lapsed)
    if LAPSED_SET then wset[#wset + 1] = 'free_lapsed'; wset[#wset + 1] = LAPSED_SET end
  end
  if W.pool ~= W0pool then wset[#wset + 1] = F_POOL; wset[#wset + 1] = D(W.pool) end
  if W.apps ~= W0apps then wset[#wset + 1] = F_APPS; wset[#wset + 1] = D(W.apps) end
  if W.seq ~= W0seq then wset[#wset + 1] = 'seq'; wset[#wset + 1] = D(W.seq) end
  if W.low ~= W0low then wset[#wset + 1] = 'low'; wset[#wset + 1] = W.low and '1' or '0' end
  redis.call('HSET', wsk, unpack(wset))
end

for id, a in pairs(apps) do
  if a and a.dirty then
    redis.call('HSET', P .. ':a:' .. id, F_APP, D(a.app), 'inactive', a.inactive and '1' or '0')
  end
  if a and a.fk and a.fk > a.fk0 then
    -- A new count lives one idempotency window, as the records it counts.
    if a.fk0 == 0 then
      redis.call('SET', P .. ':ik:' .. id, D(a.fk), 'PX', IDEM_TTL)
    else
      redis.call('INCRBY', P .. ':ik:' .. id, D(a.fk - a.fk0))
    end
  end
end
if WFK and WFK > WFK0 then -- the workspace's count, as the apps' above
  if WFK0 == 0 then
    redis.call('SET', P .. ':ikw', D(WFK), 'PX', IDEM_TTL)
  else
    redis.call('INCRBY', P .. ':ikw', D(WFK - WFK0))
  end
end
for _, r in pairs(rates) do
  for k = 1, 2 do
    local w = k == 1 and r.m or r.h
    if w.add > 0 then
      -- One HSET: the bucket's count read with the window plus what this call added (as
      -- HINCRBY would), the total, and o and n where they changed (a new or reset window
      -- has neither; o changes only when trimmed; n when a newer bucket is written).
      if w.new or w.trimmed or not w.same_n then
        redis.call('HSET', w.key, w.cs, N(w.c + w.add), 't', D(w.t), 'o', D(w.o), 'n', w.cs)
      else
        redis.call('HSET', w.key, w.cs, N(w.c + w.add), 't', D(w.t))
      end
      if w.new or w.n ~= w.cur then redis.call('PEXPIRE', w.key, math.ceil(w.g * (NB + 2))) end
    elseif w.trimmed then
      -- Old buckets were dropped but nothing admitted: keep the total in step with them.
      redis.call('HSET', w.key, 't', D(w.t), 'o', D(w.o))
    end
  end
end
if usage then
  for uk, u in pairs(usage) do
    if u.add > 0 then redis.call('INCRBY', uk, u.add) end
  end
end
local bs = AT and string.sub(AT, 3) or D(bucket) -- AT: "\t@<bucket>", if made
local agk = P .. ':ag:' .. bs
-- The bucket goes into the index P:agi only when this call made its hash. Every script
-- that makes a P:ag:<b> indexes it at once (here, refund.lua), and claim.lua takes b out
-- of the index only with the hash (RENAMEd away in the same script, or gone): so a hash
-- that exists is indexed, and one that did not exist before this call comes back from
-- its first HINCRBY with the increment itself (a field absent, or 0, before). That
-- answer indexes the bucket (again, harmlessly, for a field that was 0); any other
-- answer means the hash was there, hence indexed. Most calls thus skip the ZADD.
local fresh = false
local METRICS = 'nmfapi'
for fkey, g in pairs(agg) do
  for j = 1, 6 do
    local v = g[j]
    if v ~= 0 and redis.call('HINCRBY', agk, fkey .. string.sub(METRICS, j, j), v) == v then
      fresh = true
    end
  end
end
if refused then
  -- Past ARGV[18] fields, a refusal new to the bucket on a channel that admitted
  -- nothing in it counts under "(overflow)" (admit_batch.lua's refused says why).
  local room = ARGV[18] - redis.call('HLEN', agk)
  for field, v in pairs(refused) do
    local f = field -- (a generic for's control variable must not change)
    if room <= 0 and redis.call('HEXISTS', agk, f) == 0 then
      local app_id, ch, pu, metric = string.match(field, '^([^\t]*)\t([^\t]*)\t([^\t]*\t[^\t]*\t)(.*)$')
      local fk = app_id .. '\t' .. ch .. '\t' .. pu -- agg_field's prefix, as admit_one's
      if not agg[fk] and redis.call('HEXISTS', agk, fk .. 'm') == 0 then
        f = app_id .. '\t(overflow)\t' .. pu .. metric
      end
    end
    if redis.call('HINCRBY', agk, f, v) == v then
      fresh = true
      room = room - 1
    end
  end
end
if fresh then redis.call('ZADD', P .. ':agi', bs, bs) end
if sri then
  for b in pairs(sri) do redis.call('ZADD', P .. ':sri', b, b) end
end
if events then redis.call('RPUSH', P .. ':ev', unpack(events)) end
return out
