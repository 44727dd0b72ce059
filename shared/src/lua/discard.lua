-- Publish failed: delete a new job record the producer still holds.
-- KEYS[1] job hash
-- Returns 1 when the record was still held by the producer (now deleted), else 0 (a worker
-- claimed it, so the message did reach the queue).
if redis.call('HGET', KEYS[1], 'submitting') ~= '1' then return 0 end
redis.call('DEL', KEYS[1])
return 1
