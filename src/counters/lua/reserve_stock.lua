-- Reserves product stock for a round of orders, each all or nothing, atomically.
-- KEYS[1]: {inventory}:stock  hash product_id -> units available
-- KEYS[2]: {inventory}:holds  hash request_id -> "product_id:quantity,..." reserved for it
-- ARGV:    per order: request_id, mode, item_count, product_id_1, quantity_1, ...
--          mode 'reserve' takes the stock; mode 'check' only checks it (the order
--          is rejected for another reason) and gives back any hold it had.
-- Returns: per order two numbers: code, detail.
--          code 1: reserved now; 2: reserved earlier for this request (redelivery);
--          0: check passed, nothing taken; -1: out of stock (detail: product id);
--          -2: product not loaded (detail: product id; reload from PostgreSQL).
local out = {}
local i = 1
while i <= #ARGV do
  local request_id, mode, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + 2 * n
  local held = redis.call('HGET', KEYS[2], request_id)
  if held and mode == 'reserve' then
    out[#out + 1] = 2
    out[#out + 1] = 0
  else
    if held then
      for pid, qty in string.gmatch(held, '(%d+):(%d+)') do
        redis.call('HINCRBY', KEYS[1], pid, tonumber(qty))
      end
      redis.call('HDEL', KEYS[2], request_id)
    end
    local code, detail = 0, 0
    for j = first, first + 2 * n - 1, 2 do
      local available = redis.call('HGET', KEYS[1], ARGV[j])
      if not available then
        code, detail = -2, tonumber(ARGV[j])
        break
      end
      if tonumber(available) < tonumber(ARGV[j + 1]) then
        code, detail = -1, tonumber(ARGV[j])
        break
      end
    end
    if code == 0 and mode == 'reserve' then
      local parts = {}
      for j = first, first + 2 * n - 1, 2 do
        redis.call('HINCRBY', KEYS[1], ARGV[j], -tonumber(ARGV[j + 1]))
        parts[#parts + 1] = ARGV[j] .. ':' .. ARGV[j + 1]
      end
      redis.call('HSET', KEYS[2], request_id, table.concat(parts, ','))
      code = 1
    end
    out[#out + 1] = code
    out[#out + 1] = detail
  end
end
return out
