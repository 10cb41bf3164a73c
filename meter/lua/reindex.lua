-- reindex.lua: which of the given flush buckets are live hashes outside their index, and
-- (ARGV[2] = "1") put them back in it (meter/usage/stranded.py). Every script indexes
-- such a hash as it makes it, so one outside its index was left there by hand.
--
-- KEYS[1]   workspace prefix "cg:{<ws>}"
-- ARGV[1]   kind: "ag" (aggregates, index P:agi) | "sr" (billing sessions, index P:sri)
-- ARGV[2]   "1": index those found; "0": only report them
-- ARGV[3..] bucket starts (s), as found by SCAN
-- Returns the bucket starts found outside the index. Checked here, in one script: a
-- flusher may claim a bucket (rename its hash, take it out of the index) between the SCAN
-- and this call, and then it is neither found nor indexed again.

local P, kind = KEYS[1], ARGV[1]
local index = P .. ':' .. kind .. 'i'
local out = {}
for i = 3, #ARGV do
  local b = ARGV[i]
  if redis.call('EXISTS', P .. ':' .. kind .. ':' .. b) == 1
      and not redis.call('ZSCORE', index, b) then
    if ARGV[2] == '1' then redis.call('ZADD', index, b, b) end
    out[#out + 1] = b
  end
end
return out
