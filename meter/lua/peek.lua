-- peek.lua: read the aggregates not yet in the durable store, in one consistent snapshot.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  first bucket start (s, inclusive)     ARGV[2] last bucket start (s, inclusive)
-- Returns a list of {bucket, gen, items}: gen 0 for a live hash (P:ag:<b>, never
-- written to the store), else an unacked claim (its batch may already be committed:
-- the caller checks the batch id). items = flat field, value pairs.

local P = KEYS[1]
local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, b in ipairs(redis.call('ZRANGEBYSCORE', P .. ':agi', lo, hi)) do
  local items = redis.call('HGETALL', P .. ':ag:' .. b)
  if #items > 0 then out[#out + 1] = {tonumber(b), 0, items} end
end
local reg = redis.call('HGETALL', P .. ':cl')
for i = 1, #reg, 2 do
  local kind, b = string.match(reg[i], '^(%a+):(%d+)$')
  local nb = tonumber(b)
  if kind == 'ag' and nb >= lo and nb <= hi then
    local gen = reg[i + 1]
    out[#out + 1] = {nb, tonumber(gen), redis.call('HGETALL', P .. ':c:ag:' .. b .. ':' .. gen)}
  end
end
return out
