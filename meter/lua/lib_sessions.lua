-- lib_sessions.lua: billing-session entries, shared by admit.lua and refund.lua (the
-- scripts loader, meter/redis_layer/scripts.py, puts it where a script says
-- "-- #include lib_sessions.lua"). Expects the locals P (workspace prefix), now (ms),
-- BLOCK (session block, ms) and IDLE (conversation idle end, ms) to be defined.
--
-- A billing session lives in P:sr:<b> (b = block start in s, bucketed by the block
-- length), field "app\tchannel\tuser" = "conv_start,last-conv_start,blocks,bsid,msgs,
-- amount,product,opened": the live conversation and the record the flusher writes, in one
-- entry. opened (ms) is when the message that opened (paid) the newest block was admitted:
-- the billing session's start, in the same period as its charge in the aggregates (an
-- entry of an earlier version has none: ENTRY_RE's product then ends the entry, else it
-- is "product,opened").
-- An older entry displaced from its field is kept under "app\tchannel\tuser\tbsid".
-- An entry of no message under the conversation's own field is no session, only the
-- conversation's state after its block's opener was refunded (refund.lua): never flushed
-- (meter/usage/batches.py session_row), nor kept when displaced. A displaced entry of no
-- message and no amount is a refunded session's snapshot, flushed over a stored copy.

local D = function(x) return string.format('%d', x) end
local ENTRY_RE = '^(%d+),(%d+),(%d+),([^,]+),(%d+),(%d+),(.*)$'

-- An alive conversation's newest entry is at most IDLE + BLOCK old, so a lookup walks a
-- few buckets, newest first (SR_NEW down to SR_OLD, step SB); the newest allows for a
-- replica whose clock is up to a minute behind. Their keys are formatted once per call.
-- (A range, not a table of the buckets: a table and its growth cost every call.)
local SB = math.max(1, math.floor(BLOCK / 1000))
local function sbucket_of(ms) return math.floor(ms / 1000 / SB) * SB end
local SRK = {} -- bucket -> key
local function sr_key(b)
  local k = SRK[b]
  if not k then
    k = P .. ':sr:' .. D(b)
    SRK[b] = k
  end
  return k
end
local SR_NEW, SR_OLD = sbucket_of(now + 60000), sbucket_of(now - IDLE - BLOCK)

-- The entry of field "app\tchannel\tuser" and its bucket, or nil.
local function session_find(fld)
  for b = SR_NEW, SR_OLD, -SB do
    local v = redis.call('HGET', SRK[b] or sr_key(b), fld)
    if v then return v, b end
  end
end
