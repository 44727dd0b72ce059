-- Append one webhook delivery attempt to a job's delivery log and, for a final outcome, set the
-- job's webhook_status (only while the record exists): one round trip per attempt.
-- KEYS[1] delivery log (list)   KEYS[2] job hash (same hash tag)
-- ARGV[1] attempt JSON   ARGV[2] log TTL, ms   ARGV[3] webhook_status or ''
-- Returns 1 when the status was set, else 0.
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'webhook_status', ARGV[3])
  return 1
end
return 0
