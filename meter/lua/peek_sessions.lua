-- peek_sessions.lua: billing-session records not yet (or not finally) in the durable store.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  first bucket start (s, inclusive)     ARGV[2] last bucket start (s, inclusive)
-- Returns a list of {bucket, gen, items}: gen 0 for a live hash P:sr:<b> (what admissions
-- still update), else an unacked claimed copy. items = flat field, value pairs (see
-- admit.lua for their layout). One call, so the snapshot is consistent.

local P = KEYS[1]
local lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, b in ipairs(redis.call('ZRANGEBYSCORE', P .. ':sri', lo, hi)) do
  local items = redis.call('HGETALL', P .. ':sr:' .. b)
  if #items > 0 then out[#out + 1] = {tonumber(b), 0, items} end
end
local reg = redis.call('HGETALL', P .. ':cl')
for i = 1, #reg, 2 do
  local kind, b = string.match(reg[i], '^(%a+):(%d+)$')
  local nb = tonumber(b)
  if kind == 'sr' and nb >= lo and nb <= hi then
    local gen = reg[i + 1]
    out[#out + 1] = {nb, tonumber(gen), redis.call('HGETALL', P .. ':c:sr:' .. b .. ':' .. gen)}
  end
end
return out
