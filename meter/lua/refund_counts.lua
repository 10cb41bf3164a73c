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
