-- Reopen an ended job for a dead-letter replay: same id, same idempotency key, fresh attempts.
-- KEYS[1] job hash   ARGV[1] record TTL, ms
-- Returns 'ok' | 'missing' | 'succeeded' (a succeeded job is not replayed) | 'active'
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' then return 'succeeded' end
if status == 'queued' or status == 'running' then
  local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
  if status == 'running' and until_ms > 0 then return 'active' end
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', '0')
redis.call('HDEL', KEYS[1], 'output', 'error', 'completed_at', 'event_published', 'deadline_ms',
  'cancel_requested', 'lease_owner', 'lease_until_ms', 'submitting')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 'ok'
