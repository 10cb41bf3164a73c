-- lib_peek.lua: one snapshot of a kind of flush record not yet acked into the durable
-- store, for peek.lua (kind "ag": aggregates; billing-session records, kind "sr", are
-- read in bounded steps instead: meter/usage/live_scan.py); the scripts loader,
-- meter/redis_layer/scripts.py, puts it where a script says "-- #include lib_peek.lua".
--
-- peek(P, lo, hi, kind) for buckets lo..hi (s, inclusive) returns a list of
-- {bucket, gen, items}: gen 0 for a live hash P:<kind>:<b> (indexed in P:<kind>i), else an
-- unacked claim P:c:<kind>:<b>:<gen> (registered in P:cl). items = flat field, value pairs.

local function peek(P, lo, hi, kind)
  local out = {}
  for _, b in ipairs(redis.call('ZRANGEBYSCORE', P .. ':' .. kind .. 'i', lo, hi)) do
    local items = redis.call('HGETALL', P .. ':' .. kind .. ':' .. b)
    if #items > 0 then out[#out + 1] = {tonumber(b), 0, items} end
  end
  local reg = redis.call('HGETALL', P .. ':cl')
  for i = 1, #reg, 2 do
    local k, b = string.match(reg[i], '^(%a+):(%d+)$')
    local nb = tonumber(b)
    if k == kind and nb >= lo and nb <= hi then
      local gen = reg[i + 1]
      local claimed = P .. ':c:' .. kind .. ':' .. b .. ':' .. gen
      out[#out + 1] = {nb, tonumber(gen), redis.call('HGETALL', claimed)}
    end
  end
  return out
end
