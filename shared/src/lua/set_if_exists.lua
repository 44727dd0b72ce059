-- Set one field of a job record, only while the record exists (a missing record is not
-- re-created without its TTL). Used for 'event_published' and 'webhook_status'.
-- KEYS[1] job hash
-- ARGV[1] field   ARGV[2] value
-- Returns 1 when set, 0 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
