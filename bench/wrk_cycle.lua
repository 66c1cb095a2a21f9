-- wrk script: cycle through pre-generated signed and encrypted WeChat callbacks.
-- Usage: wrk -t N -s bench/wrk_cycle.lua URL -- REQUESTS_FILE N
-- REQUESTS_FILE holds one callback a line: "<path with query>\t<body>". Thread i of n sends
-- lines i, i+n, i+2n ... so no two threads send the same callback; `wraps` counts how often
-- a thread ran out and started over (a fresh-callback run must report 0).
-- done() prints one line "WRK_JSON {...}" that bench/gateway_throughput.py reads.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local nthreads = tonumber(args[2]) or 1
   reqs = {}
   wraps = 0
   idx = 0
   local line_no = 0
   local headers = { ["Content-Type"] = "text/xml" }
   for line in io.lines(args[1]) do
      if line_no % nthreads == id then
         local tab = string.find(line, "\t", 1, true)
         local path = string.sub(line, 1, tab - 1)
         local body = string.sub(line, tab + 1)
         reqs[#reqs + 1] = wrk.format("POST", path, headers, body)
      end
      line_no = line_no + 1
   end
end

function request()
   idx = idx + 1
   if idx > #reqs then
      idx = 1
      wraps = wraps + 1
   end
   return reqs[idx]
end

function done(summary, latency, requests)
   local wrapped = 0
   for _, thread in ipairs(threads) do
      wrapped = wrapped + (thread:get("wraps") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
         .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "errors_connect": %d, '
         .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, '
         .. '"errors_timeout": %d, "wraps": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
      e.status, e.timeout, wrapped))
end
