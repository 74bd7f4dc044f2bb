-- POST /v1/coupons/1/issue for users 1, 2, 3, … (one counter per wrk thread, interleaved)
local n = 0
function setup(thread) thread:set("offset", tonumber(thread.id or 0)) end
function request()
  n = n + 1
  return wrk.format("POST", "/v1/coupons/1/issue", {["Content-Type"] = "application/json"},
    '{"user_id": ' .. (n * 2 + (offset or 0)) .. '}')
end
