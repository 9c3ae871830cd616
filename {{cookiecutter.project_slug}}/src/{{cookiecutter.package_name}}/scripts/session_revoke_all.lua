-- End every session of one user.
-- KEYS[1] session index (p:{sub}:sessions)
-- ARGV[1] session key prefix (p:{sub}:sess:, the same hash tag, so the same slot)
-- Returns the number of sessions ended.
local ended = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    ended = ended + redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1])
return ended
