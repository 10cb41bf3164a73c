-- admit_rules.lua (a fragment of admit.lua, inside full_path()): the rules one admission
-- is decided by — refusal and shadow accounting, status and licence, credit, billing
-- sessions and the debit (the rolling windows: admit_batch.lua). Each returns what it
-- decided; admit_full.lua applies it.

-- Enterprise usage of a product in the billing period (counted, never debited).
local function usage_of(product)
  local uk = P .. ':lu:' .. product .. ':' .. PERIOD
  usage = usage or {}
  local u = usage[uk]
  if u == nil then
    u = {used = tonumber(redis.call('GET', uk) or '0'), add = 0}
    usage[uk] = u
  end
  return u
end

-- One admission's charge in the aggregates of its field prefix (admit_one's fkey).
local function tally(fkey, units, free, app, pool, inv)
  local g = agg[fkey]
  if g == nil then
    g = {0, 0, 0, 0, 0, 0}
    agg[fkey] = g
  end
  g[1], g[2], g[3], g[4], g[5], g[6] = g[1] + units, g[2] + 1, g[3] + free, g[4] + app,
    g[5] + pool, g[6] + inv
end

-- Refusal reasons by code, as admit.lua returns them (pinned to Python's by
-- test_the_python_side_speaks_admit_lua_s_argument_and_reason_tables).
local REASON = {[1] = 'unknown_app', [2] = 'app_suspended', [3] = 'product_not_licensed',
  [4] = 'rate_limited', [5] = 'usage_limit_reached', [6] = 'credits_exhausted',
  [7] = 'free_credits_expired', [8] = 'duplicate_delivery', [9] = 'invalid_channel_user'}

-- Refusal reasons as aggregate fields; code 9 (invalid) never reaches the aggregates.
-- Counted once per attempt: a call retried after its reply was lost (same token) must not
-- count the refusal again. The mark outlives any client retry of one call.
local REFUSAL_MARK_MS = 10000
local function refuse(fkey, code, retry, token)
  if redis.call('SET', P .. ':rf:' .. token, code, 'NX', 'PX', REFUSAL_MARK_MS) then
    local rk = fkey .. 'r:' .. REASON[code]
    refused = refused or {}
    refused[rk] = (refused[rk] or 0) + 1
  end
  result(code, 0, 0, 0, 0, 0, retry or 0, '', 0)
end

-- Shadow mode: the refusal is counted (aggregate field "s:<reason>") but not applied.
local function shadow(fkey, code)
  local sk = fkey .. 's:' .. REASON[code]
  refused = refused or {}
  refused[sk] = (refused[sk] or 0) + 1
  return code
end

-- Suspension and licence: code or 0.
local function status_code(a, pr)
  if a.suspended then return 2 end
  if W.ent and not pr.lic then return 3 end
  return 0
end

-- Can the workspace pay this app's next unit? 0, or the refusal code (5, 6 or 7).
local function credit_code(a, pr, price)
  if W.ent then
    local u = usage_of(a.product)
    if u.used + u.add + 1 > pr.lic.limit then return 5 end
    return 0
  end
  local free = (a.use_free and free_valid) and W.free or 0
  if free + a.app + W.pool < price then
    if not free_valid and W.free_exp > 0 then return 7 end
    return 6
  end
  return 0
end

-- A refusal for want of credit is announced once: usage_limit.reached per product and
-- period, app.inactive until the app can pay again.
local function announce(app_id, a, pr, code)
  if code == 5 then
    local fk = 'ul:' .. a.product
    if redis.call('HGET', wsk, fk) ~= PERIOD then
      redis.call('HSET', wsk, fk, PERIOD)
      event('usage_limit.reached', {product = a.product, period = PERIOD, limit = pr.lic.limit})
    end
  elseif not a.inactive then
    a.inactive, a.dirty = true, true
    event('app.inactive', {app = app_id, reason = REASON[code]})
  end
end

-- A redelivery of an admitted message (its charge record "seen" under ik): charged
-- nothing, but it obeys the app's status, its credit and the rate limits (and counts in
-- them), at most MAX_DELIVERIES times. m: the admission (admit_message.lua builds it).
-- Its token joins the record's list of deliveries (after the 12 fields, ","-separated):
-- the charge stands while any delivery may be served (refund.lua).
local function redelivery(m, ik, seen)
  local a, pr = m.a, m.pr
  local stok, cnt, sdig, units, sbsid, sf, sa, sp, si, rest = string.match(seen,
    '^([^\t]*)\t(%d+)\t(%w*)\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t(.*)$')
  if not stok then cnt, sdig, sbsid, rest = 1, '', '', nil end
  cnt = tonumber(cnt)
  local code, retry, rt = 0, 0, nil
  -- A settlement was served already and charges nothing here: only the key's own rules
  -- (deliveries, digest) apply.
  if not m.settle then
    code = status_code(a, pr)
    if code == 0 then code, retry, rt = rate_check(m.app_id, a, pr) end
    if code == 0 then code = credit_code(a, pr, m.price) end
  end
  MAX_DELIVERIES = MAX_DELIVERIES or ARGV[14] + 0
  if code == 0 and cnt >= MAX_DELIVERIES then code = 8 end
  -- The same key with another message is not a redelivery.
  if code == 0 and sdig ~= '' and m.digest ~= '' and sdig ~= m.digest and sdig ~= m.legacy
  then code = 8 end
  local shadowed = 0
  if code ~= 0 and a.shadow then shadowed, code = shadow(m.fkey, code), 0 end
  if code ~= 0 then return refuse(m.fkey, code, retry, m.token) end
  count_rate(rt)
  if rest then
    -- rest: "channel\tunit\tuser", then "\t" and the list once there is one.
    local sep = string.find(rest, '^[^\t]*\t[^\t]*\t[^\t]*\t.') and ',' or '\t'
    redis.call('SET', ik, string.format('%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s%s', stok,
      cnt + 1, sdig, units, sbsid, sf, sa, sp, si, rest, sep, m.token), 'KEEPTTL')
  end
  result(0, 0, 0, 0, 0, 0, 0, sbsid, 1 + 8 * shadowed)
end

-- Does this message open a new billing session (or a new block of one)? Returns the
-- session state to write after a successful charge.
local function session_of(fld, found, fkb)
  local S = {fld = fld, found = found, fkb = fkb}
  if S.found then
    local c1, d1, b1, s1, m1, a1 = string.match(S.found, ENTRY_RE)
    -- Stamps of gateways can disagree a little (each follows Redis's clock to within its
    -- sync; a step of that clock): a batch may carry a "now" slightly before the last
    -- message, so times only ever move forward here.
    -- Digits (%d+) read with "+ 0": tonumber's value with one parse instead of two.
    local dl = c1 and d1 + 0
    if c1 and now - c1 - dl < IDLE then
      S.cs, S.blocks, S.bsid, S.msgs, S.amount = c1 + 0, b1 + 0, s1, m1 + 0, a1 + 0
      S.last = math.max(now, S.cs + dl)
      S.opened = string.match(S.found, ',(%d+)$') -- none in entries of earlier versions
    end
  end
  if not S.cs then S.cs, S.last, S.blocks = now, now, 0 end
  local need = math.floor((math.max(now, S.cs) - S.cs) / BLOCK) + 1
  S.charge = need > S.blocks
  if S.charge then S.blocks = need end
  return S
end

-- Debit one unit from what the app may use, free first (or paid first): free, app and
-- pool amounts taken. A balance below zero (a payment given back, reverse.lua) gives
-- nothing and takes nothing: credit_code counted it against the others.
-- settle: a fail-open settlement, served already, is paid whatever the app's settings
-- now: what the app may use first, then free credits it may not use (use_free off), and
-- what is still unpaid is owed: taken from the pool below zero (the next payment to the
-- pool covers it; until then credit_code counts it against every app), and noted in
-- OWED for the reply.
local function debit(a, price, settle)
  local usable_free = (a.use_free and free_valid) and W.free or 0
  local need = price
  local function take(avail)
    local t = math.min(math.max(avail, 0), need)
    need = need - t
    return t
  end
  local free, app, pool
  if PAID_FIRST then
    app = take(a.app); pool = take(W.pool); free = take(usable_free)
  else
    free = take(usable_free); app = take(a.app); pool = take(W.pool)
  end
  if settle and need > 0 then
    if free_valid and not a.use_free then free = take(W.free) end
    OWED = need
    pool, need = pool + need, 0
  end
  W.free, a.app, W.pool, W.apps = W.free - free, a.app - app, W.pool - pool, W.apps - app
  if app ~= 0 then a.dirty = true end
  return free, app, pool
end

-- The session entry after this message: a new one (charged: its amount) or one more
-- message in the same.
local function write_session(S, a, charged)
  if charged then
    W.seq = W.seq + 1
    S.bsid = 's' .. D(W.seq)
    local nb = sbucket_of(S.cs + (S.blocks - 1) * BLOCK)
    if S.found and S.fkb == nb then
      -- An earlier block or conversation already has this field: keep its record, unless
      -- it counts no message (the state a refunded block opener left, refund.lua: no
      -- session; a snapshot the refund left for the store is under that name already).
      local s1, m1 = string.match(S.found, '^%d+,%d+,%d+,([^,]+),(%d+),')
      if m1 ~= '0' then redis.call('HSET', sr_key(nb), S.fld .. '\t' .. s1, S.found) end
    end
    S.fkb, S.msgs, S.amount, S.opened = nb, 1, charged, D(now)
    sri = sri or {}
    sri[nb] = true
  else
    S.msgs = S.msgs + 1
  end
  redis.call('HSET', sr_key(S.fkb), S.fld, D(S.cs) .. ',' .. N(S.last - S.cs) .. ','
    .. N(S.blocks) .. ',' .. S.bsid .. ',' .. N(S.msgs) .. ',' .. N(S.amount) .. ','
    .. a.product .. (S.opened and ',' .. S.opened or ''))
end
