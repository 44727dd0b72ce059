-- Add output-category counts of one model: to the baseline while it is not full, else to the
-- current recent bucket (which expires after the window).
-- KEYS[1] baseline hash   KEYS[2] current recent bucket hash
-- ARGV[1] baseline size   ARGV[2] bucket TTL, ms   ARGV[3..] category, count, ...
-- Returns 1 when the counts went to the baseline, 2 when to the recent bucket.
local n = tonumber(redis.call('HGET', KEYS[1], '_n') or '0')
local target = 2
if n < tonumber(ARGV[1]) then target = 1 end
local total = 0
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[target], ARGV[i], ARGV[i + 1])
  total = total + tonumber(ARGV[i + 1])
end
if target == 1 then
  redis.call('HINCRBY', KEYS[1], '_n', total)
else
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return target
