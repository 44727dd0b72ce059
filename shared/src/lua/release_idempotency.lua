-- Delete an idempotency key only if it still points to the given job (owner check).
-- KEYS[1] idempotency key   ARGV[1] job id
-- Returns 1 when deleted, 0 otherwise.
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
