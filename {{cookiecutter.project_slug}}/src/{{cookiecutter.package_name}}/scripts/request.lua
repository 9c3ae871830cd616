-- The one Redis call of an authenticated request: is the session alive? If so, slide its idle TTL.
-- KEYS[1] session hash (p:{sub}:sess:<sid>)
-- ARGV[1] idle TTL (ms)
-- Returns an array whose first element is 1 (alive) or 0 (gone); the rate limit will add to it
-- (KEYS[2] = p:{sub}:rl, same hash tag). A request whose session is gone writes nothing.
local expires = redis.call('HGET', KEYS[1], 'abs_exp_ms')
if not expires then
    return {0}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local remaining = tonumber(expires) - now
if remaining <= 0 then
    return {0}  -- about to expire by itself
end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), remaining))
return {1}
