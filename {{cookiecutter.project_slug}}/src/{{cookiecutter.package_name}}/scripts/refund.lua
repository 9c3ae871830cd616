-- Give one request back to every given bucket: login takes an attempt before it checks the
-- password (so a refused attempt costs no hashing), and gives it back when the password was
-- right, so that only failed attempts use up the budget.
-- (gcra.lua is put in front of this file by the loader.)
--
-- Each bucket's theoretical arrival time (TAT) moves back by one interval. A TAT at or below
-- now limits nothing, so that bucket is deleted: a refund brings a bucket back to full, never
-- past it, and no number of refunds adds up to more than the burst. A bucket that still limits
-- keeps a TTL of exactly as long as it does; one that has expired is left alone. (The attempt
-- was already running out while the password was checked, so a whole interval may give back a
-- little more than it still held: at most the time the check took, and at most one interval.)
-- KEYS    the buckets (one hash tag, so one cluster slot)
-- ARGV[1] emission interval (microseconds)   ARGV[2] burst
-- Returns {1, remaining, 0, reset_us} for the tightest bucket, as limit.lua does when it allows.
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local remaining, reset = burst, 0
for _, key in ipairs(KEYS) do
    local tat = tonumber(redis.call('GET', key))
    if tat then
        tat = tat - interval
        if tat > now then
            local ttl_ms = math.ceil((tat - now) / 1000)
            redis.call('SET', key, string.format('%d', tat), 'PX', ttl_ms)
            remaining = math.min(remaining, burst + math.floor((now - tat) / interval))
            reset = math.max(reset, tat - now)
        else
            redis.call('DEL', key)
        end
    end
end
return {1, remaining, 0, reset}
