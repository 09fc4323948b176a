-- wrk script for bench/bench.py, bench/bench_rerank.py and bench/soak.py: every request carries texts no request has
-- carried before. Configured through the environment:
--   BENCH_SHORT, BENCH_LONG  files of texts, one a line
--   BENCH_API                openai (POST /v1/embeddings), triton (Triton's HTTP/JSON infer endpoint) or
--                            rerank (POST /v1/rerank: a query from BENCH_SHORT, documents from BENCH_LONG)
--   BENCH_MODEL              model (openai) or ensemble name (triton)
--   BENCH_PER_REQUEST        texts per request
--   BENCH_LONG_EVERY         0: short texts only; 1: long only; 5: every 5th text is long (4 short : 1 long)
--   BENCH_PREFIX             prefix that keeps this run's texts distinct from every other run's
-- Texts are "<prefix>-<thread>-<counter> <text from the file>". Prints one BENCH_RESULT JSON line (wrk's
-- error counts by kind, latencies in microseconds).

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do lines[#lines + 1] = line end
  return lines
end

function init(args)
  short = read_lines(os.getenv("BENCH_SHORT"))
  long = read_lines(os.getenv("BENCH_LONG"))
  api = os.getenv("BENCH_API")
  model = os.getenv("BENCH_MODEL")
  per_request = tonumber(os.getenv("BENCH_PER_REQUEST"))
  long_every = tonumber(os.getenv("BENCH_LONG_EVERY"))
  prefix = os.getenv("BENCH_PREFIX") .. "-" .. thread_id .. "-"
  counter = 0
  headers = { ["Content-Type"] = "application/json" }
  if api == "triton" then
    path = "/v2/models/" .. model .. "/infer"
  elseif api == "rerank" then
    path = "/v1/rerank"
  else
    path = "/v1/embeddings"
  end
end

local function next_text()
  counter = counter + 1
  local pool = short
  if long_every > 0 and counter % long_every == 0 then pool = long end
  return '"' .. prefix .. counter .. " " .. pool[counter % #pool + 1] .. '"'
end

local function rerank_body()
  counter = counter + 1
  local docs = {}
  for k = 1, per_request do
    docs[k] = '"' .. prefix .. counter .. "-" .. k .. " " .. long[(counter * per_request + k) % #long + 1] .. '"'
  end
  local query = '"' .. prefix .. counter .. " " .. short[counter % #short + 1] .. '"'
  return '{"model":"' .. model .. '","query":' .. query .. ',"documents":[' .. table.concat(docs, ",") .. ']}'
end

function request()
  if api == "rerank" then return wrk.format("POST", path, headers, rerank_body()) end
  local items = {}
  for k = 1, per_request do items[k] = next_text() end
  local texts = table.concat(items, ",")
  local body
  if api == "triton" then
    -- Binary output: Triton does not spend CPU printing floats as JSON.
    body = '{"inputs":[{"name":"TEXT","shape":[' .. per_request .. ',1],"datatype":"BYTES","data":[' .. texts ..
      ']}],"outputs":[{"name":"EMBEDDING","parameters":{"binary_data":true}}]}'
  else
    body = '{"model":"' .. model .. '","input":[' .. texts .. '],"encoding_format":"base64"}'
  end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeout_errors":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
