-- Extend KEYS[1] to ARGV[2] ms only while it holds ARGV[1] (a lease's renewal).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
