-- admit.lua: decide a batch of inbound messages for ONE workspace, atomically.
--
-- KEYS[1]   workspace prefix "cg:{<ws>}". Every key touched is derived from it (see
--           meter/redis_layer/keys.py), so all share one hash slot and the script runs on Redis Cluster.
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
-- ARGV[16..] one admission each: "app\tchannel\tuser\tkey\ttoken\tkind\tdigest"
--           digest: the message's fingerprint (hex) or "": a redelivery whose digest
--           differs from the recorded one is another message under a reused key (code 8);
--           key: the channel's idempotency key or "". A key belongs to one app, channel
--           and channel user: the record id is "k:<channel>\t<user>\t<key>", else
--           "t:<token>";
--           token: unique per attempt, names the charge record a refund must match;
--           kind "m" (channel message, billed by the product's unit) or "n" (notification);
--           "M"/"N": the same, settled after a fail-open outage (ARGV[1] is then when it was
--           served): already served, so rate limits neither apply nor count it;
--           "c": a check (WebSocket upgrade): suspension, licence and credit for one more
--           unit, nothing charged, counted or recorded.
-- A charged admission (and any admitted one with a channel key) leaves the charge record
-- P:i:<app>:<rid> = "token\tdeliveries\tdigest\tunits\tbsid\tfree\tapp\tpool\tinv\tchannel\t
-- unit\tuser" (expiring with the idempotency or refund window): the duplicate check for
-- redeliveries and what refund.lua reverses. A charged, not yet settled one is also
-- reserved in P:rsv ("<app>:<rid>" -> deadline ms) until the gateway confirms that it
-- was forwarded; the sweeper refunds what is still reserved past its deadline.
-- A redelivery (same rid, another token) is charged nothing but still obeys suspension,
-- licence, credit and rate limits, and counts against them; past the delivery bound it
-- is refused (code 8).
-- Billing sessions live in P:sr:<b> (b = block start, bucketed by the block length in s),
-- field "app\tchannel\tuser" = "conv_start,last-conv_start,blocks,bsid,msgs,amount,product":
-- the live conversation state and the record the flusher writes, in one entry. An older
-- entry displaced from its field is kept under "app\tchannel\tuser\tbsid".
-- Returns a flat array, 9 entries per admission, in order:
--   code, units, free, app_paid, pool_paid, invoiced, retry_after_ms, bsid, flags
--   code: 0 admitted, 1 unknown_app, 2 app_suspended, 3 product_not_licensed,
--         4 rate_limited, 5 usage_limit_reached, 6 credits_exhausted, 7 free_credits_expired,
--         8 duplicate_delivery, 9 invalid (a malformed member; the others are decided)
--   flags: 1 duplicate (idempotency hit, nothing charged), 2 opened a billing session,
--          plus 8 x the code of a refusal shadow mode counted instead of applying it.
-- Shadow mode (app field "shadow" = 1): nothing is refused; a would-be refusal is counted
-- as aggregate field "<app>|<ch>|<product>|<unit>|s:<reason>"; what can be paid is charged,
-- a message without credit is served uncharged.
--
-- The common message, inside a billing session whose newest block is already paid (kind
-- "m", no channel key, not in shadow mode), takes a short path (fast()): one HGET finds the
-- session, one HSET bumps its message count and last time; nothing is debited, recorded or
-- reserved. The charge record is looked up only when the message is stamped no later than
-- the session's last message (only then can it be the retry of the call that paid it).
-- Reads of the workspace, apps, rate windows and aggregates are cached for the batch and
-- written back once at the end: the script is atomic, so this equals writing as we go,
-- and it makes a batch of N admissions cost far fewer than N times the commands.

local P = KEYS[1]
local now = tonumber(ARGV[1])
local BLOCK, IDLE, IDEM_TTL = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local FB = tonumber(ARGV[5])
local LOW = tonumber(ARGV[6])
local PAID_FIRST = ARGV[7] == 'p'
local DEF_PM, DEF_PH = tonumber(ARGV[8]), tonumber(ARGV[9])
local WIN_M, WIN_H = tonumber(ARGV[10]), tonumber(ARGV[11])
local PERIOD = ARGV[12]
local REFUND_TTL = tonumber(ARGV[13])
local MAX_DELIVERIES = tonumber(ARGV[14])
local RESERVE = tonumber(ARGV[15])
local FIRST = 16
local NB = 60 -- buckets per rolling window

local D = function(x) return string.format('%d', x) end
local bucket = math.floor(now / 1000 / FB) * FB
local out = {}
local n_adm = #ARGV - FIRST + 1

local function refuse_all(code)
  for _ = 1, n_adm do
    for _, v in ipairs({code, 0, 0, 0, 0, 0, 0, '', 0}) do out[#out + 1] = v end
  end
  return out
end

-- Workspace ---------------------------------------------------------------------------
local wsk = P .. ':ws'
local wr = redis.call('HMGET', wsk, 'type', 'free', 'free_exp', 'paid', 'apaid', 'lapsed',
  'low', 'np', 'seq', 'lowt')
if not wr[1] then return refuse_all(1) end
LOW = tonumber(wr[10] or '') or LOW -- the owner's own threshold, if set
local W = {
  ent = wr[1] == 'enterprise', free = tonumber(wr[2] or '0'), free_exp = tonumber(wr[3] or '0'),
  paid = tonumber(wr[4] or '0'), apaid = tonumber(wr[5] or '0'), lapsed = tonumber(wr[6] or '0'),
  low = wr[7] == '1', np = tonumber(wr[8] or '0'), seq = tonumber(wr[9] or '0'),
}
local W0 = {free = W.free, paid = W.paid, apaid = W.apaid, seq = W.seq, low = W.low}
local events = {}
local function event(kind, fields)
  W.seq = W.seq + 1
  fields.id = 'e' .. D(W.seq)
  fields.type = kind
  fields.at = now
  events[#events + 1] = cjson.encode(fields)
end

-- Free credits past their validity lapse once, remainder recorded.
if W.free > 0 and now >= W.free_exp then
  event('free_credits.expired', {amount = W.free})
  W.lapsed = W.lapsed + W.free
  W.free = 0
  W0.free = 0
end
local free_valid = now < W.free_exp

-- Per-batch caches --------------------------------------------------------------------
local apps, prods, rates, usage = {}, {}, {}, {}
-- Aggregates: per field prefix "<app>|<ch>|<product>|<unit>|" the sums of the metrics
-- n, m, f, a, p, i (in that order); refusals by reason apart. Written once at the end.
local agg, refused, METRICS = {}, {}, {'n', 'm', 'f', 'a', 'p', 'i'}
local sri = {} -- session-record buckets that got a new entry

-- Session entries are bucketed by block start; an alive conversation's newest entry is
-- at most IDLE + BLOCK old, so a lookup walks a few buckets, newest first.
local SB = math.max(1, math.floor(BLOCK / 1000))
local function sbucket_of(ms) return math.floor(ms / 1000 / SB) * SB end
-- The newest bucket looked at allows for a replica whose clock is up to a minute behind.
local S_HIGH, S_LOW = sbucket_of(now + 60000), sbucket_of(now - IDLE - BLOCK)
local SRB, SRK = {}, {} -- the buckets looked at, newest first; bucket -> key
local function sr_key(b)
  local k = SRK[b]
  if not k then
    k = P .. ':sr:' .. D(b)
    SRK[b] = k
  end
  return k
end
for b = S_HIGH, S_LOW, -SB do SRB[#SRB + 1] = b; sr_key(b) end
local function session_find(fld)
  for i = 1, #SRB do
    local b = SRB[i]
    local v = redis.call('HGET', SRK[b], fld)
    if v then return v, b end
  end
end

local function app_of(id)
  local a = apps[id]
  if a == nil then
    local r = redis.call('HMGET', P .. ':a:' .. id, 'product', 'suspended', 'use_free', 'paid',
      'pm', 'ph', 'inactive', 'shadow')
    if not r[1] then
      a = false
    else
      a = {product = r[1], suspended = r[2] == '1', use_free = r[3] ~= '0',
        paid = tonumber(r[4] or '0'), pm = tonumber(r[5] or ''), ph = tonumber(r[6] or ''),
        inactive = r[7] == '1', shadow = r[8] == '1', dirty = false}
      a.paid0 = a.paid
    end
    apps[id] = a
  end
  return a
end

local function prod_of(p)
  local x = prods[p]
  if x == nil then
    local r = redis.call('HMGET', wsk, 'u:' .. p, 'p:' .. p, 'l:' .. p)
    x = {unit = r[1] or 'session', price = tonumber(r[2] or '0')}
    if r[3] then
      local lim, pm, ph = string.match(r[3], '^(%d+),(%d+),(%d+)$')
      x.lic = {limit = tonumber(lim), pm = tonumber(pm), ph = tonumber(ph)}
    end
    prods[p] = x
  end
  return x
end

-- Rolling window: NB buckets of WIN/NB ms; fields <bucket index> -> count, plus t (total),
-- o (oldest index possibly present) and n (newest written). Counting buckets from
-- cur-NB on covers a little more than the window, so the limit is never exceeded.
local function window(key, win)
  local g = win / NB
  local cur = math.floor(now / g)
  local r = redis.call('HMGET', key, 't', 'o', 'n')
  local w = {key = key, g = g, cur = cur, t = tonumber(r[1] or '0'), o = tonumber(r[2] or cur),
    n = tonumber(r[3] or cur), add = 0, new = r[1] == false}
  local minv = cur - NB
  if w.n < minv then
    if not w.new then redis.call('DEL', key) end
    w.t, w.o, w.n, w.new = 0, cur, cur, true
  elseif w.o < minv then
    for i = w.o, minv - 1 do
      local c = redis.call('HGET', key, i)
      if c then
        w.t = w.t - tonumber(c)
        redis.call('HDEL', key, i)
      end
    end
    w.o, w.trimmed = minv, true
  end
  return w
end

local function wait_ms(w, limit)
  -- Time until enough old buckets fall out for one more message.
  local excess = w.t + 1 - limit
  local acc = 0
  for i = w.o, w.cur do
    local c = tonumber(redis.call('HGET', w.key, i) or '0')
    if i == w.cur then c = c + w.add end
    acc = acc + c
    if acc >= excess then return (i + NB + 1) * w.g - now end
  end
  return w.g
end

local function rates_of(id)
  local r = rates[id]
  if r == nil then
    r = {m = window(P .. ':rm:' .. id, WIN_M), h = window(P .. ':rh:' .. id, WIN_H)}
    rates[id] = r
  end
  return r
end

-- Aggregate field prefix "<app>|<ch>|<product>|<unit>|", built once per batch.
local fkeys = {}
local function fkey_of(app_id, ch, product, unit)
  local byapp = fkeys[app_id]
  if not byapp then
    byapp = {}
    fkeys[app_id] = byapp
  end
  local bych = byapp[ch]
  if not bych then
    bych = {}
    byapp[ch] = bych
  end
  local k = bych[unit]
  if not k then
    k = app_id .. '|' .. ch .. '|' .. product .. '|' .. unit .. '|'
    bych[unit] = k
  end
  return k
end

local function tally(fkey, units, f, ap, pp, inv)
  local g = agg[fkey]
  if g == nil then
    g = {0, 0, 0, 0, 0, 0}
    agg[fkey] = g
  end
  g[1], g[2], g[3], g[4], g[5], g[6] = g[1] + units, g[2] + 1, g[3] + f, g[4] + ap, g[5] + pp,
    g[6] + inv
end

-- Decide each admission ----------------------------------------------------------------
local no = 0
local function result(code, units, f, a, p, inv, retry, bsid, flags)
  out[no + 1], out[no + 2], out[no + 3], out[no + 4], out[no + 5] = code, units, f, a, p
  out[no + 6], out[no + 7], out[no + 8], out[no + 9] = inv, retry, bsid, flags
  no = no + 9
end

local REASON = {[2] = 'app_suspended', [3] = 'product_not_licensed', [4] = 'rate_limited',
  [5] = 'usage_limit_reached', [6] = 'credits_exhausted', [7] = 'free_credits_expired',
  [8] = 'duplicate_delivery'}

local RECORD_RE = '^([^\t]*)\t(%d+)\t(%w*)\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t'

-- Refusal reasons as aggregate fields; code 9 (invalid) never reaches the aggregates.
-- Counted once per attempt: a call retried after its reply was lost (same token) must not
-- count the refusal again. The mark outlives any client retry of one call.
local REFUSAL_MARK_MS = 10000
local function refuse(fkey, code, retry, token)
  if redis.call('SET', P .. ':rf:' .. token, code, 'NX', 'PX', REFUSAL_MARK_MS) then
    local rk = fkey .. 'r:' .. REASON[code]
    refused[rk] = (refused[rk] or 0) + 1
  end
  result(code, 0, 0, 0, 0, 0, retry or 0, '', 0)
end

-- Shadow mode: the refusal is counted (aggregate field "s:<reason>") but not applied.
local function shadow(fkey, code)
  local sk = fkey .. 's:' .. REASON[code]
  refused[sk] = (refused[sk] or 0) + 1
  return code
end

-- Suspension and licence: code or 0.
local function status_code(a, pr)
  if a.suspended then return 2 end
  if W.ent and not pr.lic then return 3 end
  return 0
end

-- Rolling windows: code 4 and the wait, or 0; the windows to count the message in.
local function rate_check(app_id, a, pr)
  local pm, ph = a.pm or DEF_PM, a.ph or DEF_PH
  if W.ent and pr.lic then pm, ph = pr.lic.pm, pr.lic.ph end
  local rt = rates_of(app_id)
  if rt.m.t + 1 > pm then return 4, wait_ms(rt.m, pm), rt end
  if rt.h.t + 1 > ph then return 4, wait_ms(rt.h, ph), rt end
  return 0, 0, rt
end

local function count_rate(rt)
  if rt then
    rt.m.t, rt.m.add = rt.m.t + 1, rt.m.add + 1
    rt.h.t, rt.h.add = rt.h.t + 1, rt.h.add + 1
  end
end

local function usage_of(product)
  local uk = P .. ':lu:' .. product .. ':' .. PERIOD
  local u = usage[uk]
  if u == nil then
    u = {used = tonumber(redis.call('GET', uk) or '0'), add = 0}
    usage[uk] = u
  end
  return u
end

-- Can the workspace pay this app's next unit? 0, or the refusal code (5, 6 or 7).
local function credit_code(a, pr, price)
  if W.ent then
    local u = usage_of(a.product)
    if u.used + u.add + 1 > pr.lic.limit then return 5 end
    return 0
  end
  local fr = (a.use_free and free_valid) and W.free or 0
  if fr + a.paid + W.paid < price then
    if not free_valid and W.free_exp > 0 then return 7 end
    return 6
  end
  return 0
end

-- A redelivery of an admitted message: charged nothing, but it obeys the app's status,
-- its credit and the rate limits (and counts in them), at most MAX_DELIVERIES times.
local function redelivery(app_id, a, pr, price, fkey, ik, seen, settle, token, digest)
  local stok, cnt, sdig, units, sbsid, sf, sa, sp, si, rest = string.match(seen,
    '^([^\t]*)\t(%d+)\t(%w*)\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t(.*)$')
  if not stok then cnt, sdig, sbsid, rest = 1, '', '', nil end
  cnt = tonumber(cnt)
  local code, retry, rt = status_code(a, pr), 0, nil
  if code == 0 and not settle then code, retry, rt = rate_check(app_id, a, pr) end
  if code == 0 then code = credit_code(a, pr, price) end
  if code == 0 and cnt >= MAX_DELIVERIES then code = 8 end
  -- The same key with another message is not a redelivery.
  if code == 0 and sdig ~= '' and digest ~= '' and sdig ~= digest then code = 8 end
  local shadowed = 0
  if code ~= 0 and a.shadow then shadowed, code = shadow(fkey, code), 0 end
  if code ~= 0 then return refuse(fkey, code, retry, token) end
  count_rate(rt)
  if rest then
    redis.call('SET', ik, string.format('%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s', stok, cnt + 1,
      sdig, units, sbsid, sf, sa, sp, si, rest), 'KEEPTTL')
  end
  result(0, 0, 0, 0, 0, 0, 0, sbsid, 1 + 8 * shadowed)
end

-- Does this message open a new billing session (or a new block of one)? Returns the
-- session state to write after a successful charge.
local function session_of(fld, found, fkb)
  local S = {fld = fld, found = found, fkb = fkb}
  if S.found then
    local c1, d1, b1, s1, m1, a1 = string.match(S.found, '^(%d+),(%d+),(%d+),([^,]+),(%d+),(%d+),')
    -- Gateways stamp their own clocks: a batch may carry a "now" slightly before
    -- the last message, so times only ever move forward here.
    if c1 and now - tonumber(c1) - tonumber(d1) < IDLE then
      S.cs, S.blocks, S.bsid, S.msgs, S.amount = tonumber(c1), tonumber(b1), s1, tonumber(m1),
        tonumber(a1)
      S.last = math.max(now, S.cs + tonumber(d1))
    end
  end
  if not S.cs then S.cs, S.last, S.blocks = now, now, 0 end
  local need = math.floor((math.max(now, S.cs) - S.cs) / BLOCK) + 1
  S.charge = need > S.blocks
  if S.charge then S.blocks = need end
  return S
end

-- Debit one unit: free first (or paid first) from what the app may use.
local function debit(a, price)
  local fr = (a.use_free and free_valid) and W.free or 0
  local need = price
  local function take(avail)
    local t = math.min(avail, need)
    need = need - t
    return t
  end
  local f, ap, pp
  if PAID_FIRST then
    ap = take(a.paid); pp = take(W.paid); f = take(fr)
  else
    f = take(fr); ap = take(a.paid); pp = take(W.paid)
  end
  W.free, a.paid, W.paid, W.apaid = W.free - f, a.paid - ap, W.paid - pp, W.apaid - ap
  if ap ~= 0 then a.dirty = true end
  return f, ap, pp
end

local function write_session(S, a, charged)
  if charged then
    W.seq = W.seq + 1
    S.bsid = 's' .. D(W.seq)
    local nb = sbucket_of(S.cs + (S.blocks - 1) * BLOCK)
    if S.found and S.fkb == nb then
      -- An earlier block or conversation already has this field: keep its record.
      redis.call('HSET', sr_key(nb), S.fld .. '\t' .. string.match(S.found,
        '^%d+,%d+,%d+,([^,]+),'), S.found)
    end
    S.fkb, S.msgs, S.amount = nb, 1, charged
    sri[nb] = true
  else
    S.msgs = S.msgs + 1
  end
  redis.call('HSET', sr_key(S.fkb), S.fld, string.format('%d,%d,%d,%s,%d,%d,%s', S.cs,
    S.last - S.cs, S.blocks, S.bsid, S.msgs, S.amount, a.product))
end

-- The common message: inside a billing session whose newest block is paid, no channel
-- key, not in shadow mode. Nothing is charged or recorded: only the session entry's
-- message count and last time change. Returns false (nothing done) for anything else,
-- which the full path then decides.
local function fast(app_id, a, pr, fkey, token, fld, found, fkb)
  local cs, d, blocks, bsid, msgs, rest =
    string.match(found, '^(%d+),(%d+),(%d+),([^,]+),(%d+),(.*)$')
  if not cs then return false end
  local dl, nb = tonumber(d), blocks == '1' and 1 or tonumber(blocks)
  local since = now - tonumber(cs) -- ms since the conversation began
  -- Alive, and stamped inside the newest paid block (an earlier stamp may be the retry of
  -- the call that paid a block: that call must get its own decision back).
  if since - dl >= IDLE or since < (nb - 1) * BLOCK or since >= nb * BLOCK then return false end
  if a.suspended or (W.ent and not pr.lic) then return false end
  local code, _, rt = rate_check(app_id, a, pr)
  if code ~= 0 then return false end
  -- A retried call carries its original "now", never later than the last message the
  -- entry saw: only then can this token have a charge record (it paid this block).
  if since <= dl then
    if redis.call('GET', P .. ':i:' .. app_id .. ':t:' .. token) then return false end
  else
    d = D(since)
  end
  count_rate(rt)
  redis.call('HSET', SRK[fkb], fld, cs .. ',' .. d .. ',' .. blocks .. ',' .. bsid .. ',' ..
    D(tonumber(msgs) + 1) .. ',' .. rest)
  local g = agg[fkey]
  if g == nil then
    agg[fkey] = {0, 1, 0, 0, 0, 0}
  else
    g[2] = g[2] + 1
  end
  result(0, 0, 0, 0, 0, 0, 0, bsid, 0)
  return true
end

local function admit_one(arg)
  -- sfld "app\tchannel\tuser" is the billing session's field, captured whole.
  local sfld, app_id, ch, user, idem, token, kind, digest = string.match(arg,
    '^(([^\t]*)\t([^\t]*)\t([^\t]+))\t([^\t]*)\t([^\t]+)\t([mnMNc])\t?(%w*)$')
  if not app_id then return result(9, 0, 0, 0, 0, 0, 0, '', 0) end
  local a = app_of(app_id)
  if not a then return result(1, 0, 0, 0, 0, 0, 0, '', 0) end
  local pr = prod_of(a.product)
  local unit, price = pr.unit, pr.price
  if kind == 'c' then
    -- A check (a WebSocket upgrade): could the app be served? Nothing is charged or counted.
    local code = status_code(a, pr)
    if code == 0 then code = credit_code(a, pr, price) end
    if a.shadow then code = 0 end
    return result(code, 0, 0, 0, 0, 0, 0, '', 0)
  end
  local settle = kind == 'M' or kind == 'N'
  if kind == 'n' or kind == 'N' then unit, price = 'notification', W.np end
  local fkey = fkey_of(app_id, ch, a.product, unit)
  local sfound, sfkb
  if unit == 'session' and kind == 'm' then
    sfound, sfkb = session_find(sfld)
    if sfound and idem == '' and not a.shadow and fast(app_id, a, pr, fkey, token, sfld, sfound,
      sfkb) then return end
  end
  local rid, ttl = 'k:' .. ch .. '\t' .. user .. '\t' .. idem, IDEM_TTL
  if idem == '' then rid, ttl = 't:' .. token, REFUND_TTL end
  local ik = P .. ':i:' .. app_id .. ':' .. rid
  local seen = redis.call('GET', ik)
  if seen then
    local stok, _, _, sunits, sbsid, sf, sa, sp, si = string.match(seen, RECORD_RE)
    if stok == token then
      -- The same attempt again (the client retried a call whose reply was lost): the
      -- original decision, not a duplicate, so a failed bot call is still refunded.
      return result(0, tonumber(sunits), tonumber(sf), tonumber(sa), tonumber(sp), tonumber(si),
        0, sbsid, sbsid ~= '' and 2 or 0)
    end
    return redelivery(app_id, a, pr, price, fkey, ik, seen, settle, token, digest)
  end
  local code, retry, rt = status_code(a, pr), 0, nil
  local shadowed = 0
  if code ~= 0 and a.shadow then shadowed, code = shadow(fkey, code), 0 end
  if code == 0 and not settle then code, retry, rt = rate_check(app_id, a, pr) end
  if code ~= 0 and a.shadow then
    if shadowed == 0 then shadowed = shadow(fkey, code) end
    code = 0
  end
  if code ~= 0 then return refuse(fkey, code, retry, token) end
  local S
  local charge = true
  if unit == 'session' then
    if kind ~= 'm' then sfound, sfkb = session_find(sfld) end
    S = session_of(sfld, sfound, sfkb)
    charge = S.charge
  end
  local f, ap, pp, inv = 0, 0, 0, 0
  if charge then
    code = credit_code(a, pr, price)
    if code ~= 0 and a.shadow then
      -- Served although it could not be paid: nothing charged, no session opened.
      if shadowed == 0 then shadowed = shadow(fkey, code) end
      code, charge, S = 0, false, nil
    end
    if code == 5 then
      local fk = 'ul:' .. a.product
      if redis.call('HGET', wsk, fk) ~= PERIOD then
        redis.call('HSET', wsk, fk, PERIOD)
        event('usage_limit.reached', {product = a.product, period = PERIOD, limit = pr.lic.limit})
      end
    elseif code ~= 0 then
      if not a.inactive then
        a.inactive, a.dirty = true, true
        event('app.inactive', {app = app_id, reason = REASON[code]})
      end
    end
    if code ~= 0 then return refuse(fkey, code, 0, token) end
  end
  if charge then
    if W.ent then
      local u = usage_of(a.product)
      u.add = u.add + 1
      inv = price
    else
      f, ap, pp = debit(a, price)
    end
  end
  local flags, units, bsid = 0, charge and 1 or 0, ''
  -- Only a charged unit shows the app can pay again; a message inside an already
  -- paid session does not (else app.inactive would be announced again and again).
  if a.inactive and units > 0 then a.inactive, a.dirty = false, true end
  count_rate(rt)
  if S then
    write_session(S, a, charge and (f + ap + pp + inv) or nil)
    bsid = S.bsid
    if charge then flags = 2 end
  end
  flags = flags + 8 * shadowed
  tally(fkey, units, f, ap, pp, inv)
  if units > 0 or idem ~= '' then
    redis.call('SET', ik, string.format('%s\t1\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s', token,
      digest, units, bsid, f, ap, pp, inv, ch, unit, user), 'PX', ttl)
    if units > 0 and not settle then
      redis.call('ZADD', P .. ':rsv', now + RESERVE, app_id .. ':' .. rid)
    end
  end
  result(0, units, f, ap, pp, inv, 0, bsid, flags)
end

for i = FIRST, #ARGV do
  -- One malformed member never fails the others' admissions: its error is its own.
  local mark = no
  local ok = pcall(admit_one, ARGV[i])
  if not ok then
    no = mark
    result(9, 0, 0, 0, 0, 0, 0, '', 0)
  end
end

-- Crossings, each announced once ------------------------------------------------------
if W0.free > 0 and W.free == 0 then event('free_credits.exhausted', {}) end
local paid_total = W.paid + W.apaid
if W0.paid + W0.apaid > 0 and paid_total == 0 then event('paid_balance.zero', {}) end
local usable = (free_valid and W.free or 0) + paid_total
local debited = W.free ~= W0.free or W.paid ~= W0.paid or W.apaid ~= W0.apaid
if debited and not W.low and usable < LOW then
  W.low = true
  event('balance.low', {balance = usable, threshold = LOW})
end

-- Write back --------------------------------------------------------------------------
local wset = {}
if W.free ~= W0.free or W.lapsed ~= tonumber(wr[6] or '0') then
  wset[#wset + 1] = 'free'; wset[#wset + 1] = D(W.free)
  wset[#wset + 1] = 'lapsed'; wset[#wset + 1] = D(W.lapsed)
end
if W.paid ~= W0.paid then wset[#wset + 1] = 'paid'; wset[#wset + 1] = D(W.paid) end
if W.apaid ~= W0.apaid then wset[#wset + 1] = 'apaid'; wset[#wset + 1] = D(W.apaid) end
if W.seq ~= W0.seq then wset[#wset + 1] = 'seq'; wset[#wset + 1] = D(W.seq) end
if W.low ~= W0.low then wset[#wset + 1] = 'low'; wset[#wset + 1] = W.low and '1' or '0' end
if #wset > 0 then redis.call('HSET', wsk, unpack(wset)) end

for id, a in pairs(apps) do
  if a and a.dirty then
    redis.call('HSET', P .. ':a:' .. id, 'paid', D(a.paid), 'inactive', a.inactive and '1' or '0')
  end
end
for _, r in pairs(rates) do
  for _, w in ipairs({r.m, r.h}) do
    if w.add > 0 then
      redis.call('HINCRBY', w.key, w.cur, w.add)
      redis.call('HSET', w.key, 't', D(w.t), 'o', D(w.o), 'n', D(w.cur))
      if w.new or w.n ~= w.cur then redis.call('PEXPIRE', w.key, math.ceil(w.g * (NB + 2))) end
    elseif w.trimmed then
      -- Old buckets were dropped but nothing admitted: keep the total in step with them.
      redis.call('HSET', w.key, 't', D(w.t), 'o', D(w.o))
    end
  end
end
for uk, u in pairs(usage) do
  if u.add > 0 then redis.call('INCRBY', uk, u.add) end
end
local agk = P .. ':ag:' .. D(bucket)
local touched = false
for fkey, g in pairs(agg) do
  for j = 1, 6 do
    if g[j] ~= 0 then redis.call('HINCRBY', agk, fkey .. METRICS[j], g[j]) end
  end
  touched = true
end
for field, v in pairs(refused) do
  redis.call('HINCRBY', agk, field, v)
  touched = true
end
if touched then redis.call('ZADD', P .. ':agi', bucket, bucket) end
for b in pairs(sri) do redis.call('ZADD', P .. ':sri', b, b) end
if #events > 0 then redis.call('RPUSH', P .. ':ev', unpack(events)) end
return out
