-- Gives back the stock held for requests that will not be paid.
-- KEYS[1]: {inventory}:stock  hash product_id -> units available
-- KEYS[2]: {inventory}:holds  hash request_id -> hold (see the prelude)
-- ARGV:    request ids whose holds to release (unknown ids are ignored)
-- Returns: how many holds were released.
local stock = stock_view(KEYS[1])
local released = 0
for _, request_id in ipairs(ARGV) do
  if give_back_hold(stock, KEYS[2], request_id) then
    released = released + 1
  end
end
stock_flush(stock)
return released
