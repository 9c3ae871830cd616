-- Add an item to the front of a user's list, keep only the newest ones, and let the list expire
-- a while after its last write: however busy a user is, the list stays bounded.
-- KEYS[1] the user's item list (p:{items:<digest>})
-- ARGV[1] the item   ARGV[2] most items kept   ARGV[3] TTL (ms)
-- Returns how many items the list holds now.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('LLEN', KEYS[1])
