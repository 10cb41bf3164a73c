-- admit_full.lua (a fragment of admit.lua, inside full_path()): the full path of one
-- admission, full(m), and the check of kind "c", check(app_id, a, pr, fld).

-- A check (kind "c", a WebSocket upgrade): could the app be served? Suspension,
-- licence, the rate windows (read, not counted: code 4 with its wait) and credit,
-- unless the user (fld "app\tchannel\tuser") is inside a session whose newest block is
-- paid: its messages go through as they would on HTTP. Nothing is charged, counted or
-- recorded.
local function check(app_id, a, pr, fld)
  local code, retry = status_code(a, pr), 0
  if code == 0 then code, retry = rate_check(app_id, a, pr) end
  local paid = false
  if code == 0 and pr.unit == 'session' then
    local found, fkb = session_find(fld)
    paid = found ~= nil and not session_of(fld, found, fkb).charge
  end
  if code == 0 and not paid then code = credit_code(a, pr, pr.price) end
  if a.shadow then code, retry = 0, 0 end
  return result(code, 0, 0, 0, 0, 0, retry, '', 0)
end

local RECORD_RE = '^([^\t]*)\t(%d+)\t(%w*)\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t'

-- A charge record exists for this rid: the same attempt again (the client retried a call
-- whose reply was lost) gets the original decision, not a duplicate, so a failed bot call
-- is still refunded; a redelivery's attempt again (its token in the record's list of
-- deliveries, see refund.lua) is the same duplicate, counted once; another attempt is a
-- redelivery. An attempt admitted again may be served: a failure counted for it ("-" in
-- the list) is taken back, and a settled one (kind M/N, served while Redis was away)
-- settles the reservation its lost call left, so the sweeper does not refund it. The
-- record does not keep a settlement's owed part: a replay reports 0 owed.
local function seen_before(m, ik, seen)
  local stok, _, _, sunits, sbsid, sf, sa, sp, si, rest = string.match(seen, RECORD_RE .. '(.*)$')
  local list = stok and string.match(rest, '^[^\t]*\t[^\t]*\t[^\t]*\t(.*)$')
  local listed = false
  if list then
    local l = ',' .. list .. ','
    local at = string.find(l, ',-' .. m.token .. ',', 1, true)
    if at then
      l = string.sub(l, 1, at) .. string.sub(l, at + 2)
      local head, left = string.sub(seen, 1, #seen - #list - 1), string.sub(l, 2, -2)
      redis.call('SET', ik, left == '' and head or head .. '\t' .. left, 'KEEPTTL')
    end
    listed = at or string.find(l, ',' .. m.token .. ',', 1, true)
  end
  if stok == m.token then
    if m.settle then
      -- Served: the reservation its lost call left is settled, and the record lives on
      -- for a settlement replayed long after (admit_message.lua).
      if sunits ~= '0' then redis.call('ZREM', P .. ':rsv', m.app_id .. ':' .. m.rid) end
      SETTLED_TTL = SETTLED_TTL or math.max(IDEM_TTL + 0, REFUND_TTL + 0)
      redis.call('PEXPIRE', ik, SETTLED_TTL, 'GT')
    end
    return result(0, tonumber(sunits), tonumber(sf), tonumber(sa), tonumber(sp), tonumber(si),
      0, sbsid, (sbsid ~= '' and sunits ~= '0') and 2 or 0)
  end
  if listed then return result(0, 0, 0, 0, 0, 0, 0, sbsid, 1) end
  return redelivery(m, ik, seen)
end

-- Suspension, licence and rate limits of a new message: the code (0 to go on), the wait,
-- the windows to count it in, and the code shadow mode counted instead. A settlement
-- (kind M/N) passes: it was served already (fail-open), under the settings of then; a
-- suspension or licence change since does not take the service back, so it must not
-- cancel the charge either.
local function gate(m)
  local a = m.a
  if m.settle and not a.shadow then return 0, 0, nil, 0 end
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
-- A settlement (not in shadow mode) is never refused for want of credit: see debit().
local function charge(m)
  if W.ent then
    local u = usage_of(m.a.product)
    u.add = u.add + 1
    return 0, 0, 0, m.price
  end
  local free, app, pool = debit(m.a, m.price, m.settle and not m.a.shadow)
  return free, app, pool, 0
end

-- The charge record (redelivery check, what a refund reverses) and, for a charge not
-- yet settled, its reservation until the forward is confirmed. Channel, unit and user
-- only where a refund reads them: a charge's, the user only of one that opened a
-- billing session (see admit.lua). A charge also notes where it was counted, first in
-- the list after the 12 fields: "@<aggregate bucket>" and, invoiced, ":<period>" (a
-- refund reverses it there); so does a message inside a paid session, charged nothing
-- (a refund un-counts it there). A keyed record that took no money lives as long as
-- free_ttl allows (admit_batch.lua).
local function record(m, units, bsid, free, app, pool, inv)
  local ch, unit, user, ttl, at = m.ch, m.unit, m.user, m.ttl, ''
  if units > 0 or bsid ~= '' then
    AT = AT or '\t@' .. D(bucket)
    at = inv > 0 and AT .. ':' .. PERIOD or AT
  end
  if units == 0 then
    ch, unit, user = '', '', ''
  elseif bsid == '' then
    user = ''
  end
  if m.idem ~= '' and free + app + pool + inv == 0 then ttl = free_ttl(m.app_id, m.a) end
  redis.call('SET', m.ik, m.token .. '\t1\t' .. m.digest .. '\t' .. N(units) .. '\t' .. bsid
    .. '\t' .. N(free) .. '\t' .. N(app) .. '\t' .. N(pool) .. '\t' .. N(inv) .. '\t' .. ch
    .. '\t' .. unit .. '\t' .. user .. at, 'PX', ttl)
  if units > 0 and not m.settle then
    DEADLINE = DEADLINE or D(now + ARGV[15])
    redis.call('ZADD', P .. ':rsv', DEADLINE, m.app_id .. ':' .. m.rid)
  end
end

-- Everything but the short path: redeliveries, refusals, charges, new sessions.
local function full(m)
  OWED = 0
  local ik = m.ik
  local seen = redis.call('GET', ik)
  if not seen and m.old then
    ik = m.old
    seen = redis.call('GET', ik)
  end
  if seen then return seen_before(m, ik, seen) end
  local a = m.a
  local code, retry, rt, shadowed = gate(m)
  if code ~= 0 then return refuse(m.fkey, code, retry, m.token) end
  local S, charged = nil, true
  if m.unit == 'session' then
    S = session_of(m.sfld, m.found, m.fkb)
    charged = S.charge
  end
  local free, app, pool, inv = 0, 0, 0, 0
  -- A settlement is charged whatever the credit (the message was served): what the
  -- balances cannot pay is owed (debit()); an enterprise one counts past the limit.
  if charged and not (m.settle and not a.shadow) then
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
  if a.inactive and units > 0 and OWED == 0 then a.inactive, a.dirty = false, true end
  count_rate(rt)
  if S then
    write_session(S, a, charged and (free + app + pool + inv) or nil)
    bsid = S.bsid
    if charged then flags = 2 end
  end
  if charged or S then
    tally(m.fkey, units, free, app, pool, inv)
  else
    -- Served free (shadow mode, no credit): counted with the refusals, so past the
    -- bound a channel new to the bucket pools under "(overflow)" (admit.lua).
    refused = refused or {}
    refused[m.fkey .. 'm'] = (refused[m.fkey .. 'm'] or 0) + 1
  end
  if units > 0 or m.idem ~= '' then record(m, units, bsid, free, app, pool, inv) end
  -- A settlement's retry slot carries the part of its pool amount taken on credit.
  result(0, units, free, app, pool, inv, OWED, bsid, flags + 8 * shadowed)
end
