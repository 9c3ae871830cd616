-- wrk script: every request carries the next token from $BENCH_TOKENS (one per line), so the
-- server sees many distinct tokens, as it would in production. Used for both routes, so the
-- unauthenticated baseline pays for the same request bytes.
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do
    tokens[#tokens + 1] = "Bearer " .. line
end
local index = 0

request = function()
    index = index % #tokens + 1
    return wrk.format("GET", nil, { ["Authorization"] = tokens[index] })
end
