-- Replaces a job's record only if it is still what the caller read: a
-- compare-and-set, so two changes of one job never overwrite each other.
--
-- KEYS[1]: the job's record
-- ARGV[1]: the record as read ('' when there was none)
-- ARGV[2]: the new record
-- ARGV[3]: its time to live in ms (0: none)
--
-- Returns 1 when written, 0 when the record had changed meanwhile.
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
