-- rename_fields.lua: balance fields written under their pre-0.2 names renamed in place
-- (docs/glossary.md: free / app / pool): on the workspace hash "paid" -> "pool" and
-- "apaid" -> "apps", on each app hash of P:apps "paid" -> "app". Idempotent and atomic per
-- workspace, so no admission sees half of it. A field whose new name already holds a
-- value is left as it is (both kept, for reconcile to report).
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- Returns the number of fields renamed.

local P = KEYS[1]
local n = 0
local function rename(key, old, new)
  local v = redis.call('HGET', key, old)
  if v and redis.call('HSETNX', key, new, v) == 1 then
    redis.call('HDEL', key, old)
    n = n + 1
  end
end
rename(P .. ':ws', 'paid', 'pool')
rename(P .. ':ws', 'apaid', 'apps')
for _, id in ipairs(redis.call('SMEMBERS', P .. ':apps')) do
  rename(P .. ':a:' .. id, 'paid', 'app')
end
return n
