-- Books a spend made while Redis was unreachable, ARGV[1] ms before now on
-- Redis's clock, so the shared quota counts it after a re-sync.
--
-- KEYS[1]: the quota's sorted set of spends; KEYS[2]: the hash of sums.
-- ARGV: how long ago in ms, amount, the hash field ("rpm" | "tpm"), window
-- in ms, and the spend's id (unique across instances).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = now - tonumber(ARGV[1])
if at <= now - tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], at, ARGV[5] .. ':' .. ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[4]))
return 1
