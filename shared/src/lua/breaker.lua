-- A backend's circuit breaker, shared by the fleet: one hash per backend.
-- KEYS[1] breaker hash
-- ARGV[1] op: 'allow' (may a call go?) | 'ok' | 'fail' (outcome of a call)
-- ARGV[2] now, ms   ARGV[3] window, ms   ARGV[4] bucket, ms   ARGV[5] minimum calls in the window
-- ARGV[6] failure rate that opens it, 0..1   ARGV[7] cool-down (and half-open probe lease), ms
-- Returns {state, allowed}: state 'closed' | 'open' | 'half_open', allowed 1 | 0.
-- Hash fields: state, until (ms: open until / probe lease until), s:<bucket>, f:<bucket>.
local key = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
local window, bucket_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local min, rate, cooldown = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local keep = math.max(cooldown * 10, window * 2)
local state = redis.call('HGET', key, 'state') or 'closed'

local function open()
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'until', now + cooldown)
  redis.call('PEXPIRE', key, keep)
  return {'open', 0}
end

if op == 'allow' then
  if state == 'closed' then return {'closed', 1} end
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if now < untl then return {state, 0} end
  -- Cool-down over (or the last probe's lease ran out): this caller probes.
  redis.call('HSET', key, 'state', 'half_open', 'until', now + cooldown)
  redis.call('PEXPIRE', key, keep)
  return {'half_open', 1}
end

if state ~= 'closed' then
  if op == 'ok' then
    redis.call('DEL', key)
    return {'closed', 1}
  end
  if state == 'half_open' then return open() end
  return {'open', 0}
end

local bucket = math.floor(now / bucket_ms)
local field = (op == 'ok') and ('s:' .. bucket) or ('f:' .. bucket)
redis.call('HINCRBY', key, field, 1)
local oldest = bucket - math.floor(window / bucket_ms) + 1
local all = redis.call('HGETALL', key)
local oks, fails = 0, 0
for i = 1, #all, 2 do
  local kind, b = string.match(all[i], '^([sf]):(%d+)$')
  if kind then
    if tonumber(b) < oldest then
      redis.call('HDEL', key, all[i])
    elseif kind == 's' then
      oks = oks + tonumber(all[i + 1])
    else
      fails = fails + tonumber(all[i + 1])
    end
  end
end
redis.call('PEXPIRE', key, keep)
local total = oks + fails
if op == 'fail' and total >= min and fails >= rate * total then return open() end
return {'closed', 1}
