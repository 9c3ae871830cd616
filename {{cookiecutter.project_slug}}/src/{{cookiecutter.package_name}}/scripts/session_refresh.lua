-- Rotate a session's refresh token; the token spent at the last rotation ends the session.
-- KEYS[1] session hash   KEYS[2] session index
-- ARGV[1] hash of the presented refresh token   ARGV[2] hash of its replacement
-- ARGV[3] idle TTL (ms)   ARGV[4] sid
-- Returns {1, scopes} when rotated; {-1} when the session was ended because its last spent
-- token came back (stolen or replayed: RFC 9700 section 4.14); {0} otherwise (no session, or
-- a token this session never issued, e.g. forged from the sub and sid of an access token:
-- refused, and nothing is written, so such a guess cannot end anyone's session).
local stored = redis.call('HMGET', KEYS[1], 'refresh', 'abs_exp_ms', 'scopes', 'spent')
if not stored[1] then
    return {0}
end
if stored[1] ~= ARGV[1] then
    if stored[4] ~= ARGV[1] then
        return {0}
    end
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[4])
    return {-1}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local remaining = tonumber(stored[2]) - now
if remaining <= 0 then
    return {0}  -- about to expire by itself
end
redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'spent', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'rotations', 1)
-- Slide the idle TTL, never past the absolute expiry set at login (PEXPIREAT on the TIME read
-- above, as abs_exp_ms is, so the key cannot outlive it even by a millisecond).
redis.call('PEXPIREAT', KEYS[1], now + math.min(tonumber(ARGV[3]), remaining))
return {1, stored[3]}
