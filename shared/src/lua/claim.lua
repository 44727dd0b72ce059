-- Claim a job for one attempt.
-- KEYS[1] job hash
-- ARGV[1] lease owner (unique per delivery)   ARGV[2] now, ms since epoch
-- ARGV[3] lease length, ms                    ARGV[4] max attempts
-- ARGV[5] record TTL, ms                      ARGV[6] now, RFC 3339
-- ARGV[7] error JSON stored when a cancel tombstone is found
-- ARGV[8] error JSON stored when the job's deadline (field deadline_ms) passed before it started
-- ARGV[9] hex SHA-256 of the delivered message body, or ''
-- Returns {'missing'} | {'terminal', status, event_published}
--       | {'leased', owner, remaining_ms} | {'exhausted', attempts}
--       | {'claimed', attempts, first_start(0|1), '=', started_at, traceparent, webhook_status}
--         when ARGV[9] equals the record's envelope_sha256 (the message is the envelope the
--         record was created from, so the worker runs the message: nothing else to send)
--       | {'claimed', attempts, first_start(0|1), field1, value1, ...} otherwise (the whole
--         record, so the worker needs no second round trip to read what it runs)
-- 'exhausted' also hands the caller the lease, so that it alone ends the job as poison.
local f = redis.call('HMGET', KEYS[1], 'status', 'event_published', 'lease_owner',
  'lease_until_ms', 'cancel_requested', 'deadline_ms', 'started_at', 'attempts',
  'envelope_sha256', 'traceparent', 'webhook_status')
local status = f[1]
if not status then return {'missing'} end
if status == 'succeeded' or status == 'failed' or status == 'canceled' or status == 'expired' then
  return {'terminal', status, f[2] or '0'}
end
local function claimed(attempts, first, started_at)
  if ARGV[9] ~= '' and f[9] == ARGV[9] then
    return {'claimed', tostring(attempts), first, '=', started_at or '', f[10] or '', f[11] or ''}
  end
  local r = {'claimed', tostring(attempts), first}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(r, v) end
  return r
end
local now = tonumber(ARGV[2])
local owner = f[3]
if owner == ARGV[1] and status == 'running' then
  -- Same delivery asking again (a lost reply): idempotent.
  return claimed(f[8] or '0', '0', f[7])
end
local lease_until = tonumber(f[4] or '0')
if owner and lease_until > now then
  return {'leased', owner, tostring(lease_until - now)}
end
if f[5] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'error', ARGV[7], 'completed_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms', 'submitting')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'terminal', 'canceled', f[2] or '0'}
end
local deadline = tonumber(f[6] or '0')
if deadline > 0 and deadline <= now and not f[7] then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'error', ARGV[8], 'completed_at', ARGV[6])
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms', 'submitting')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'terminal', 'expired', f[2] or '0'}
end
local attempts = tonumber(f[8] or '0')
local lease = {'status', 'running', 'lease_owner', ARGV[1],
  'lease_until_ms', tostring(now + tonumber(ARGV[3]))}
if attempts >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], unpack(lease))
  return {'exhausted', tostring(attempts)}
end
attempts = attempts + 1
table.insert(lease, 'attempts')
table.insert(lease, tostring(attempts))
local first = '0'
local started_at = f[7]
if not started_at then
  started_at = ARGV[6]
  table.insert(lease, 'started_at')
  table.insert(lease, started_at)
  first = '1'
end
redis.call('HSET', KEYS[1], unpack(lease))
redis.call('HDEL', KEYS[1], 'submitting')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return claimed(attempts, first, started_at)
