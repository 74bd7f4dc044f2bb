-- Loads one coupon's counter state from PostgreSQL, the source of truth.
-- KEYS[1]: {coupon:<id>}:stock    KEYS[2]: {coupon:<id>}:holders    KEYS[3]: {coupon:<id>}:grants
-- ARGV[1]: 'if_missing' (leave a loaded coupon alone) or 'force' (replace it)
-- ARGV[2]: units left per PostgreSQL (total_quantity - issued)
-- ARGV[3]: k, how many decided request ids follow
-- ARGV[4 .. 3+k]: request ids PostgreSQL has already decided (their grants are
--          spent: an issued coupon is in ARGV[2] already, a rejected one took
--          nothing); their grants are deleted, never counted
-- ARGV[4+k ..]: user ids holding the coupon per PostgreSQL
-- The caller holds the coupon's row lock, so no issue commits meanwhile: every
-- grant left after the decided ones go belongs to a request not yet committed,
-- and stays taken: the stock written is ARGV[2] minus those grants, and their
-- users stay holders.
-- ARGV[2] may be negative: a sub-counter of a split coupon is dealt its share
-- minus what the sub-counters loaded before it could not cover.
-- Returns: {previous, pending}: the stock Redis held before (-1 when it held
--          none; -2 when 'if_missing' found the coupon loaded and left it) and
--          the number of pending grants kept.
-- A stock key of another kind (a hash, a set) holds no number: it counts as
-- one that is not a number, and SET below replaces it.
local previous = false
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then
  previous = redis.call('GET', KEYS[1])
elseif kind ~= 'none' then
  previous = kind
end
if previous and ARGV[1] == 'if_missing' then
  return {-2, 0}
end
local decided = tonumber(ARGV[3])
for i = 4, 3 + decided do
  redis.call('HDEL', KEYS[3], ARGV[i])
end
redis.call('DEL', KEYS[2])
-- SADD in chunks: Lua's unpack() has a stack limit of a few thousand values.
for i = 4 + decided, #ARGV, 5000 do
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
-- A previous value that is not a number (a corrupted key) counts as none.
return {tonumber(previous or '') or -1, #pending}
