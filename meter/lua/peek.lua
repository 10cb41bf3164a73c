-- peek.lua: read the aggregates not yet in the durable store, in one consistent snapshot.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  first bucket start (s, inclusive)     ARGV[2] last bucket start (s, inclusive)
-- Returns {seq, rows}. seq: the workspace id counter (P:ws field seq) at this snapshot; a
-- claim made later gets a gen above it. rows: a list of {bucket, gen, items}: gen 0 for a
-- live hash (P:ag:<b>, never written to the store), else an unacked claim (its batch may
-- already be committed: the caller checks the batch id). items = flat field, value pairs.

-- #include lib_peek.lua

local seq = redis.call('HGET', KEYS[1] .. ':ws', 'seq') or '0'
return {seq, peek(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 'ag')}
