-- peek.lua: read the aggregates not yet in the durable store, in one consistent snapshot.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  first bucket start (s, inclusive)     ARGV[2] last bucket start (s, inclusive)
-- ARGV[3]  "1": the events list too (optional)
-- Returns {seq, rows}. seq: the workspace id counter (P:ws field seq) at this snapshot; a
-- claim made later gets a gen above it. rows: a list of {bucket, gen, items}: gen 0 for a
-- live hash (P:ag:<b>, never written to the store), else an unacked claim (its batch may
-- already be committed: the caller checks the batch id). items = flat field, value pairs.
-- With ARGV[3] "1" a third value: the events as {gen, entries} pairs, gen 0 for the live
-- list P:ev, else its unacked claim P:c:ev:0:<gen> (registered in P:cl as "ev:0").

-- #include lib_peek.lua

local P = KEYS[1]
local seq = redis.call('HGET', P .. ':ws', 'seq') or '0'
local rows = peek(P, tonumber(ARGV[1]), tonumber(ARGV[2]), 'ag')
if ARGV[3] ~= '1' then return {seq, rows} end
local ev = {}
local live = redis.call('LRANGE', P .. ':ev', 0, -1)
if #live > 0 then ev[#ev + 1] = {0, live} end
local gen = redis.call('HGET', P .. ':cl', 'ev:0')
if gen then
  ev[#ev + 1] = {tonumber(gen), redis.call('LRANGE', P .. ':c:ev:0:' .. gen, 0, -1)}
end
return {seq, rows, ev}
