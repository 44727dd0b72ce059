-- End the producer's hold on a new job record.
-- KEYS[1] job hash
-- ARGV[1] 'commit' (published: keep it, TTL = record TTL) or 'discard' (not published: delete)
-- ARGV[2] record TTL, ms
-- Returns 1 when the record was still held by the producer, else 0 (a worker claimed it).
if redis.call('HGET', KEYS[1], 'submitting') ~= '1' then return 0 end
if ARGV[1] == 'discard' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HDEL', KEYS[1], 'submitting')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
