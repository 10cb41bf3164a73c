-- refund.lua: reverse one charged admission whose message was not served (bot failed,
-- or an ambiguous Redis timeout was answered 503). Idempotent: the charge record is
-- deleted, so a second call finds nothing; a stale call whose token no longer matches
-- (the retry was charged afresh) changes nothing.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  now (ms)     ARGV[2] app id     ARGV[3] record id ("k:<ch>\t<user>\t<key>" or
--          "t:<token>", see admit.lua)
-- ARGV[4]  token, or "" for the sweeper: refund the record's charge only while it is still
--          reserved (never confirmed as forwarded)
-- ARGV[5]  flush bucket (s)   ARGV[6] enterprise billing period id
-- ARGV[7]  session block (ms)   ARGV[8] conversation idle end (ms)
-- Returns {refunded (0|1), free, app, pool, invoiced} (amounts given back). Not refunded: no such
-- record, another attempt's token, nothing charged, or a charge that opened a billing
-- session other messages were then served in (it was used; the reservation is settled).
-- The charge is read from its record P:i:<app>:<key> (see admit.lua).

local P = KEYS[1]
local now, app_id, key, token = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local FB, PERIOD = tonumber(ARGV[5]), ARGV[6]
local BLOCK, IDLE = tonumber(ARGV[7]), tonumber(ARGV[8])
local NONE = {0, 0, 0, 0, 0}

-- #include lib_sessions.lua

local ik = P .. ':i:' .. app_id .. ':' .. key
local rsv, member = P .. ':rsv', app_id .. ':' .. key
local rec = redis.call('GET', ik)
if not rec then
  redis.call('ZREM', rsv, member)
  return NONE
end
local tok, units, bsid, free, app, pool, inv, ch, unit, user = string.match(rec,
  '^([^\t]*)\t%d+\t%w*\t(%d+)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t([^\t]*)\t([^\t]*)\t(.*)$')
if token == '' then
  -- The sweeper: only a charge still reserved is refunded (the ZREM is the decision).
  if redis.call('ZREM', rsv, member) == 0 then return NONE end
  token = tok
end
if not tok or tok ~= token or units == '0' then return NONE end

-- A charge that opened a billing session other messages were then served in was used:
-- it stands (else a client could open a session, ride it, and fail the opener for free).
local sfld, sentry, sbucket
if bsid ~= '' then
  sfld = app_id .. '\t' .. ch .. '\t' .. user
  sentry, sbucket = session_find(sfld)
  if sentry then
    local s1, msgs = string.match(sentry, '^%d+,%d+,%d+,([^,]+),(%d+),')
    if s1 == bsid and tonumber(msgs) > 1 then
      redis.call('ZREM', rsv, member)
      return NONE
    end
  end
end

redis.call('DEL', ik)
redis.call('ZREM', rsv, member)
free, app, pool, inv = tonumber(free), tonumber(app), tonumber(pool), tonumber(inv)

local wsk = P .. ':ws'
local product = redis.call('HGET', P .. ':a:' .. app_id, 'product') or ''
if free > 0 then
  -- Free credits that expired meanwhile come back as lapsed, not as spendable credit.
  local exp = tonumber(redis.call('HGET', wsk, 'free_exp') or '0')
  if now < exp then redis.call('HINCRBY', wsk, 'free', free) else redis.call('HINCRBY', wsk, 'lapsed', free) end
end
if app > 0 then
  redis.call('HINCRBY', P .. ':a:' .. app_id, 'app', app)
  redis.call('HINCRBY', wsk, 'apps', app)
end
if pool > 0 then redis.call('HINCRBY', wsk, 'pool', pool) end
if inv > 0 then
  local uk = P .. ':lu:' .. product .. ':' .. PERIOD
  if tonumber(redis.call('GET', uk) or '0') > 0 then redis.call('DECR', uk) end
end

-- The billing session this message opened is undone: the next message opens it again.
if bsid ~= '' then
  local fld, e, b = sfld, sentry, sbucket
  if e then
    local cs, dl, blocks, s1, msgs, amount, prod = string.match(e, ENTRY_RE)
    if s1 == bsid then
      blocks, msgs = tonumber(blocks) - 1, tonumber(msgs) - 1
      local sk = sr_key(b)
      if blocks <= 0 and msgs <= 0 then
        redis.call('HDEL', sk, fld)
      else
        amount = math.max(0, tonumber(amount) - free - app - pool - inv)
        redis.call('HSET', sk, fld, string.format('%s,%s,%d,%s,%d,%d,%s', cs, dl, blocks, s1,
          msgs, amount, prod))
      end
    end
  end
end

-- Aggregates of the current bucket take the reversal, so sums stay exact.
local bucket = math.floor(now / 1000 / FB) * FB
local agk = P .. ':ag:' .. D(bucket)
local fk = app_id .. '\t' .. ch .. '\t' .. product .. '\t' .. unit .. '\t' -- keys.py agg_field
redis.call('HINCRBY', agk, fk .. 'n', -1)
redis.call('HINCRBY', agk, fk .. 'm', -1)
redis.call('HINCRBY', agk, fk .. 'x', 1)
if free > 0 then redis.call('HINCRBY', agk, fk .. 'f', -free) end
if app > 0 then redis.call('HINCRBY', agk, fk .. 'a', -app) end
if pool > 0 then redis.call('HINCRBY', agk, fk .. 'p', -pool) end
if inv > 0 then redis.call('HINCRBY', agk, fk .. 'i', -inv) end
redis.call('ZADD', P .. ':agi', bucket, bucket)
return {1, free, app, pool, inv}
