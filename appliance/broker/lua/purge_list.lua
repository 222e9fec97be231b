-- Delete a queue list and remember the task id of each message it held, in one atomic
-- step, so a purged task is never taken for one whose message Redis lost (the
-- reconciler reads the set and gives its record the final state REVOKED).
-- KEYS[1]: the list, KEYS[2]: the purged set (zset: task id -> when purged).
-- ARGV: now (epoch s), how long the set keeps an id (s).
-- Returns {items deleted, {task ids}}.
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local ids = {}
for _, raw in ipairs(items) do
  local ok, message = pcall(cjson.decode, raw)
  if ok and type(message) == 'table' and type(message['headers']) == 'table' then
    local id = message['headers']['id']
    if type(id) == 'string' and id ~= '' then
      ids[#ids + 1] = id
      redis.call('ZADD', KEYS[2], ARGV[1], id)
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
return {#items, ids}
