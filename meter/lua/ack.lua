-- ack.lua: drop a claimed bucket once its batch is committed to the durable store.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  kind "ag" | "sr" | "ev"     ARGV[2] bucket start (s), "0" for events
-- ARGV[3]  gen of the committed claim
-- Returns 1 when this call retired the claim, 0 when it was already retired (another
-- flusher that re-took the same gen acked first). Either way the committed copy is gone.
-- The bucket's claim record (P:fl) stays: a later claim of the same bucket is told this
-- gen is known.
-- Every call counts in P:acks first, the claim found or not (a Redis that lost it since):
-- the batch is in the store by now, and a rebuild that read the store before it and
-- compares the count is told so (rebuild.lua), instead of finding no claim left.

local P, kind, b, gen = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local field = kind .. ':' .. b
redis.call('INCR', P .. ':acks')
redis.call('DEL', P .. ':c:' .. field .. ':' .. gen)
if redis.call('HGET', P .. ':cl', field) ~= gen then return 0 end
redis.call('HDEL', P .. ':cl', field)
redis.call('HDEL', P .. ':clk', field)
redis.call('DEL', P .. ':lease:' .. field)
return 1
