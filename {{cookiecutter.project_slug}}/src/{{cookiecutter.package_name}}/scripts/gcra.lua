-- GCRA (generic cell rate algorithm) over one or more keys, shared by the scripts that limit.
-- Redis scripts cannot import one another, so the loader puts this file in front of them.
--
-- Each key holds a theoretical arrival time (TAT, microseconds of Redis TIME). A request moves
-- it forward by `interval`; it is refused while the new TAT would lie more than `burst`
-- intervals ahead of now. A request is allowed only when every key allows it, and only then are
-- the keys written, each expiring exactly when it stops limiting anything.
-- Returns {allowed (1/0), remaining, retry_after_us, reset_us} for the tightest key.
local function gcra(keys, interval, burst, now)
    local new_tats, remaining, retry_after, reset = {}, burst, 0, 0
    for i, key in ipairs(keys) do
        local tat = tonumber(redis.call('GET', key)) or now
        if tat < now then
            tat = now
        end
        local new_tat = tat + interval
        local allow_at = new_tat - burst * interval
        if now < allow_at then
            retry_after = math.max(retry_after, allow_at - now)
            reset = math.max(reset, tat - now)
        else
            reset = math.max(reset, new_tat - now)
        end
        new_tats[i] = new_tat
        remaining = math.min(remaining, math.floor((now - allow_at) / interval))
    end
    if retry_after > 0 then
        return {0, 0, retry_after, reset}
    end
    for i, key in ipairs(keys) do
        local ttl_ms = math.ceil((new_tats[i] - now) / 1000)
        redis.call('SET', key, string.format('%d', new_tats[i]), 'PX', ttl_ms)
    end
    return {1, remaining, 0, reset}
end

local function now_us()
    local time = redis.call('TIME')
    return tonumber(time[1]) * 1000000 + tonumber(time[2])
end
