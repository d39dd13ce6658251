-- wrk script for scripts/load-test.sh: POST /v1/segment with one prebuilt multipart body,
-- counting statuses (200, 503, any other) and timing each answer by its status.
--
--   wrk -t 8 -c 8 -d 60s --timeout 60s -s scripts/load/segment.lua \
--       http://127.0.0.1:PORT/v1/segment -- IMAGE CLASSES
--
-- Use one connection per thread (-t equal to -c): a thread's requests then go one at a time on
-- its one connection, so the time from request() to response() is that request's latency
-- (LuaJIT's ffi reads the monotonic clock). wrk's own latency histogram mixes every status.
-- done() prints one line "ZEROSEG_WRK_JSON {...}" for the shell to read.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } zs_timespec;
  int clock_gettime(int clk_id, zs_timespec *tp);
]]
local ts = ffi.new("zs_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

-- Main state: give each thread its number.
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

-- Thread state: the body, built once from the image file and the class list.
local request_text
function init(args)
  local image_path, classes = args[1], args[2] or "cat,grass|lawn,wall,floor"
  assert(image_path, "usage: wrk ... -s segment.lua URL -- IMAGE [CLASSES]")
  local f = assert(io.open(image_path, "rb"))
  local image = f:read("*a")
  f:close()
  local boundary = "zeroseg-load-7d1f4c9a"
  local name = image_path:match("([^/]+)$")
  local body = table.concat({
    "--", boundary, "\r\n",
    'Content-Disposition: form-data; name="image"; filename="', name, '"\r\n',
    "Content-Type: image/jpeg\r\n\r\n", image, "\r\n",
    "--", boundary, "\r\n",
    'Content-Disposition: form-data; name="classes"\r\n\r\n', classes, "\r\n",
    "--", boundary, "--\r\n",
  })
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  request_text = wrk.format("POST", nil, headers, body)
  c200, c503, cother = 0, 0, 0
  lat200, lat503 = {}, {}
  other_statuses = {}
  sent_at = nil
end

function request()
  sent_at = now_us()
  return request_text
end

function response(status, headers, body)
  local us = sent_at and (now_us() - sent_at) or nil
  if status == 200 then
    c200 = c200 + 1
    if us then lat200[#lat200 + 1] = us end
  elseif status == 503 then
    c503 = c503 + 1
    if us then lat503[#lat503 + 1] = us end
  else
    cother = cother + 1
    local k = tostring(status)
    other_statuses[k] = (other_statuses[k] or 0) + 1
    if cother <= 3 then io.stderr:write("segment.lua: status ", k, ": ", (body or ""):sub(1, 300), "\n") end
  end
end

-- Main state: merge the threads' counts and timings.
local function percentiles(list)
  local n = #list
  if n == 0 then return { count = 0 } end
  table.sort(list)
  local function p(q)
    local i = math.ceil(q / 100 * n)
    if i < 1 then i = 1 end
    return list[i]
  end
  local sum = 0
  for _, v in ipairs(list) do sum = sum + v end
  return { count = n, p50 = p(50), p90 = p(90), p99 = p(99), max = list[n], mean = sum / n }
end

local function encode(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
    return string.format("%.3f", v)
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local items = {}
    for k, x in pairs(v) do items[#items + 1] = { tostring(k), x } end
    table.sort(items, function(a, b) return a[1] < b[1] end)
    local parts = {}
    for _, kv in ipairs(items) do parts[#parts + 1] = encode(kv[1]) .. ":" .. encode(kv[2]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

function done(summary, latency, requests)
  local all200, all503 = {}, {}
  local n200, n503, nother, others = 0, 0, 0, {}
  for _, thread in ipairs(threads) do
    n200 = n200 + (thread:get("c200") or 0)
    n503 = n503 + (thread:get("c503") or 0)
    nother = nother + (thread:get("cother") or 0)
    for k, c in pairs(thread:get("other_statuses") or {}) do others[k] = (others[k] or 0) + c end
    for _, v in ipairs(thread:get("lat200") or {}) do all200[#all200 + 1] = v end
    for _, v in ipairs(thread:get("lat503") or {}) do all503[#all503 + 1] = v end
  end
  local seconds = summary.duration / 1e6
  local result = {
    seconds = seconds,
    requests = summary.requests,
    requests_per_second = summary.requests / seconds,
    ok_per_second = n200 / seconds,
    bytes = summary.bytes,
    errors = summary.errors, -- connect, read, write, status (non-2xx/3xx, so 503s too), timeout
    statuses = { ["200"] = n200, ["503"] = n503, other = nother, other_by_status = others },
    latency_us = {
      p50 = latency:percentile(50), p90 = latency:percentile(90), p99 = latency:percentile(99),
      max = latency.max, mean = latency.mean,
    },
    latency_200_us = percentiles(all200),
    latency_503_us = percentiles(all503),
  }
  io.write("ZEROSEG_WRK_JSON ", encode(result), "\n")
end
