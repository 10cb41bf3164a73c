-- peek_sessions.lua: billing-session records not yet (or not finally) in the durable store.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}" (keys derived as in claim.lua)
-- ARGV[1]  first bucket start (s, inclusive)     ARGV[2] last bucket start (s, inclusive)
-- Returns a list of {bucket, gen, items}: gen 0 for a live hash P:sr:<b> (what admissions
-- still update), else an unacked claimed copy. items = flat field, value pairs (see
-- admit.lua for their layout). One call, so the snapshot is consistent.

-- #include lib_peek.lua

return peek(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 'sr')
