-- Extend a lease; only its owner may.
-- KEYS[1] job hash
-- ARGV[1] lease owner   ARGV[2] new expiry, ms since epoch
-- Returns 1 when renewed, 0 when the lease belongs to someone else or the job ended,
-- 2 when renewed but the caller asked to cancel (the worker aborts the run).
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until_ms', ARGV[2])
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 2 end
return 1
