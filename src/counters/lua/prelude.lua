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

-- A script's view of the product stock hash: each product is read once
-- (HGET) however many orders of the call touch it, and what changed is
-- written once, by stock_flush, in a few HSETs. (An HGET and an HINCRBY per
-- item of every order cost more than the rest of an order's script.)
local function stock_view(key)
  return {key = key, units = {}, changed = {}}
end

-- Units of `pid` (a string) available in `view`, nil when it is not loaded.
local function stock_get(view, pid)
  local units = view.units[pid]
  if units == nil then
    units = counter_value(view.key .. ' ' .. pid, redis.call('HGET', view.key, pid)) or false
    view.units[pid] = units
  end
  return units or nil
end

-- Adds `delta` units of `pid`; a product not loaded starts from 0, as
-- HINCRBY would.
local function stock_add(view, pid, delta)
  view.units[pid] = (stock_get(view, pid) or 0) + delta
  view.changed[pid] = true
end

-- Writes `fields` (a table field -> value) into hash `key`, 500 fields per
-- HSET (Lua's unpack has a bound).
local function hset_all(key, fields)
  local args = {}
  for field, value in pairs(fields) do
    args[#args + 1] = field
    args[#args + 1] = value
    if #args >= 1000 then
      redis.call('HSET', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
  end
end

-- Writes every product `view` changed.
local function stock_flush(view)
  local fields = {}
  for pid in pairs(view.changed) do
    fields[pid] = string.format('%d', view.units[pid])
  end
  hset_all(view.key, fields)
  view.changed = {}
end

-- Gives `hold` (as stored) back to `view`.
local function give_back(view, hold)
  for pid, qty in hold_items(hold) do
    stock_add(view, pid, tonumber(qty))
  end
end

-- Gives the stock held for `request_id` back to `view` and forgets the
-- hold. Returns whether there was one.
local function give_back_hold(view, holds_key, request_id)
  local hold = redis.call('HGET', holds_key, request_id)
  if not hold then
    return false
  end
  give_back(view, hold)
  redis.call('HDEL', holds_key, request_id)
  return true
end
