-- Give a claimed job back to the queue (retry, drain); only the lease owner may.
-- KEYS[1] job hash
-- ARGV[1] lease owner   ARGV[2] '1' to refund the attempt (the model did not get to run)
-- Returns 1 when released, 0 otherwise.
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms')
if ARGV[2] == '1' and tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
return 1
