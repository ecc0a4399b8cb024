-- perf/lua/post.lua: a 4 KiB POST with Content-Length (wrk adds it) to the URL's path.
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
