-- Claim a job for one attempt.
-- KEYS[1] job hash
-- ARGV[1] lease owner (unique per delivery)   ARGV[2] now, ms since epoch
-- ARGV[3] lease length, ms                    ARGV[4] max attempts
-- ARGV[5] record TTL, ms                      ARGV[6] now, RFC 3339
-- ARGV[7] error JSON stored when a cancel tombstone is found
-- ARGV[8] error JSON stored when the job's deadline (field deadline_ms) passed before it started
-- Returns {'missing'} | {'terminal', status, event_published}
--       | {'leased', owner, remaining_ms} | {'exhausted', attempts}
--       | {'claimed', attempts, first_start(0|1), field1, value1, ...} (the whole record, so the
--         worker needs no second round trip to read what it runs)
-- 'exhausted' also hands the caller the lease, so that it alone ends the job as poison.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'succeeded' or status == 'failed' or status == 'canceled' or status == 'expired' then
  return {'terminal', status, redis.call('HGET', KEYS[1], 'event_published') or '0'}
end
local now = tonumber(ARGV[2])
local owner = redis.call('HGET', KEYS[1], 'lease_owner')
if owner == ARGV[1] and status == 'running' then
  -- Same delivery asking again (a lost reply): idempotent.
  local r = {'claimed', redis.call('HGET', KEYS[1], 'attempts') or '0', '0'}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(r, v) end
  return r
end
local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
if owner and lease_until > now then
  return {'leased', owner, tostring(lease_until - now)}
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'error', ARGV[7], 'completed_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms', 'submitting')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'terminal', 'canceled', redis.call('HGET', KEYS[1], 'event_published') or '0'}
end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_ms') or '0')
if deadline > 0 and deadline <= now and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'error', ARGV[8], 'completed_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms', 'submitting')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'terminal', 'expired', redis.call('HGET', KEYS[1], 'event_published') or '0'}
end
local lease = {'status', 'running', 'lease_owner', ARGV[1],
  'lease_until_ms', tostring(now + tonumber(ARGV[3]))}
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], unpack(lease))
  return {'exhausted', tostring(attempts)}
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], unpack(lease))
local first = '0'
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[6])
  first = '1'
end
redis.call('HDEL', KEYS[1], 'submitting')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local r = {'claimed', tostring(attempts), first}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(r, v) end
return r
