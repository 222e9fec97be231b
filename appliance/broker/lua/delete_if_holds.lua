-- Delete KEYS[1] only while it holds ARGV[1]: a lease's release, an idempotency claim's
-- release. Never someone else's. Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
