-- Stores a new job and queues it, unless it would pass a cap: first
-- forgets the jobs whose time is up, then checks what the user and the
-- fleet keep, then writes the record, the indexes and the counts, and adds
-- the job to the queue, all at once.
--
-- ARGV: prefix, id, record, request, user ('' for none), bytes, created
-- (ms), now (ms), record ttl (ms), forget at (ms), max jobs per user, max
-- bytes per user, max jobs, max bytes.
--
-- Returns 0 when stored; 1 to 4 for the cap it would pass: the user's
-- jobs, the user's bytes, the fleet's jobs, the fleet's bytes.
local prefix, id, record, request, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local bytes, created, now = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local ttl, forget_at = ARGV[9], ARGV[10]
trim(prefix, now)

local usage, totals = prefix .. ':jobs:usage', prefix .. ':jobs:totals'
local function count(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end
if count(usage, 'jobs:' .. user) + 1 > tonumber(ARGV[11]) then return 1 end
if count(usage, 'bytes:' .. user) + bytes > tonumber(ARGV[12]) then return 2 end
if count(totals, 'jobs') + 1 > tonumber(ARGV[13]) then return 3 end
if count(totals, 'bytes') + bytes > tonumber(ARGV[14]) then return 4 end

local key = prefix .. ':jobrec:' .. id
redis.call('HSET', key, 'record', record, 'request', request)
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', prefix .. ':jobs:by_time', created, id)
redis.call('ZADD', prefix .. ':jobs:by_user:' .. user, created, id)
redis.call('ZADD', prefix .. ':jobs:forget', forget_at, id)
redis.call('HSET', prefix .. ':jobs:sizes', id, bytes .. ' ' .. user)
redis.call('HINCRBY', usage, 'jobs:' .. user, 1)
redis.call('HINCRBY', usage, 'bytes:' .. user, bytes)
redis.call('HINCRBY', totals, 'jobs', 1)
redis.call('HINCRBY', totals, 'bytes', bytes)
redis.call('XADD', prefix .. ':jobs:queue', '*', 'job', id)
return 0
