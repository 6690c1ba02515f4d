-- Corrects an account's day and week sums once an attempt is over: by the
-- tokens it used beyond (or below) what it took, and one request less when
-- it did not count as one. A period whose hash expired is left alone.
--
-- KEYS[1], KEYS[2]: the day's and the week's hash
-- ARGV[1]: the change of tokens; ARGV[2]: the change of requests
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 't', ARGV[1])
    redis.call('HINCRBY', key, 'r', ARGV[2])
  end
end
return 0
