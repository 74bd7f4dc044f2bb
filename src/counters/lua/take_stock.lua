-- Takes units out of one sub-counter of a split coupon, to hand them to the
-- sub-counter whose users ran out (see give_stock.lua).
-- KEYS[1]: {coupon:<id>#<k>}:stock
-- ARGV[1]: units wanted (> 0)
-- Returns: units taken, 0 .. ARGV[1]: 0 when none is left or the sub-counter
--          is not loaded.
local stock = counter_value(KEYS[1], redis.call('GET', KEYS[1])) or 0
local taken = math.min(stock, tonumber(ARGV[1]))
if taken <= 0 then
  return 0
end
redis.call('DECRBY', KEYS[1], taken)
return taken
