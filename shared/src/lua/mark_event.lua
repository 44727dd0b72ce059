-- Record that a terminal job's completion event is durable on the broker.
-- KEYS[1] job hash
-- Returns 1 when recorded, 0 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'event_published', '1')
return 1
