-- refund.lua: reverse one charged admission whose message was not served (bot failed,
-- or an ambiguous Redis timeout was answered 503). Idempotent: the charge record is
-- deleted, so a second call finds nothing; a stale call whose token no longer matches
-- (the retry was charged afresh) changes nothing.
--
-- KEYS[1]  workspace prefix "cg:{<ws>}"
-- ARGV[1]  now (ms)     ARGV[2] app id     ARGV[3] key (channel idempotency key or token)
-- ARGV[4]  token        ARGV[5] flush bucket (s)   ARGV[6] enterprise billing period id
-- Returns {refunded (0|1), free, app_paid, pool_paid, invoiced}

local P = KEYS[1]
local now, app, key, token = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local FB, PERIOD = tonumber(ARGV[5]), ARGV[6]
local D = function(x) return string.format('%d', x) end

local ik = P .. ':i:' .. app .. ':' .. key
local rec = redis.call('GET', ik)
if not rec then return {0, 0, 0, 0, 0} end
local tok, bsid, sb, f, ap, pp, inv, ch, unit, user = string.match(rec,
  '^([^\t]*)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t([^\t]*)\t([^\t]*)\t(.*)$')
if tok ~= token then return {0, 0, 0, 0, 0} end
f, ap, pp, inv = tonumber(f), tonumber(ap), tonumber(pp), tonumber(inv)
redis.call('DEL', ik)

local wsk = P .. ':ws'
local product = redis.call('HGET', P .. ':a:' .. app, 'product') or ''
if f > 0 then
  -- Free credits that expired meanwhile come back as lapsed, not as spendable credit.
  local exp = tonumber(redis.call('HGET', wsk, 'free_exp') or '0')
  if now < exp then redis.call('HINCRBY', wsk, 'free', f) else redis.call('HINCRBY', wsk, 'lapsed', f) end
end
if ap > 0 then
  redis.call('HINCRBY', P .. ':a:' .. app, 'paid', ap)
  redis.call('HINCRBY', wsk, 'apaid', ap)
end
if pp > 0 then redis.call('HINCRBY', wsk, 'paid', pp) end
if inv > 0 then
  local uk = P .. ':lu:' .. product .. ':' .. PERIOD
  if tonumber(redis.call('GET', uk) or '0') > 0 then redis.call('DECR', uk) end
end

-- The billing session this message opened is undone: the next message opens it again.
if bsid ~= '' then
  local sk = P .. ':s:' .. app .. ':' .. ch .. ':' .. user
  local st = redis.call('GET', sk)
  if st then
    local c1, l1, b1, s1, k1, m1, a1, t1 =
      string.match(st, '^(%d+),(%d+),(%d+),([^,]+),(%d+),(%d+),(%d+),(%d+)$')
    if s1 == bsid then
      local blocks = tonumber(b1) - 1
      if blocks <= 0 then
        redis.call('DEL', sk)
      else
        local amount = math.max(0, tonumber(a1) - f - ap - pp - inv)
        redis.call('SET', sk, table.concat({c1, l1, D(blocks), s1, k1, m1, D(amount), t1}, ','),
          'KEEPTTL')
      end
    end
  end
  local srk = P .. ':sr:' .. sb
  local r = redis.call('HGET', srk, bsid)
  if r then
    local a_, c_, u_, p_, st_, la_, ms_, am_ =
      string.match(r, '^([^\t]*)\t([^\t]*)\t(.-)\t([^\t]*)\t(%d+)\t(%d+)\t(%d+)\t(%d+)$')
    local msgs = tonumber(ms_) - 1
    if msgs <= 0 then
      redis.call('HDEL', srk, bsid)
    else
      local amount = math.max(0, tonumber(am_) - f - ap - pp - inv)
      redis.call('HSET', srk, bsid, table.concat({a_, c_, u_, p_, st_, la_, D(msgs), D(amount)}, '\t'))
    end
  end
end

-- Aggregates of the current bucket take the reversal, so sums stay exact.
local bucket = math.floor(now / 1000 / FB) * FB
local agk = P .. ':ag:' .. D(bucket)
local fk = app .. '|' .. ch .. '|' .. product .. '|' .. unit .. '|'
redis.call('HINCRBY', agk, fk .. 'n', -1)
redis.call('HINCRBY', agk, fk .. 'm', -1)
redis.call('HINCRBY', agk, fk .. 'x', 1)
if f > 0 then redis.call('HINCRBY', agk, fk .. 'f', -f) end
if ap > 0 then redis.call('HINCRBY', agk, fk .. 'a', -ap) end
if pp > 0 then redis.call('HINCRBY', agk, fk .. 'p', -pp) end
if inv > 0 then redis.call('HINCRBY', agk, fk .. 'i', -inv) end
redis.call('ZADD', P .. ':agi', bucket, bucket)
return {1, f, ap, pp, inv}
