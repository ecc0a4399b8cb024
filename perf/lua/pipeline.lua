-- perf/lua/pipeline.lua: HTTP/1.1 pipelining for wrk. Each write carries DEPTH
-- GET requests for the URL's path (default 16: `wrk ... URL -s pipeline.lua -- 16`);
-- wrk counts the requests in the string and waits for as many responses
-- before it writes again.
local req

function init(args)
  local depth = tonumber(args[1]) or 16
  req = string.rep(wrk.format("GET", wrk.path), depth)
end

function request()
  return req
end
