-- Settles reservation ARGV[1] of ARGV[2] on one quota to ARGV[3], its real
-- use: the difference comes back now, or more is taken. A reservation whose
-- window has passed is back in full already, and stays so.
--
-- KEYS[1]: the quota's sorted set of spends; KEYS[2]: the hash of sums.
-- ARGV: reservation id, amount reserved, amount used, the hash field ("rpm" | "tpm").
local reserved = ARGV[1] .. ':' .. ARGV[2]
local at = redis.call('ZSCORE', KEYS[1], reserved)
if not at then return 0 end
redis.call('ZREM', KEYS[1], reserved)
if tonumber(ARGV[3]) > 0 then
  redis.call('ZADD', KEYS[1], at, ARGV[1] .. ':' .. ARGV[3])
end
redis.call('HINCRBY', KEYS[2], ARGV[4], tonumber(ARGV[3]) - tonumber(ARGV[2]))
return 1
