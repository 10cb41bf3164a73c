-- lib_records.lua: where a charge record lives, shared by admit.lua and refund.lua (put
-- where a script says "-- #include lib_records.lua", as lib_sessions.lua). Expects the
-- local P (workspace prefix) to be defined. Mirrored in meter/redis_layer/keys.py
-- (record_name, idem_key).
--
-- A record id of a channel key ("k:<channel>\t<user>\t<key>", see admit.lua) longer
-- than a digest is stored under "h:" .. sha1hex(id): a channel user and key of 256
-- characters each would otherwise make the key's name alone half a kilobyte. A shorter
-- one is its own name (a digest would be no shorter), and so is "t:<token>" (a token is
-- the gateway's own, short: admit_message.lua's short path looks it up directly). An id
-- starts with "k:" or "t:", never "h:", so the two kinds of name never meet.
--
-- Upgrade: earlier versions named every record by its id. Such a record of a long id
-- is still found under that name (the second value, nil where the names agree) until it
-- expires, one idempotency window after the upgrade; new records are written under the
-- first.
local function record_keys(app_id, rid)
  local ik = P .. ':i:' .. app_id .. ':' .. rid
  -- 42: #('h:' .. 40 hex digits); 107: "k"
  if #rid <= 42 or string.byte(rid) ~= 107 then return ik end
  return P .. ':i:' .. app_id .. ':h:' .. redis.sha1hex(rid), ik
end
