-- admit_message.lua (a fragment of admit.lua): one admission, admit_one(arg). The common
-- message takes the short path fast(); everything else the full path full(m), split into
-- the steps below. Each ends by appending the admission's reply with result().

-- The common message: inside a billing session whose newest block is paid, not in
-- shadow mode. Nothing is charged: the session entry's message count and last time
-- change, and a message with a channel key leaves its record (the redelivery check).
-- Returns false (nothing done) for anything else, which the full path then decides.
local function fast(app_id, a, pr, fkey, token, fld, found, fkb, idem, ch, user, digest)
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
  local ik
  if idem ~= '' then
    -- A record under the key: a redelivery or the same attempt again (the full path).
    ik = P .. ':i:' .. app_id .. ':k:' .. ch .. '\t' .. user .. '\t' .. idem
    if redis.call('GET', ik) then return false end
    if since > dl then d = D(since) end
  elseif since <= dl then
    -- A retried call carries its original "now", never later than the last message the
    -- entry saw: only then can this token have a charge record (it paid this block).
    if redis.call('GET', P .. ':i:' .. app_id .. ':t:' .. token) then return false end
  else
    d = D(since)
  end
  count_rate(rt)
  if ik then
    redis.call('SET', ik, string.format('%s\t1\t%s\t0\t%s\t0\t0\t0\t0\t%s\tsession\t%s', token,
      digest, bsid, ch, user), 'PX', IDEM_TTL)
  end
  redis.call('HSET', SRK[fkb], fld, cs .. ',' .. d .. ',' .. blocks .. ',' .. bsid .. ',' ..
    D(tonumber(msgs) + 1) .. ',' .. rest)
  local g = agg[fkey]
  if g == nil then
    agg[fkey] = {0, 1, 0, 0, 0, 0}
  else
    g[2] = g[2] + 1
  end
  out[no + 1], out[no + 2], out[no + 3] = 0, bsid, 0 -- result(0, 0, ..., bsid, 0)
  no = no + 3
  return true
end

-- A check (kind "c", a WebSocket upgrade): could the app be served? Nothing is charged
-- or counted.
local function check(a, pr)
  local code = status_code(a, pr)
  if code == 0 then code = credit_code(a, pr, pr.price) end
  if a.shadow then code = 0 end
  return result(code, 0, 0, 0, 0, 0, 0, '', 0)
end

local RECORD_RE = '^([^\t]*)\t(%d+)\t(%w*)\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t'

-- A charge record exists for this rid: the same attempt again (the client retried a call
-- whose reply was lost) gets the original decision, not a duplicate, so a failed bot call
-- is still refunded; another attempt is a redelivery.
local function seen_before(m, ik, seen)
  local stok, _, _, sunits, sbsid, sf, sa, sp, si = string.match(seen, RECORD_RE)
  if stok == m.token then
    return result(0, tonumber(sunits), tonumber(sf), tonumber(sa), tonumber(sp), tonumber(si),
      0, sbsid, (sbsid ~= '' and sunits ~= '0') and 2 or 0)
  end
  return redelivery(m, ik, seen)
end

-- Suspension, licence and (unless settling) rate limits of a new message: the code (0 to
-- go on), the wait, the windows to count it in, and the code shadow mode counted instead.
local function gate(m)
  local a = m.a
  local code, retry, rt = status_code(a, m.pr), 0, nil
  local shadowed = 0
  if code ~= 0 and a.shadow then shadowed, code = shadow(m.fkey, code), 0 end
  if code == 0 and not m.settle then code, retry, rt = rate_check(m.app_id, a, m.pr) end
  if code ~= 0 and a.shadow then
    if shadowed == 0 then shadowed = shadow(m.fkey, code) end
    code = 0
  end
  return code, retry, rt, shadowed
end

-- Take the unit's price (enterprise: count it in the period's usage): the charge as
-- free, app, pool and invoiced amounts.
local function charge(m)
  if W.ent then
    local u = usage_of(m.a.product)
    u.add = u.add + 1
    return 0, 0, 0, m.price
  end
  local free, app, pool = debit(m.a, m.price)
  return free, app, pool, 0
end

-- The charge record (redelivery check, what a refund reverses) and, for a charge not
-- yet settled, its reservation until the forward is confirmed.
local function record(m, units, bsid, free, app, pool, inv)
  redis.call('SET', m.ik, string.format('%s\t1\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s', m.token,
    m.digest, units, bsid, free, app, pool, inv, m.ch, m.unit, m.user), 'PX', m.ttl)
  if units > 0 and not m.settle then
    redis.call('ZADD', P .. ':rsv', now + RESERVE, m.app_id .. ':' .. m.rid)
  end
end

-- Everything but the short path: redeliveries, refusals, charges, new sessions.
local function full(m)
  local seen = redis.call('GET', m.ik)
  if seen then return seen_before(m, m.ik, seen) end
  local a = m.a
  local code, retry, rt, shadowed = gate(m)
  if code ~= 0 then return refuse(m.fkey, code, retry, m.token) end
  local S, charged = nil, true
  if m.unit == 'session' then
    S = session_of(m.sfld, m.found, m.fkb)
    charged = S.charge
  end
  local free, app, pool, inv = 0, 0, 0, 0
  if charged then
    code = credit_code(a, m.pr, m.price)
    if code ~= 0 and a.shadow then
      -- Served although it could not be paid: nothing charged, no session opened.
      if shadowed == 0 then shadowed = shadow(m.fkey, code) end
      code, charged, S = 0, false, nil
    end
    if code ~= 0 then
      announce(m.app_id, a, m.pr, code)
      return refuse(m.fkey, code, 0, m.token)
    end
  end
  if charged then free, app, pool, inv = charge(m) end
  local flags, units, bsid = 0, charged and 1 or 0, ''
  -- Only a charged unit shows the app can pay again; a message inside an already
  -- paid session does not (else app.inactive would be announced again and again).
  if a.inactive and units > 0 then a.inactive, a.dirty = false, true end
  count_rate(rt)
  if S then
    write_session(S, a, charged and (free + app + pool + inv) or nil)
    bsid = S.bsid
    if charged then flags = 2 end
  end
  tally(m.fkey, units, free, app, pool, inv)
  if units > 0 or m.idem ~= '' then record(m, units, bsid, free, app, pool, inv) end
  result(0, units, free, app, pool, inv, 0, bsid, flags + 8 * shadowed)
end

local ARG_RE = '^(([^\t]*)\t([^\t]*)\t([^\t]+))\t([^\t]*)\t([^\t]+)\t([mnMNc])\t?(%w*)$'

local function admit_one(arg)
  -- sfld "app\tchannel\tuser" is the billing session's field, captured whole.
  local sfld, app_id, ch, user, idem, token, kind, digest = string.match(arg, ARG_RE)
  if not app_id then return result(9, 0, 0, 0, 0, 0, 0, '', 0) end
  local a = app_of(app_id)
  if not a then return result(1, 0, 0, 0, 0, 0, 0, '', 0) end
  local pr = prod_of(a.product)
  if kind == 'c' then return check(a, pr) end
  local unit, price = pr.unit, pr.price
  if kind == 'n' or kind == 'N' then unit, price = 'notification', W.np end
  local fkey = fkey_of(app_id, ch, a.product, unit)
  local found, fkb
  if unit == 'session' then
    found, fkb = session_find(sfld)
    if found and kind == 'm' and not a.shadow
      and fast(app_id, a, pr, fkey, token, sfld, found, fkb, idem, ch, user, digest) then return end
  end
  -- The charge record's id and lifetime (meter/redis_layer/keys.py record_id).
  local rid, ttl = 'k:' .. ch .. '\t' .. user .. '\t' .. idem, IDEM_TTL
  if idem == '' then rid, ttl = 't:' .. token, REFUND_TTL end
  -- m: the admission, built in one constructor (sized once).
  full({app_id = app_id, ch = ch, user = user, idem = idem, token = token, digest = digest,
    settle = kind == 'M' or kind == 'N', a = a, pr = pr, unit = unit, price = price,
    fkey = fkey, sfld = sfld, found = found, fkb = fkb, rid = rid, ttl = ttl,
    ik = P .. ':i:' .. app_id .. ':' .. rid})
end
