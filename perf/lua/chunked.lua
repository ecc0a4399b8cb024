-- perf/lua/chunked.lua: a 4 KiB POST with Transfer-Encoding: chunked, in four
-- chunks of 1 KiB, to the URL's path. wrk.format() always adds Content-Length,
-- so the request is written out by hand.
local req

function init(args)
  local chunk = string.rep("x", 1024)
  local parts = {
    "POST ", wrk.path, " HTTP/1.1\r\n",
    "Host: ", wrk.host, ":", tostring(wrk.port), "\r\n",
    "Content-Type: application/octet-stream\r\n",
    "Transfer-Encoding: chunked\r\n",
    "\r\n",
  }
  for _ = 1, 4 do
    parts[#parts + 1] = string.format("%x\r\n", #chunk) .. chunk .. "\r\n"
  end
  parts[#parts + 1] = "0\r\n\r\n"
  req = table.concat(parts)
end

function request()
  return req
end
