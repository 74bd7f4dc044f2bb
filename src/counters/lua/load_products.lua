-- Loads product stock from PostgreSQL, the source of truth.
-- KEYS[1]: {inventory}:stock  hash product_id -> units available
-- KEYS[2]: {inventory}:holds  hash request_id -> hold (see the prelude)
-- ARGV[1]: 'if_missing' (only products Redis does not hold) or 'force'
-- ARGV[2]: k, how many decided request ids follow
-- ARGV[3 .. 2+k]: request ids PostgreSQL has already decided: their holds are
--          spent (a paid order's stock is out of PostgreSQL's figure already, a
--          rejected one took nothing) and are deleted, never counted
-- ARGV[3+k ..]: product_id, stock per PostgreSQL, product_id, stock, ...
-- The caller holds these products' row locks, so no order commits meanwhile:
-- every hold left belongs to an order not yet committed and stays reserved:
-- the stock written is PostgreSQL's minus what those holds take of it.
-- Returns: {written, drift} where drift sums |previous - new| over forced products.
local decided = tonumber(ARGV[2])
for i = 3, 2 + decided do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
local held = {}
for _, items in ipairs(redis.call('HVALS', KEYS[2])) do
  for pid, qty in hold_items(items) do
    held[pid] = (held[pid] or 0) + tonumber(qty)
  end
end
local written, drift = 0, 0
for i = 3 + decided, #ARGV, 2 do
  local pid = ARGV[i]
  local stock = tonumber(ARGV[i + 1]) - (held[pid] or 0)
  if stock < 0 then
    stock = 0
  end
  if ARGV[1] == 'force' then
    -- A value that is not a number is replaced like a missing one.
    local previous = tonumber(redis.call('HGET', KEYS[1], pid) or '')
    if previous then
      drift = drift + math.abs(previous - stock)
    else
      drift = drift + stock
    end
    redis.call('HSET', KEYS[1], pid, stock)
    written = written + 1
  else
    written = written + redis.call('HSETNX', KEYS[1], pid, stock)
  end
end
return {written, drift}
