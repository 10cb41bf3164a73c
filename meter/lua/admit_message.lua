-- admit_message.lua (a fragment of admit.lua): one admission, admit_one(arg). The common
-- message takes the short path fast(); everything else the full path full(m)
-- (admit_full.lua). While the call has not made the full path yet, admit_one returns m
-- (a check: {c = true, app_id, a, pr, sfld}) instead, and admit.lua's loop makes it
-- and runs full(m) (check(app_id, a, pr, sfld)). Each ends by appending the
-- admission's reply with result().

-- The common message: inside a billing session whose newest block is paid, not in
-- shadow mode. Nothing is charged: the session entry's message count and last time
-- change, and a message with a channel key leaves its record (the redelivery check).
-- Returns false (nothing done) for anything else, which the full path then decides.
local function fast(app_id, a, pr, fkey, token, fld, found, fkb, idem, ch, user, digest)
  local cs, d, blocks, bsid, msgs, rest =
    string.match(found, '^(%d+),(%d+),(%d+),([^,]+),(%d+),(.*)$')
  if not cs then return false end
  -- Digits (%d+) read with "+ 0": tonumber's value with one parse instead of two.
  local dl, nb = d + 0, blocks == '1' and 1 or blocks + 0
  local since = now - cs -- ms since the conversation began
  -- Alive, and stamped inside the newest paid block (an earlier stamp may be the retry of
  -- the call that paid a block: that call must get its own decision back).
  if since - dl >= IDLE or since < (nb - 1) * BLOCK or since >= nb * BLOCK then return false end
  if a.suspended or (W.ent and not pr.lic) then return false end
  local code, _, rt = rate_check(app_id, a, pr)
  if code ~= 0 then return false end
  local ik, old
  if idem ~= '' then
    -- A record under the key: a redelivery or the same attempt again (the full path).
    ik, old = record_keys(app_id, 'k:' .. ch .. '\t' .. user .. '\t' .. idem)
    if old then
      if redis.call('EXISTS', ik, old) > 0 then return false end
    elseif redis.call('GET', ik) then
      return false
    end
    if since > dl then d = D(since) end
  elseif since <= dl then
    -- A retried call carries its original "now", never later than the last message the
    -- entry saw: only then can this token have a charge record (it paid this block).
    -- (lib_records.lua: "t:<token>" is its own name.)
    if redis.call('GET', P .. ':i:' .. app_id .. ':t:' .. token) then return false end
  else
    d = D(since)
  end
  count_rate(rt)
  if ik then
    -- No unit: channel, unit and user are left empty (only a refund reads them); then
    -- where it was counted, "@<bucket>": a refund un-counts it there (refund.lua).
    AT = AT or '\t@' .. D(bucket)
    redis.call('SET', ik, token .. '\t1\t' .. digest .. '\t0\t' .. bsid .. '\t0\t0\t0\t0\t\t\t'
      .. AT, 'PX', free_ttl(app_id, a))
  end
  redis.call('HSET', SRK[fkb], fld, cs .. ',' .. d .. ',' .. blocks .. ',' .. bsid .. ',' ..
    D(msgs + 1) .. ',' .. rest)
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

local ARG_RE = '^(([^\t]*)\t([^\t]*)\t([^\t]+))\t([^\t]*)\t([^\t]+)\t([mnMNc])\t?(%w*)$'

local function admit_one(arg)
  -- sfld "app\tchannel\tuser" is the billing session's field, captured whole.
  local sfld, app_id, ch, user, idem, token, kind, digest = string.match(arg, ARG_RE)
  if not app_id then return result(9, 0, 0, 0, 0, 0, 0, '', 0) end
  -- "<digest>L<legacy>": digest is recorded; a record of either is this message's (admit.lua)
  local legacy
  if idem ~= '' then
    local dg, lg = string.match(digest, '^(%w-)L(%w+)$')
    if dg then digest, legacy = dg, lg end
  end
  local a = app_of(app_id)
  if not a then return result(1, 0, 0, 0, 0, 0, 0, '', 0) end
  local pr = a.pr
  if kind == 'c' then
    if check then
      check(app_id, a, pr, sfld)
      return
    end
    return {c = true, app_id = app_id, a = a, pr = pr, sfld = sfld} -- for admit.lua's loop
  end
  local unit, price = pr.unit, pr.price
  if kind == 'n' or kind == 'N' then unit, price = 'notification', W.np end
  -- The aggregate field prefix "<app>\t<ch>\t<product>\t<unit>\t" (keys.py agg_field):
  -- the app remembers the last one made (fch, funit, fkey), so a batch of one channel and
  -- unit builds it once (and no table, nor a function, is made for it).
  local fkey = a.fkey
  if a.fch ~= ch or a.funit ~= unit then
    local product = a.product
    fkey = app_id .. '\t' .. ch .. '\t' .. product .. '\t' .. unit .. '\t'
    a.fch, a.funit, a.fkey = ch, unit, fkey
  end
  local found, fkb
  if unit == 'session' then
    found, fkb = session_find(sfld)
    if found and kind == 'm' and not a.shadow
      and fast(app_id, a, pr, fkey, token, sfld, found, fkb, idem, ch, user, digest) then return end
  end
  -- The charge record's id and lifetime (meter/redis_layer/keys.py record_id), and its
  -- key (old: where an earlier version kept it, see lib_records.lua).
  -- A settlement (M/N) without a key keeps its record the idempotency window too: a
  -- settlement replayed long after (a host crash lost its "settled" line) finds it.
  local rid, ttl = 'k:' .. ch .. '\t' .. user .. '\t' .. idem, IDEM_TTL
  if idem == '' then
    rid, ttl = 't:' .. token, REFUND_TTL
    if kind == 'M' or kind == 'N' then
      SETTLED_TTL = SETTLED_TTL or math.max(IDEM_TTL + 0, REFUND_TTL + 0)
      ttl = SETTLED_TTL
    end
  end
  local ik, old = record_keys(app_id, rid)
  -- m: the admission, built in one constructor (sized once), for full(m); before the
  -- call's first full path is made, admit.lua's loop makes it and runs full(m).
  local m = {app_id = app_id, ch = ch, user = user, idem = idem, token = token,
    digest = digest, legacy = legacy, settle = kind == 'M' or kind == 'N', a = a, pr = pr,
    unit = unit, price = price, fkey = fkey, sfld = sfld, found = found, fkb = fkb, rid = rid,
    ttl = ttl, ik = ik, old = old}
  if full then
    full(m)
    return
  end
  return m
end
