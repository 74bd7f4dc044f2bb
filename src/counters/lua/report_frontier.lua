-- One process of a consumer group reports how far it has come and learns how
-- far the others have (first come, first served across processes).
-- KEYS[1]: {fcfs:<group>}:frontiers, a hash: process id -> "<frontier>:<reported>"
-- ARGV[1]: this process's id
-- ARGV[2]: its frontier: the earliest acceptance time (ms since the epoch) it
--          may still decide
-- ARGV[3]: how long (ms) a report counts: a process silent for longer is gone
--          (stopped, killed, stalled) and is not waited for
-- Returns: the earliest frontier among the other processes that reported
--          within ARGV[3], or false when there is none. Times of reports come
--          from this Redis server's clock, so the processes' clocks need not
--          agree for staleness.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local stale_after = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. now)
-- A group whose processes all stopped leaves nothing behind for long:
-- ten report lifetimes, far longer than any report counts.
redis.call('PEXPIRE', KEYS[1], stale_after * 10)
local earliest = false
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local member, value = entries[i], entries[i + 1]
  if member ~= ARGV[1] then
    local frontier, reported = string.match(value, '^(%-?%d+):(%d+)$')
    if frontier == nil or now - tonumber(reported) > stale_after then
      redis.call('HDEL', KEYS[1], member)
    elseif earliest == false or tonumber(frontier) < earliest then
      earliest = tonumber(frontier)
    end
  end
end
return earliest
