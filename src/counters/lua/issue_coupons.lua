-- Decides a micro-batch of first-come issue requests for ONE coupon, atomically.
-- KEYS[1]: {coupon:<id>}:stock    string, units left to hand out
-- KEYS[2]: {coupon:<id>}:holders  set of user ids holding (or about to hold) the coupon
-- KEYS[3]: {coupon:<id>}:grants   hash request_id -> user_id, one entry per unit taken
-- ARGV:    request_id_1, user_id_1, request_id_2, user_id_2, ... (in arrival order)
-- Returns: {-2} when the coupon is not loaded (Redis lost it: reload from PostgreSQL);
--          else one code per request: 1 granted now, 2 granted earlier to this same
--          request (a redelivery), 0 already issued to this user, -1 sold out.
-- Every check happens before the first write of a request.
local stock = redis.call('GET', KEYS[1])
if not stock then
  return {-2}
end
stock = tonumber(stock)
local codes = {}
local taken = 0
for i = 1, #ARGV, 2 do
  local request_id, user_id = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[3], request_id) == 1 then
    codes[#codes + 1] = 2
  elseif redis.call('SISMEMBER', KEYS[2], user_id) == 1 then
    codes[#codes + 1] = 0
  elseif stock - taken <= 0 then
    codes[#codes + 1] = -1
  else
    taken = taken + 1
    redis.call('SADD', KEYS[2], user_id)
    redis.call('HSET', KEYS[3], request_id, user_id)
    codes[#codes + 1] = 1
  end
end
if taken > 0 then
  redis.call('DECRBY', KEYS[1], taken)
end
return codes
