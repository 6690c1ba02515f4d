-- Takes one request from the RPM quota and ARGV[3] tokens from the TPM quota
-- of one deployment, atomically, on Redis's clock; or says which is short and
-- for how long. Spent quota comes back ARGV[4] ms after it was spent.
--
-- KEYS[1]: sorted set of RPM spends, KEYS[2]: of TPM spends (member
-- "id:amount", score: when, in ms); KEYS[3]: hash of the sums in use
-- ("rpm", "tpm").
-- ARGV: rpm limit, tpm limit (-1: none), tokens, window in ms, "take" (or
-- "peek" to take nothing and only read what is in use), and the
-- reservation's id (unique across instances: the instance's id and a count).
-- Returns {1, 0, now, rpm in use, tpm in use} or {0, 1 (rpm) | 2 (tpm), wait ms, rpm in use, tpm in use},
-- or for a peek {2, 0, now, rpm in use, tpm in use}.
-- Reading the clock before writing needs effects replication (Redis >= 5
-- does it by default; older servers are asked to).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm_limit, tpm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, window = tonumber(ARGV[3]), tonumber(ARGV[4])

local function amount(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

-- What is in use once the spends older than a window have come back.
local function in_use(spends, field)
  local expired = redis.call('ZRANGEBYSCORE', spends, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for _, m in ipairs(expired) do freed = freed + amount(m) end
    redis.call('ZREMRANGEBYSCORE', spends, '-inf', now - window)
    redis.call('HINCRBY', KEYS[3], field, -freed)
  end
  return tonumber(redis.call('HGET', KEYS[3], field) or '0')
end

-- A request larger than the whole limit passes an untouched quota, so it is
-- not refused forever (Bedrock judges it).
local function fits(used, want, limit)
  return used + want <= limit or (used == 0 and want > limit)
end

local function wait_for(spends, used, want, limit)
  local need = used + math.min(want, limit) - limit
  local freed = 0
  local spent = redis.call('ZRANGE', spends, 0, -1, 'WITHSCORES')
  for i = 1, #spent, 2 do
    freed = freed + amount(spent[i])
    if freed >= need then
      return math.max(tonumber(spent[i + 1]) + window - now, 1)
    end
  end
  return window
end

local rpm_used = in_use(KEYS[1], 'rpm')
local tpm_used = in_use(KEYS[2], 'tpm')
if ARGV[5] == 'peek' then
  return {2, 0, now, rpm_used, tpm_used}
end
if rpm_limit >= 0 and not fits(rpm_used, 1, rpm_limit) then
  return {0, 1, wait_for(KEYS[1], rpm_used, 1, rpm_limit), rpm_used, tpm_used}
end
if tpm_limit >= 0 and not fits(tpm_used, tokens, tpm_limit) then
  return {0, 2, wait_for(KEYS[2], tpm_used, tokens, tpm_limit), rpm_used, tpm_used}
end
local id = ARGV[6]
if rpm_limit >= 0 then
  redis.call('ZADD', KEYS[1], now, id .. ':1')
  rpm_used = redis.call('HINCRBY', KEYS[3], 'rpm', 1)
end
if tpm_limit >= 0 then
  redis.call('ZADD', KEYS[2], now, id .. ':' .. tokens)
  tpm_used = redis.call('HINCRBY', KEYS[3], 'tpm', tokens)
end
-- Idle books vanish together two windows after the last spend.
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 2 * window) end
return {1, 0, now, rpm_used, tpm_used}
