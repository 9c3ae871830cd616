-- End one session: its hash and its entry in the user's session index, together.
-- KEYS[1] session hash (p:{sub}:sess:<sid>)   KEYS[2] session index (p:{sub}:sessions)
-- ARGV[1] sid
-- Returns 1 when the session was alive, 0 when it had already ended.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
