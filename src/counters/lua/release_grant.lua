-- Gives back the unit granted to a request that will never be issued.
-- KEYS[1]: {coupon:<id>}:stock    KEYS[2]: {coupon:<id>}:holders    KEYS[3]: {coupon:<id>}:grants
-- ARGV[1]: request_id
-- Returns: 1 when a grant was given back, 0 when the request held none.
local user_id = redis.call('HGET', KEYS[3], ARGV[1])
if not user_id then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[2], user_id)
if counter_value(KEYS[1], redis.call('GET', KEYS[1])) ~= nil then
  redis.call('INCR', KEYS[1])
end
return 1
