-- Take one request from every given bucket, or from none: an attempt is allowed only when all
-- of them allow it. Login uses two buckets (the client's address and the attempted account), so
-- neither one address nor many addresses aimed at one account get unlimited guesses.
-- (gcra.lua is put in front of this file by the loader.)
-- KEYS    the buckets (one hash tag, so one cluster slot)
-- ARGV[1] emission interval (microseconds)   ARGV[2] burst
-- Returns {allowed, remaining, retry_after_us, reset_us}; a refused attempt writes nothing.
return gcra(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), now_us())
