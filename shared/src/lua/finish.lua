-- Move a job to a terminal status; only the lease owner may, or anyone with owner '*'
-- (the dead-letter consumer ending a job that crashed every worker).
-- KEYS[1] job hash
-- ARGV[1] lease owner or '*'   ARGV[2] terminal status   ARGV[3] output JSON or ''
-- ARGV[4] error JSON or ''   ARGV[5] usage JSON   ARGV[6] timings JSON
-- ARGV[7] completed_at, RFC 3339   ARGV[8] record TTL, ms
-- ARGV[9] route trace JSON ({served_by, route_path, cache_hit}) or '' (model routes only)
-- ARGV[10] '1' to return the stored record, '0' when the caller builds it from what it claimed
-- Returns {'ok', field1, value1, ...} (the stored record, for the completion event) or {'ok'} |
--         {'missing'} | {'terminal'} | {'not_owner'} | {'no_output'}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'succeeded' or status == 'failed' or status == 'canceled' or status == 'expired' then
  return {'terminal'}
end
if ARGV[1] ~= '*' and redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then
  return {'not_owner'}
end
if ARGV[2] == 'succeeded' and ARGV[3] == '' then return {'no_output'} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'usage', ARGV[5], 'timings', ARGV[6],
  'completed_at', ARGV[7])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'output', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
if ARGV[9] and ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'route', ARGV[9]) end
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms', 'submitting')
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if ARGV[10] ~= '1' then return {'ok'} end
local r = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(r, v) end
return r
