-- A library function, included by the scripts that store a task's result.
-- Stores a task's state unless it is SUCCESS already, and announces it to waiting
-- clients. Celery's own store takes two round trips per state (GET, then a SET + PUBLISH
-- pipeline); this takes one, with the same guard against a redelivered task overwriting
-- a success. A value that is not JSON (never written by the appliance) is overwritten as
-- Celery would. Returns 1 when stored, 0 when a SUCCESS was there.
local function store_unless_success(key, value, ttl)
  local current = redis.call('GET', key)
  if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
  end
  if tonumber(ttl) > 0 then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
  return 1
end
