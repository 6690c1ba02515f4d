-- Takes the callbacks due by now (at most a batch), making each due again
-- later, so a try cut short by a crash is made again and no two instances
-- make the same try at once.
--
-- ARGV: prefix, now (ms), due again at (ms), batch.
local key = ARGV[1] .. ':jobs:callbacks'
local due = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(due) do
  redis.call('ZADD', key, ARGV[3], id)
end
return due
