-- Forgets the jobs whose time is up (their records have expired): takes
-- them out of the indexes and out of what their users keep.
--
-- Shared by the scripts that start with it; expects `prefix` and `now` set.
local function trim(prefix, now)
  local forget = prefix .. ':jobs:forget'
  local sizes = prefix .. ':jobs:sizes'
  local gone = redis.call('ZRANGEBYSCORE', forget, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(gone) do
    local size = redis.call('HGET', sizes, id)
    if size then
      local space = string.find(size, ' ', 1, true)
      local bytes = tonumber(string.sub(size, 1, space - 1))
      local user = string.sub(size, space + 1)
      redis.call('HINCRBY', prefix .. ':jobs:usage', 'jobs:' .. user, -1)
      redis.call('HINCRBY', prefix .. ':jobs:usage', 'bytes:' .. user, -bytes)
      redis.call('HINCRBY', prefix .. ':jobs:totals', 'jobs', -1)
      redis.call('HINCRBY', prefix .. ':jobs:totals', 'bytes', -bytes)
      redis.call('ZREM', prefix .. ':jobs:by_user:' .. user, id)
      redis.call('HDEL', sizes, id)
    end
    redis.call('ZREM', prefix .. ':jobs:by_time', id)
    redis.call('ZREM', prefix .. ':jobs:callbacks', id)
    redis.call('DEL', prefix .. ':jobrec:' .. id)
    redis.call('ZREM', forget, id)
  end
end
