-- Reserves product stock for a round of orders, each all or nothing, atomically.
-- KEYS[1]: {inventory}:stock  hash product_id -> units available
-- KEYS[2]: {inventory}:holds  hash request_id -> hold (see the prelude)
-- ARGV:    per order: request_id, mode, item_count, product_id_1, quantity_1, ...
--          mode 'reserve' takes the stock; mode 'check' only checks it (the order
--          is rejected for another reason) and gives back any hold it had.
-- Returns: per order two numbers: code, detail — the codes below; detail is
--          the product id that ran out or is not loaded (reload it from
--          PostgreSQL), else 0.
-- Orders are decided in order, each seeing what the ones before it took or
-- gave back; the stock is read and written through a view (one HGET per
-- product, one HSET per few hundred changed products) and the new holds are
-- written together at the end.
local RESERVED, RESERVED_EARLIER, CHECKED = 1, 2, 0
local OUT_OF_STOCK, NOT_LOADED = -1, -2
local stock = stock_view(KEYS[1])
-- Holds taken by this call, not yet written: request_id -> hold.
local taken = {}
local out = {}
local i = 1
while i <= #ARGV do
  local request_id, mode, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first, last = i + 3, i + 2 + 2 * n
  i = last + 1
  local held = taken[request_id]
  local stored = false
  if not held then
    held = redis.call('HGET', KEYS[2], request_id)
    stored = held ~= false
  end
  if mode == 'reserve' and held then
    -- A redelivery: the stock was taken for it already.
    out[#out + 1] = RESERVED_EARLIER
    out[#out + 1] = 0
  else
    if held then
      give_back(stock, held)
      taken[request_id] = nil
      if stored then
        redis.call('HDEL', KEYS[2], request_id)
      end
    end
    local code, detail = CHECKED, 0
    for j = first, last, 2 do
      local available = stock_get(stock, ARGV[j])
      if available == nil then
        code, detail = NOT_LOADED, tonumber(ARGV[j])
        break
      end
      if available < tonumber(ARGV[j + 1]) then
        code, detail = OUT_OF_STOCK, tonumber(ARGV[j])
        break
      end
    end
    if code == CHECKED and mode == 'reserve' then
      for j = first, last, 2 do
        stock_add(stock, ARGV[j], -tonumber(ARGV[j + 1]))
      end
      taken[request_id] = encode_hold(ARGV, first, last)
      code = RESERVED
    end
    out[#out + 1] = code
    out[#out + 1] = detail
  end
end
stock_flush(stock)
hset_all(KEYS[2], taken)
return out
