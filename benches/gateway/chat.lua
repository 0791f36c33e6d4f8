-- wrk script: POSTs one streamed OpenAI chat completion per request. With RATE set, each
-- connection waits an exponentially distributed time (mean CONNECTIONS / RATE seconds) after
-- each response, so that together they send about RATE requests a second as a Poisson stream.
-- A fixed wait would keep the connections in step: every 10 ms all of them would fire at once,
-- and the latency measured would be mostly the wait behind the others of the burst.
-- At the end it prints one machine-readable line: BENCH <json>.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","stream":true,"max_tokens":16,' ..
  '"messages":[{"role":"user","content":"Say hello"}]}'

local rate = tonumber(os.getenv("RATE") or "0")
local connections = tonumber(os.getenv("CONNECTIONS") or "1")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad = 0 -- a global of the thread's own Lua state, read back in done()
  -- Each thread its own random sequence (a table's address differs per Lua state).
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 1000003)
end

function delay()
  if rate > 0 then
    -- wrk takes whole milliseconds; rounding keeps the mean.
    local mean_ms = connections * 1000 / rate
    return math.floor(-mean_ms * math.log(1 - math.random()) + 0.5)
  end
  return 0
end

function response(status, headers, body)
  -- A 200 whose stream ends without [DONE] is a failure too (an error chunk, a cut stream).
  if status ~= 200 or not string.find(body, "[DONE]", 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("bad") or 0)
  end
  local socket_errors = errors.connect + errors.read + errors.write + errors.timeout
  io.write(string.format(
    'BENCH {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"non_2xx":%d,"socket_errors":%d,"incomplete":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, errors.status, socket_errors, bad))
end
