-- lib_records.lua: where a charge record lives, shared by admit.lua and refund.lua (put
-- where a script says "-- #include lib_records.lua", as lib_sessions.lua). Expects the
-- local P (workspace prefix) to be defined. Mirrored in meter/redis_layer/keys.py
-- (record_name, idem_key).
--
-- A record id ("k:<channel>\t<user>\t<key>" or "t:<token>", see admit.lua) longer than a
-- digest is stored under "h:" .. sha1hex(id): a channel user and key of 256 characters
-- each would otherwise make the key's name alone half a kilobyte. A shorter id is its own
-- name (a digest would be no shorter). An id starts with "k:" or "t:", never "h:", so
-- the two kinds of name never meet.
--
-- Upgrade: earlier versions named every record by its id. Such a record of a long id
-- is still found under that name (the second value, nil where the names agree) until it
-- expires, one idempotency window after the upgrade; new records are written under the
-- first.
local function record_keys(app_id, rid)
  local ik = P .. ':i:' .. app_id .. ':' .. rid
  if #rid <= 42 then return ik end -- 42: #('h:' .. 40 hex digits)
  return P .. ':i:' .. app_id .. ':h:' .. redis.sha1hex(rid), ik
end
