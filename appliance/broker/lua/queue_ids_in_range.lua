-- KEYS[1]: a queue list; ARGV: start, stop. The task id of each item in that range
-- ('' for an item that is not a kombu JSON message), so only ids cross the network.
local items = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
local ids = {}
for i, raw in ipairs(items) do
  local id = ''
  local ok, message = pcall(cjson.decode, raw)
  if ok and type(message) == 'table' and type(message['headers']) == 'table' then
    local value = message['headers']['id']
    if type(value) == 'string' then id = value end
  end
  ids[i] = id
end
return ids
