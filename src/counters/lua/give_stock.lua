-- Adds units taken from another sub-counter of the same coupon (take_stock.lua).
-- KEYS[1]: {coupon:<id>#<k>}:stock
-- ARGV[1]: units (> 0)
-- Returns: 1 when added, 0 when the sub-counter is not loaded (Redis lost it:
--          the next issue reloads every sub-counter from PostgreSQL, so the
--          units are not lost for good).
if counter_value(KEYS[1], redis.call('GET', KEYS[1])) == nil then
  return 0
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
