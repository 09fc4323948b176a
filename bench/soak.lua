-- wrk script for bench/soak.py: POST /v1/embeddings, 4 short texts (10-15 words) to 1 long one (~220 words,
-- near MiniLM's 256-token limit), every text distinct (thread id + request counter + random words).
-- Usage: wrk -t2 -c32 -d60s -s bench/soak.lua http://127.0.0.1:8080 -- MODEL PREFIX

local threads = {}
local words = {}
for w in ("the of and to in is was for on that with as by at from his her an were are which this be have had one "
  .. "their has but not they all when there can who been more its would up so out into if about some time "
  .. "than other them only these two may first then could any like new our over such after most also made "
  .. "many years where before must through back much should well people very still between under last "
  .. "city world state water music river house school system group number night market science history"):gmatch("%S+") do
  words[#words + 1] = w
end

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  model = args[1] or "all-MiniLM-L6-v2"
  prefix = args[2] or "soak"
  counter = 0
  math.randomseed(id * 7919 + os.time())
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function text(n)
  local t = {}
  for i = 1, n do t[i] = words[math.random(#words)] end
  return table.concat(t, " ")
end

function request()
  counter = counter + 1
  local n = (counter % 5 == 0) and math.random(200, 230) or math.random(10, 15)
  local input = string.format("%s %d-%d %s", prefix, id, counter, text(n))
  local body = string.format('{"model":"%s","input":"%s","encoding_format":"base64"}', model, input)
  return wrk.format(nil, "/v1/embeddings", nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests":%d,"seconds":%.3f,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
