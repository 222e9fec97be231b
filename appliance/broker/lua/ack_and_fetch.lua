-- Ack one message and fetch the next, in one round trip (the QoS of broker/transport.py).
-- KEYS: unacked_index, unacked, then the queue lists in the order BRPOP would take them.
-- ARGV: the delivery tag to ack ('' for none), the time to track the next message at;
-- then, in a consumer process, what its task's ack carries ('' where nothing): the final
-- result, stored as the result backend stores it (never over a SUCCESS, published to
-- waiting clients) on the same server - its key, value, expiry (s, 0 = none), the result
-- database and the broker's (SELECTed back) - and the final record write, pushed onto the
-- unit's journal (records/journal.py) - its key, the entry, the journal's cap.
-- Returns {-1} and does nothing when the journal is at its cap; else {0, list key, item,
-- delivery tag}, the list key '' when the queues are empty and the tag '' when the item
-- is not a kombu message (left untracked for the caller to dead-letter). The unacked
-- entry is byte for byte what kombu's QoS.append writes: [message, exchange, routing_key].
-- include: store_unless_success
if ARGV[8] and ARGV[8] ~= '' and redis.call('LLEN', ARGV[8]) >= tonumber(ARGV[10]) then
  return {-1}
end
if ARGV[3] and ARGV[3] ~= '' then
  redis.call('SELECT', ARGV[6])
  store_unless_success(ARGV[3], ARGV[4], ARGV[5])
  redis.call('SELECT', ARGV[7])
end
if ARGV[8] and ARGV[8] ~= '' then
  redis.call('RPUSH', ARGV[8], ARGV[9])
end
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, m = pcall(cjson.decode, item)
    if ok and type(m) == 'table' and type(m['properties']) == 'table'
        and m['body'] ~= nil and m['headers'] ~= nil then
      local tag = m['properties']['delivery_tag']
      local info = m['properties']['delivery_info']
      if type(tag) == 'string' and tag ~= '' and type(info) == 'table' then
        redis.call('ZADD', KEYS[1], ARGV[2], tag)
        redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
          .. ',' .. cjson.encode(info['routing_key']) .. ']')
        return {0, KEYS[i], item, tag}
      end
    end
    return {0, KEYS[i], item, ''}
  end
end
return {0, '', '', ''}
