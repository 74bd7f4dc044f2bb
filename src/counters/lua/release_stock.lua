-- Gives back the stock held for requests that will not be paid.
-- KEYS[1]: {inventory}:stock  hash product_id -> units available
-- KEYS[2]: {inventory}:holds  hash request_id -> "product_id:quantity,..."
-- ARGV:    request ids whose holds to release (unknown ids are ignored)
-- Returns: how many holds were released.
local released = 0
for _, request_id in ipairs(ARGV) do
  local held = redis.call('HGET', KEYS[2], request_id)
  if held then
    for pid, qty in string.gmatch(held, '(%d+):(%d+)') do
      redis.call('HINCRBY', KEYS[1], pid, tonumber(qty))
    end
    redis.call('HDEL', KEYS[2], request_id)
    released = released + 1
  end
end
return released
