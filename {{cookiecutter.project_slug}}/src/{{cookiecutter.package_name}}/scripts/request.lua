-- The one Redis call of an authenticated request: is the session alive, and may it make one
-- more request under its rate limit? (gcra.lua is put in front of this file by the loader.)
-- KEYS[1] session hash (p:{sub}:sess:<sid>)   KEYS[2] rate-limit bucket (p:{sub}:rl...)
-- ARGV[1] idle TTL (ms)   ARGV[2] emission interval (microseconds)   ARGV[3] burst
-- Returns {0} when the session is gone, and then writes nothing; otherwise slides the session's
-- idle TTL (never past its absolute expiry) and returns
-- {1, allowed, remaining, retry_after_us, reset_us}.
local expires = redis.call('HGET', KEYS[1], 'abs_exp_ms')
if not expires then
    return {0}
end
local now = now_us()
local now_ms = math.floor(now / 1000)
local remaining_ms = tonumber(expires) - now_ms
if remaining_ms <= 0 then
    return {0}  -- about to expire by itself
end
-- At an instant of the TIME read above, as abs_exp_ms is: never past the absolute expiry.
redis.call('PEXPIREAT', KEYS[1], now_ms + math.min(tonumber(ARGV[1]), remaining_ms))
local decision = gcra({KEYS[2]}, tonumber(ARGV[2]), tonumber(ARGV[3]), now)
return {1, decision[1], decision[2], decision[3], decision[4]}
