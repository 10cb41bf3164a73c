-- refund_free.lua (a fragment of refund.lua): free credits a refund gives back.
--
-- They are spendable again (field "free") while the set they came from is valid: before
-- free_exp by the refund's clock, and not lapsed yet. Free credits that expired meanwhile
-- come back as lapsed, not as spendable credit: expired by this clock, or lapsed already
-- by a replica whose clock is ahead (free_lapsed names the set, admit.lua). A replica
-- whose clock is behind must not put back what another lapsed: the next message would
-- lapse it again under the set's key, which the store already took (its ledger short of
-- Redis's lapsed). The lapse is an event of its own, "e<n>" (the flusher writes its
-- ledger "lapse" entry), so the store counts it as Redis does.
local function free_back(wsk, free)
  local w = redis.call('HMGET', wsk, 'free_exp', 'free_granted', 'free_lapsed')
  local exp = tonumber(w[1] or '0')
  if now < exp and w[3] ~= D(exp) .. ':' .. D(tonumber(w[2] or '0')) then
    redis.call('HINCRBY', wsk, 'free', free)
    return
  end
  redis.call('HINCRBY', wsk, 'lapsed', free)
  -- Event ids are at least now x 1000, as admit.lua's: a Redis that lost writes never
  -- hands one out again.
  local seq = math.max(tonumber(redis.call('HGET', wsk, 'seq') or '0'), now * 1000 - 1) + 1
  redis.call('HSET', wsk, 'seq', string.format('%d', seq))
  redis.call('RPUSH', P .. ':ev', cjson.encode({id = 'e' .. string.format('%d', seq),
    type = 'free_credits.expired', at = now, amount = free}))
end
