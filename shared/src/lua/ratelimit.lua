-- GCRA (generic cell rate algorithm) limit of one backend, shared by the fleet.
-- KEYS[1] theoretical arrival time, ms
-- ARGV[1] now, ms   ARGV[2] emission interval, ms per unit   ARGV[3] tolerance, ms
-- ARGV[4] units   ARGV[5] 'take' (take them if allowed; 0 units = only check) | 'charge'
--   (add them whatever the state: tokens known only after the call)
-- Returns the wait in ms before the units fit (0: allowed, and taken for 'take').
local now, t = tonumber(ARGV[1]), tonumber(ARGV[2])
local tau, n = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + t * n
if ARGV[5] == 'take' then
  local wait = new - now - tau - t * n
  if n == 0 then wait = tat - now - tau end
  if wait > 0 then return math.ceil(wait) end
end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now + tau) + 1000)
return 0
