-- Cancel a job: a durable tombstone checked at claim and by the running worker's lease renewal.
-- KEYS[1] job hash
-- ARGV[1] now, ms since epoch   ARGV[2] now, RFC 3339   ARGV[3] error JSON   ARGV[4] record TTL, ms
-- Returns 'missing' | 'terminal' | 'canceled' (was waiting: now terminal) | 'requested'
-- (a worker holds it: it stops the run and records `canceled`).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'canceled' or status == 'expired' then
  return 'terminal'
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
if status == 'running' and lease_until > tonumber(ARGV[1]) then return 'requested' end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'error', ARGV[3], 'completed_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'canceled'
