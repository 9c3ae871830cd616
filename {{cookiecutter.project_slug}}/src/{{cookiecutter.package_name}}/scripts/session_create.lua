-- Open a session and enter it in the user's session index.
-- KEYS[1] session hash (p:{sub}:sess:<sid>)   KEYS[2] session index (p:{sub}:sessions)
-- ARGV[1] sid   ARGV[2] scopes (space-separated)   ARGV[3] refresh token hash
-- ARGV[4] idle TTL (ms)   ARGV[5] absolute lifetime (ms)   ARGV[6] most sessions per user
-- ARGV[7] session key prefix (KEYS[1] without the sid; same hash tag, so the same slot)
-- Returns the number of older sessions ended to respect the cap.
local sid, idle, absolute, cap = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local prefix = ARGV[7]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires = now + absolute

redis.call('HSET', KEYS[1], 'scopes', ARGV[2], 'created_ms', now, 'abs_exp_ms', expires,
    'refresh', ARGV[3], 'rotations', 0)
-- PEXPIREAT on this script's own TIME reading, as abs_exp_ms is: a relative PEXPIRE counts from
-- a moment a little later, so the key could outlive its absolute expiry by that much.
redis.call('PEXPIREAT', KEYS[1], now + math.min(idle, absolute))

-- Prune: members past their absolute expiry, and members whose session already ended (idle).
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('EXISTS', prefix .. member) == 0 then
        redis.call('ZREM', KEYS[2], member)
    end
end
redis.call('ZADD', KEYS[2], expires, sid)

-- Cap: end the sessions that expire first (the oldest) beyond the limit, never the new one.
local ended = 0
local excess = redis.call('ZCARD', KEYS[2]) - cap
if excess > 0 then
    for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess)) do
        if member ~= sid and ended < excess then
            redis.call('DEL', prefix .. member)
            redis.call('ZREM', KEYS[2], member)
            ended = ended + 1
        end
    end
end

-- The index lives as long as its longest-lived member.
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return ended
