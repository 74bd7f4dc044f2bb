-- Decides a micro-batch of first-come issue requests for ONE coupon, atomically.
-- KEYS[1]: {coupon:<id>}:stock    string, units left to hand out
-- KEYS[2]: {coupon:<id>}:holders  set of user ids holding (or about to hold) the coupon
-- KEYS[3]: {coupon:<id>}:grants   hash request_id -> user_id, one entry per unit taken
-- ARGV:    request_id_1, user_id_1, request_id_2, user_id_2, ... (in arrival order)
-- Returns: {NOT_LOADED} when the coupon is not loaded (Redis lost it: reload
--          from PostgreSQL); else one code per request, as below.
-- Every check happens before the first write of a request.
local GRANTED, GRANTED_EARLIER, ALREADY_ISSUED, SOLD_OUT, NOT_LOADED = 1, 2, 0, -1, -2
local stock = counter_value(KEYS[1], redis.call('GET', KEYS[1]))
if stock == nil then
  return {NOT_LOADED}
end
local codes = {}
local taken = 0
for i = 1, #ARGV, 2 do
  local request_id, user_id = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[3], request_id) == 1 then
    -- A redelivery of a request that already took its unit.
    codes[#codes + 1] = GRANTED_EARLIER
  elseif redis.call('SISMEMBER', KEYS[2], user_id) == 1 then
    codes[#codes + 1] = ALREADY_ISSUED
  elseif stock - taken <= 0 then
    codes[#codes + 1] = SOLD_OUT
  else
    taken = taken + 1
    redis.call('SADD', KEYS[2], user_id)
    redis.call('HSET', KEYS[3], request_id, user_id)
    codes[#codes + 1] = GRANTED
  end
end
if taken > 0 then
  redis.call('DECRBY', KEYS[1], taken)
end
return codes
