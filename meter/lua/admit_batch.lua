-- admit_batch.lua (a fragment of admit.lua): the workspace, read once per call, and the
-- per-batch caches of apps, products, rate windows, usage and aggregates, written back
-- once at the end of admit.lua; the rate check the short path shares with the full one.
-- Also the reply builder, result().

-- Hash fields of the balances (meter/redis_layer/keys.py F_*).
local F_POOL, F_APPS, F_APP = 'pool', 'apps', 'app'

-- An integer as D() writes it; 0 and 1, most amounts and counts of a record, without
-- a format call. The record, session entry and reply of a charge are built by
-- concatenation with N(): string.format costs some 2,000 instructions of redis-server a
-- call plus 700 a field (an admission opening a session: 4-9% fewer, bench/lua_cost.py).
-- A number concatenated as is costs more than D(): Lua formats it with "%.14g".
local function N(x)
  if x == 0 then return '0' elseif x == 1 then return '1' end
  return D(x)
end

-- The reply: three values per admission (see admit.lua's header).
local out, no = {}, 0
local function result(code, units, free, app, pool, inv, retry, bsid, flags)
  local amounts = 0
  if units ~= 0 or free ~= 0 or app ~= 0 or pool ~= 0 or inv ~= 0 or retry ~= 0 then
    amounts = N(units) .. ',' .. N(free) .. ',' .. N(app) .. ',' .. N(pool) .. ',' .. N(inv)
      .. ',' .. N(retry)
  end
  out[no + 1], out[no + 2], out[no + 3] = code + 16 * flags, bsid, amounts
  no = no + 3
end

-- Workspace ---------------------------------------------------------------------------
local wsk = P .. ':ws'
local wr = redis.call('HMGET', wsk, 'type', 'free', 'free_exp', F_POOL, F_APPS, 'lapsed',
  'low', 'np', 'seq', 'lowt', 'free_granted', 'free_lapsed')
if not wr[1] then
  for _ = FIRST, #ARGV do result(1, 0, 0, 0, 0, 0, 0, '', 0) end
  return out
end
-- Integers, read with "+ 0" (one parse; tonumber makes two): a value that is not a number
-- fails the call here, before any write (no writer stores one).
local W = {
  ent = wr[1] == 'enterprise', free = (wr[2] or 0) + 0, free_exp = (wr[3] or 0) + 0,
  pool = (wr[4] or 0) + 0, apps = (wr[5] or 0) + 0, lapsed = (wr[6] or 0) + 0,
  low = wr[7] == '1', np = (wr[8] or 0) + 0, seq = (wr[9] or 0) + 0,
}
-- The free credits in hand: those granted up to free_granted, valid until free_exp. Their
-- lapse and exhaustion carry it as ``once``: the flusher keys the ledger entry and the
-- owner event by it, so a Redis that lost them and does them again is not counted twice.
-- free_lapsed names the set that lapsed last (refund.lua gives such credits back as
-- lapsed, whatever its clock says).
-- FREE_SET ("<free_exp>:<free_granted>") is formatted only where a lapse (below) or an
-- exhaustion (admit.lua) needs it; free_granted is read here all the same.
local FREE_GRANTED, FREE_SET = (wr[11] or 0) + 0, nil
local LAPSED_SET -- the set this call lapsed: written back as free_lapsed
-- An id (event e<n>, billing session s<n>) is at least now x 1000: a Redis that lost
-- recent writes (failover, restart from an older file) never gives one again.
if W.seq < now * 1000 then W.seq = now * 1000 - 1 end
-- The balances as read (the write-back writes what changed): locals, not a table.
local W0free, W0pool, W0apps, W0seq, W0low, W0lapsed = W.free, W.pool, W.apps, W.seq, W.low,
  W.lapsed
local events -- made by the first event
local function event(kind, fields)
  W.seq = W.seq + 1
  fields.id = 'e' .. D(W.seq)
  fields.type = kind
  fields.at = now
  events = events or {}
  events[#events + 1] = cjson.encode(fields)
end

-- Free credits past their validity lapse once, remainder recorded, keyed "expiry:<set>".
-- Free credits of a set that already lapsed (free_lapsed: put back by an earlier
-- version's refund.lua, which did not look) lapse under a key of their own, the set's
-- with the lapsed total before it: the store takes them too, and once from a Redis that
-- lost them.
if W.free > 0 and now >= W.free_exp then
  FREE_SET = D(W.free_exp) .. ':' .. D(FREE_GRANTED)
  local once = 'expiry:' .. FREE_SET
  if wr[12] == FREE_SET then once = once .. ':' .. D(W.lapsed) end
  event('free_credits.expired', {amount = W.free, once = once})
  LAPSED_SET = FREE_SET
  W.lapsed = W.lapsed + W.free
  W.free = 0
  W0free = 0
end
local free_valid = now < W.free_exp

-- Per-batch caches --------------------------------------------------------------------
-- usage, refused and sri are made when first written (admit_rules.lua): most calls
-- write none of them, and each table made costs every call.
local apps, prods, rates, usage = {}, {}, {}, nil
-- Aggregates: per field prefix (admit_one's fkey) the sums of the metrics
-- n, m, f, a, p, i (in that order); refusals by reason apart. Written once at the end.
-- Refusals cost nothing and channel names are free (require_channel_auth is off by
-- default): in a bucket that holds ARGV[18] fields already, a refusal whose field is not
-- there yet, on a channel that admitted nothing in the bucket (no "m" field, none this
-- call), is counted under channel "(overflow)" (no channel is so named: keys.CHANNEL_RE)
-- of its app, product, unit and reason. Totals stay exact, and the bucket holds at most
-- ARGV[18] fields plus the overflow's (apps x units x reasons). Admitted messages keep
-- their channel: they are paid, or inside a session that was; a message shadow mode
-- serves without credit costs nothing, so its "m" goes with the refusals
-- (admit_full.lua). One HLEN per call that refused something; HEXISTS only past the
-- bound. Workers of a version without ARGV[18] (a rolling deploy) still add a field per
-- name until they are replaced.
local agg, refused = {}, nil
local sri -- session-record buckets that got a new entry

-- The app's configuration and app balance, or false for an unknown app; a.pr: its
-- product's unit, price and (enterprise) licence, read right after the app (one function
-- for both: each function made costs every call).
local function app_of(id)
  local a = apps[id]
  if a == nil then
    local r = redis.call('HMGET', P .. ':a:' .. id, 'product', 'suspended', 'use_free', F_APP,
      'pm', 'ph', 'inactive', 'shadow')
    if not r[1] then
      a = false
    else
      local p = r[1]
      local x = prods[p]
      if x == nil then
        local q = redis.call('HMGET', wsk, 'u:' .. p, 'p:' .. p, 'l:' .. p)
        x = {unit = q[1] or 'session', price = tonumber(q[2] or '0')}
        if q[3] then
          local lim, pm, ph = string.match(q[3], '^(%d+),(%d+),(%d+)$')
          x.lic = {limit = tonumber(lim), pm = tonumber(pm), ph = tonumber(ph)}
        end
        prods[p] = x
      end
      a = {product = p, suspended = r[2] == '1', use_free = r[3] ~= '0',
        app = tonumber(r[4] or '0'), pm = r[5] and tonumber(r[5]) or ARGV[8] + 0,
        ph = r[6] and tonumber(r[6]) or ARGV[9] + 0,
        inactive = r[7] == '1', shadow = r[8] == '1', dirty = false, pr = x,
        fch = false, funit = false, fkey = false}
    end
    apps[id] = a
  end
  return a
end

-- The lifetime of a keyed record that took no money (a message inside a paid billing
-- session; in shadow mode, one without credit). Paid records are bounded by what they
-- cost; these cost nothing, and anonymous clients of an unauthenticated channel can make
-- one per message, so they are counted per app in P:ik:<app> and per workspace in P:ikw
-- (counts that live one idempotency window from their first record, then start again:
-- at most twice ARGV[16] per app and ARGV[17] per workspace are alive). Within both a
-- record lives the idempotency window; past either, the refund window, as a record
-- without a key: a redelivery within that is still known, a later one is a new message
-- (inside a paid session, free again). One GET per app and one per workspace and call.
local WFK, WFK0 -- the workspace's count, read when first needed
local function free_ttl(app_id, a)
  local n = a.fk
  if n == nil then
    n = (redis.call('GET', P .. ':ik:' .. app_id) or 0) + 0
    a.fk0 = n
    FREE_KEYS = FREE_KEYS or ARGV[16] + 0
  end
  if WFK == nil then
    WFK = (redis.call('GET', P .. ':ikw') or 0) + 0
    WFK0 = WFK
    FREE_KEYS_WS = ARGV[17] + 0
  end
  if n >= FREE_KEYS or WFK >= FREE_KEYS_WS then
    a.fk = n
    return REFUND_TTL
  end
  a.fk = n + 1
  WFK = WFK + 1
  return IDEM_TTL
end

-- Rolling window: NB buckets of WIN/NB ms; fields <bucket index> -> count, plus t (total),
-- o (oldest index possibly present) and n (newest written). Counting buckets from
-- cur-NB on covers a little more than the window, so the limit is never exceeded.
-- The current bucket's count (c) is read with the rest, so admit.lua writes a window
-- back in one HSET: its count, t, and o and n only where they changed.
-- A window never goes backwards: stamps of gateways can disagree (Redis's clock followed
-- to within a sync, a step of that clock, an earlier version's own clock), and a caller
-- whose clock is behind the window's newest bucket n counts into n (one more HGET, for
-- that caller only) instead of its own bucket, so n never moves back and a caller ahead by
-- more than the window never finds every bucket "old" because another wrote n at its own
-- time. A caller ahead drops only buckets older than its window (by its clock), as any
-- caller.
local function window(key, win)
  local g = win / NB
  local cur = math.floor(now / g)
  local cs = D(cur) -- the current bucket's field
  local r = redis.call('HMGET', key, 't', 'o', 'n', cs)
  -- Only admit.lua writes a window, each field as D() formats it: "+ 0" reads it (one
  -- parse where tonumber makes two), and an n equal to the current field is cur.
  local same_n = r[3] == cs
  local n, c = same_n and cur or (r[3] or cur) + 0, (r[4] or 0) + 0
  if n > cur then
    cur, cs, same_n = n, r[3], true
    c = (redis.call('HGET', key, cs) or 0) + 0
  end
  local w = {key = key, g = g, cur = cur, cs = cs, t = (r[1] or 0) + 0, o = (r[2] or cur) + 0,
    n = n, c = c, add = 0, new = r[1] == false, same_n = same_n}
  local minv = cur - NB
  if w.n < minv then
    if not w.new then redis.call('DEL', key) end
    w.t, w.o, w.n, w.c, w.new, w.same_n = 0, cur, cur, 0, true, false
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

-- Rolling windows: code 4 and the wait, or 0; the windows to count the message in.
-- (One function, read and wait included: each function made costs every call.)
local function rate_check(app_id, a, pr)
  local pm, ph = a.pm, a.ph
  if W.ent and pr.lic then pm, ph = pr.lic.pm, pr.lic.ph end
  local rt = rates[app_id]
  if rt == nil then
    rt = {m = window(P .. ':rm:' .. app_id, ARGV[10] + 0),
      h = window(P .. ':rh:' .. app_id, ARGV[11] + 0)}
    rates[app_id] = rt
  end
  local w, limit
  if rt.m.t + 1 > pm then
    w, limit = rt.m, pm
  elseif rt.h.t + 1 > ph then
    w, limit = rt.h, ph
  else
    return 0, 0, rt
  end
  -- Time until enough old buckets fall out for one more message. A caller behind the
  -- window's newest bucket (window(): it counts into n) would be told its clock skew on
  -- top: the wait is capped at the window plus a bucket, the most a caller on time is
  -- told (60 + 1 s per minute, 60 + 1 min per hour).
  local excess = w.t + 1 - limit
  local acc = 0
  for i = w.o, w.cur do
    local c = tonumber(redis.call('HGET', w.key, i) or '0')
    if i == w.cur then c = c + w.add end
    acc = acc + c
    if acc >= excess then
      return 4, math.min((i + NB + 1) * w.g - now, (NB + 1) * w.g), rt
    end
  end
  return 4, w.g, rt
end

local function count_rate(rt)
  if rt then
    rt.m.t, rt.m.add = rt.m.t + 1, rt.m.add + 1
    rt.h.t, rt.h.add = rt.h.t + 1, rt.h.add + 1
  end
end
