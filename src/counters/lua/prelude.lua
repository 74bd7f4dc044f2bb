-- Shared by every counter script: it is put in front of each one, so what is
-- defined here is the one definition the scripts use.
--
-- One error style. A counter that is missing (Redis lost it, or it was never
-- loaded) is an answer, not an error: each script says in its header which
-- value means "not loaded", and the worker reloads it from PostgreSQL. A
-- counter that holds something that is not what it should be (a corrupted
-- key) is an error reply whose code is STAMPEDE_CORRUPT: retrying cannot
-- help, so the request that met it is isolated and dead-lettered.

-- The number stored at `key` (via `raw`, what GET/HGET gave), or nil when it
-- is missing; raises STAMPEDE_CORRUPT when it is not a number.
local function counter_value(key, raw)
  if not raw then
    return nil
  end
  local value = tonumber(raw)
  if value == nil then
    error({err = 'STAMPEDE_CORRUPT ' .. key .. ' holds ' .. string.sub(tostring(raw), 1, 64)})
  end
  return value
end

-- Product holds: {inventory}:holds maps a request id to the stock it
-- reserved, written "product_id:quantity,product_id:quantity,..." — read and
-- written only by the functions below.

-- Each (product_id, quantity) of a hold, as strings.
local function hold_items(hold)
  return string.gmatch(hold, '(%d+):(%d+)')
end

-- The hold of items given as a flat list: product_id, quantity, ...
local function encode_hold(flat, first, last)
  local parts = {}
  for j = first, last, 2 do
    parts[#parts + 1] = flat[j] .. ':' .. flat[j + 1]
  end
  return table.concat(parts, ',')
end

-- Gives the stock held for `request_id` back to `stock_key` and forgets the
-- hold. Returns whether there was one.
local function give_back_hold(stock_key, holds_key, request_id)
  local hold = redis.call('HGET', holds_key, request_id)
  if not hold then
    return false
  end
  for pid, qty in hold_items(hold) do
    redis.call('HINCRBY', stock_key, pid, tonumber(qty))
  end
  redis.call('HDEL', holds_key, request_id)
  return true
end

