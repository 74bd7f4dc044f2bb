-- A coupon drop through the gateway with wrk as the load generator:
-- POST /v1/coupons/<coupon>/issue exactly once for each of <count> users
-- numbered from <first> (the threads take turns), then stop.
-- Usage: wrk -t T -c C -d <upper bound> -s drop.lua <url> -- <first> <count> <coupon> <T>
-- Once a thread has sent its share, each connection asks GET /healthz
-- (publishes nothing) once a second, until the caller stops wrk (SIGINT)
-- when every result is out: wrk's own thread:stop() does not end a thread.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local first, count, coupon, nthreads, quota
local sent = 0
function init(args)
  first, count, coupon, nthreads = tonumber(args[1]), tonumber(args[2]), args[3], tonumber(args[4])
  quota = math.floor(count / nthreads)
  if tid < count % nthreads then quota = quota + 1 end
end

-- wrk asks the first thread for one request to check the script before the
-- run (script_verify_request) and never sends it: that one is not a post.
local checked = false
function request()
  if tid == 0 and not checked then
    checked = true
    return wrk.format("GET", "/healthz")
  end
  if sent < quota then
    local user = first + tid + sent * nthreads
    sent = sent + 1
    return wrk.format("POST", "/v1/coupons/" .. coupon .. "/issue",
      {["Content-Type"] = "application/json"}, '{"user_id": ' .. user .. '}')
  end
  return wrk.format("GET", "/healthz")
end

function delay()
  if sent < quota then return 0 end
  return 1000
end
