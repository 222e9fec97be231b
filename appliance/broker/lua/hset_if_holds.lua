-- HSET KEYS[2] ARGV[2] ARGV[3] only while the lease KEYS[1] holds ARGV[1]: a write fenced
-- by the lease, so a holder that stalled past its TTL never writes under its successor.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
