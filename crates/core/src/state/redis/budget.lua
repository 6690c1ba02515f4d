-- Takes a request and some tokens from an account's day and week budgets,
-- atomically, or refuses without taking anything.
--
-- KEYS[1], KEYS[2]: the hashes of the account's current day and week
--   (fields t: tokens spent, r: requests)
-- ARGV[1]: tokens
-- ARGV[2], ARGV[3]: the day's token and request budgets (-1: none)
-- ARGV[4], ARGV[5]: the week's token and request budgets (-1: none)
-- ARGV[6], ARGV[7]: how long to keep the day's and the week's hash, in ms
--
-- Returns {taken (1|0), day spent (1|0), week spent (1|0),
--          day tokens, day requests, week tokens, week requests}
-- with the sums after the take (or as they are, when refused).
local tokens = tonumber(ARGV[1])

local function look(key, token_budget, request_budget)
  local t = tonumber(redis.call('HGET', key, 't') or '0')
  local r = tonumber(redis.call('HGET', key, 'r') or '0')
  local over = (token_budget >= 0 and t + tokens > token_budget)
    or (request_budget >= 0 and r + 1 > request_budget)
  return over, t, r
end

local day_over, dt, dr = look(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
local week_over, wt, wr = look(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
if day_over or week_over then
  return {0, day_over and 1 or 0, week_over and 1 or 0, dt, dr, wt, wr}
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 't', tokens)
  redis.call('HINCRBY', key, 'r', 1)
  redis.call('PEXPIRE', key, ARGV[5 + i])
end
return {1, 0, 0, dt + tokens, dr + 1, wt + tokens, wr + 1}
