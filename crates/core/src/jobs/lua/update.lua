-- Replaces a job's record only if it is still what the caller read (a
-- compare-and-set, so two changes of one job never overwrite each other),
-- with what follows from the change: the answer's body, the record's new
-- time to live, when it is forgotten, its size, and its callback due.
--
-- ARGV: prefix, id, the record as read, the new record, ttl (ms), forget
-- at (ms), the answer's body ('' for none), whether there is one ('1'),
-- the job's bytes now, its user, the callback's due time ('' for none).
--
-- Returns 1 when written, 0 when the record had changed meanwhile.
local prefix, id = ARGV[1], ARGV[2]
local key = prefix .. ':jobrec:' .. id
local current = redis.call('HGET', key, 'record')
if (current or '') ~= ARGV[3] then
  return 0
end
redis.call('HSET', key, 'record', ARGV[4])
if ARGV[8] == '1' then
  redis.call('HSET', key, 'answer', ARGV[7])
end
redis.call('PEXPIRE', key, ARGV[5])
redis.call('ZADD', prefix .. ':jobs:forget', ARGV[6], id)
local sizes = prefix .. ':jobs:sizes'
local size = redis.call('HGET', sizes, id)
if size then
  local before = tonumber(string.sub(size, 1, string.find(size, ' ', 1, true) - 1))
  local grown = tonumber(ARGV[9]) - before
  if grown ~= 0 then
    local user = ARGV[10]
    redis.call('HINCRBY', prefix .. ':jobs:usage', 'bytes:' .. user, grown)
    redis.call('HINCRBY', prefix .. ':jobs:totals', 'bytes', grown)
    redis.call('HSET', sizes, id, ARGV[9] .. ' ' .. user)
  end
end
if ARGV[11] ~= '' then
  redis.call('ZADD', prefix .. ':jobs:callbacks', ARGV[11], id)
end
return 1
