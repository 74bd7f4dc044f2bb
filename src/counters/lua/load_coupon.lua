-- Loads one coupon's counter state from PostgreSQL, the source of truth.
-- KEYS[1]: {coupon:<id>}:stock    KEYS[2]: {coupon:<id>}:holders    KEYS[3]: {coupon:<id>}:grants
-- ARGV[1]: 'if_missing' (leave a loaded coupon alone) or 'force' (replace it)
-- ARGV[2]: units left per PostgreSQL (total_quantity - issued)
-- ARGV[3..]: user ids holding the coupon per PostgreSQL
-- Grants still in KEYS[3] belong to requests not yet committed (workers delete
-- a grant once its issue is durable), so they stay taken: the stock written is
-- ARGV[2] minus the pending grants, and their users stay holders.
-- Returns: the stock Redis held before (-1 when it held none), or -2 when
--          'if_missing' found the coupon loaded and left it.
local previous = redis.call('GET', KEYS[1])
if previous and ARGV[1] == 'if_missing' then
  return -2
end
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 5000 do
  local last = math.min(i + 4999, #ARGV)
  redis.call('SADD', KEYS[2], unpack(ARGV, i, last))
end
local pending = redis.call('HVALS', KEYS[3])
for _, user_id in ipairs(pending) do
  redis.call('SADD', KEYS[2], user_id)
end
local stock = tonumber(ARGV[2]) - #pending
if stock < 0 then
  stock = 0
end
redis.call('SET', KEYS[1], stock)
if previous then
  return tonumber(previous)
end
return -1
