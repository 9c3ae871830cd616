-- Take one login attempt from the client's bucket and the attempted account's bucket together:
-- an attempt is allowed only when both allow it, so neither one address nor many addresses
-- aimed at one account get unlimited guesses. (gcra.lua is prepended by the loader.)
-- KEYS[1] per-client key, KEYS[2] per-account key (one hash tag, so one cluster slot)
-- ARGV[1] emission interval (microseconds)   ARGV[2] burst
-- Returns {allowed, remaining, retry_after_us, reset_us}; a refused attempt writes nothing.
return gcra(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), now_us())
