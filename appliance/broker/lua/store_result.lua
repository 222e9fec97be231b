-- The result backend's store. KEYS[1]: the result key. ARGV: value, expiry (s, 0 = none).
-- include: store_unless_success
return store_unless_success(KEYS[1], ARGV[1], ARGV[2])
