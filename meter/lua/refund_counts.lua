-- refund_counts.lua (a fragment of refund.lua): a message un-counted from its billing
-- session (admitted inside it without a charge, then not served) no longer counts in the
-- usage aggregates' messages ("m", the flushed rows' messages column) either: taken back
-- in the aggregate bucket it was counted in, that of ARGV[12] (ms: the failed delivery's
-- admission call's now; "" or 0, a report that does not know it: the refund's now), or
-- counted (s): the bucket a keyed message's record notes ("@<bucket>"), whichever delivery
-- of it failed last. A bucket flushed since is live again (indexed) and flushed again: the
-- store adds.
local COUNTED_AT = tonumber(ARGV[12] or '') or 0
local function message_back(ch, counted)
  local product = redis.call('HGET', P .. ':a:' .. app_id, 'product') or ''
  local unit = redis.call('HGET', P .. ':ws', 'u:' .. product) or 'session'
  local at = COUNTED_AT > 0 and COUNTED_AT or now
  local bucket = tonumber(counted or '') or math.floor(at / 1000 / FB) * FB
  redis.call('HINCRBY', P .. ':ag:' .. D(bucket),
    app_id .. '\t' .. ch .. '\t' .. product .. '\t' .. unit .. '\tm', -1)
  redis.call('ZADD', P .. ':agi', bucket, bucket)
end

-- A charge reversed in aggregate bucket agk (field prefix fk): n and m down by one, the
-- amounts given back, x (refunds) up. Past ARGV[13] fields (MAX_USAGE_FIELDS; absent from
-- an earlier version's call: never), a reversal that leaves its channel's row with nothing
-- (n, m and every amount 0, no x yet) takes those fields away and counts the refund under
-- channel "(overflow)" (prefix ofk), as admit.lua pools refusals: a charge given back
-- costs nothing, so whoever can make a bot fail must not grow the bucket with new names.
-- Totals stay exact.
local USAGE_FIELDS = tonumber(ARGV[13] or '')
local function reverse_agg(agk, fk, ofk, amounts)
  local empty = redis.call('HINCRBY', agk, fk .. 'n', -1) == 0
  empty = redis.call('HINCRBY', agk, fk .. 'm', -1) == 0 and empty
  for _, k in ipairs({'f', 'a', 'p', 'i'}) do
    local v = amounts[k]
    if v > 0 then
      if redis.call('HINCRBY', agk, fk .. k, -v) ~= 0 then empty = false end
    elseif empty and (tonumber(redis.call('HGET', agk, fk .. k) or '0') or 1) ~= 0 then
      empty = false
    end
  end
  if empty and USAGE_FIELDS and redis.call('HLEN', agk) >= USAGE_FIELDS
    and redis.call('HEXISTS', agk, fk .. 'x') == 0 then
    redis.call('HDEL', agk, fk .. 'n', fk .. 'm', fk .. 'f', fk .. 'a', fk .. 'p', fk .. 'i')
    redis.call('HINCRBY', agk, ofk .. 'x', 1)
  else
    redis.call('HINCRBY', agk, fk .. 'x', 1)
  end
end
